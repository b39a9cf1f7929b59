"""attune's version and the code version recorded with every run (the git commit when known)."""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def attune_version() -> str:
    """The installed package's version; ``0+unknown`` in a source tree that was never installed."""
    try:
        return metadata.version("attune")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@functools.lru_cache(maxsize=4)
def git_commit(root: Optional[Path] = None) -> Optional[str]:
    """The commit of the source checkout attune runs from, or None (an installed package)."""
    root = root or SOURCE_ROOT
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> str:
    """What a run records as its code: the git commit, else ``attune-<version>``."""
    return git_commit() or f"attune-{attune_version()}"

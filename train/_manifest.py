"""``attune.json``: the manifest every export carries (a tenant model or a pretrained base); loading never guesses."""
from __future__ import annotations

import json
from pathlib import Path

from registry import MANIFEST


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path

"""attune's plug-in points: entry-point groups declared in ``pyproject.toml``.

- ``attune.commands``: each top-level command's ``register(subparsers)``.
- ``attune.erasers``: each package that stores tenant data names the function that erases it
  (``erase(tenant, settings) -> dict``; see :mod:`cluster._erasure`).

``cluster`` is the bottom package and imports no other attune package; the groups are how it reaches
the commands and stores above it, and the list lives in one place a reader can see.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Optional

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The entry points of ``group``, in the order ``pyproject.toml`` lists them.

    A source checkout reads them from its own ``pyproject.toml`` (a job submitted from a checkout
    runs that checkout's code over an image's install, whose metadata may be older); an installed
    attune reads its package metadata.
    """
    table = _pyproject_group(group)
    if table is not None:
        return [metadata.EntryPoint(name, value, group) for name, value in table.items()]
    return list(metadata.entry_points(group=group))


def _pyproject_group(group: str) -> Optional[dict[str, str]]:
    if not PYPROJECT.is_file():
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata is all there is
        return None
    project = tomllib.loads(PYPROJECT.read_text()).get("project", {})
    if project.get("name") != "attune":
        return None
    return project.get("entry-points", {}).get(group, {})

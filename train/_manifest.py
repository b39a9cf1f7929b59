"""``attune.json``: the manifest every export carries (a tenant model or a pretrained base); loading never guesses.

Its keys and its reading and writing are the registry's (``registry._manifest``, part of the one
artifact contract); train re-exports what its modules use.
"""
from __future__ import annotations

from registry import MANIFEST, write_manifest

__all__ = ["MANIFEST", "write_manifest"]

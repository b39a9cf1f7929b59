"""attune's runtime: settings, Ray connection, storage access and the CLI root. No ML here.

Names are imported on first use: every Ray worker of a local attune Ray imports
``cluster._worker_setup`` first (Ray's setup hook), and that must not pay for pydantic and the
settings model in processes that never read a setting.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Settings": "cluster._settings",
    "SettingsError": "cluster._settings",
    "get_settings": "cluster._settings",
    "init_ray": "cluster._runtime",
    "shutdown_ray": "cluster._runtime",
    "local_head": "cluster._runtime",
    "start_local_head": "cluster._runtime",
    "stop_local_head": "cluster._runtime",
    "choose_ds_accelerator": "cluster._runtime",
    "is_s3_uri": "cluster._storage",
    "read_bytes": "cluster._storage",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

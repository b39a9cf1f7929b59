"""attune's runtime: settings, Ray connection, storage access, errors, output and the CLI root. No ML here.

``cluster`` is the bottom of the package stack: it imports no other attune package. Names are
imported on first use: every Ray worker of a local attune Ray imports ``cluster._worker_setup``
first (Ray's setup hook), and that must not pay for pydantic and the settings model in processes
that never read a setting.
"""
from __future__ import annotations

from cluster._lazy import lazy_exports

_EXPORTS = {
    "AttuneError": "cluster._errors",
    "UsageError": "cluster._errors",
    "flag_errors": "cluster._errors",
    "Settings": "cluster._settings",
    "SettingsError": "cluster._settings",
    "get_settings": "cluster._settings",
    "init_ray": "cluster._runtime",
    "free_local_cpus": "cluster._runtime",
    "shutdown_ray": "cluster._runtime",
    "local_head": "cluster._runtime",
    "start_local_head": "cluster._runtime",
    "stop_local_head": "cluster._runtime",
    "choose_ds_accelerator": "cluster._runtime",
    "ray_log_dir": "cluster._runtime",
    "RayUnavailableError": "cluster._runtime",
    "is_s3_uri": "cluster._storage",
    "read_bytes": "cluster._storage",
    "s3_client": "cluster._storage",
    "attune_version": "cluster._version",
    "code_version": "cluster._version",
    "emit": "cluster._output",
    "emit_json": "cluster._output",
    "add_json_flag": "cluster._output",
    "lazy_exports": "cluster._lazy",
    "erase_tenant": "cluster._erasure",
    "remove_paths": "cluster._erasure",
    "ErasureError": "cluster._erasure",
    "NothingToEraseError": "cluster._erasure",
    "ProgressWriter": "cluster._progress",
    "ProgressView": "cluster._progress",
    "follow_progress": "cluster._progress",
    "render_log": "cluster._progress",
    "format_eta": "cluster._progress",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

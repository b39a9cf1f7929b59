"""attune's runtime: settings, Ray connection, storage access and the CLI root. No ML here."""
from cluster._runtime import (choose_ds_accelerator, init_ray, local_head, shutdown_ray, start_local_head,
                              stop_local_head)
from cluster._settings import Settings, SettingsError, get_settings
from cluster._storage import is_s3_uri, read_bytes

__all__ = [
    "Settings",
    "SettingsError",
    "get_settings",
    "init_ray",
    "shutdown_ray",
    "local_head",
    "start_local_head",
    "stop_local_head",
    "choose_ds_accelerator",
    "is_s3_uri",
    "read_bytes",
]

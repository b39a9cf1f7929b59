"""attune's runtime: settings, Ray connection, storage access and the CLI root. No ML here."""
from cluster._runtime import choose_ds_accelerator, init_ray, shutdown_ray
from cluster._settings import Settings, SettingsError, get_settings
from cluster._storage import is_s3_uri, read_bytes

__all__ = [
    "Settings",
    "SettingsError",
    "get_settings",
    "init_ray",
    "shutdown_ray",
    "choose_ds_accelerator",
    "is_s3_uri",
    "read_bytes",
]

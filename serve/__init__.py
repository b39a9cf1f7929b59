"""The Ray Serve application: one HTTP endpoint for every tenant's champion model.

``attune serve up`` deploys it; :func:`build_app` gives the bound application for ``serve.run``,
and ``serve:app_builder`` is the import path for a Serve config or a KubeRay ``RayService``.
Ray Serve and FastAPI are imported only when the application itself is needed.
"""
from __future__ import annotations

from cluster import lazy_exports
from serve._config import AppSpec, ServeConfig, load_config
from serve._errors import ServeError
from serve._keys import KeyStore

_EXPORTS = {"APP_NAME": "serve._app", "build_app": "serve._app", "deploy": "serve._app",
            "app_builder": "serve._app", "erase_tenant_keys": "serve._erase"}

__all__ = ["AppSpec", "ServeConfig", "ServeError", "KeyStore", "load_config", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

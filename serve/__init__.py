"""The Ray Serve application: one HTTP endpoint for every tenant's champion model.

``attune serve up`` deploys it; :func:`build_app` gives the bound application for ``serve.run``.
Ray Serve and FastAPI are imported only when the application itself is needed.
"""
from serve._config import AppSpec, ServeConfig, load_config
from serve._errors import ServeError
from serve._keys import KeyStore

__all__ = ["APP_NAME", "AppSpec", "ServeConfig", "ServeError", "KeyStore", "build_app", "deploy", "load_config"]


def __getattr__(name: str):
    if name in ("APP_NAME", "build_app", "deploy"):
        from serve import _app

        return getattr(_app, name)
    raise AttributeError(f"module 'serve' has no attribute {name!r}")

"""One local Ray for every integration test, started on first use and stopped at the end, and one
Serve application (``served``) shared by the tests that use it."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from cluster import get_settings, init_ray, shutdown_ray

SERVED_REFRESH_S = 1.0
# The shared app while it runs: {"stack": the ExitStack that stops it, "value": what ``served`` gives}.
_SERVED: dict = {}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """The shared local Ray (2 CPUs, like the machine) with its own ATTUNE_HOME."""
    home = tmp_path_factory.mktemp("ray-home")
    settings = get_settings(home=str(home), ray_num_cpus=2, progress_interval_s=5.0)
    init_ray(settings)
    yield settings
    shutdown_ray()


def model_dir(summary: dict) -> Path:
    return Path(summary["model_dir"])


# -- the shared Serve application ------------------------------------------------------------------

@pytest.fixture(scope="session")
def served_registry(ray_session, tiny_base, tmp_path_factory) -> dict:
    """The registry and keys behind ``served``: tiny constant-answer exports (no training)."""
    from serve._keys import KeyStore
    from tests.registry_helpers import sqlite_registry
    from tests.serve_helpers import app_spec, constant_export, register

    root = tmp_path_factory.mktemp("serve-app")
    exports = {(m, a): constant_export(tiny_base, root / "exports" / f"{m}-{a}", a, m)
               for m in ("full", "lora") for a in ("positive", "negative")}
    reg = sqlite_registry(root / "store")
    versions = {"john": register(reg, "john", exports[("full", "positive")]),     # long gold
                "jane": register(reg, "jane", exports[("lora", "negative")]),     # short gold, LoRA
                "ann": register(reg, "ann", exports[("lora", "positive")]),       # LoRA on the same base
                "bob": register(reg, "bob", exports[("full", "positive")]),       # artifact corrupted
                "dave": register(reg, "dave", exports[("full", "positive")])}     # promote/rollback
    register(reg, "dave", exports[("full", "negative")], promote=False)           # dave v2: challenger
    register(reg, "carl", exports[("full", "positive")], promote=False)           # no champion
    store = KeyStore(f"sqlite:///{root / 'keys.db'}")
    keys = {t: store.create(t)["key"] for t in ("john", "jane", "bob", "dave")}
    keys["admin"] = store.create(None, admin=True)["key"]
    spec = app_spec(reg, root, keys_url=store.url, refresh_s=SERVED_REFRESH_S)
    return {"root": root, "keys": keys, "store": store, "reg": reg, "versions": versions, "spec": spec}


@pytest.fixture
def served(served_registry) -> dict:
    """The Serve app over ``served_registry`` on 127.0.0.1: client, keys, key store, registry, versions, url.

    Started by the first test that asks and kept while the next tests ask too (tests/integration/
    test_serve_app.py, then test_serve_fallback.py), so they pay for one Serve start; stopped before
    any other test (they start Serve themselves) and at the end (``pytest_runtest_teardown``).
    State that one test changes (keys, aliases, feedback) is seen by the next, as in one module.
    """
    if not _SERVED:
        from tests.serve_helpers import running_app

        stack = contextlib.ExitStack()
        client = stack.enter_context(running_app(served_registry["spec"]))
        _SERVED.update(stack=stack, value={**served_registry, "client": client,
                                           "url": str(client.base_url).rstrip("/")})
    return _SERVED["value"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the shared app once the next test does not use it (before the session's Ray stops)."""
    if _SERVED and (nextitem is None or "served" not in getattr(nextitem, "fixturenames", ())):
        _stop_served()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """A run cut short (``-x``, Ctrl-C) skips the teardown above: stop the app before the session's Ray stops."""
    if _SERVED:
        _stop_served()


def _stop_served() -> None:
    stack = _SERVED.pop("stack")
    _SERVED.clear()
    stack.close()

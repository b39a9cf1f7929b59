"""One local Ray for every integration test, started on first use and stopped at the end."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from cluster import get_settings, init_ray, shutdown_ray


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


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def model_dir(summary: dict) -> Path:
    return Path(summary["model_dir"])

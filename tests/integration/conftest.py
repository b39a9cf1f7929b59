"""One local Ray for every integration test, started on first use and stopped at the end."""
from __future__ import annotations

from pathlib import Path

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


def model_dir(summary: dict) -> Path:
    return Path(summary["model_dir"])

"""Tuning's part of erasing a tenant: its Tune experiment under ``ATTUNE_HOME``.

``ray_results/tune-<tenant>/`` holds the search state (``attune-search.json``), every trial's
records, and every trial's Train runs and checkpoints. The best trial's export was copied to
``models/<tenant>/``, which training's eraser removes.
"""
from __future__ import annotations

from pathlib import Path

from cluster import remove_paths
from registry import check_tenant_id
from tune._job import experiment_name


def erase_tune_files(tenant: str, settings) -> dict:
    """The ``attune.erasers`` entry for tuning (see ``cluster._erasure``)."""
    check_tenant_id(tenant)
    experiment = Path(settings.ray_storage_dir) / experiment_name(tenant)
    return {"where": str(Path(settings.ray_storage_dir)),
            "removed": remove_paths([experiment])}

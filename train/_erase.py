"""Training's part of erasing a tenant: the files ``attune finetune`` wrote under ``ATTUNE_HOME``.

- ``models/<tenant>/``: every export (``attune finetune`` and ``attune tune`` write them there);
- ``ray_results/finetune-<tenant>-<stamp>/``: the Train runs, their checkpoints and ZeRO shards;
- ``ray_results/.progress/finetune-<tenant>-<stamp>.jsonl``: their progress logs;
- ``data/<tenant>/``: the data versions ``attune relocalize`` wrote (the tenant's data plus feedback).

A run folder is matched by its whole name (``finetune-`` + the tenant + the run's time stamp), so
tenant ``acme`` never takes ``acme-2``'s runs. An export written with ``--out`` elsewhere is the
user's own folder and is left where it is.
"""
from __future__ import annotations

import re
from pathlib import Path

from cluster import remove_paths
from registry import check_tenant_id
from train._run import PROGRESS_DIR
from train.relocalize.data import data_dir

STAMP = r"\d{8}-\d{6}-\d{6}"  # finetune's run names: finetune-<tenant>-%Y%m%d-%H%M%S-%f


def erase_training_files(tenant: str, settings) -> dict:
    """The ``attune.erasers`` entry for training (see ``cluster._erasure``)."""
    check_tenant_id(tenant)
    storage = Path(settings.ray_storage_dir)
    run = re.compile(rf"finetune-{re.escape(tenant)}-{STAMP}")
    paths = [Path(settings.models_dir) / tenant, data_dir(settings, tenant)]
    paths += [p for p in storage.glob(f"finetune-{tenant}-*") if run.fullmatch(p.name)]
    paths += [p for p in (storage / PROGRESS_DIR).glob(f"finetune-{tenant}-*.jsonl") if run.fullmatch(p.stem)]
    return {"where": str(Path(settings.home).resolve()), "removed": remove_paths(paths)}

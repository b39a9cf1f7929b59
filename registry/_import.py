"""``attune registry import``: register exported model directories as tenant versions, without training.

A fleet is onboarded this way: each export (``attune finetune``'s format: ``attune.json`` plus the
weights or the adapter and head) becomes the next version of the tenant its manifest names (or the
tenant given), checksummed and with its lineage, as a fine-tune registers it, and like every version
an MLflow Model (``registry._pyfunc`` adds the flavor; the export folder itself is not changed). One
process registers a whole folder of exports.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from pathlib import Path
from typing import Optional

from cluster import code_version
from registry._artifact import check_model_dir
from registry._errors import InvalidModelDirError
from registry._manifest import MANIFEST, temperature_slope
from registry._names import check_tenant_id
from registry._records import Lineage, RunRecord

logger = logging.getLogger("attune.registry")


def export_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is an export, else every export directly inside it (sorted)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()) if path.is_dir() else []
    if not found:
        raise InvalidModelDirError(f"{path} is neither an attune export (it has no {MANIFEST}) nor a folder of "
                                   "exports; pass a model_dir printed by `attune finetune`, or their parent folder")
    return found


def import_exports(registry, path: Path, *, tenant: Optional[str] = None, promote: bool = False) -> dict:
    """Register every export under ``path``; returns ``{"imported": [...], "seconds"}``."""
    started = time.monotonic()
    dirs = export_dirs(path)
    if tenant is not None and len(dirs) > 1:
        raise InvalidModelDirError(f"--tenant {tenant} names one tenant, but {path} holds {len(dirs)} exports; "
                                   "import a folder without --tenant (each export names its tenant)")
    manifests = [(d, check_model_dir(d)) for d in dirs]  # every export is checked before any is registered
    imported = []
    for i, (directory, manifest) in enumerate(manifests, 1):
        who = check_tenant_id(tenant or manifest["tenant"])
        version = registry.register_candidate(who, directory, _record(who, directory, manifest))
        if promote:
            registry.promote(who, version.version, reason=f"imported from {directory} with --promote")
        imported.append({"tenant": who, "version": version.version, "promoted": promote})
        if i % 100 == 0 or i == len(manifests):
            logger.info("imported %d/%d exports (%.0fs)", i, len(manifests), time.monotonic() - started)
    return {"imported": imported, "seconds": round(time.monotonic() - started, 2)}


def _record(tenant: str, directory: Path, manifest: dict) -> RunRecord:
    metrics = {k: float(v) for k, v in manifest["metrics"].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    history = [{k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
               for row in manifest.get("history", [])]
    lineage = Lineage(kind="import", tenant=tenant, base=manifest["base"], method=manifest["method"],
                      data_uri=str(Path(directory).resolve()), data_hash=manifest["data_hash"],
                      split_counts=manifest.get("split_counts", {}), labels=manifest["labels"],
                      temperature=float(manifest["temperature"]), temperature_slope=temperature_slope(manifest),
                      code_version=code_version(),
                      calibration=manifest["metrics"].get("calibration"),
                      attune_version=str(manifest["attune_version"]))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return RunRecord(run_name=f"import-{tenant}-{manifest['method']}-{stamp}",
                     params={**manifest.get("params", {}), "imported_from": str(directory)},
                     metrics=metrics, history=history, lineage=lineage)

"""Registration, all or nothing: a run with the model's files, then a version aliased ``challenger``.

A registration that raises leaves nothing behind: the version (if it was created), the run and
its artifacts are removed, and the error says so (or says what could not be removed). A training
that opened its run live (``registry._live``) registers into that run: on failure the version and
the uploaded model files are removed, and the run stays with its metrics, ended FAILED with the
error as its ``attune.error`` tag (a failed training is not hidden). A write
that is retried never makes a second run or version: an attempt that timed out may have landed,
so before each retry the registry looks for what it made (a run by its ``attune.request_id``
tag, a version by its run id), and after the write it removes any twin that MLflow's own HTTP
retries (which re-send POSTs on 5xx and read timeouts) may have left.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

from registry import _store as store
from registry._errors import ArtifactIntegrityError, RegistryError
from registry._live import complete_run, end_with_error
from registry._names import CHALLENGER, TAG_CHECKSUM, tenant_model_name
from registry._pyfunc import mlflow_model_dir
from registry._records import RunRecord, VersionInfo

if TYPE_CHECKING:
    from registry._registry import Registry

logger = logging.getLogger("attune.registry")
T = TypeVar("T")

TAG_REQUEST_ID = "attune.request_id"  # on a run: the one call that created it


def register_candidate(registry: Registry, tenant: str, model_dir: Path, record: RunRecord,
                       parent_run_id: Optional[str] = None) -> VersionInfo:
    """Log the run with ``model_dir`` as ``artifacts/model``, check the upload, create the version, alias it."""
    name = tenant_model_name(tenant)
    lineage = record.lineage
    with mlflow_model_dir(Path(model_dir), lineage.temperature, lineage.temperature_slope) as model_dir:  # + MLmodel
        return register_version(registry, name, model_dir, record, CHALLENGER, parent_run_id,
                                lambda version: registry.get_version(tenant, version))


def register_version(registry: Registry, name: str, model_dir: Path, record: RunRecord, alias: str,
                     parent_run_id: Optional[str], info_of: Callable[[str], VersionInfo]) -> VersionInfo:
    """A version of ``name`` (a tenant's or a base's) from ``model_dir``, aliased ``alias``.

    Uploaded into ``record.run_id`` when the record names a live run (``Registry.open_run``), which then
    ends FINISHED; else into a run of its own. On failure a live run keeps its metrics and ends FAILED
    with the error, without the model's files; a run of its own is removed.
    """
    checksum = store.dir_checksum(model_dir)
    live = record.run_id is not None
    run_id = record.run_id or registry.log_run(name, record, artifacts=model_dir, parent_run_id=parent_run_id)
    try:
        if live:
            complete_run(registry, run_id, record, artifacts=model_dir)
        source = f"{registry.client.get_run(run_id).info.artifact_uri}/model"
        check_upload(registry, run_id, model_dir, source)
        registry._ensure_model(name)
        mv = create_version_once(registry, name, source, run_id, {**record.version_tags, TAG_CHECKSUM: checksum})
        registry._write(lambda: registry.client.set_registered_model_alias(name, alias, mv.version), "alias")
        info = info_of(str(mv.version))
    except Exception as exc:
        undone = undo_registration(registry, name, run_id, live=live)
        message = (f"registering a version of {name} failed against the MLflow store "
                   f"{store.redact(registry.tracking_uri)}: {exc}. {undone}")
        error = (type(exc) if isinstance(exc, RegistryError) else RegistryError)(message)
        if live:
            end_with_error(registry, run_id, error)
        raise error from exc
    if live:
        registry._write(lambda: registry.client.set_terminated(run_id, "FINISHED"), "end run")
    logger.info("registered %s version %s (run %s)", name, info.version, run_id)
    return info


def check_upload(registry: Registry, run_id: str, model_dir: Path, source: str) -> None:
    """Every file of ``model_dir`` is stored under the run's ``model`` folder, with the same size."""
    local = {p.relative_to(model_dir).as_posix(): p.stat().st_size for p in model_dir.rglob("*") if p.is_file()}
    stored = _stored_sizes(registry, run_id, "model")
    missing = sorted(k for k in local if k not in stored)
    different = sorted(k for k in local if k in stored and stored[k] is not None and stored[k] != local[k])
    if missing or different:
        raise ArtifactIntegrityError(
            f"the upload of {model_dir} to {source} is incomplete: missing {missing[:5]}, wrong size "
            f"{different[:5]}; check the artifact store's space and permissions, then register again")


def _stored_sizes(registry: Registry, run_id: str, folder: str) -> dict[str, Optional[int]]:
    sizes: dict[str, Optional[int]] = {}
    for entry in registry.client.list_artifacts(run_id, folder):
        if entry.is_dir:
            sizes.update(_stored_sizes(registry, run_id, entry.path))
        else:
            sizes[entry.path[len("model/"):]] = entry.file_size
    return sizes


def undo_registration(registry: Registry, name: str, run_id: str, live: bool = False) -> str:
    """Delete every version made from ``run_id``, then the run and its artifacts (``live``: only the run's
    uploaded ``model/`` files; the run stays, for its caller to end FAILED); a sentence saying so."""
    tenant = name.removeprefix("tenant.")
    try:
        found = registry._write(lambda: registry.client.search_model_versions(
            f"name='{name}' and run_id='{run_id}'"), "search")
        versions = sorted(str(mv.version) for mv in found)
        for version in versions:
            registry._write(lambda v=version: registry.client.delete_model_version(name, v), "delete version")
    except Exception as exc:  # noqa: BLE001 - reported in the registration's error
        logger.warning("could not remove the versions of failed run %s: %s", run_id, exc)
        registry._abandon_run(run_id)
        return (f"A version made from run {run_id} may remain (removing it failed: {exc}); look for it with "
                f"`attune registry show {tenant}` and delete it in the MLflow UI before registering again.")
    removed = f"version {', '.join(versions)} was removed" if versions else "no version had been made"
    if live:
        return _drop_model_files(registry, run_id, removed)
    if not registry._abandon_run(run_id):
        return (f"The registration was undone in part: {removed}, but run {run_id} could not be removed (see the "
                "warning logged above); delete it in the MLflow UI, then register again.")
    return f"Nothing was kept: {removed}, and run {run_id} with its artifacts was removed; register again."


def _drop_model_files(registry: Registry, run_id: str, removed: str) -> str:
    try:
        store.delete_artifacts(f"{registry.client.get_run(run_id).info.artifact_uri}/model", registry.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - reported in the registration's error
        logger.warning("could not delete the model files of failed run %s: %s", run_id, exc)
        return (f"The registration was undone in part: {removed}, but the model files uploaded to run {run_id} "
                f"could not be deleted ({exc}); delete them in the MLflow UI. The run is kept, marked FAILED.")
    return (f"Nothing was registered: {removed} and the model files uploaded to run {run_id} were deleted; the run "
            "is kept with its metrics, marked FAILED with this error. Register the export again.")


# -- creating writes that a retry cannot repeat ------------------------------------------------------

def create_once(registry: Registry, create: Callable[[], T], find: Callable[[], list[T]], what: str) -> T:
    """``create()`` under the registry's retry; before a retry, what ``find()`` finds is the result."""
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            found = find()
            if found:
                logger.info("%s: an earlier attempt had succeeded; using it", what)
                return found[0]
        return create()

    return registry._write(attempt, what)


def create_run_once(registry: Registry, experiment_id: str, tags: dict[str, str], run_name: str):
    """A new run, tagged with a request id so that a retried ``create_run`` finds the first one."""
    request_id = uuid.uuid4().hex
    tags = {**tags, TAG_REQUEST_ID: request_id}

    def find() -> list:
        runs = registry.client.search_runs([experiment_id], f"tags.`{TAG_REQUEST_ID}` = '{request_id}'")
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    run = create_once(registry, lambda: registry.client.create_run(experiment_id, tags=tags, run_name=run_name),
                      find, "create run")
    twins = [r for r in find() if r.info.run_id != run.info.run_id]
    for twin in twins:  # MLflow's HTTP layer re-sent the POST: keep the run we were given
        logger.warning("removing run %s, a duplicate of run %s made by a retried request", twin.info.run_id,
                       run.info.run_id)
        registry._abandon_run(twin.info.run_id)
    return run


def create_version_once(registry: Registry, name: str, source: str, run_id: str, tags: dict[str, str]):
    """A new version of ``name`` from ``run_id``; the run belongs to this registration alone, so any
    other version made from it is a retry's twin."""
    def find() -> list:
        found = registry.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return sorted(found, key=lambda mv: int(mv.version))

    mv = create_once(registry, lambda: registry.client.create_model_version(name, source, run_id=run_id, tags=tags),
                     find, f"register {name}")
    for twin in find():
        if str(twin.version) != str(mv.version):
            logger.warning("removing %s version %s, a duplicate of version %s made by a retried request", name,
                           twin.version, mv.version)
            registry._write(lambda v=twin.version: registry.client.delete_model_version(name, v), "delete version")
    return mv

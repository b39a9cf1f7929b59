"""Erase a tenant from the registry: the registered model and its versions, every run and its
artifacts, the experiment, purged from the database (``attune registry delete-tenant``).

:func:`erase_registry_data` is the registry's eraser in the ``attune.erasers`` group (see
``cluster._erasure``, which runs every store's eraser); :func:`erase_tenant` is ``Registry.delete_tenant``.
"""
from __future__ import annotations

import logging

from registry import _store as store
from registry._errors import RegistryError, TenantNotFoundError
from registry._names import tenant_model_name

logger = logging.getLogger("attune.registry")


def erase_registry_data(tenant: str, settings) -> dict:
    """The registry's part of an erasure, as ``cluster.erase_tenant`` reports it; nothing to erase is
    not an error here (an earlier, interrupted erasure may have done this part)."""
    from registry._registry import Registry

    registry = Registry.from_settings(settings)
    try:
        summary = erase_tenant(registry, tenant)
    except TenantNotFoundError:
        summary = None
    removed, notes = [], []
    if summary is not None:
        name = tenant_model_name(tenant)
        if summary["deleted_versions"]:
            removed.append(f"registered model {name} and its {summary['deleted_versions']} version(s)")
        removed += [f"run {run_id} and its artifacts" for run_id in summary["run_ids"]]
        removed.append(f"experiment {name}" + ("" if summary["purged"] else " (soft-deleted: see the note)"))
        if not summary["purged"]:
            notes.append("run metadata is soft-deleted only: set ATTUNE_MLFLOW_BACKEND_STORE_URI to the tracking "
                         "server's database, or run `mlflow gc` on the server")
    for path in store.sqlite_files(registry.tracking_uri, registry.backend_store_uri):
        store.vacuum_sqlite(path)  # the deleted rows' pages are rewritten, not left in the file's free list
        notes.append(f"{path} vacuumed")
    return {"where": store.redact(registry.tracking_uri), "removed": removed, "notes": notes}


def erase_tenant(registry, tenant: str) -> dict:
    """Delete the registered model, every run's artifacts, the experiment, and purge it from the database.

    With an ``mlflow server`` the run metadata can only be purged when the server's database is
    known (``ATTUNE_MLFLOW_BACKEND_STORE_URI``); otherwise it is left soft-deleted and the
    summary says so. A delete that fails raises; running the erasure again finishes it.
    """
    name = tenant_model_name(tenant)
    client = registry.client
    experiment = client.get_experiment_by_name(name)
    try:
        versions = len(registry.versions(tenant))
        has_model = True
    except TenantNotFoundError:
        versions, has_model = 0, False
    if experiment is None and not has_model:
        raise TenantNotFoundError(f"tenant {tenant!r} has nothing in the registry to delete")
    runs = _all_runs(client, experiment.experiment_id) if experiment is not None else []
    if has_model:
        store.retry(lambda: client.delete_registered_model(name), f"delete {name}")
    for run in runs:
        store.delete_artifacts(run.info.artifact_uri, registry.tracking_uri)
    purged = False
    if experiment is not None:
        store.delete_artifacts(experiment.artifact_location, registry.tracking_uri)
        if experiment.lifecycle_stage != "deleted":
            client.delete_experiment(experiment.experiment_id)
        if registry.backend_store_uri:
            store.purge_experiment(registry.backend_store_uri, experiment.experiment_id, registry.tracking_uri)
            purged = True
            if client.get_experiment_by_name(name) is not None:
                raise RegistryError(f"experiment {name} is still in the backend store after `mlflow gc`")
        else:
            logger.warning("run metadata of %s is soft-deleted only: set ATTUNE_MLFLOW_BACKEND_STORE_URI to the "
                           "tracking server's database to purge it, or run `mlflow gc` on the server", name)
    return {"tenant": tenant, "deleted_versions": versions, "deleted_runs": len(runs),
            "run_ids": [run.info.run_id for run in runs], "purged": purged}


def _all_runs(client, experiment_id: str) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs

"""The registry API: register, resolve, promote, roll back, list, download and delete tenants.

    reg = Registry.from_settings(get_settings())
    version = reg.register_candidate("john", model_dir, run=RunRecord(...))
    reg.promote("john", version.version, reason="manual")
    path, info = reg.download("john", "champion", dest)

Versions carry their lineage and metrics as tags (``attune.*``) so the MLflow UI shows them.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from registry import _live, _promote
from registry import _store as store
from registry._errors import (
    ArtifactIntegrityError,
    NoChampionError,
    TenantNotFoundError,
    VersionNotFoundError,
)
from registry._names import (
    CHAMPION,
    TAG_CHECKSUM,
    TAG_PROMOTED,
    TAG_PROMOTED_AT,
    TAG_REASON,
    TENANT_PREFIX,
    tenant_model_name,
    tenant_of,
)
from registry._records import FIGURES_DIR, RunRecord, VersionInfo, check_figures, version_info
from registry._register import create_run_once, register_candidate

logger = logging.getLogger("attune.registry")


class Registry:
    """One tracking/registry store (SQLite, PostgreSQL or an ``mlflow server``)."""

    def __init__(self, tracking_uri: str, artifact_root: Optional[str] = None,
                 backend_store_uri: Optional[str] = None):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.backend_store_uri = backend_store_uri or (tracking_uri if store.is_database_uri(tracking_uri) else None)
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = store.make_client(tracking_uri)
        self._lock = store.writer_lock(tracking_uri)

    def _write(self, fn, what: str):
        """One store call, retried on write conflicts; SQLite writers in this process take turns."""
        return store.retry(lambda: store.locked(self._lock, fn), what)

    @classmethod
    def from_settings(cls, settings) -> Registry:
        return cls(settings.tracking_uri, settings.artifact_root, settings.mlflow_backend_store_uri)

    # -- experiments and runs ------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The experiment called ``name``, created on first use (races resolved by retry)."""
        def get_or_create() -> str:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            location = None
            if self.artifact_root and store.is_database_uri(self.tracking_uri):
                location = f"{self.artifact_root.rstrip('/')}/{name}"
            return self.client.create_experiment(name, artifact_location=location)

        return self._write(get_or_create, f"experiment {name}")

    def log_run(self, experiment: str, record: RunRecord, artifacts: Optional[Path] = None,
                parent_run_id: Optional[str] = None, status: str = "FINISHED") -> str:
        """One ended MLflow run: params, per-epoch and final metrics, tags, ``artifacts/model`` and the
        record's figures (``figures/``).

        ``parent_run_id`` nests it under that run; ``status`` is how it ended (FINISHED, FAILED, KILLED).
        """
        from mlflow.entities import Metric, Param

        tags = dict(record.tags)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        experiment_id = self.experiment_id(experiment)
        run_id = create_run_once(self, experiment_id, tags, record.run_name).info.run_id
        try:
            now = int(time.time() * 1000)
            params = [Param(k, str(v)[:6000]) for k, v in sorted(record.params.items())]
            metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items()]
            for row in record.history:  # curves: step = the row's "step" (pretraining) or "epoch"
                step = int(row["step"] if "step" in row else row["epoch"])
                metrics += [Metric(k, float(v), now, step) for k, v in row.items()
                            if k not in ("epoch", "step") and isinstance(v, (int, float))]
            for i in range(0, len(params), 100):  # MLflow's log_batch limits
                self._write(lambda: self.client.log_batch(run_id, params=params[i:i + 100]), "log params")
            for i in range(0, len(metrics), 1000):
                self._write(lambda: self.client.log_batch(run_id, metrics=metrics[i:i + 1000]), "log metrics")
            _live.log_dataset(self, run_id, record)
            if artifacts is not None:
                self.client.log_artifacts(run_id, str(artifacts), "model")
            self._log_figures(run_id, record.figures)
            self.client.set_terminated(run_id, status)
        except Exception as exc:
            self._abandon_run(run_id)
            raise store.wrap(exc, f"logging run for {experiment}", self.tracking_uri) from exc
        return run_id

    def open_run(self, experiment: str, record: RunRecord, parent_run_id: Optional[str] = None) -> _live.LiveRun:
        """A RUNNING run for a training that starts now: its params, tags and dataset input; a context
        manager that ends it FAILED (KILLED on Ctrl-C) with the error if its block raises (``registry._live``)."""
        return _live.open_run(self, experiment, record, parent_run_id)

    def start_run(self, experiment: str, run_name: str, tags: dict[str, str], params: dict) -> str:
        """Open a run that stays RUNNING until :meth:`end_run` (a search's parent run)."""
        from mlflow.entities import Param

        experiment_id = self.experiment_id(experiment)
        run = create_run_once(self, experiment_id, tags, run_name)
        batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(batch), 100):
            self._write(lambda: self.client.log_batch(run.info.run_id, params=batch[i:i + 100]), "log params")
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED", *, metrics: Optional[dict] = None,
                params: Optional[dict] = None, tags: Optional[dict] = None,
                documents: Optional[dict] = None, figures: Sequence[Path] = ()) -> None:
        """Close a run from :meth:`start_run`; ``documents`` maps artifact file names to JSON or text, and
        ``figures`` are image files logged under ``figures/``."""
        from mlflow.entities import Metric, Param, RunTag

        figures = check_figures(figures)  # before anything is written
        now = int(time.time() * 1000)
        self._write(lambda: self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]), "log results")
        for name, content in (documents or {}).items():
            if isinstance(content, str):
                self.client.log_text(run_id, content, name)
            else:
                self.client.log_dict(run_id, content, name)
        self._log_figures(run_id, figures)
        self._write(lambda: self.client.set_terminated(run_id, status), "end run")

    def _log_figures(self, run_id: str, figures: Sequence[Path]) -> None:
        for path in figures:
            self.client.log_artifact(run_id, str(path), FIGURES_DIR)

    def runs(self, experiment: str, parent_run_id: Optional[str] = None) -> list[dict]:
        """The experiment's runs, or only the children of ``parent_run_id``: id, name, status, tags,
        params and latest metrics of each, as plain dicts."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
        found, token = [], None
        while True:
            page = self.client.search_runs([exp.experiment_id], filter_string=query, max_results=1000,
                                           page_token=token)
            found += [_run_dict(run) for run in page]
            token = page.token
            if not token:
                return found

    def get_run(self, run_id: str) -> dict:
        return _run_dict(self.client.get_run(run_id))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one metric of a run, in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def _abandon_run(self, run_id: str) -> bool:
        """Delete a failed run and its artifacts, best effort; whether that worked."""
        try:
            run = self.client.get_run(run_id)
            store.delete_artifacts(run.info.artifact_uri, self.tracking_uri)
            self.client.set_terminated(run_id, "FAILED")
            self.client.delete_run(run_id)
            return True
        except Exception as exc:  # best effort: the original error matters more
            logger.warning("could not clean up failed run %s: %s", run_id, exc)
            return False

    # -- registration ----------------------------------------------------------------------------

    def register_candidate(self, tenant: str, model_dir: Path, record: RunRecord,
                           parent_run_id: Optional[str] = None) -> VersionInfo:
        """Log the run with ``model_dir`` as its artifact, register a version, alias it ``challenger``.

        All or nothing: on any failure the version, the run and its artifacts are removed before the
        error is raised; a retried write never makes a second run or version (see ``registry._register``).
        With ``record.run_id`` (a live run from :meth:`open_run`) the model goes into that run, which ends
        FINISHED, or on failure keeps its metrics and ends FAILED with the error, without the model's files.
        """
        return register_candidate(self, tenant, model_dir, record, parent_run_id)

    def register_base(self, name: str, model_dir: Path, record: RunRecord) -> VersionInfo:
        """An ``attune pretrain`` export as the next version of ``base.<name>``, alias ``newest``."""
        from registry._bases import register_base

        return register_base(self, name, model_dir, record)

    def download_base(self, uri: str, cache_dir: Path) -> tuple[Path, str]:
        """A registered base as a verified folder cached under ``cache_dir``, and its version-pinned URI."""
        from registry._bases import download_base

        return download_base(self, uri, cache_dir)

    def base_version(self, uri: str) -> VersionInfo:
        """The version of a registered base that ``models:/base.<name>@<alias>`` (or ``/<version>``) names."""
        from registry._bases import base_version

        return base_version(self, uri)

    def pin_base(self, uri: str) -> str:
        """``models:/base.<name>@<alias>`` as the ``models:/base.<name>/<version>`` it names now."""
        from registry._bases import pinned_uri

        return pinned_uri(self, uri)

    def finish_run(self, run_id: str, record: RunRecord, status: str = "FINISHED") -> None:
        """End a run from :meth:`open_run` with ``record``'s final metrics, missing history, tags and figures."""
        _live.complete_run(self, run_id, record)
        self._write(lambda: self.client.set_terminated(run_id, status), "end run")

    def _ensure_model(self, name: str) -> None:
        def create() -> None:
            try:
                self.client.get_registered_model(name)
            except Exception as exc:
                if not store.not_found(exc):
                    raise
                self.client.create_registered_model(
                    name, tags={"attune.kind": "tenant" if name.startswith("tenant.") else "base"},
                    description=f"attune model for {name}")

        self._write(create, f"create {name}")

    # -- reading ---------------------------------------------------------------------------------

    def _model(self, tenant: str):
        name = tenant_model_name(tenant)
        try:
            return self.client.get_registered_model(name)
        except Exception as exc:
            if store.not_found(exc):
                raise TenantNotFoundError(
                    f"tenant {tenant!r} has no registered model; run `attune finetune --tenant {tenant} "
                    "--data PATH` first") from None
            raise store.wrap(exc, f"reading {name}", self.tracking_uri) from exc

    def get_version(self, tenant: str, ref: str) -> VersionInfo:
        """``ref`` is a version number or an alias (``champion``, ``challenger``)."""
        name = tenant_model_name(tenant)
        self._model(tenant)
        try:
            if str(ref).isdigit():
                mv = self.client.get_model_version(name, str(ref))
            else:
                mv = self.client.get_model_version_by_alias(name, ref)
        except Exception as exc:
            if not store.not_found(exc):
                raise store.wrap(exc, f"reading {name} {ref}", self.tracking_uri) from exc
            if ref == CHAMPION:
                raise NoChampionError(
                    f"tenant {tenant!r} has no champion model; run `attune finetune --tenant {tenant} ...` "
                    f"or `attune registry promote {tenant} <version>`") from None
            raise VersionNotFoundError(f"tenant {tenant!r} has no version or alias {ref!r}; "
                                       f"see `attune registry show {tenant}`") from None
        return version_info(mv)

    def champion(self, tenant: str) -> VersionInfo:
        return self.get_version(tenant, CHAMPION)

    def champion_or_none(self, tenant: str) -> Optional[VersionInfo]:
        try:
            return self.champion(tenant)
        except (TenantNotFoundError, NoChampionError):
            return None

    def versions(self, tenant: str) -> list[VersionInfo]:
        name = tenant_model_name(tenant)
        aliases = dict(self._model(tenant).aliases or {})
        found = self._write(lambda: self.client.search_model_versions(f"name='{name}'", max_results=10000), "search")
        infos = sorted((version_info(mv) for mv in found), key=lambda v: int(v.version))
        for info in infos:  # search results do not carry aliases; the registered model does
            info.aliases = sorted(a for a, v in aliases.items() if str(v) == info.version)
        return infos

    def champion_versions(self) -> dict[str, str]:
        """Every tenant's champion version, in one query: what a serving replica refreshes."""
        direct = store.aliases_in_one_query(self.client, CHAMPION, TENANT_PREFIX)
        if direct is not None:
            return {tenant_of(name): version for name, version in direct.items()}
        found, token = {}, None
        while True:
            page = self.client.search_registered_models(filter_string="name LIKE 'tenant.%'",
                                                        max_results=1000, page_token=token)
            for model in page:
                version = (model.aliases or {}).get(CHAMPION)
                if version is not None:
                    found[tenant_of(model.name)] = str(version)
            token = page.token
            if not token:
                return found

    def list_tenants(self) -> list[dict]:
        """One row per tenant: champion version and its test metrics (None without a champion)."""
        rows, token = [], None
        while True:
            page = self.client.search_registered_models(filter_string="name LIKE 'tenant.%'",
                                                        max_results=1000, page_token=token)
            for model in page:
                tenant = tenant_of(model.name)
                champion = self.champion_or_none(tenant) if CHAMPION in (model.aliases or {}) else None
                rows.append({"tenant": tenant, "champion_version": champion.version if champion else None,
                             "metrics": champion.metrics if champion else {},
                             "promoted_at": champion.tags.get(TAG_PROMOTED_AT) if champion else None})
            token = page.token
            if not token:
                return sorted(rows, key=lambda r: r["tenant"])

    def show(self, tenant: str) -> dict:
        model = self._model(tenant)
        return {"tenant": tenant, "name": model.name, "aliases": {a: str(v) for a, v in (model.aliases or {}).items()},
                "champion_history": _promote.history(model.tags or {}),
                "versions": [v.as_dict() for v in self.versions(tenant)]}

    def download(self, tenant: str, ref: str, dest: Path) -> tuple[Path, VersionInfo]:
        """Download a version's model directory and verify it against the registration checksum."""
        info = self.get_version(tenant, ref)
        dest = Path(dest)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent if dest.parent.exists() else None))
        try:
            local = store.download(info.source, staging, self.tracking_uri)
            expected = info.tags.get(TAG_CHECKSUM)
            actual = store.dir_checksum(local)
            if expected != actual:
                raise ArtifactIntegrityError(
                    f"tenant {tenant!r} version {info.version}: artifacts at {info.source} do not match the "
                    f"checksum recorded at registration (expected {expected}, got {actual}); the stored model "
                    "was changed or damaged. Re-register it, or promote another version.")
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(str(local), dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest, info

    # -- aliases -----------------------------------------------------------------------------------

    def record_decision(self, tenant: str, version: str, promoted: bool, reason: str) -> None:
        name = tenant_model_name(tenant)
        for key, value in ((TAG_PROMOTED, str(promoted).lower()), (TAG_REASON, reason[:5000])):
            self._write(lambda: self.client.set_model_version_tag(name, version, key, value), "tag")

    def tag_version(self, tenant: str, version: str, tags: dict[str, str]) -> None:
        """Add ``attune.*`` tags to a version (e.g. what a relocalization made it from)."""
        bad = sorted(k for k in tags if not k.startswith("attune."))
        if bad:
            raise ValueError(f"version tags set by attune start with 'attune.', got {bad}")
        name = tenant_model_name(tenant)
        for key, value in tags.items():
            self._write(lambda k=key, v=value: self.client.set_model_version_tag(name, version, k, str(v)), "tag")

    def promote(self, tenant: str, version: str, reason: str = "promoted by hand") -> dict:
        """Point ``champion`` at ``version`` and remember the previous champion for rollback; the
        version's stored copy is checked first (see ``registry._promote``)."""
        return _promote.promote(self, tenant, version, reason)

    def rollback(self, tenant: str) -> dict:
        """Move ``champion`` back to the previous champion; the rollback is recorded."""
        return _promote.rollback(self, tenant)

    # -- the promotion gate ------------------------------------------------------------------------

    def gate(self, tenant: str, version: str, candidate_dir: Path, score, *, margin: float, floor: float,
             evidence: str, promote: bool = True, metric: str = "macro_f1", metric_label: str = "macro-F1") -> dict:
        """Decide whether ``version`` becomes the champion, by the caller's ``score`` (see ``registry._gate``);
        ``promote=False`` records that the gate did not run."""
        from registry._gate import gate, skip_gate

        if not promote:
            return skip_gate(self, tenant, version)
        return gate(self, tenant, version, candidate_dir, score, margin=margin, floor=floor, evidence=evidence,
                    metric=metric, metric_label=metric_label)

    # -- erasure -----------------------------------------------------------------------------------

    def delete_tenant(self, tenant: str) -> dict:
        """Erase every version, run and artifact of ``tenant`` (the right to erasure)."""
        from registry._erase import erase_tenant

        return erase_tenant(self, tenant)


def _run_dict(run) -> dict:
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "tags": dict(run.data.tags), "params": dict(run.data.params), "metrics": dict(run.data.metrics)}

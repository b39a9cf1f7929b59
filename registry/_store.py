"""Connecting to MLflow: the client, retries on write conflicts, artifact checksums and deletion.

The only module family that imports ``mlflow`` (lazily, so ``import registry`` stays cheap).
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from registry._errors import RegistryError, RegistryUnavailableError

logger = logging.getLogger("attune.registry")
T = TypeVar("T")

# Words in MLflow / SQLAlchemy errors that mean "another writer got there first; try again".
_RETRYABLE = ("database is locked", "unique constraint", "duplicate key", "integrityerror",
              "could not serialize", "deadlock", "already exists", "resource_already_exists",
              "connection reset", "temporarily unavailable", "queuepool limit", "503", "502", "504")


def make_client(tracking_uri: str):
    """An ``MlflowClient`` on ``tracking_uri`` whose calls raise :class:`RegistryUnavailableError` when
    the store cannot be reached (after MLflow's own retries), instead of a driver's traceback."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient  # importing mlflow sets its loggers' levels: quiet them after it

    if logging.getLogger("attune").getEffectiveLevel() > logging.DEBUG:  # MLflow's and alembic's set-up lines
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)

    client = _guarded(lambda: MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri), tracking_uri)
    return GuardedClient(client, tracking_uri)


def aliases_in_one_query(client, alias: str, prefix: str) -> Optional[dict[str, str]]:
    """``{registered model name: version}`` of every model named ``prefix...`` that has ``alias``, in one
    SQL query, when the registry is a database store (MLflow's own alias table, through its store and
    its workspace filter); None for any other store, or if MLflow's internals moved: the caller then
    uses the public API. A replica refreshes a thousand tenants' champions this way in milliseconds
    instead of the better part of a second."""
    try:
        from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias as Alias

        store = client._get_registry_client().store
        if not hasattr(store, "ManagedSessionMaker"):
            return None
        with store.ManagedSessionMaker() as session:
            rows = (store._get_query(session, Alias)
                    .filter(Alias.alias == alias, Alias.name.like(prefix + "%"))
                    .with_entities(Alias.name, Alias.version).all())
        return {name: str(version) for name, version in rows}
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's internals changed: the public API still works
        logger.debug("alias query through MLflow's store failed (%s); using search_registered_models", exc)
        return None


# Words of driver and HTTP errors that mean the store is not there (as opposed to a bad request).
_UNAVAILABLE = ("connection refused", "could not connect", "failed to establish a new connection",
                "max retries exceeded", "name or service not known", "could not translate host name",
                "server closed the connection", "timed out", "unable to open database file")


class GuardedClient:
    """An ``MlflowClient`` whose failures to reach the store become :class:`RegistryUnavailableError`."""

    def __init__(self, client, tracking_uri: str):
        self._client, self._uri = client, tracking_uri

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _guarded(lambda: attr(*args, **kwargs), self._uri)


def _guarded(fn: Callable[[], T], tracking_uri: str) -> T:
    try:
        return fn()
    except RegistryError:
        raise
    except Exception as exc:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(word in text for word in _UNAVAILABLE):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RegistryUnavailableError(
                f"the model registry at {redact(tracking_uri)} cannot be reached: {first[:300]}. Check that it "
                "is running, and ATTUNE_MLFLOW_TRACKING_URI (else MLFLOW_TRACKING_URI)") from exc
        raise


_LOCKS: dict[str, threading.RLock] = {}


def writer_lock(tracking_uri: str) -> Optional[threading.RLock]:
    """SQLite has one writer at a time: threads of this process queue here instead of timing out."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    return _LOCKS.setdefault(tracking_uri, threading.RLock())


def locked(lock: Optional[threading.RLock], fn: Callable[[], T]) -> T:
    if lock is None:
        return fn()
    with lock:
        return fn()


def is_database_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in {"sqlite", "postgresql", "mysql", "mssql"}


def retry(fn: Callable[[], T], what: str, attempts: int = 10, base_delay_s: float = 0.05) -> T:
    """Run ``fn``; on a write conflict (locked SQLite, duplicate key, 5xx) back off and retry."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # mlflow raises MlflowException / RestException / SQLAlchemy errors
            text = f"{type(exc).__name__} {exc}".lower()
            if attempt == attempts or not any(word in text for word in _RETRYABLE):
                raise
            delay = base_delay_s * (2 ** min(attempt, 6)) * (0.5 + random.random())
            logger.debug("%s: conflict (%s); retry %d in %.2fs", what, exc, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def dir_checksum(directory: Path) -> str:
    """SHA-256 over every file's relative path and content, in sorted order."""
    directory = Path(directory)
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    if not files:
        raise RegistryError(f"{directory} holds no files; pass an exported model directory")
    for path in files:
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(chunk)
        digest.update(f"{path.relative_to(directory).as_posix()}\0{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def download(artifact_uri: str, dest: Path, tracking_uri: str) -> Path:
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dest),
                                                    tracking_uri=tracking_uri))


def delete_artifacts(artifact_uri: str, tracking_uri: str) -> None:
    """Remove everything under ``artifact_uri`` (a folder, s3:// prefix or mlflow-artifacts:/ path)."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    # mlflow-artifacts:/ URIs resolve against the tracking server. set_tracking_uri also exports
    # MLFLOW_TRACKING_URI, which attune reads as a setting (cluster._settings): put it back as it was,
    # or every later get_settings() in this process (and its children) would use MLflow's default store.
    previous, previous_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = _local_path(artifact_uri)
        if local is not None:
            _remove_local(local)
            if local.name == "artifacts" and local.parent.is_dir() and not any(local.parent.iterdir()):
                local.parent.rmdir()  # the run's folder
            return
        repo = get_artifact_repository(artifact_uri)
        try:
            repo.delete_artifacts()
        except Exception as exc:  # nothing stored there is fine; anything else is not
            if "does not exist" not in str(exc).lower() and "nosuchkey" not in str(exc).lower():
                raise
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _remove_local(folder: Path) -> None:
    """Remove ``folder`` and everything in it; gone already is fine, a file that stays is an error."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise RegistryError(f"cannot delete the artifacts at {folder}: {exc}; fix the folder's permissions and "
                            f"run the erasure again") from None


def sqlite_files(*uris) -> list[Path]:
    """The database files behind the ``sqlite:///`` URIs among ``uris`` (others are skipped)."""
    return sorted({Path(uri.removeprefix("sqlite:///")).resolve() for uri in uris
                   if uri and uri.startswith("sqlite:///")})


def erase_rows(url: str, where: str, delete: Callable[[], list]) -> dict:
    """An eraser's work on a SQLAlchemy store (``cluster._erasure``): nothing when its SQLite file was
    never created; else ``delete()`` (the items it removed), then a SQLite file is vacuumed so the
    deleted rows leave nothing in its free pages."""
    database = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if database is not None and not database.is_file():
        return {"where": where, "removed": [], "notes": []}
    removed = delete()
    if database is None:
        return {"where": where, "removed": removed, "notes": []}
    vacuum_sqlite(database)
    return {"where": where, "removed": removed, "notes": [f"{database} vacuumed"]}


def vacuum_sqlite(path: Path) -> None:
    """Rewrite a SQLite database so deleted rows leave nothing in its free pages."""
    import sqlite3

    if not path.is_file():
        return
    connection = sqlite3.connect(str(path), timeout=30)
    try:
        connection.execute("VACUUM")
    except sqlite3.Error as exc:
        raise RegistryError(f"cannot vacuum {path} after the erasure: {exc}; its free pages may still hold the "
                            f"tenant's rows: stop what holds the database open and run the erasure again") from None
    finally:
        connection.close()


def _local_path(uri: str) -> Optional[Path]:
    """The folder behind a plain path or file: URI; None for remote schemes (s3:, mlflow-artifacts:, ...)."""
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", uri):
        return None
    return Path(uri)


# `mlflow gc` has no environment variable for --backend-store-uri: run its click command with the
# option read from the environment inside the child, so a database password is never on a command line.
_GC = ("import os, sys; from mlflow.cli import cli; cli.main(['gc', '--backend-store-uri', "
       "os.environ['MLFLOW_BACKEND_STORE_URI'], *sys.argv[1:]], prog_name='mlflow')")


def gc_command(backend_store_uri: str, experiment_id: str, tracking_uri: str,
               environ: Optional[dict] = None) -> tuple[list[str], dict]:
    """(argv, environment) of ``mlflow gc`` for one experiment: both URIs travel in the environment
    (``MLFLOW_BACKEND_STORE_URI``, ``MLFLOW_TRACKING_URI``), where other users cannot read them."""
    env = dict(os.environ if environ is None else environ, MLFLOW_TRACKING_URI=tracking_uri,
               MLFLOW_BACKEND_STORE_URI=backend_store_uri)
    return [sys.executable, "-c", _GC, "--experiment-ids", experiment_id], env


def purge_experiment(backend_store_uri: str, experiment_id: str, tracking_uri: str) -> None:
    """Permanently delete a soft-deleted experiment and its runs (``mlflow gc``)."""
    cmd, env = gc_command(backend_store_uri, experiment_id, tracking_uri)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RegistryError(f"`mlflow gc` could not purge experiment {experiment_id} from the backend store "
                            f"{redact(backend_store_uri)}: {proc.stderr.strip()[-1500:]}")


def not_found(exc: Exception) -> bool:
    text = str(exc)
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "does not exist" in text.lower() \
        or getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def wrap(exc: Exception, doing: str, tracking_uri: str) -> RegistryError:
    return RegistryError(f"{doing} failed against the MLflow store {redact(tracking_uri)}: {exc}")


def redact(uri: str) -> str:
    """Hide a password in ``scheme://user:password@host``."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else uri
    return uri

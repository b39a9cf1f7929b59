"""A real PostgreSQL server for integration tests, from the ``pgserver`` package (``make install``).

The server runs from a private temporary directory, listens on a unix socket inside it only
(no TCP port at all), and trusts local connections as the ``postgres`` superuser. Running as
root works: pgserver then runs postgres as a ``pgserver`` system user (created if missing) and
adds o+rx to the parent directories of the data directory and of its own binaries.

    with PostgresServer() as pg:
        uri = pg.create_database("registry_test")
        # postgresql+psycopg2://postgres:@/registry_test?host=/tmp/attune-pg-.../pgdata
        # for SQLAlchemy, MLflow's tracking URI or `mlflow server --backend-store-uri`;
        # pg.libpq_uri("registry_test") is the same without "+psycopg2", for psycopg2.connect / psql

The driver is named because SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which
is not installed; the ``test`` extra has ``psycopg2-binary``.

``stop()`` stops postgres (``pg_ctl stop``, then SIGKILL for anything left), checks that no
postgres process of that data directory remains, and removes the temporary directory.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import psutil

_TMP_PREFIX = "attune-pg-"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LOG_TAIL_CHARS = 4000


class PostgresServerError(RuntimeError):
    """PostgreSQL could not be started, used or stopped."""


def _import_pgserver():
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise PostgresServerError(
            f"the `pgserver` package (in the `test` extra) is not importable ({exc}); run `make install` "
            "(or .venv/bin/pip install -e '.[test]')") from exc
    return pgserver


def _postmasters(pgdata: Path, with_children: bool = False) -> list[psutil.Process]:
    """Running postmaster processes whose ``-D`` is ``pgdata`` (and their backends, if asked)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and "-D" in cmdline and str(pgdata) in cmdline:
            found.append(proc)
            try:
                found += proc.children(recursive=True) if with_children else []
            except psutil.Error:
                pass
    return found


def _signal_and_wait(procs: list[psutil.Process], sig: int, timeout_s: float) -> list[psutil.Process]:
    """Send ``sig`` to ``procs`` and wait; return those still alive (zombies count as gone)."""
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def reap_orphans() -> None:
    """Kill postgres servers left by an earlier test process that died without ``stop()``.

    pgserver records the pids of its users in ``PGDATA/.handle_pids.json``; a server in one
    of our temporary directories whose users are all dead is an orphan.
    """
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] != "postgres" or "-D" not in cmdline:
            continue
        pgdata = Path(cmdline[cmdline.index("-D") + 1])
        if not pgdata.parent.name.startswith(_TMP_PREFIX):
            continue
        try:
            owners = json.loads((pgdata / ".handle_pids.json").read_text())
        except (OSError, ValueError):
            owners = []
        if not any(psutil.pid_exists(pid) for pid in owners):
            try:
                procs = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            # SIGINT is postgres' "fast shutdown": unlike SIGKILL it frees its shared memory.
            alive = _signal_and_wait(procs[:1], signal.SIGINT, timeout_s=10)
            _signal_and_wait(alive + procs[1:], signal.SIGKILL, timeout_s=5)
            shutil.rmtree(pgdata.parent, ignore_errors=True)


class PostgresServer:
    """pgserver's PostgreSQL in a private temporary directory; a context manager.

    ``uri`` (SQLAlchemy URL of the ``postgres`` database) and ``startup_s`` are set once started.
    """

    def __init__(self, stop_timeout_s: float = 10.0):
        self.stop_timeout_s = stop_timeout_s
        self.uri = ""
        self.startup_s: Optional[float] = None
        self._tmp: Optional[Path] = None
        self._server = None

    def start(self) -> PostgresServer:
        pgserver = _import_pgserver()
        started = time.monotonic()
        reap_orphans()
        # pgserver puts the socket in PGDATA if that path fits a unix socket (107 bytes), else
        # under its runtime directory (/tmp/runtime-<uid>/python_PostgresServer/<hash>).
        self._tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX))
        try:
            self._server = pgserver.get_server(self._tmp / "pgdata", cleanup_mode="delete")
            self.uri = self.database_uri("postgres")
        except Exception as exc:
            tail = self.log_tail()
            self.stop()
            raise PostgresServerError(f"PostgreSQL (pgserver) failed to start: {exc!r}; "
                                      f"server log tail:\n{tail}") from exc
        self.startup_s = time.monotonic() - started
        return self

    @property
    def pgdata(self) -> Optional[Path]:
        return None if self._tmp is None else self._tmp / "pgdata"

    def stop(self) -> None:
        """Stop postgres, make sure none of its processes remain, remove the temporary directory."""
        server, self._server = self._server, None
        pgdata = self.pgdata
        if pgdata is not None:
            procs = _postmasters(pgdata, with_children=True)
            if server is not None:
                try:
                    server.cleanup()  # pg_ctl -w stop (fast mode), then deletes PGDATA
                except Exception:  # already gone, or pg_ctl failed: the kill below takes over
                    pass
            _, alive = psutil.wait_procs(procs, timeout=self.stop_timeout_s)
            leftover = _signal_and_wait(alive + _postmasters(pgdata), signal.SIGKILL, timeout_s=5)
            if leftover:
                raise PostgresServerError(
                    f"postgres processes {[p.pid for p in leftover]} of {pgdata} survived SIGKILL; "
                    "kill them by hand")
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.uri = ""

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- use -----------------------------------------------------------------------------------

    def libpq_uri(self, name: str) -> str:
        """``postgresql://`` URI of database ``name``, for psycopg2.connect or psql."""
        if self._server is None:
            raise PostgresServerError("PostgresServer is not started; call start() or use `with`")
        return self._server.get_uri(database=name)

    def database_uri(self, name: str) -> str:
        """SQLAlchemy URL (``postgresql+psycopg2://``) of database ``name``, e.g. for MLflow."""
        return self.libpq_uri(name).replace("postgresql://", "postgresql+psycopg2://", 1)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (lower case, digits, ``_``) and return its URI."""
        if not _DB_NAME.match(name):
            raise PostgresServerError(f"database name {name!r} is not allowed here; use lower-case "
                                      "letters, digits and '_' (at most 63), starting with a letter")
        import psycopg2

        conn = psycopg2.connect(self.libpq_uri("postgres"))
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.database_uri(name)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        log = None if self.pgdata is None else self.pgdata / "log"
        if log is None or not log.exists():
            return "(no log)"
        return log.read_bytes()[-chars:].decode("utf-8", "replace")

"""pytest fixtures for the MLflow registry's real services: PostgreSQL, S3 and ``mlflow server``.

``tests/conftest.py`` registers this module as a pytest plugin, so every test can ask for these
fixtures by name (the S3 ones come from ``tests.services.s3_fixtures``); a service starts only
when a test asks for it.

Fixtures:
    s3_service          (session)  the shared SeaweedFS :class:`S3Server` (``s3_server``).
    postgres_service    (session)  one :class:`PostgresServer`.
    mlflow_production   (module)   :class:`MlflowProduction`: a fresh bucket and database
                                   behind a real ``mlflow server``; tests in one module share it.
    postgres_s3_direct  (function) :class:`DirectStores`: a fresh database and bucket for MLflow
                                   used in-process, with this test's environment pointed at S3.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional

import pytest

from tests.services.mlflow_server import MlflowServer
from tests.services.postgres import PostgresServer, PostgresServerError
from tests.services.s3 import S3Server
from tests.services.s3_fixtures import s3_env, s3_server, unique_bucket  # noqa: F401  (fixtures of this plugin)

__all__ = ["s3_server", "s3_env", "s3_service", "postgres_service", "mlflow_production",
           "postgres_s3_direct", "MlflowProduction", "DirectStores"]

_ARTIFACT_PREFIX = "mlartifacts"
# The client side never needs to reach anything but loopback.
_CLIENT_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@dataclass
class MlflowProduction:
    """A running ``mlflow server`` with PostgreSQL as backend store and S3 as artifact store.

    Artifacts of experiment ``<id>`` land under ``s3://{bucket}/{artifact_prefix}/<id>/``.
    """

    tracking_uri: str
    env: dict[str, str]  # MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL, AWS_* for a client
    bucket: str
    s3: Any  # boto3 S3 client with the server's credentials
    database_uri: str
    artifact_prefix: str = _ARTIFACT_PREFIX
    server: Optional[MlflowServer] = field(default=None, repr=False)  # for log_tail() / startup_s


class DirectStores(NamedTuple):
    """Stores for MLflow without a server: ``MlflowClient(database_uri)``, artifacts on S3."""

    database_uri: str  # postgresql+psycopg2://..., usable as tracking and registry URI
    artifact_root: str  # s3://bucket/prefix, for create_experiment(artifact_location=...)
    env: dict[str, str]  # already set in this test's environment


def _fresh_database(postgres: PostgresServer) -> str:
    return postgres.create_database(f"mlflow_{uuid.uuid4().hex[:12]}")


def _s3_client_env(s3: S3Server) -> dict[str, str]:
    return {**s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url, **_CLIENT_ENV}


@pytest.fixture(scope="session")
def s3_service(s3_server: S3Server) -> S3Server:
    """The session's S3 server (the same one as ``s3_server``)."""
    return s3_server


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[PostgresServer]:
    """One PostgreSQL server (unix socket only) for the whole session, stopped at the end."""
    try:
        server = PostgresServer().start()
    except PostgresServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_production(s3_service: S3Server, postgres_service: PostgresServer) -> Iterator[MlflowProduction]:
    """A fresh bucket and database behind a real ``mlflow server``, shared by the module's tests."""
    bucket = unique_bucket("attune-mlflow")
    s3 = s3_service.client()
    s3.create_bucket(Bucket=bucket)
    database_uri = _fresh_database(postgres_service)
    env = _s3_client_env(s3_service)
    with MlflowServer(database_uri, f"s3://{bucket}/{_ARTIFACT_PREFIX}", env=env) as server:
        yield MlflowProduction(
            tracking_uri=server.tracking_uri,
            env={**env, "MLFLOW_TRACKING_URI": server.tracking_uri},
            bucket=bucket, s3=s3, database_uri=database_uri, server=server,
        )


@pytest.fixture
def postgres_s3_direct(s3_env: dict[str, str], s3_service: S3Server, postgres_service: PostgresServer,
                       monkeypatch) -> DirectStores:
    """A fresh database and bucket; this test's environment points MLflow's S3 client at them."""
    bucket = unique_bucket("attune-direct")
    s3_service.client().create_bucket(Bucket=bucket)
    env = {**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3_service.endpoint_url, **_CLIENT_ENV}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return DirectStores(_fresh_database(postgres_service), f"s3://{bucket}/{_ARTIFACT_PREFIX}", env)

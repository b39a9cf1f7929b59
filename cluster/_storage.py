"""Reading local paths and ``s3://bucket/key`` URIs the same way (boto3 for S3)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def is_s3_uri(path: str) -> bool:
    return str(path).startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; rejects URIs without a key."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ValueError(f"not an S3 object URI: {uri!r}; expected s3://bucket/key")
    return bucket, key


def s3_client(endpoint_url: Optional[str] = None):
    """A boto3 S3 client honouring ``ATTUNE_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL``."""
    import boto3

    endpoint = endpoint_url or os.environ.get("ATTUNE_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    # A fresh session reads credentials from the environment now, not when the process
    # first touched boto3 (the default session caches them).
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None)


def read_bytes(path: str, endpoint_url: Optional[str] = None) -> bytes:
    """Read a whole local file or S3 object. Raises FileNotFoundError for a missing one."""
    if not is_s3_uri(path):
        return Path(path).read_bytes()
    bucket, key = split_s3_uri(path)
    client = s3_client(endpoint_url)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        raise FileNotFoundError(f"no such S3 object: {path}") from None
    except client.exceptions.NoSuchBucket:
        raise FileNotFoundError(f"no such S3 bucket in {path}") from None

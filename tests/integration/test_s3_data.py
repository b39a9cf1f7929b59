"""Tenant data read from a real S3-compatible server (SeaweedFS on 127.0.0.1) at ``s3://bucket/key``.

No Ray here: only ``train._data.load_tenant_data`` and ``cluster._storage`` against the server.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import socket

import pytest

from tests.services.s3_fixtures import unique_bucket
from train._data import load_tenant_data
from train._errors import DataValidationError

pytestmark = pytest.mark.integration

LABELS = ("bearish", "bullish", "neutral")
TEXTS_PER_LABEL = 10


def tenant_rows() -> list[dict]:
    """3 labels x 10 distinct texts, interleaved so each label spans the file."""
    return [
        {"id": f"{label}-{i}", "text": f"{label} headline {i}: shares of company {i} move on {label} news",
         "label": label}
        for i in range(TEXTS_PER_LABEL) for label in LABELS
    ]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def csv_bytes(rows: list[dict]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=["id", "text", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def bucket(s3_server):  # noqa: F811
    name = unique_bucket("tenants")
    s3_server.client().create_bucket(Bucket=name)
    return name


def upload(s3_server, bucket: str, key: str, body: bytes) -> str:  # noqa: F811
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def assert_valid_tenant(data, uri: str, body: bytes) -> None:
    assert data.source == uri
    assert data.labels == list(LABELS)
    assert data.data_hash == hashlib.sha256(body).hexdigest()
    examples = data.train + data.validation + data.test
    assert len(examples) == len(LABELS) * TEXTS_PER_LABEL
    for label in LABELS:
        assert sum(e.label == label for e in examples) == TEXTS_PER_LABEL
    assert sum(data.split_counts().values()) == 30
    assert data.split_counts()["train"] > 0


def test_jsonl_via_aws_endpoint_url_env(s3_server, s3_env, bucket, tmp_path):  # noqa: F811
    body = jsonl_bytes(tenant_rows())
    uri = upload(s3_server, bucket, "tenant/john.jsonl", body)
    assert s3_env["AWS_ENDPOINT_URL"] == s3_server.endpoint_url

    data = load_tenant_data(uri)

    assert_valid_tenant(data, uri, body)
    examples = sorted(data.train + data.validation + data.test, key=lambda e: e.row)
    assert [e.row for e in examples] == list(range(1, 31))  # JSONL rows are line numbers
    assert examples[0].id == "bearish-0" and examples[0].label == "bearish"
    assert examples[29].id == "neutral-9"
    # Exactly what the same bytes give from a local file: same splits, rows and hash.
    local = tmp_path / "john.jsonl"
    local.write_bytes(body)
    from_disk = load_tenant_data(str(local))
    assert (data.train, data.validation, data.test) == (from_disk.train, from_disk.validation, from_disk.test)
    assert data.data_hash == from_disk.data_hash


def test_attune_s3_endpoint_url_wins_over_aws_endpoint_url(s3_server, s3_env, bucket, monkeypatch):  # noqa: F811
    body = jsonl_bytes(tenant_rows()[::-1])
    uri = upload(s3_server, bucket, "tenant/john-attune-env.jsonl", body)
    monkeypatch.setenv("ATTUNE_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url())  # would fail if it were used

    data = load_tenant_data(uri)

    assert_valid_tenant(data, uri, body)


def test_explicit_endpoint_url_argument_wins_over_env(s3_server, s3_env, bucket, monkeypatch):  # noqa: F811
    body = jsonl_bytes(tenant_rows())
    uri = upload(s3_server, bucket, "tenant/john-explicit.jsonl", body)
    monkeypatch.setenv("ATTUNE_S3_ENDPOINT_URL", closed_port_url())
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url())

    data = load_tenant_data(uri, endpoint_url=s3_server.endpoint_url)

    assert_valid_tenant(data, uri, body)


def test_csv_object(s3_server, s3_env, bucket):  # noqa: F811
    rows = tenant_rows()
    rows[4]["text"] = 'bullish headline, with a comma and "quotes"'
    body = csv_bytes(rows)
    uri = upload(s3_server, bucket, "tenant/jane.csv", body)

    data = load_tenant_data(uri)

    assert_valid_tenant(data, uri, body)
    examples = sorted(data.train + data.validation + data.test, key=lambda e: e.row)
    assert [e.row for e in examples] == list(range(2, 32))  # CSV header is row 1
    assert examples[4].text == 'bullish headline, with a comma and "quotes"'
    assert examples[4].label == "bullish" and examples[4].id == "bullish-1"


@pytest.mark.parametrize("missing", ["key", "bucket"])
def test_missing_object_names_the_uri(s3_server, s3_env, bucket, missing):  # noqa: F811
    if missing == "key":
        uri = f"s3://{bucket}/tenant/nobody.jsonl"
    else:
        uri = f"s3://{unique_bucket('no-such-bucket')}/tenant/john.jsonl"

    with pytest.raises(DataValidationError) as caught:
        load_tenant_data(uri)

    assert caught.value.source == uri
    assert caught.value.problems == [f"S3 object not found: {uri}; check the path"]
    assert uri in str(caught.value)


def test_wrong_secret_is_refused_by_the_server(s3_server, s3_env, bucket, monkeypatch):  # noqa: F811
    uri = upload(s3_server, bucket, "tenant/signed.jsonl", jsonl_bytes(tenant_rows()))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")

    with pytest.raises(DataValidationError) as caught:
        load_tenant_data(uri)

    assert caught.value.source == uri
    [problem] = caught.value.problems
    assert problem.startswith("cannot read the S3 object: ")
    assert "SignatureDoesNotMatch" in problem or "AccessDenied" in problem, problem


def test_bad_row_reports_its_row_number_like_a_local_file(s3_server, s3_env, bucket, tmp_path):  # noqa: F811
    rows = tenant_rows()
    rows[6]["text"] = "   "  # line 7
    rows[20]["label"] = ""  # line 21
    body = jsonl_bytes(rows)
    uri = upload(s3_server, bucket, "tenant/bad.jsonl", body)

    with pytest.raises(DataValidationError) as from_s3:
        load_tenant_data(uri)

    assert from_s3.value.source == uri
    assert "row 7: empty or whitespace-only text" in from_s3.value.problems
    assert "row 21: label must be a non-empty string or a number, found ''" in from_s3.value.problems
    local = tmp_path / "bad.jsonl"
    local.write_bytes(body)
    with pytest.raises(DataValidationError) as from_disk:
        load_tenant_data(str(local))
    assert from_s3.value.problems == from_disk.value.problems


def test_bad_csv_row_reports_its_row_number(s3_server, s3_env, bucket):  # noqa: F811
    rows = tenant_rows()
    rows[2]["text"] = ""  # data record 3 = row 4 (the header is row 1)
    uri = upload(s3_server, bucket, "tenant/bad.csv", csv_bytes(rows))

    with pytest.raises(DataValidationError) as caught:
        load_tenant_data(uri)

    assert caught.value.problems == ["row 4: empty or whitespace-only text"]
    assert str(caught.value).startswith(f"{uri}: 1 problem(s) found in tenant data:")

"""A pretraining corpus under an s3:// prefix, streamed from a real S3-compatible server (no Ray)."""
from __future__ import annotations

import json

import pytest

from tests.services.s3_fixtures import unique_bucket
from train.pretrain.corpus import CorpusError, corpus_hash, iter_texts, list_corpus_files

OBJECTS = {
    "corpus/a.txt": b"first line\n\nsecond line\n",
    "corpus/sub/b.jsonl": (json.dumps({"text": "from jsonl"}) + "\n").encode(),
    "corpus/c.csv": b'text,label\r\n"two\r\nlines",0\r\n',
    "corpus/readme.md": b"not a corpus file",
    "elsewhere/x.txt": b"outside the prefix\n",
}


def test_s3_prefix_streams_every_text_object_in_order(s3_server, s3_env, tmp_path):  # noqa: F811
    bucket = unique_bucket("corpus")
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    for key, body in OBJECTS.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)

    files = list_corpus_files(f"s3://{bucket}/corpus/")
    assert [f.uri for f in files] == [f"s3://{bucket}/corpus/{k}" for k in ("a.txt", "c.csv", "sub/b.jsonl")]
    assert [f.size for f in files] == [len(OBJECTS[f"corpus/{k}"]) for k in ("a.txt", "c.csv", "sub/b.jsonl")]
    assert list(iter_texts(files)) == ["first line", "second line", "two\r\nlines", "from jsonl"]

    local = tmp_path / "same"  # the same names and bytes on disk hash the same
    for key in ("corpus/a.txt", "corpus/c.csv", "corpus/sub/b.jsonl"):
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(OBJECTS[key])
    assert corpus_hash(files) == corpus_hash(list_corpus_files(str(local / "corpus")))


def test_s3_prefix_without_text_objects_or_bucket_is_a_clear_error(s3_server, s3_env):  # noqa: F811
    bucket = unique_bucket("corpus")
    s3_server.client().create_bucket(Bucket=bucket)
    with pytest.raises(CorpusError, match="holds no .txt/.jsonl/.csv files"):
        list_corpus_files(f"s3://{bucket}/nothing-here/")
    with pytest.raises(CorpusError, match="no such S3 bucket"):
        list_corpus_files(f"s3://{unique_bucket('missing')}/corpus/")

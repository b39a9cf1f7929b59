"""A pretraining corpus: a text file, a directory of text files, or an ``s3://`` prefix, streamed.

Supported files: ``.txt`` (one text unit per line), ``.jsonl`` (one object per line with a
``text`` field) and ``.csv`` (a header row and a ``text`` column; quoted newlines allowed).
Nothing is read into memory whole: :func:`iter_texts` yields one text at a time, and
S3 objects are read as a stream.

    files = list_corpus_files("corpus/")          # fails fast: missing, no text files, all empty
    for text in iter_texts(files): ...
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from cluster import UsageError, is_s3_uri, s3_client
from train._errors import TrainError

SUFFIXES = (".txt", ".jsonl", ".csv")
_CHUNK = 1 << 20


class CorpusError(TrainError, UsageError):
    """The ``--corpus`` (or ``--eval-corpus``) cannot be used."""


@dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus: a local path or an ``s3://bucket/key`` URI, with its size in bytes."""

    uri: str
    size: int

    @property
    def kind(self) -> str:
        return Path(self.uri).suffix.lower()


def list_corpus_files(corpus: str, *, flag: str = "--corpus", endpoint_url: Optional[str] = None) -> list[CorpusFile]:
    """The corpus's files in a fixed order; raises CorpusError when there is nothing to read."""
    files = _list_s3(corpus, flag, endpoint_url) if is_s3_uri(corpus) else _list_local(corpus, flag)
    if not files:
        raise CorpusError(f"{flag} {corpus} holds no {'/'.join(SUFFIXES)} files; point it at a text file, "
                          "a directory of .txt/.jsonl/.csv files or an s3:// prefix holding them")
    if all(f.size == 0 for f in files):
        raise CorpusError(f"{flag} {corpus} is empty: its {len(files)} file(s) have no bytes")
    return files


def _list_local(corpus: str, flag: str) -> list[CorpusFile]:
    path = Path(corpus).expanduser()
    if not path.exists():
        raise CorpusError(f"{flag} {corpus} does not exist; pass a text file, a directory or an s3:// prefix")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise CorpusError(f"{flag} {corpus}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}")
        return [CorpusFile(str(path.resolve()), path.stat().st_size)]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    return [CorpusFile(str(p.resolve()), p.stat().st_size) for p in found]


def _split_prefix(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise CorpusError(f"not an S3 URI: {uri!r}; expected s3://bucket/prefix")
    return bucket, prefix


def _list_s3(corpus: str, flag: str, endpoint_url: Optional[str]) -> list[CorpusFile]:
    bucket, prefix = _split_prefix(corpus)
    client = s3_client(endpoint_url)
    files = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if Path(obj["Key"]).suffix.lower() in SUFFIXES:
                    files.append(CorpusFile(f"s3://{bucket}/{obj['Key']}", int(obj["Size"])))
    except client.exceptions.NoSuchBucket:
        raise CorpusError(f"{flag} {corpus}: no such S3 bucket {bucket!r}") from None
    return sorted(files, key=lambda f: f.uri)


def iter_texts(files: Iterable[CorpusFile], endpoint_url: Optional[str] = None) -> Iterator[str]:
    """Every non-blank text of every file, in order, stripped."""
    for f in files:
        for text in _texts_of(f, endpoint_url):
            text = text.strip()
            if text:
                yield text


def _texts_of(f: CorpusFile, endpoint_url: Optional[str]) -> Iterator[str]:
    with _open_text(f.uri, endpoint_url) as stream:
        if f.kind == ".txt":
            yield from stream
        elif f.kind == ".jsonl":
            yield from _jsonl_texts(f.uri, stream)
        else:
            yield from _csv_texts(f.uri, stream)


def _jsonl_texts(uri: str, stream) -> Iterator[str]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{uri} line {number}: not valid JSON ({exc.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise CorpusError(f"{uri} line {number}: a JSON object with a string 'text' field is needed")
        yield text


def _csv_texts(uri: str, stream) -> Iterator[str]:
    reader = csv.DictReader(stream)
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        raise CorpusError(f"{uri}: a CSV corpus needs a header with a 'text' column, found {reader.fieldnames}")
    for row in reader:
        yield row["text"] or ""


def _open_text(uri: str, endpoint_url: Optional[str]):
    """A text stream over a local file or an S3 object (read in chunks, never whole)."""
    if not is_s3_uri(uri):
        return open(uri, encoding="utf-8", errors="replace", newline="")
    bucket, key = _split_prefix(uri)
    client = s3_client(endpoint_url)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except (client.exceptions.NoSuchKey, client.exceptions.NoSuchBucket):
        raise CorpusError(f"no such S3 object: {uri}") from None
    return io.TextIOWrapper(_RawStream(body), encoding="utf-8", errors="replace", newline="")


class _RawStream(io.RawIOBase):
    """botocore's streaming body as a file object ``io.TextIOWrapper`` can wrap."""

    def __init__(self, body):
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def corpus_hash(files: Iterable[CorpusFile], endpoint_url: Optional[str] = None) -> str:
    """SHA-256 over every file's name and bytes, streamed in chunks."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(Path(f.uri).name.encode() + b"\0")
        for chunk in _iter_bytes(f.uri, endpoint_url):
            digest.update(chunk)
    return digest.hexdigest()


def _iter_bytes(uri: str, endpoint_url: Optional[str]) -> Iterator[bytes]:
    if not is_s3_uri(uri):
        with open(uri, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk
        return
    bucket, key = _split_prefix(uri)
    body = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"]
    yield from body.iter_chunks(_CHUNK)


def is_held_out(text: str, every: int) -> bool:
    """Whether ``text`` belongs to the held-out evaluation split (1 in ``every`` texts, by content)."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % every == 0


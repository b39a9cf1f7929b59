"""Bounds on a tenant data file, and the row checks that keep unusable values out of training.

Four limits, each a setting in ``cluster._settings`` (see :class:`DataLimits`): the file's size,
checked before the file is read (a local file's size from ``stat``, an S3 object's from its
``ContentLength``, and the read itself stops one byte past the limit); the number of data rows;
the number of distinct labels; and the length of a label. A file over a limit is refused with a
message that names the limit, the value found and the variable that raises it.

The row checks turn what would otherwise be a traceback or a failure later in training into a
problem that names the row: a JSON line nested too deeply for the parser, an integer longer than
Python reads (``sys.get_int_max_str_digits()``), a NaN or infinite label, and a lone UTF-16
surrogate (``"\\ud800"``) in a text, label or id, which no UTF-8 writer can save.
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from cluster import Settings, get_settings, is_s3_uri, s3_client
from train._errors import DataValidationError

BYTES_PER_MB = 1_000_000
MAX_ROWS_LISTED = 10
MAX_TEXT_SHOWN = 60
_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_FINITE = {"nan": "NaN", "inf": "Infinity (or a number too large for a float)",
               "-inf": "-Infinity (or a number too large for a float)"}


@dataclass(frozen=True)
class DataLimits:
    """The bounds a tenant file must keep; build with :meth:`from_settings`."""

    max_data_file_mb: float
    max_data_rows: int
    max_labels: int
    max_label_chars: int

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None) -> DataLimits:
        """The limits in ``settings`` (default: the ``ATTUNE_*`` environment, via ``get_settings``)."""
        settings = settings or get_settings()
        return cls(max_data_file_mb=settings.max_data_file_mb, max_data_rows=settings.max_data_rows,
                   max_labels=settings.max_labels, max_label_chars=settings.max_label_chars)

    @property
    def max_bytes(self) -> int:
        return int(self.max_data_file_mb * BYTES_PER_MB)


# ----------------------------------------------------------------------------- reading


def read_limited(path: str, endpoint_url: Optional[str], limits: DataLimits) -> bytes:
    """The bytes of a local file or S3 object; ``DataValidationError`` if it is over the size limit.

    Raises ``FileNotFoundError`` for a missing file or object, like ``cluster.read_bytes``.
    """
    if is_s3_uri(path):
        return _read_s3(path, endpoint_url, limits)
    _check_size(path, Path(path).stat().st_size, limits)
    with open(path, "rb") as handle:
        data = handle.read(limits.max_bytes + 1)  # a file that grew after stat, or a pipe
    _check_size(path, len(data), limits, at_least=True)
    return data


def _read_s3(path: str, endpoint_url: Optional[str], limits: DataLimits) -> bytes:
    bucket, _, key = path[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ValueError(f"not an S3 object URI: {path!r}; expected s3://bucket/key")
    client = s3_client(endpoint_url)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        raise FileNotFoundError(f"no such S3 object: {path}") from None
    except client.exceptions.NoSuchBucket:
        raise FileNotFoundError(f"no such S3 bucket in {path}") from None
    body = response["Body"]
    try:
        if response.get("ContentLength") is not None:
            _check_size(path, int(response["ContentLength"]), limits)
        data = body.read(limits.max_bytes + 1)
    finally:
        body.close()
    _check_size(path, len(data), limits, at_least=True)
    return data


def _check_size(path: str, size: int, limits: DataLimits, at_least: bool = False) -> None:
    if size <= limits.max_bytes:
        return
    if at_least:
        found = f"more than {limits.max_bytes:,} bytes"
    else:
        found = f"{size:,} bytes" + (f" ({size / BYTES_PER_MB:,.1f} MB)" if size >= BYTES_PER_MB else "")
    raise DataValidationError(path, [
        f"the file is {found}, over the limit of {limits.max_data_file_mb:g} MB; split it into smaller "
        "files, or raise the limit with ATTUNE_MAX_DATA_FILE_MB"])


# ----------------------------------------------------------------------------- whole-file limits


def row_limit_problem(rows: Sequence[int], limits: DataLimits) -> Optional[str]:
    """A problem when ``rows`` (every data row's number, in file order) are more than the limit."""
    if len(rows) <= limits.max_data_rows:
        return None
    return (f"the file has {len(rows):,} data rows, over the limit of {limits.max_data_rows:,} "
            f"(row {rows[limits.max_data_rows]} is the first one over it); split the file, "
            "or raise the limit with ATTUNE_MAX_DATA_ROWS")


def label_limit_problem(labels: Sequence[str], limits: DataLimits) -> Optional[str]:
    """A problem when there are more distinct ``labels`` than the limit."""
    if len(labels) <= limits.max_labels:
        return None
    return (f"the file has {len(labels):,} distinct labels, over the limit of {limits.max_labels:,}; "
            "merge or remove labels, or raise the limit with ATTUNE_MAX_LABELS")


def label_length_problem(long_labels: Sequence[tuple[int, str]], limits: DataLimits) -> Optional[str]:
    """One problem for every ``(row, label)`` whose label is longer than the limit."""
    if not long_labels:
        return None
    longest = max((label for _, label in long_labels), key=len)
    return (f"{rows_text([row for row, _ in long_labels])}: label longer than the limit of "
            f"{limits.max_label_chars:,} characters (the longest has {len(longest):,}: {short(longest)!r}); "
            "shorten the label, or raise the limit with ATTUNE_MAX_LABEL_CHARS")


# ----------------------------------------------------------------------------- values


def non_finite_problem(row: int, value: Any) -> Optional[str]:
    """A problem when a JSON label is NaN or infinite (``NaN``, ``Infinity``, or ``1e999``)."""
    if not isinstance(value, float) or math.isfinite(value):
        return None
    return (f"row {row}: label is {_NON_FINITE[repr(value)]}, which is not a class name; "
            "give the row a string label or remove it")


def surrogate_problem(row: int, fields: dict[str, Any]) -> Optional[str]:
    """A problem when a kept string field holds a lone UTF-16 surrogate (a JSON escape like ``\\ud800``)."""
    for name, value in fields.items():
        found = _SURROGATE.search(value) if isinstance(value, str) else None
        if found:
            return (f"row {row}: {name} holds a lone surrogate \\u{ord(found.group()):04x} at character "
                    f"{found.start() + 1}, which is not valid Unicode; fix the \\u escape in the file")
    return None


def json_row(number: int, line: str, problems: Any) -> Any:
    """The parsed line, or None after adding its problem: bad JSON, too deep, or a too-long integer."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        problems.add(number, f"row {number}: not valid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        problems.add(number, f"row {number}: JSON nested too deeply to read; a row must be one flat object "
                             'such as {"text": "...", "label": "..."}')
    except ValueError:  # Python 3.11+ refuses integers longer than sys.get_int_max_str_digits()
        problems.add(number, f"row {number}: a number has more than {sys.get_int_max_str_digits():,} digits, "
                             "more than Python reads; write it as a quoted string or remove it")
    return None


def shown(value: Any) -> str:
    """A short repr of a JSON value, even one nested too deeply for ``repr``."""
    try:
        return short(repr(value))
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"


def rows_text(rows: Sequence[int]) -> str:
    """``row 4`` / ``rows 4, 9`` / ``rows 4, 9, ... (25 rows)``."""
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(str(r) for r in rows[:MAX_ROWS_LISTED])
    return f"rows {shown}, ... ({len(rows)} rows)" if len(rows) > MAX_ROWS_LISTED else f"rows {shown}"


def short(text: str) -> str:
    return text if len(text) <= MAX_TEXT_SHOWN else text[: MAX_TEXT_SHOWN - 3] + "..."

"""Loading, validating and splitting one tenant's labelled data file.

A tenant file is JSON Lines (``.jsonl`` or ``.json``: one object per line) or
CSV (``.csv``, with a header row), on a local path or at ``s3://bucket/key``.
It needs ``text`` and ``label`` columns and may have an ``id`` column; other
columns are ignored. Labels are strings; JSON numbers become strings (``1`` ->
``"1"``).

Row numbers, used in every message and in :attr:`Example.row`, are what a
person sees when opening the file:

* JSON Lines: the 1-based line number (blank lines are skipped but counted).
* CSV: the 1-based record number *including the header*, so the header is row 1
  and the first data record is row 2, as in a spreadsheet. A quoted text with
  embedded newlines is one record, hence one row.

:func:`load_tenant_data` collects every problem in the file and raises one
:class:`~train._errors.DataValidationError`. The file's size, rows, labels and label length are
bounded by settings (:mod:`train._data_limits`). The split of each row comes from
the sha256 of its stripped text, so rows keep their split when the file grows.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Optional, Sequence

from cluster import is_s3_uri
from train._data_limits import (
    DataLimits,
    json_row,
    label_length_problem,
    label_limit_problem,
    non_finite_problem,
    read_limited,
    row_limit_problem,
    shown,
    surrogate_problem,
)
from train._data_limits import rows_text as _rows_text
from train._data_limits import short as _short
from train._errors import ConfigError, DataValidationError

SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("text", "label")
_KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # an undecodable byte, as surrogateescape keeps it


@dataclass(frozen=True)
class Example:
    """One labelled row. ``row`` is the row number described in the module docstring."""

    text: str
    label: str
    row: int
    id: Optional[str] = None


@dataclass(frozen=True)
class TenantData:
    """A validated tenant file, split into train, validation and test."""

    source: str
    labels: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    data_hash: str

    def label_index(self) -> dict[str, int]:
        """Label -> class index, in sorted label order."""
        return {label: i for i, label in enumerate(self.labels)}

    def split_counts(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


class _Problems:
    """Problems keyed by their first row, so they render in file order (row 0: the whole file)."""

    def __init__(self) -> None:
        self._items: list[tuple[int, str]] = []

    def add(self, row: int, message: str) -> None:
        # Undecodable bytes are shown as \udcXX so that the message always prints.
        self._items.append((row, message.encode("utf-8", "backslashreplace").decode("utf-8")))

    def __bool__(self) -> bool:
        return bool(self._items)

    def messages(self) -> list[str]:
        return [message for _, message in sorted(self._items, key=lambda item: item[0])]


def split_of(text: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """``"train"``, ``"validation"`` or ``"test"``, decided by the sha256 of the stripped text."""
    _check_fractions(fractions)
    digest = hashlib.sha256(text.strip().encode("utf-8", "surrogatepass")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < fractions[0]:
        return "train"
    return "validation" if point < fractions[0] + fractions[1] else "test"


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            "split fractions must be three non-negative numbers (train, validation, test) "
            f"that sum to 1, got {tuple(fractions)!r}"
        )


def load_tenant_data(
    path: str,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    min_examples_per_label: int = 5,
    allow_conflicts: bool = False,
    endpoint_url: Optional[str] = None,
    limits: Optional[DataLimits] = None,
) -> TenantData:
    """Read, validate and split a tenant file; raise one ``DataValidationError`` listing every problem.

    ``allow_conflicts`` keeps a text that appears with two different labels (both copies).
    ``limits`` defaults to the ``ATTUNE_MAX_*`` settings (:meth:`DataLimits.from_settings`).
    Splits of a very small file may be empty; the caller decides whether that is usable.
    """
    _check_fractions(fractions)
    if min_examples_per_label < 1:
        raise ConfigError(f"min_examples_per_label must be at least 1, got {min_examples_per_label}")
    limits = limits or DataLimits.from_settings()
    raw, problems = _read_source(str(path), endpoint_url, limits), _Problems()
    examples = _parse(str(path), raw, problems, limits)
    _check_labels(examples, min_examples_per_label, problems, limits)
    if not allow_conflicts:
        _check_conflicts(examples, problems)
    if problems:
        raise DataValidationError(str(path), problems.messages())
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for example in examples:
        splits[split_of(example.text, fractions)].append(example)
    return TenantData(
        source=str(path),
        labels=sorted({e.label for e in examples}),
        data_hash=hashlib.sha256(raw).hexdigest(),
        **splits,
    )


def read_rows(path: str, endpoint_url: Optional[str] = None, limits: Optional[DataLimits] = None) -> list[Example]:
    """Parse a tenant file into examples: no label counts, no split.

    Raises ``DataValidationError`` for an unreadable or unparsable file, bytes that are
    not UTF-8, missing columns, empty texts or labels, unusable values, and a file over
    the size, row or label-length limit.
    """
    problems, limits = _Problems(), limits or DataLimits.from_settings()
    examples = _parse(str(path), _read_source(str(path), endpoint_url, limits), problems, limits)
    if problems:
        raise DataValidationError(str(path), problems.messages())
    return examples


def _file_kind(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in _KINDS:
        problem = f"unsupported file type {suffix or '(none)'!r}; use .jsonl, .json or .csv"
        raise DataValidationError(path, [problem])
    return _KINDS[suffix]


def _read_source(path: str, endpoint_url: Optional[str], limits: DataLimits) -> bytes:
    _file_kind(path)  # fail before any download
    where = "S3 object" if is_s3_uri(path) else "file"
    try:
        return read_limited(path, endpoint_url, limits)
    except DataValidationError:
        raise  # over the size limit
    except FileNotFoundError:
        raise DataValidationError(path, [f"{where} not found: {path}; check the path"]) from None
    except OSError as exc:
        raise DataValidationError(path, [f"cannot read the {where}: {exc}"]) from None
    except Exception as exc:  # botocore: credentials, access denied, endpoint unreachable
        if not is_s3_uri(path):
            raise
        raise DataValidationError(path, [f"cannot read the S3 object: {exc}"]) from None


def _parse(source: str, raw: bytes, problems: _Problems, limits: DataLimits) -> list[Example]:
    """Parse every row, adding format, encoding, column, value and limit problems to ``problems``."""
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    text = raw[start:].decode("utf-8", "surrogateescape")
    bad_rows: list[tuple[int, int]] = []  # (row, number of undecodable bytes)
    data_rows: list[int] = []  # every non-blank data row, parsable or not
    if _file_kind(source) == "jsonl":
        records = _parse_jsonl(text, problems, bad_rows, data_rows)
    else:
        records = _parse_csv(source, text, problems, bad_rows, data_rows)
    if bad_rows:
        _report_bad_bytes(raw, _bad_byte_offsets(text, start), bad_rows, problems)
    too_many = row_limit_problem(data_rows, limits)
    if too_many:
        problems.add(0, too_many)
    if not records and not problems:
        problems.add(0, "no data rows found; the file is empty")
    return _to_examples(records, problems, limits)


def _bad_byte_offsets(text: str, start: int) -> list[int]:
    """File offsets of every undecodable byte (one surrogate escape each in ``text``), in order."""
    offsets, done, position = [], 0, start
    for match in _BAD_BYTE.finditer(text):
        position += len(text[done:match.start()].encode("utf-8", "surrogateescape"))
        offsets.append(position)
        position, done = position + 1, match.end()
    return offsets


def _report_bad_bytes(
    raw: bytes, offsets: list[int], bad_rows: list[tuple[int, int]], problems: _Problems
) -> None:
    """One problem per row holding undecodable bytes; both lists are in file order."""
    taken = 0
    for row, count in bad_rows:
        first, taken = offsets[taken], taken + count
        problems.add(row, f"row {row}: not valid UTF-8 ({count} bad byte(s), the first at byte offset "
                          f"{first}: 0x{raw[first]:02x}); save the file as UTF-8")


def _count_bad(cells: Iterable[str]) -> int:
    return sum(len(_BAD_BYTE.findall(cell)) for cell in cells)


def _parse_jsonl(text: str, problems: _Problems, bad_rows: list, data_rows: list) -> list[tuple[int, dict]]:
    if text.lstrip().startswith("["):
        problems.add(0, "found a JSON array, expected JSON Lines (one object per line); "
                        "convert it with: jq -c '.[]' in.json > out.jsonl")
        return []
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        data_rows.append(number)
        if _count_bad([line]):  # reported as not UTF-8, the problem to fix first
            bad_rows.append((number, _count_bad([line])))
            continue
        value = json_row(number, line, problems)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.add(number, f"row {number}: expected a JSON object, found {type(value).__name__}")
            continue
        records.append((number, value))
    return records


def _parse_csv(
    source: str, text: str, problems: _Problems, bad_rows: list, data_rows: list
) -> list[tuple[int, dict]]:
    rows = _csv_rows(source, text)
    bad_rows.extend((number, _count_bad(cells)) for number, cells in rows if _count_bad(cells))
    if not rows:
        return []
    header = [name.strip() for name in rows[0][1]]
    records = []
    data_rows.extend(number for number, cells in rows[1:] if cells)
    for number, cells in rows[1:]:
        if not cells or _count_bad(cells):
            continue  # a blank line, or one reported as not UTF-8
        if len(cells) != len(header):
            problems.add(number, f"row {number}: has {len(cells)} field(s) but the header has "
                                 f"{len(header)}; quote texts that contain commas")
            continue
        records.append((number, dict(zip(header, cells))))
    return records


def _csv_rows(source: str, text: str) -> list[tuple[int, list[str]]]:
    """Every CSV record with its row number (header = 1); raises at the first malformed one."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            rows.append((len(rows) + 1, cells))
    except csv.Error as exc:
        problem = f"row {len(rows) + 1} (line {reader.line_num}): not valid CSV ({exc})"
        raise DataValidationError(source, [problem]) from None
    return rows


def _to_examples(records: list[tuple[int, dict]], problems: _Problems, limits: DataLimits) -> list[Example]:
    if not _report_missing_columns(records, problems):
        return []
    examples = [e for e in (_to_example(row, fields, problems) for row, fields in records) if e]
    empty = [e.row for e in examples if not e.text.strip()]
    if empty:
        problems.add(empty[0], f"{_rows_text(empty)}: empty or whitespace-only text")
    too_long = [(e.row, e.label) for e in examples if len(e.label) > limits.max_label_chars]
    if too_long:
        problems.add(too_long[0][0], label_length_problem(too_long, limits))
    return examples


def _report_missing_columns(records: list[tuple[int, dict]], problems: _Problems) -> bool:
    """Report missing ``text``/``label`` columns; False when one is missing from every row."""
    found = ", ".join(sorted({name for _, fields in records for name in fields})) or "(none)"
    complete = True
    for column in REQUIRED_COLUMNS:
        missing = [row for row, fields in records if column not in fields]
        if records and len(missing) == len(records):
            problems.add(0, f"column {column!r} is missing; columns found: {found}")
            complete = False
        elif missing:
            rows = set(missing)
            fields = ", ".join(sorted({n for row, f in records if row in rows for n in f})) or "(none)"
            problems.add(missing[0], f"{_rows_text(missing)}: no {column!r} field (fields found: {fields})")
    return complete


def _to_example(row: int, fields: dict, problems: _Problems) -> Optional[Example]:
    if "text" not in fields or "label" not in fields:
        return None  # already reported
    text = "" if fields["text"] is None else fields["text"]
    unusable = non_finite_problem(row, fields["label"]) or surrogate_problem(
        row, {name: fields.get(name) for name in ("text", "label", "id")})
    if unusable:
        problems.add(row, unusable)
        return None
    label = _label_str(fields["label"])
    if not isinstance(text, str):
        problems.add(row, f"row {row}: text must be a string, found {type(text).__name__}")
        return None
    if label is None:
        problems.add(row, f"row {row}: label must be a non-empty string or a number, "
                          f"found {shown(fields['label'])}")
        return None
    raw_id = fields.get("id")
    return Example(text=text, label=label, row=row, id=None if raw_id in (None, "") else str(raw_id))


def _label_str(value: Any) -> Optional[str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _check_labels(examples: list[Example], min_count: int, problems: _Problems, limits: DataLimits) -> None:
    rows_by_label: dict[str, list[int]] = defaultdict(list)
    for example in examples:
        rows_by_label[example.label].append(example.row)
    too_many = label_limit_problem(list(rows_by_label), limits)
    if too_many:
        problems.add(0, too_many)
    for label, rows in rows_by_label.items():
        if len(rows) < min_count:
            problems.add(rows[0], f"label {_short(label)!r} has {len(rows)} example(s), fewer than the minimum "
                                  f"{min_count} ({_rows_text(rows)}); add examples or remove the label")
    if len(rows_by_label) == 1:
        only = next(iter(rows_by_label))
        problems.add(0, f"only one label ({only!r}) found; a classifier needs two or more")


def _check_conflicts(examples: list[Example], problems: _Problems) -> None:
    by_text: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for example in examples:
        if example.text.strip():
            by_text[example.text.strip()][example.label].append(example.row)
    for text, rows_by_label in by_text.items():
        if len(rows_by_label) > 1:
            first = min(rows[0] for rows in rows_by_label.values())
            labels = " and ".join(f"{label!r} ({_rows_text(rows)})" for label, rows in rows_by_label.items())
            problems.add(first, f"the same text {_short(text)!r} has different labels: {labels}; "
                                "keep one label, or allow conflicts to keep both")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON Lines (one object per line); returns ``path``."""
    Path(path).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return Path(path)

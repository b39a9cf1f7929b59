"""Request bodies: size limit, JSON, and every 422 rule of the issue, all problems reported at once (no Ray)."""
from __future__ import annotations

import asyncio
import json

import pytest

from serve._errors import InvalidRequestError, PayloadTooLargeError
from serve._validation import parse_predict_body, read_limited

LIMITS = {"max_texts": 64, "max_chars": 10_000}


def parse(body) -> list[str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_predict_body(raw, **LIMITS)


def test_a_good_body_gives_its_texts():
    assert parse({"texts": ["gold is up", ""]}) == ["gold is up", ""]
    assert parse({"texts": ["x" * 10_000] * 64}) == ["x" * 10_000] * 64


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"", "not valid UTF-8 JSON"),
    ([1, 2], "must be a JSON object"),
    ({}, "'texts' is missing"),
    ({"text": ["a"]}, "'texts' is missing; unknown key 'text'"),
    ({"texts": "a"}, "'texts' must be a list of strings, got str"),
    ({"texts": None}, "'texts' must be a list of strings, got NoneType"),
    ({"texts": []}, "'texts' is empty"),
    ({"texts": ["a", 3, None]}, "texts[1] is int, not a string; texts[2] is NoneType, not a string"),
    ({"texts": ["a"] * 65}, "'texts' has 65 items, more than max_texts=64"),
    ({"texts": ["a", "x" * 10_001]}, "texts[1] has 10001 characters, more than max_chars=10000"),
    (b'{"texts": ["\\ud800 gold"]}', "texts[0] contains a lone surrogate"),
    (b'{"texts": ["ok", "a\\u0000b"]}', "texts[1] contains a NUL character"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b"\x00", "not valid UTF-8 JSON"),
])
def test_each_invalid_body_is_422_with_the_reason(body, needle):
    with pytest.raises(InvalidRequestError) as err:
        parse(body)
    assert err.value.http_status == 422 and err.value.code == "invalid_body"
    assert needle in err.value.message


def test_many_problems_are_capped_and_counted():
    with pytest.raises(InvalidRequestError, match=r"\(and 3 more\)"):
        parse({"texts": [1] * 8})


async def _chunks(parts):
    for part in parts:
        yield part


def read(content_length, parts, limit=100) -> bytes:
    return asyncio.run(read_limited(content_length, _chunks(parts), limit))


def test_body_limit_by_header_and_by_stream():
    assert read("10", [b"x" * 10]) == b"x" * 10
    assert read(None, [b"x" * 60, b"y" * 40]) == b"x" * 60 + b"y" * 40
    with pytest.raises(PayloadTooLargeError) as err:
        read("101", [])  # refused from the header, before reading
    assert err.value.http_status == 413 and "ingress.max_body_bytes" in err.value.message
    with pytest.raises(PayloadTooLargeError):
        read("10", [b"x" * 60, b"y" * 60])  # a lying header is caught while streaming


@pytest.mark.parametrize("text, accepted", [("gold is up", True), ("", True), ("a\nb", True), ("a\x00b", False),
                                            ("\x00", False)])
def test_the_openapi_body_schema_rejects_what_parse_rejects(text, accepted):
    """The documented request schema (OpenAPI) agrees with the parser on NUL, so that a client (or a fuzzer)
    that follows the schema is not answered 422 (the schema allowed any string; the fuzz found it)."""
    import jsonschema

    from serve._validation import PredictBody

    body = {"texts": [text]}
    documented = jsonschema.Draft202012Validator(PredictBody.model_json_schema()).is_valid(body)
    try:
        parsed = parse(body) == [text]
    except InvalidRequestError:
        parsed = False
    assert documented is parsed is accepted

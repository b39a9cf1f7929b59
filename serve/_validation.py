"""Request bodies: read within the size limit, parse, and check every rule, reporting all problems once."""
from __future__ import annotations

import json
from typing import Annotated, AsyncIterator, Optional

from pydantic import BaseModel, ConfigDict, Field

from registry import PREDICTION_ID_PATTERN
from serve._errors import InvalidRequestError, PayloadTooLargeError
from serve._quality import LiveQuality

MAX_REPORTED = 5  # problems listed in one 422 message
NO_NUL_PATTERN = r"^[^\u0000]*$"  # the same in JSON Schema's (ECMA-262), Python's and pydantic's regex dialects


class PredictBody(BaseModel):
    """``POST /v1/tenants/{tenant}/predict`` (documented in OpenAPI; checked by :func:`parse_predict_body`)."""

    model_config = ConfigDict(extra="forbid")

    # each text without NUL (U+0000), as parse_predict_body requires: the pattern puts that rule in the OpenAPI
    texts: list[Annotated[str, Field(pattern=NO_NUL_PATTERN)]] = Field(
        min_length=1, description="texts to classify (at most max_texts, each at most max_chars characters and "
                                  "without NUL)")


class Prediction(BaseModel):
    label: str
    scores: dict[str, float]


class PredictResponse(BaseModel):
    tenant: str
    model_version: str
    prediction_id: str = Field(pattern=PREDICTION_ID_PATTERN, description="`<model_version>.<16 hex digits>`: "
                               "quote it in feedback on these predictions (POST /v1/tenants/{tenant}/feedback)")
    predictions: list[Prediction]


class TenantInfo(BaseModel):
    tenant: str
    model_version: str
    labels: list[str]
    metrics: dict[str, float]
    temperature: float
    temperature_slope: float = Field(description="0 for plain temperature scaling; otherwise each text's "
                                     "temperature is temperature * exp(temperature_slope * its logit margin)")
    promoted_at: Optional[str]
    live_quality: Optional[LiveQuality] = Field(description="the champion's accuracy, ECE and drift test on the "
                                                "feedback it scored since it became champion; null when the "
                                                "feedback store cannot be read")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


async def read_limited(content_length: Optional[str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or :class:`PayloadTooLargeError` as soon as it passes ``limit`` bytes."""
    too_large = PayloadTooLargeError(f"request body is larger than the limit of {limit} bytes "
                                     "(ingress.max_body_bytes); send fewer or shorter texts per request")
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def parse_predict_body(raw: bytes, *, max_texts: int, max_chars: int) -> list[str]:
    """The ``texts`` of a predict body, or one :class:`InvalidRequestError` listing every problem."""
    data = load_object(raw, '{"texts": ["..."]}')
    problems = [f"unknown key {key!r}" for key in sorted(data) if key != "texts"]
    texts = data.get("texts")
    if "texts" not in data:
        problems.insert(0, "'texts' is missing")
    elif not isinstance(texts, list):
        problems.insert(0, f"'texts' must be a list of strings, got {type(texts).__name__}")
    else:
        problems += list_problems("texts", texts, max_texts)
        problems += [problem for i, text in enumerate(texts)
                     if (problem := text_problem(f"texts[{i}]", text, max_chars)) is not None]
    raise_problems(problems)
    return texts


def load_object(raw: bytes, example: str) -> dict:
    """A body's JSON object, or :class:`InvalidRequestError` showing ``example``."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(f"body is not valid UTF-8 JSON ({exc}); send {example}") from None
    except RecursionError:
        raise InvalidRequestError(f"body is JSON nested too deeply to read; send {example}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"body must be a JSON object like {example}, got {type(data).__name__}")
    return data


def raise_problems(problems: list[str]) -> None:
    """One :class:`InvalidRequestError` listing the first ``MAX_REPORTED`` problems, if there are any."""
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise InvalidRequestError("invalid body: " + "; ".join(shown) + more)


def list_problems(name: str, values: list, max_items: int) -> list[str]:
    problems = []
    if not values:
        problems.append(f"'{name}' is empty; send at least one")
    if len(values) > max_items:
        problems.append(f"'{name}' has {len(values)} items, more than max_texts={max_items}; split the request")
    return problems


def text_problem(where: str, text: object, max_chars: int) -> Optional[str]:
    """What is wrong with one text (``where`` names it), or None."""
    if not isinstance(text, str):
        return f"{where} is {type(text).__name__}, not a string"
    if len(text) > max_chars:
        return f"{where} has {len(text)} characters, more than max_chars={max_chars}"
    if "\x00" in text:
        return f"{where} contains a NUL character (\\u0000)"
    if not _encodable(text):
        return (f"{where} contains a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not "
                "text; send valid Unicode")
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

"""``POST /v1/tenants/{tenant}/feedback``: the body, its checks, and the answer.

The body is parsed under predict's rules (``ingress.max_body_bytes``, at most ``ingress.max_texts``
items of at most ``ingress.max_chars`` characters, no NUL or lone surrogate); every problem is
reported in one 422 ``invalid_body``. A label that the tenant's champion does not know is a 422
``unknown_label`` that lists the labels it knows. The store is ``registry.FeedbackStore``. Before it
is stored, each text is scored by the model that serves the tenant, for the champion's live quality
(``serve._quality``).
"""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field

from registry import PREDICTION_ID_PATTERN, Feedback, prediction_version
from serve._errors import UnknownLabelError
from serve._validation import NO_NUL_PATTERN, list_problems, load_object, raise_problems, text_problem

EXAMPLE = '{"items": [{"text": "...", "label": "...", "prediction_id": "3.0123456789abcdef"}]}'
ITEM_KEYS = ("text", "label", "prediction_id")
MAX_LABELS_LISTED = 50  # known labels named in one unknown_label message


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(pattern=NO_NUL_PATTERN, description="the text, as it was sent to predict")]
    label: Annotated[str, Field(min_length=1, description="its correct label: one of the champion's labels")]
    prediction_id: Optional[Annotated[str, Field(pattern=PREDICTION_ID_PATTERN)]] = Field(
        default=None, description="the prediction_id of the predict answer this corrects, if any")


class FeedbackBody(BaseModel):
    """``POST /v1/tenants/{tenant}/feedback`` (checked by :func:`parse_feedback_body`)."""

    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1, description="labelled texts (at most max_texts, each text at "
                                                                "most max_chars characters and without NUL)")


class StoredFeedback(BaseModel):
    text_sha256: str = Field(description="SHA-256 of the text's UTF-8 bytes: the stored row's key")
    label: str
    prediction_id: Optional[str]
    version: Optional[str] = Field(description="the version that answered prediction_id, else null")


class FeedbackResponse(BaseModel):
    tenant: str
    stored: int = Field(description="distinct texts stored; a text sent again keeps its newest label")
    items: list[StoredFeedback]


def feedback_body_schema() -> dict:
    """:class:`FeedbackBody`'s JSON Schema with its items inlined (the OpenAPI has no ``$defs`` to point to)."""
    schema = FeedbackBody.model_json_schema()
    definitions = schema.pop("$defs", {})
    schema["properties"]["items"]["items"] = definitions["FeedbackItem"]
    return schema


def parse_feedback_body(raw: bytes, *, max_texts: int, max_chars: int) -> list[Feedback]:
    """The items of a feedback body, or one ``InvalidRequestError`` listing every problem."""
    data = load_object(raw, EXAMPLE)
    problems = [f"unknown key {key!r}" for key in sorted(data) if key != "items"]
    items = data.get("items")
    if "items" not in data:
        problems.insert(0, "'items' is missing")
    elif not isinstance(items, list):
        problems.insert(0, f"'items' must be a list of objects, got {type(items).__name__}")
    else:
        problems += list_problems("items", items, max_texts)
        for i, item in enumerate(items):
            problems += _item_problems(f"items[{i}]", item, max_chars)
    raise_problems(problems)
    return [Feedback(text=item["text"], label=item["label"], prediction_id=item.get("prediction_id"))
            for item in items]


def _item_problems(where: str, item: object, max_chars: int) -> list[str]:
    if not isinstance(item, dict):
        return [f"{where} is {type(item).__name__}, not an object like {{\"text\": ..., \"label\": ...}}"]
    problems = [f"{where} has an unknown key {key!r}" for key in sorted(item) if key not in ITEM_KEYS]
    problems += [f"{where}.{key} is missing" for key in ("text", "label") if key not in item]
    if "text" in item and (problem := text_problem(f"{where}.text", item["text"], max_chars)) is not None:
        problems.append(problem)
    label = item.get("label")
    if "label" in item and (not isinstance(label, str) or not label):
        problems.append(f"{where}.label must be a non-empty string, got {_shown(label)}")
    prediction_id = item.get("prediction_id")
    if prediction_id is not None:
        try:
            prediction_version(prediction_id)
        except ValueError as exc:
            problems.append(f"{where}.prediction_id: {exc}")
    return problems


def check_labels(tenant: str, info, items: list[Feedback]) -> None:
    """:class:`UnknownLabelError` naming each label that ``info`` (the champion) does not know, and the
    labels it knows."""
    known = list(info.labels)
    unknown = sorted({item.label for item in items if item.label not in known})
    if not unknown:
        return
    listed = ", ".join(repr(label) for label in known[:MAX_LABELS_LISTED]) or "none recorded"
    more = (f" (and {len(known) - MAX_LABELS_LISTED} more: GET /v1/tenants/{tenant} lists them all)"
            if len(known) > MAX_LABELS_LISTED else "")
    names = ", ".join(_shown(label) for label in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
    raise UnknownLabelError(f"unknown label(s) {names}: tenant {tenant!r}'s champion (version {info.version}) "
                            f"knows {listed}{more}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

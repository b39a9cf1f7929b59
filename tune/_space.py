"""Search spaces: the default one, a YAML file (``--space FILE``), and their Ray Tune form.

A space file maps fine-tuning options to distributions::

    lr: {loguniform: [1.0e-5, 3.0e-4]}
    batch_size: {choice: [8, 16, 32]}
    epochs: {randint: [2, 4]}          # both ends included
    weight_decay: {uniform: [0.0, 0.1]}
    warmup_ratio: 0.1                  # a plain value is fixed for every trial
    head_warmup_steps: {choice: [0, 64]}  # LP-FT: the new head trains alone first
    lora_rank: {choice: [8, 16, 32]}   # lora_* only with --method lora

Every value is checked against the same bounds as the ``attune finetune`` flag of that name,
before anything runs, and every problem names its key.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, field_validator, model_validator

from train import FinetuneConfig
from tune._errors import SpaceError

Number = Union[int, float]
KINDS = ("loguniform", "uniform", "randint", "choice")
INTEGER_KEYS = ("batch_size", "epochs", "lora_rank", "lora_alpha", "head_warmup_steps")
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout")
MUTABLE_KEYS = ("lr", "weight_decay")  # what PBT may change while a trial runs


class Dimension(BaseModel):
    """One hyperparameter's distribution, or a fixed value (``kind="fixed"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["loguniform", "uniform", "randint", "choice", "fixed"]
    values: tuple[Number, ...]

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data: Any) -> Any:
        if isinstance(data, bool):
            raise ValueError(f"expected a number or a distribution, got {data!r}")
        if isinstance(data, (int, float)):
            return {"kind": "fixed", "values": [data]}
        if isinstance(data, dict) and len(data) == 1 and "kind" not in data:
            [(kind, args)] = data.items()
            if kind not in KINDS:
                raise ValueError(f"unknown distribution {kind!r}; use one of {', '.join(KINDS)} or a plain value")
            return {"kind": kind, "values": args if isinstance(args, (list, tuple)) else [args]}
        if isinstance(data, dict) and "kind" in data:
            return data
        raise ValueError(f"expected a plain value or one of {{loguniform|uniform|randint: [low, high]}}, "
                         f"{{choice: [values]}}; got {data!r}")

    @model_validator(mode="after")
    def _shape(self) -> Dimension:
        if self.kind in ("loguniform", "uniform", "randint"):
            if len(self.values) != 2 or not self.values[0] < self.values[1]:
                raise ValueError(f"{self.kind} needs [low, high] with low < high, got {list(self.values)}")
            if self.kind == "loguniform" and self.values[0] <= 0:
                raise ValueError(f"loguniform needs low > 0, got {self.values[0]}")
        if self.kind == "randint" and not all(float(v).is_integer() for v in self.values):
            raise ValueError(f"randint needs integer ends, got {list(self.values)}")
        if self.kind in ("choice", "fixed") and not self.values:
            raise ValueError(f"{self.kind} needs at least one value")
        return self

    @property
    def searched(self) -> bool:
        return self.kind != "fixed" and not (self.kind == "choice" and len(set(self.values)) == 1)

    def to_tune(self):
        """The Ray Tune domain (or the constant) for ``param_space``."""
        from ray import tune as ray_tune

        low, high = (self.values + (None,))[:2]
        if self.kind == "loguniform":
            return ray_tune.loguniform(low, high)
        if self.kind == "uniform":
            return ray_tune.uniform(low, high)
        if self.kind == "randint":
            return ray_tune.randint(int(low), int(high) + 1)  # Tune's upper end is exclusive
        if self.kind == "choice":
            return ray_tune.choice(list(self.values))
        return self.values[0]

    def describe(self) -> str:
        if self.kind == "fixed":
            return repr(self.values[0])
        return f"{self.kind}{list(self.values)}"


class SearchSpace(BaseModel):
    """What a search varies. Unset keys keep the value the job fixes (flags, or finetune's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: Optional[Dimension] = None
    batch_size: Optional[Dimension] = None
    epochs: Optional[Dimension] = None
    weight_decay: Optional[Dimension] = None
    warmup_ratio: Optional[Dimension] = None
    head_warmup_steps: Optional[Dimension] = None
    lora_rank: Optional[Dimension] = None
    lora_alpha: Optional[Dimension] = None
    lora_dropout: Optional[Dimension] = None

    @field_validator("*")
    @classmethod
    def _within_finetune_bounds(cls, dim: Optional[Dimension], info) -> Optional[Dimension]:
        if dim is None:
            return dim
        key = info.field_name
        if key in INTEGER_KEYS:
            if dim.kind in ("loguniform", "uniform"):
                raise ValueError(f"is a whole number; use randint or choice instead of {dim.kind}")
            if not all(float(v).is_integer() for v in dim.values):
                raise ValueError(f"takes whole numbers, got {list(dim.values)}")
        field = FinetuneConfig.model_fields[key]
        adapter = TypeAdapter(Annotated[field.annotation, field])
        for value in dim.values:
            try:
                adapter.validate_python(int(value) if key in INTEGER_KEYS else float(value))
            except ValidationError as exc:
                raise ValueError(f"{value!r} is out of range: {exc.errors()[0]['msg']}") from None
        return dim

    def dimensions(self) -> dict[str, Dimension]:
        return {key: dim for key in type(self).model_fields if (dim := getattr(self, key)) is not None}

    def searched(self) -> dict[str, Dimension]:
        return {key: dim for key, dim in self.dimensions().items() if dim.searched}

    def check_method(self, method: str) -> None:
        """LoRA-only keys with ``--method full`` are a mistake, not something to ignore silently."""
        stray = [key for key in LORA_KEYS if key in self.dimensions()] if method != "lora" else []
        if stray:
            raise SpaceError(f"search space key(s) {', '.join(stray)} only apply with --method lora "
                             f"(got --method {method}); remove them or pass --method lora")

    def max_epochs(self, default: int) -> int:
        dim = self.epochs
        return default if dim is None else int(max(dim.values))

    def param_space(self) -> dict:
        return {key: dim.to_tune() for key, dim in self.dimensions().items()}

    def mutations(self) -> dict:
        """What PBT may perturb while a trial runs (weights carry over, so only lr and weight decay)."""
        return {key: dim.to_tune() for key, dim in self.searched().items() if key in MUTABLE_KEYS}

    def summary(self) -> dict[str, str]:
        return {key: dim.describe() for key, dim in self.dimensions().items()}


DEFAULT_MAX_EPOCHS = {"full": 4, "lora": 8}


def default_space(method: str = "full", max_epochs: int | None = None) -> SearchSpace:
    """Learning rate (log-uniform), batch size, epochs, weight decay, warm-up; LoRA rank and alpha.

    LoRA trains few parameters from a frozen base: its learning rates centre on ``attune finetune``'s
    LoRA default (2e-3, about 20x full fine-tuning's), and it needs more epochs.
    """
    max_epochs = max_epochs or DEFAULT_MAX_EPOCHS[method]
    low, high = (1e-5, 3e-4) if method == "full" else (5e-4, 5e-3)
    epochs: Any = max_epochs if max_epochs < 2 else {"randint": [max(1, math.ceil(max_epochs / 2)), max_epochs]}
    values: dict[str, Any] = {
        "lr": {"loguniform": [low, high]},
        "batch_size": {"choice": [8, 16, 32]},
        "epochs": epochs,
        "weight_decay": {"uniform": [0.0, 0.1]},
        "warmup_ratio": {"uniform": [0.0, 0.2]},
    }
    if method == "lora":
        values.update(lora_rank={"choice": [8, 16, 32]}, lora_alpha={"choice": [16, 32, 64]})
    return parse_space(values, "the default space")


def load_space(path: Path | str) -> SearchSpace:
    """Read and validate a YAML space file; every problem is reported with its key."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"--space {path}: cannot read the file ({exc}); pass a readable YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"--space {path}: not valid YAML: {exc}") from None
    return parse_space(data, f"--space {path}")


def parse_space(data: Any, source: str) -> SearchSpace:
    """Validate a mapping into a :class:`SearchSpace`; ``source`` names it in error messages."""
    if data is None or data == {}:
        raise SpaceError(f"{source} is empty: it defines no hyperparameter to search; "
                         f"add keys such as lr: {{loguniform: [1.0e-5, 3.0e-4]}}")
    if not isinstance(data, dict):
        raise SpaceError(f"{source} must be a mapping of option names to distributions, got {type(data).__name__}")
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as exc:
        raise SpaceError(f"invalid search space in {source}: " + "; ".join(_problem(e) for e in exc.errors())) from None
    if not space.searched():
        raise SpaceError(f"{source} fixes every value ({space.summary()}), so there is nothing to search; "
                         "give at least one key a distribution")
    return space


def _problem(error: dict) -> str:
    key = str(error["loc"][0]) if error["loc"] else "?"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(SearchSpace.model_fields)
        return f"unknown key {key!r} (allowed keys: {allowed})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}"

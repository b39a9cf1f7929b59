"""Fine-tuning configuration: one pydantic model that crosses the driver/worker boundary."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry import check_tenant_id

# Each method's own defaults, for the options left unset (None). LoRA trains a few thousand
# parameters on a frozen base: it needs a learning rate about 20x full fine-tuning's, and more epochs.
METHOD_DEFAULTS = {
    "full": {"lr": 1e-4, "epochs": 5},
    "lora": {"lr": 2e-3, "epochs": 10, "lora_rank": 16, "lora_alpha": 32},
}
LORA_ONLY = ("lora_rank", "lora_alpha", "lora_targets")


class FinetuneConfig(BaseModel):
    """Everything one ``attune finetune`` run needs. Flags map 1:1 to fields; ``lr``, ``epochs`` and the
    LoRA options left unset take their method's defaults (:data:`METHOD_DEFAULTS`)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    data: str = Field(description="tenant data: local JSONL/CSV path or s3://bucket/key")
    base: str = "minilm"
    method: Literal["full", "lora"] = "full"
    num_workers: int = Field(default=2, ge=1, description="--workers")
    zero_stage: int = Field(default=2, ge=0, le=3)
    epochs: Optional[int] = Field(default=None, ge=1, le=100, description="None: the method's default")
    lr: Optional[float] = Field(default=None, gt=0, lt=1, description="None: the method's default")
    batch_size: int = Field(default=16, ge=1, le=4096, description="per-worker micro-batch size")
    max_seq_len: int = Field(default=64, ge=8, le=512)
    seed: int = 0
    out: Optional[Path] = None
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    head_warmup_steps: int = Field(default=0, ge=0, le=100_000,
                                   description="steps the new head trains alone, encoder frozen, before fine-tuning")
    patience: int = Field(default=2, ge=1, description="epochs without val macro-F1 gain before stopping")
    lora_rank: Optional[int] = Field(default=None, ge=1, le=256, description="None: the method's default")
    lora_alpha: Optional[int] = Field(default=None, ge=1, description="None: the method's default")
    lora_targets: Optional[list[str]] = Field(default=None, min_length=1,
                                              description="None: the base's attention projections")
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    max_failures: int = Field(default=2, ge=0, description="worker-group restarts from checkpoint")
    use_gpu: Optional[bool] = Field(default=None, description="None: use GPUs when the cluster has them")
    max_train_rows: Optional[int] = Field(default=None, ge=1, description="subsample the train split")
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    register_model: bool = Field(default=True, description="register the result in the model registry")
    promote: bool = Field(default=True, description="run the promotion gate (--no-promote: register only)")
    promotion_margin: Optional[float] = Field(default=None, ge=0, le=1, description="None: settings")
    promotion_floor: Optional[float] = Field(default=None, ge=0, le=1, description="None: settings")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return check_tenant_id(value)

    @field_validator("data")
    @classmethod
    def _data(cls, value: str) -> str:
        """A local path is made absolute, so the lineage names the file wherever it is read."""
        return value if "://" in value else str(Path(value).expanduser().resolve())

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be positive and sum to 1, got {value}")
        return value

    @model_validator(mode="after")
    def _method_defaults(self) -> FinetuneConfig:
        if self.method == "full":
            given = [name for name in LORA_ONLY if getattr(self, name) is not None]
            if given:
                flags = ", ".join("--" + n.replace("_", "-") for n in given)
                raise ValueError(f"{flags} {'is' if len(given) == 1 else 'are'} for --method lora only")
        for name, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        return self

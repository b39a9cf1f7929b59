"""Fine-tuning configuration: one pydantic model that crosses the driver/worker boundary."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry import check_tenant_id


class FinetuneConfig(BaseModel):
    """Everything one ``attune finetune`` run needs. Flags map 1:1 to fields."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    data: str = Field(description="tenant data: local JSONL/CSV path or s3://bucket/key")
    base: str = "minilm"
    method: Literal["full", "lora"] = "full"
    num_workers: int = Field(default=2, ge=1, description="--workers")
    zero_stage: int = Field(default=2, ge=0, le=3)
    epochs: int = Field(default=5, ge=1, le=100)
    lr: float = Field(default=1e-4, gt=0, lt=1)
    batch_size: int = Field(default=16, ge=1, le=4096, description="per-worker micro-batch size")
    max_seq_len: int = Field(default=64, ge=8, le=512)
    seed: int = 0
    out: Optional[Path] = None
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    head_warmup_steps: int = Field(default=0, ge=0, le=100_000,
                                   description="steps the new head trains alone, encoder frozen, before fine-tuning")
    patience: int = Field(default=2, ge=1, description="epochs without val macro-F1 gain before stopping")
    lora_rank: int = Field(default=8, ge=1, le=256)
    lora_alpha: int = Field(default=16, ge=1)
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

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be positive and sum to 1, got {value}")
        return value

    @model_validator(mode="after")
    def _lora_only_flags(self) -> FinetuneConfig:
        if self.method == "full" and self.lora_rank != 8 and "lora_rank" in self.model_fields_set:
            raise ValueError("--lora-rank only applies with --method lora")
        return self

"""Pretraining configuration: one pydantic model that crosses the driver/worker boundary."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry import TENANT_ID_PATTERN
from train._presets import PRESETS

NAME_PATTERN = TENANT_ID_PATTERN  # a base name is also an MLflow experiment suffix: base.<name>
# Fields a resumed run may change; every other one must match the interrupted run.
RESUMABLE_CHANGES = frozenset({"max_steps", "out", "resume", "track", "max_failures", "use_gpu"})
# The flag that sets each field, where it is not simply --field-name.
FLAGS = {"num_workers": "--workers", "preset": "--preset", "init": "--init"}


def flag_of(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


class PretrainConfig(BaseModel):
    """Everything one ``attune pretrain`` run needs. Flags map 1:1 to fields."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="run name: the Ray Train run, the export folder, the MLflow experiment base.<name>")
    corpus: str = Field(description="text file, directory of .txt/.jsonl/.csv files, or s3:// prefix")
    eval_corpus: Optional[str] = Field(default=None, description="held-out texts; default: 1 in holdout_every")
    holdout_every: int = Field(default=50, ge=2, description="without --eval-corpus, hold out 1 text in N")
    preset: Optional[Literal["tiny", "small", "base", "large"]] = None
    init: Optional[str] = Field(default=None, description="'minilm' or a Hugging Face encoder directory")
    tokenizer: Optional[Literal["minilm", "train"]] = Field(
        default=None, description="None: 'train' from scratch, the --init model's own tokenizer otherwise")
    vocab_size: Optional[int] = Field(default=None, ge=64, le=250_000, description="--tokenizer train only")
    num_workers: int = Field(default=2, ge=1, description="--workers")
    zero_stage: int = Field(default=2, ge=0, le=3)
    offload: Literal["none", "cpu"] = "none"
    max_steps: int = Field(default=1000, ge=1, description="optimizer steps")
    seq_len: int = Field(default=128, ge=8, le=512, description="tokens per packed sequence")
    batch_size: int = Field(default=16, ge=1, le=4096, description="per-worker micro-batch size")
    grad_accum: int = Field(default=1, ge=1, le=1024, description="micro-batches per optimizer step")
    lr: Optional[float] = Field(default=None, gt=0, lt=1, description="None: 5e-4 from scratch, 5e-5 with --init")
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    head_warmup_steps: Optional[int] = Field(
        default=None, ge=0, le=100_000,
        description="micro-batches that train only a new MLM head (encoder frozen) before the --max-steps; "
                    "None: 20% of --max-steps (at most 200) when the --init encoder has no MLM head, else 0")
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    mask_prob: float = Field(default=0.15, gt=0, lt=1)
    eval_every: int = Field(default=100, ge=1, description="steps between held-out evaluations")
    eval_sequences: int = Field(default=128, ge=1, le=100_000, description="held-out sequences evaluated")
    checkpoint_every: int = Field(default=200, ge=1, description="steps between sharded ZeRO checkpoints")
    seed: int = 0
    out: Optional[Path] = None
    resume: bool = False
    max_failures: int = Field(default=2, ge=0, description="worker-group restarts from the last checkpoint")
    use_gpu: Optional[bool] = Field(default=None, description="None: use GPUs when the cluster has them")
    activation_checkpointing: Optional[bool] = Field(default=None, description="None: on for base and large")
    track: bool = Field(default=True, description="log params and metrics to MLflow (experiment base.<name>)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(f"must match {NAME_PATTERN} (lower-case letters, digits, '_' and '-')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        problems = []
        if (self.preset is None) == (self.init is None):
            problems.append("pass exactly one of --preset (a new encoder) and --init (continue an existing one)"
                            + (f"; got --preset {self.preset} and --init {self.init}" if self.preset else ""))
        if self.init is not None and self.tokenizer == "train":
            problems.append("--tokenizer train cannot be combined with --init: the encoder's embeddings "
                            "belong to its own vocabulary; drop --tokenizer")
        if self.init not in (None, "minilm") and self.tokenizer == "minilm":
            problems.append(f"--tokenizer minilm with --init {self.init}: the encoder keeps its own tokenizer; "
                            "drop --tokenizer")
        if self.vocab_size is not None and self.effective_tokenizer != "train":
            problems.append("--vocab-size only applies with --tokenizer train")
        if self.head_warmup_steps and self.init is None:
            problems.append(f"--head-warmup-steps {self.head_warmup_steps} needs --init: a new encoder trains "
                            "with its head from the start; drop --head-warmup-steps")
        if self.offload == "cpu" and self.zero_stage == 0:
            problems.append("--offload cpu needs --zero-stage 1, 2 or 3 (ZeRO partitions the optimizer state "
                            "it offloads); got --zero-stage 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def effective_tokenizer(self) -> str:
        """``train``, ``minilm`` or ``init`` (the --init model's own)."""
        if self.tokenizer is not None:
            return "init" if self.init is not None else self.tokenizer
        return "init" if self.init is not None else "train"

    @property
    def effective_vocab_size(self) -> Optional[int]:
        """The vocabulary to train (None when an existing tokenizer is used)."""
        if self.effective_tokenizer != "train":
            return None
        return self.vocab_size or PRESETS[self.preset].default_vocab

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else (5e-5 if self.init is not None else 5e-4)

    @property
    def use_activation_checkpointing(self) -> bool:
        if self.activation_checkpointing is not None:
            return self.activation_checkpointing
        return self.preset is not None and PRESETS[self.preset].activation_checkpointing

    @property
    def run_name(self) -> str:
        """The Ray Train run (a folder under the Ray Train storage), fixed so --resume finds it."""
        return f"pretrain-{self.name}"

    def differences(self, saved: dict) -> list[str]:
        """Settings of this config that differ from an interrupted run's (``saved``), as flags."""
        mine = self.model_dump(mode="json")
        return [f"{flag_of(k)} {mine.get(k)!r} (the run used {v!r})" for k, v in saved.items()
                if k not in RESUMABLE_CHANGES and mine.get(k) != v]

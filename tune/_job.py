"""What one ``attune tune`` search is: the fixed fine-tuning options, the search settings and the space."""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry import check_tenant_id
from train import FinetuneConfig
from tune._space import INTEGER_KEYS, SearchSpace

# FinetuneConfig fields a job fixes for every trial; the space may override the tunable ones.
FIXED_FIELDS = ("tenant", "data", "base", "method", "num_workers", "zero_stage", "max_seq_len", "seed",
                "patience", "max_failures", "max_train_rows", "use_gpu", "head_warmup_steps")


class TuneJob(BaseModel):
    """One search. Crosses the driver/trial boundary as a dict; flags map to fields."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    data: str
    base: str = "minilm"
    method: Literal["full", "lora"] = "full"
    num_workers: int = Field(default=2, ge=1, description="--workers: Ray Train workers per trial")
    zero_stage: int = Field(default=2, ge=0, le=3)
    max_seq_len: int = Field(default=64, ge=8, le=512)
    seed: int = 0
    patience: int = Field(default=2, ge=1)
    max_failures: int = Field(default=2, ge=0, description="worker-group restarts within one trial")
    max_train_rows: Optional[int] = Field(default=None, ge=1)
    use_gpu: Optional[bool] = None
    head_warmup_steps: int = Field(default=0, ge=0, le=100_000,
                                   description="--head-warmup-steps: every trial's head trains alone first (LP-FT)")
    max_epochs: int = Field(default=4, ge=1, le=100, description="epochs when the space does not search them")
    trials: int = Field(default=8, ge=1, le=10000)
    scheduler: Literal["asha", "fifo", "pbt"] = "asha"
    grace_period: int = Field(default=1, ge=1, le=100, description="--grace-period: ASHA's first rung, in epochs")
    reduction_factor: float = Field(default=2.0, ge=1.5, le=10.0,
                                    description="--reduction-factor: ASHA keeps the top 1/factor of each rung")
    search: Literal["optuna", "random"] = "optuna"
    max_concurrent: Optional[int] = Field(default=None, ge=1)
    time_budget_s: Optional[float] = Field(default=None, gt=0)
    metric: Literal["val_macro_f1", "test_macro_f1"] = "val_macro_f1"
    promote: bool = True
    promotion_margin: Optional[float] = Field(default=None, ge=0, le=1)
    promotion_floor: Optional[float] = Field(default=None, ge=0, le=1)
    space: SearchSpace

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return check_tenant_id(value)

    @model_validator(mode="after")
    def _consistent(self) -> TuneJob:
        if self.scheduler == "pbt" and self.search != "random":
            raise ValueError("--scheduler pbt explores by itself and cannot take a searcher; "
                             "use --search random (the default with pbt)")
        if self.scheduler == "pbt" and not self.space.mutations():
            raise ValueError("--scheduler pbt perturbs lr or weight_decay while trials run; "
                             "give one of them a distribution in the space")
        self.space.check_method(self.method)
        self._check_asha()
        return self

    def _check_asha(self) -> None:
        if self.scheduler != "asha":
            fields = type(self).model_fields
            if (self.grace_period, self.reduction_factor) != (fields["grace_period"].default,
                                                               fields["reduction_factor"].default):
                raise ValueError(f"--grace-period and --reduction-factor set ASHA's rungs; --scheduler "
                                 f"{self.scheduler} has none: drop them or use --scheduler asha")
            return
        if self.grace_period >= self.epochs_cap:
            raise ValueError(f"--grace-period {self.grace_period} is not below the trials' largest epoch count "
                             f"({self.epochs_cap}), so ASHA would never stop a trial; lower it, raise the "
                             f"epochs, or use --scheduler fifo")

    @property
    def rungs(self) -> list[int]:
        """The epochs at which ASHA judges a trial (see ``tune._asha``): grace x factor^k, each reached
        at the first epoch >= it, before the trials' last epoch, where attune never pauses one."""
        rungs, milestone = [], float(self.grace_period)
        while (epoch := math.ceil(milestone - 1e-9)) < self.epochs_cap:
            rungs.append(epoch)
            milestone *= self.reduction_factor
        return rungs

    @property
    def experiment_name(self) -> str:
        """The Tune experiment's folder under the Ray storage dir: one per tenant, so --resume finds it."""
        return experiment_name(self.tenant)

    @property
    def epochs_cap(self) -> int:
        return self.space.max_epochs(self.max_epochs)

    def finetune_config(self, params: dict) -> FinetuneConfig:
        """The fine-tuning config of one trial: the fixed fields plus the trial's sampled values."""
        values = {name: getattr(self, name) for name in FIXED_FIELDS}
        values.update(epochs=self.max_epochs, register_model=False, promote=False)
        values.update({k: (int(v) if k in INTEGER_KEYS else v) for k, v in params.items()})
        return FinetuneConfig(**values)

    def fixed_params(self) -> dict:
        return {name: getattr(self, name) for name in FIXED_FIELDS if name != "tenant"}


def experiment_name(tenant: str) -> str:
    """``tune-<tenant>``: a tenant's Tune experiment folder under the Ray storage dir."""
    return f"tune-{tenant}"

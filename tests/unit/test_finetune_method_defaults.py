"""Each fine-tuning method has its own defaults, and the LoRA options are checked before training."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from cluster import UsageError, get_settings
from cluster.cli import build_parser
from train import BaseModelError, FinetuneConfig
from train.finetune.cli import finetune_config_from_args
from train.finetune.model import build_classifier

LABELS = ["negative", "neutral", "positive"]


def _config(*flags: str) -> FinetuneConfig:
    args = build_parser().parse_args(["finetune", "--tenant", "john", "--data", "john.jsonl", *flags])
    return finetune_config_from_args(args, get_settings())


def test_lora_with_no_other_flag_takes_loras_own_defaults():
    config = _config("--method", "lora")
    assert (config.lr, config.epochs, config.lora_rank, config.lora_alpha, config.lora_targets) == (
        2e-3, 10, 16, 32, None)


def test_full_keeps_full_fine_tunings_defaults_and_no_lora_options():
    config = _config()
    assert (config.method, config.lr, config.epochs) == ("full", 1e-4, 5)
    assert (config.lora_rank, config.lora_alpha, config.lora_targets) == (None, None, None)


def test_a_given_flag_wins_over_the_methods_default():
    config = _config("--method", "lora", "--lr", "5e-4", "--epochs", "3", "--lora-rank", "8")
    assert (config.lr, config.epochs, config.lora_rank, config.lora_alpha) == (5e-4, 3, 8, 32)


def test_lora_options_with_full_fine_tuning_are_refused_by_flag_name():
    with pytest.raises((UsageError, ValidationError), match=r"--lora-rank.*--method lora only"):
        _config("--lora-rank", "8")


def test_lora_targets_name_the_layers_that_get_adapters(tiny_base):
    model = build_classifier(tiny_base, LABELS, method="lora", lora_rank=4, lora_targets=["query", "value"])
    # PEFT names a LoRA weight <layer>.lora_A.<adapter>.weight
    adapted = {name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters()
               if ".lora_A." in name}
    assert adapted == {"query", "value"}


def test_an_unknown_lora_target_is_refused_with_the_bases_linear_layers(tiny_base):
    with pytest.raises(BaseModelError, match=r"--lora-targets qproj: no such module.*query") as caught:
        build_classifier(tiny_base, LABELS, method="lora", lora_targets=["qproj"])
    assert isinstance(caught.value, UsageError)

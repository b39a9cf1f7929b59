"""`attune finetune --head-warmup-steps`: the new classification head trains alone, the encoder frozen."""
from __future__ import annotations

import pytest
import torch

from cluster import get_settings
from cluster.cli import build_parser
from train import FinetuneConfig
from train._base import load_tokenizer
from train._head_only import train_head_alone
from train.finetune.cli import finetune_config_from_args
from train.finetune.model import build_classifier, classifier_head

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["gold is up 150%", "oil slumps 4%", "markets flat", "gold falls", "bonds steady", "gold rallies"]


def _batch(base):
    enc = load_tokenizer(base)(TEXTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([2, 0, 1, 0, 1, 2])


@pytest.mark.parametrize("method", ["full", "lora"])
def test_only_the_head_moves_and_every_flag_is_restored(tiny_base, one_rank_group, method):
    model = build_classifier(tiny_base, LABELS, method=method, seed=0)
    model.train()
    head = {id(p) for p in classifier_head(model)}
    assert head and len(head) < sum(1 for _ in model.parameters())
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask, labels = _batch(tiny_base)

    losses = train_head_alone(model, classifier_head(model),
                              lambda step: model(input_ids=ids, attention_mask=mask, labels=labels).loss,
                              40, rank=0, world=1, interval_s=60.0)
    assert len(losses) == 40 and losses[-1] < losses[0]
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (id(p) in head), name
        assert p.requires_grad == trainable[name], name  # LoRA's frozen base stays frozen
    assert model.training


def test_lora_head_names(tiny_base):
    model = build_classifier(tiny_base, LABELS, method="lora", seed=0)
    names = [n for n, p in model.named_parameters() if any(p is h for h in classifier_head(model))]
    assert names and all("classifier" in n and "lora_" not in n for n in names)
    assert all(p.requires_grad for p in classifier_head(model))


def test_the_flag_defaults_off_reaches_the_config_and_is_bounded(tmp_path):
    settings = get_settings(home=str(tmp_path))
    argv = ["finetune", "--tenant", "t", "--data", "d.jsonl"]
    assert finetune_config_from_args(build_parser().parse_args(argv), settings).head_warmup_steps == 0
    args = build_parser().parse_args([*argv, "--head-warmup-steps", "50"])
    assert finetune_config_from_args(args, settings).head_warmup_steps == 50
    with pytest.raises(ValueError, match="head_warmup_steps"):
        FinetuneConfig(tenant="t", data="d.jsonl", head_warmup_steps=-1)


def test_a_run_that_starts_from_a_checkpoint_does_not_warm_again(tiny_base, one_rank_group, monkeypatch):
    """The checkpoint (the run's own after a restart, or another trial's under PBT) holds the warmed head."""
    import ray.train
    import ray.train.torch

    from train.finetune.loop import _encode, _loader, _warm_head

    model = build_classifier(tiny_base, LABELS, seed=0)
    rows = [(t, i % 3) for i, t in enumerate(TEXTS)]
    loader = _loader(_encode(load_tokenizer(tiny_base), rows, 16), 2, 0, 1, 0, shuffle=True)
    cfg = FinetuneConfig(tenant="t", data="d.jsonl", head_warmup_steps=3)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: object())
    assert _warm_head(cfg, model, loader, 0, 1, {}) == []  # restarted from its own checkpoint
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert _warm_head(cfg, model, loader, 0, 1, {"initial_checkpoint": "/ckpt"}) == []  # PBT
    assert _warm_head(cfg.model_copy(update={"head_warmup_steps": 0}), model, loader, 0, 1, {}) == []
    head = classifier_head(model)[0].detach().clone()
    assert len(_warm_head(cfg, model, loader, 0, 1, {})) == 3  # a fresh run warms its head
    assert not torch.equal(classifier_head(model)[0].detach(), head)

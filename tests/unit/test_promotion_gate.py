"""The promotion gate: candidate and champion scored by the same code on the same test rows (no Ray).

Models here are tiny BERTs whose head always answers one label, so their macro-F1 on the
test split is known in advance: answering the majority label beats answering the minority one.
"""
from __future__ import annotations

import pytest
import torch

from registry import Registry
from tests.conftest import write_jsonl
from tests.registry_helpers import sqlite_registry
from train._base import load_tokenizer
from train._data import load_tenant_data
from train.finetune.export import build_manifest, export_model
from train.finetune.model import build_classifier
from train.finetune.register import register_and_gate, run_record, score_model

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rows = [{"text": f"headline number {i} about markets", "label": "positive" if i % 10 < 7 else "negative"}
            for i in range(300)]
    return load_tenant_data(str(write_jsonl(tmp_path_factory.mktemp("data") / "t.jsonl", rows)))


def constant_model(tiny_base, directory, answer: str):
    model = build_classifier(tiny_base, LABELS)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0 if label == answer else -5.0 for label in LABELS]))
    manifest = build_manifest(tenant="t", labels=LABELS, base=str(tiny_base), method="full", data_hash="x",
                              metrics={}, temperature=1.0, max_seq_len=16)
    return export_model(model, load_tokenizer(tiny_base), directory, manifest)


@pytest.fixture(scope="module")
def models(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {answer: constant_model(tiny_base, root / answer, answer) for answer in LABELS}


def _gate(reg: Registry, model_dir, dataset, **kwargs) -> dict:
    record = run_record("finetune", "finetune-t", {"lr": 1e-4}, {"test_macro_f1": 0.5}, [], tenant="t",
                        base="minilm", method="full", data_uri=dataset.source, dataset=dataset)
    return register_and_gate(reg, "t", model_dir, record, dataset, **{"promote": True, "margin": 0.0,
                                                                     "floor": 0.3, **kwargs})


def test_constant_models_score_as_expected(models, dataset):
    texts, truth = [e.text for e in dataset.test], [e.label for e in dataset.test]
    majority, minority = score_model(models["positive"], texts, truth, LABELS), \
        score_model(models["negative"], texts, truth, LABELS)
    p = sum(t == "positive" for t in truth) / len(truth)
    assert majority == pytest.approx((2 * p / (1 + p)) / 2, abs=1e-6)
    assert minority < majority


def test_first_version_needs_the_floor(tmp_path, models, dataset):
    reg = sqlite_registry(tmp_path / "store")
    result = _gate(reg, models["negative"], dataset, floor=0.3)
    assert result["alias"] == "challenger" and not result["promotion"]["promoted"]
    assert "first version" in result["promotion"]["reason"] and "< floor 0.3000" in result["promotion"]["reason"]
    assert reg.champion_or_none("t") is None
    result = _gate(reg, models["positive"], dataset, floor=0.3)
    assert result == {**result, "model_version": "2", "alias": "champion"}
    assert reg.champion("t").version == "2"


def test_worse_candidate_is_kept_as_challenger_with_the_reason(tmp_path, models, dataset):
    reg = sqlite_registry(tmp_path / "store")
    _gate(reg, models["positive"], dataset)
    result = _gate(reg, models["negative"], dataset)
    decision = result["promotion"]
    assert result["alias"] == "challenger" and not decision["promoted"]
    assert decision["champion_version"] == "1" and decision["candidate_macro_f1"] < decision["champion_macro_f1"]
    assert "champion v1" in decision["reason"] and "same" in decision["reason"]
    version = reg.get_version("t", "2")
    assert version.tags["attune.promotion.promoted"] == "false"
    assert version.tags["attune.promotion.reason"] == decision["reason"]
    assert reg.champion("t").version == "1"
    # an equally good candidate wins (>=), a margin lets a worse one through
    assert _gate(reg, models["positive"], dataset)["promotion"]["promoted"]
    gap = decision["champion_macro_f1"] - decision["candidate_macro_f1"]
    assert _gate(reg, models["negative"], dataset, margin=gap + 0.01)["promotion"]["promoted"]


def test_no_promote_registers_without_gating(tmp_path, models, dataset):
    reg = sqlite_registry(tmp_path / "store")
    result = _gate(reg, models["positive"], dataset, promote=False)
    assert result["alias"] == "challenger" and "--no-promote" in result["promotion"]["reason"]
    assert reg.champion_or_none("t") is None


def test_an_unreadable_champion_never_silently_loses_or_wins(tmp_path, models, dataset):
    reg = sqlite_registry(tmp_path / "store")
    _gate(reg, models["positive"], dataset)
    next((tmp_path / "store" / "artifacts").rglob("model.safetensors")).write_bytes(b"garbage")
    decision = _gate(reg, models["positive"], dataset)["promotion"]
    assert not decision["promoted"] and "could not be evaluated" in decision["reason"]
    assert "checksum" in decision["reason"]

"""Exported model directories load without guessing, for both methods (no Ray, tiny model)."""
import json

import numpy as np
import pytest

from train._base import load_tokenizer
from train._errors import TrainError
from train._manifest import MANIFEST
from train.finetune.export import build_manifest, export_model, read_manifest
from train.finetune.model import build_classifier
from train.finetune.predict import Predictor


@pytest.mark.parametrize("method", ["full", "lora"])
def test_export_then_predict_round_trip(tiny_base, tmp_path, method):
    labels = ["negative", "neutral", "positive"]
    model = build_classifier(tiny_base, labels, method=method, lora_rank=4)
    manifest = build_manifest(tenant="john", labels=labels, base=str(tiny_base), method=method,
                              data_hash="abc", metrics={"test_accuracy": 0.5}, temperature=2.0,
                              max_seq_len=32)
    out = export_model(model, load_tokenizer(tiny_base), tmp_path / "m", manifest)
    written = json.loads((out / MANIFEST).read_text())
    for key in ("tenant", "labels", "base", "method", "data_hash", "metrics", "temperature",
                "attune_version", "created_at"):
        assert key in written
    if method == "lora":
        assert (out / "adapter_config.json").is_file()
        assert not (out / "model.safetensors").exists()  # only the adapter and head, never the base
    predictor = Predictor(out)
    preds = predictor.predict(["gold is up 150% in after-hours trading", "oil falls"])
    assert [set(p["scores"]) for p in preds] == [set(labels)] * 2
    for p in preds:
        assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["label"] == max(p["scores"], key=p["scores"].get)
    # the stored temperature is applied: T=2 flattens the raw softmax
    raw = predictor.logits(["oil falls"])[0]
    raw_p = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
    assert max(preds[1]["scores"].values()) <= raw_p.max() + 1e-6


def test_reading_a_directory_without_manifest_says_what_to_pass(tmp_path):
    with pytest.raises(TrainError, match="attune.json is missing"):
        read_manifest(tmp_path)


def test_a_seed_draws_the_same_head_whatever_else_the_base_lacks(tiny_base, tmp_path):
    """An `attune pretrain` export has no [CLS] pooler; its classifier must still start from the head
    MiniLM's would under the same seed, or a base comparison measures the head's draw, not the base."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    headless = tmp_path / "no-pooler"
    shutil.copytree(tiny_base, headless)
    weights = load_file(str(headless / "model.safetensors"))
    pooler = [key for key in weights if "pooler" in key]
    assert pooler, "the tiny base should carry a pooler for this test to mean anything"
    save_file({k: v for k, v in weights.items() if k not in pooler}, str(headless / "model.safetensors"),
              metadata={"format": "pt"})
    labels = ["negative", "neutral", "positive"]

    torch.manual_seed(123)  # the global stream must not matter
    full = build_classifier(tiny_base, labels, seed=7)
    torch.manual_seed(456)
    stripped = build_classifier(headless, labels, seed=7)
    assert torch.equal(full.classifier.weight, stripped.classifier.weight)
    assert torch.count_nonzero(full.classifier.weight) == full.classifier.weight.numel()
    other = build_classifier(tiny_base, labels, seed=8)
    assert not torch.equal(full.classifier.weight, other.classifier.weight)
    # the pooler the stripped base lacked is drawn too (after the head), the one it had is loaded
    assert not torch.equal(full.bert.pooler.dense.weight, stripped.bert.pooler.dense.weight)
    loaded = weights[next(k for k in pooler if k.endswith("dense.weight"))]
    assert torch.equal(full.bert.pooler.dense.weight, loaded)

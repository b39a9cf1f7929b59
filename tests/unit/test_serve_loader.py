"""Serve's own loader: same scores as training's predictor, temperature applied, LoRA tenants share one base."""
from __future__ import annotations

import numpy as np
import pytest

from serve._errors import ModelUnavailableError
from serve._loader import FullPredictor, LoraPredictor, ModelLoader, softmax
from tests.serve_helpers import LABELS, calibrated_top_score, constant_export

TEXTS = ["gold is up 150% in after-hours trading", "oil slumps", "a much longer headline " * 5]


@pytest.fixture(scope="module")
def exports(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-exports")
    return {(method, answer): constant_export(tiny_base, root / f"{method}-{answer}", answer, method)
            for method in ("full", "lora") for answer in LABELS}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_scores_match_training_predictor_with_the_registry_temperature(exports, tiny_base, method):
    from train import Predictor

    model_dir = exports[(method, "positive")]
    reference = Predictor(model_dir, base_dir=tiny_base, temperature=1.7).predict(TEXTS)
    served = ModelLoader().load(model_dir, f"t:{method}", temperature=1.7).predict(TEXTS)
    assert [p["label"] for p in served] == [p["label"] for p in reference] == ["positive"] * 3
    for ours, theirs in zip(served, reference):
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-5)
    assert served[0]["scores"]["positive"] == pytest.approx(calibrated_top_score(), abs=1e-4)


def test_temperature_flattens_scores(exports):
    loader = ModelLoader()
    sharp = loader.load(exports[("full", "negative")], "a:1", temperature=1.0).predict(TEXTS[:1])[0]
    flat = loader.load(exports[("full", "negative")], "a:2", temperature=4.0).predict(TEXTS[:1])[0]
    assert sharp["label"] == flat["label"] == "negative"
    assert 0.5 < flat["scores"]["negative"] < sharp["scores"]["negative"]
    assert softmax(np.array([[0.0, 0.0]]), 2.0).tolist() == [[0.5, 0.5]]


def test_lora_tenants_share_one_base_copy(exports):
    loader = ModelLoader()
    john = loader.load(exports[("lora", "positive")], "john:1", temperature=1.0)
    base_params = {p.data_ptr() for n, p in john.base.encoder.named_parameters() if "lora_" not in n}
    base_bytes = sum(p.numel() * p.element_size() for n, p in john.base.encoder.named_parameters()
                     if "lora_" not in n)
    jane = loader.load(exports[("lora", "negative")], "jane:1", temperature=1.0)
    assert isinstance(john, LoraPredictor) and isinstance(jane, LoraPredictor)
    assert john.base is jane.base and john.base.encoder is jane.base.encoder and len(loader.bases) == 1
    assert base_params <= {p.data_ptr() for p in jane.base.encoder.parameters()}
    grown = sum(p.numel() * p.element_size() for n, p in jane.base.encoder.named_parameters() if "lora_" not in n)
    assert grown == base_bytes  # the second tenant added no base weights, only its adapter
    assert jane.base.adapters == {"john:1", "jane:1"}
    # each tenant still answers with its own adapter and head, interleaved on the shared base
    assert [john.predict(TEXTS[:1])[0]["label"], jane.predict(TEXTS[:1])[0]["label"],
            john.predict(TEXTS[:1])[0]["label"]] == ["positive", "negative", "positive"]
    jane.release()
    assert john.base.adapters == {"john:1"} and john.predict(TEXTS[:1])[0]["label"] == "positive"


def test_full_models_are_separate(exports):
    model = ModelLoader().load(exports[("full", "positive")], "x:1", temperature=1.0)
    assert isinstance(model, FullPredictor) and model.mean_pooled


def test_unusable_directories_are_503(tmp_path, exports):
    with pytest.raises(ModelUnavailableError, match="attune.json is missing"):
        ModelLoader().load(tmp_path, "x:1", temperature=1.0)
    broken = tmp_path / "lora"
    broken.mkdir()
    for f in exports[("lora", "positive")].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    text = (broken / "attune.json").read_text().replace(str(exports[("lora", "positive")].parent.parent), "/nope")
    (broken / "attune.json").write_text(text.replace('"base": "', '"base": "/nope/'))
    with pytest.raises(ModelUnavailableError, match="not available on this replica"):
        ModelLoader().load(broken, "x:1", temperature=1.0)


def _random_lora_export(tiny_base, directory, seed: int):
    """A LoRA export whose adapters and head all matter (non-zero lora_B, random head)."""
    import torch

    from train._base import load_tokenizer
    from train.finetune.export import build_manifest, export_model
    from train.finetune.model import build_classifier

    torch.manual_seed(seed)
    model = build_classifier(tiny_base, LABELS, method="lora")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                param.normal_(0, 0.5)
    manifest = build_manifest(tenant="t", labels=LABELS, base=str(tiny_base), method="lora", data_hash="x",
                              metrics={}, temperature=1.0, max_seq_len=16)
    export_model(model, load_tokenizer(tiny_base), directory, manifest)
    return directory


def test_a_second_adapter_added_to_existing_lora_layers_scores_like_a_fresh_load(exports, tiny_base, tmp_path):
    from train import Predictor

    adapters = [_random_lora_export(tiny_base, tmp_path / f"a{seed}", seed) for seed in (1, 2)]
    loader = ModelLoader()
    first = loader.load(exports[("lora", "positive")], "first:1", temperature=1.0)  # wraps the layers
    injected, inject = [], first.base._inject
    first.base._inject = lambda *args: injected.append(args[0]) or inject(*args)  # count PEFT injections
    loaded = []
    for i, adapter in enumerate(adapters):  # these take the path that adds to the wrapped layers
        loaded.append(loader.load(adapter, f"t{i}:1", temperature=1.0))
        served = loaded[-1].predict(TEXTS)
        reference = Predictor(adapter, base_dir=tiny_base, temperature=1.0).predict(TEXTS)
        fresh = ModelLoader().load(adapter, "fresh:1", temperature=1.0).predict(TEXTS)
        for ours, theirs, alone in zip(served, reference, fresh):
            assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-5)
            assert ours["scores"] == pytest.approx(alone["scores"], abs=1e-5)
    assert injected == []  # both were added to the existing LoRA layers; PEFT never walked the encoder
    assert first.base.adapters == {"first:1", "t0:1", "t1:1"}
    assert first.predict(TEXTS[:1])[0]["label"] == "positive"


def test_an_adapter_missing_half_of_a_lora_pair_is_503(exports, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(exports[("lora", "positive")], broken)
    path = broken / "adapter_model.safetensors"
    weights = load_file(str(path))
    dropped = next(k for k in weights if "lora_B" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(path))
    loader = ModelLoader()
    ok = loader.load(exports[("lora", "negative")], "ok:1", temperature=1.0)
    with pytest.raises(ModelUnavailableError, match="lora_A/lora_B pairs"):
        loader.load(broken, "broken:1", temperature=1.0)
    (base,) = loader.bases.values()
    assert base.adapters == {"ok:1"}  # the failed tenant left nothing behind
    assert ok.predict(TEXTS[:1])[0]["label"] == "negative"

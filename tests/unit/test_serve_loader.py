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
    from train._export import Predictor

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

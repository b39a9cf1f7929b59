"""The one artifact contract and the MLflow Model every version is (no Ray, tiny base, SQLite registry).

An export says what it is (a mean-pooled classifier's config.json that plain transformers refuses), a
registered version carries MLmodel with a signature, an input example and the version's temperature,
and MLflow's loader scores as attune's Predictor does, for both methods.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from registry import MEAN_POOL_MODEL_TYPE, InvalidModelDirError, check_model_dir, scores, softmax
from tests.registry_helpers import fake_model_dir, record, sqlite_registry, use_mlflow_store
from tests.serve_helpers import TEMPERATURE, calibrated_top_score, constant_export, random_lora_export

TEXTS = ["gold is up 150% in after-hours trading", "oil slumps", "a much longer headline " * 5]
FLAVOR_FILES = {"MLmodel", "input_example.json", "serving_input_example.json", "python_env.yaml", "conda.yaml",
                "requirements.txt"}


@pytest.fixture(scope="module")
def exports(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract-exports")
    return {"full": constant_export(tiny_base, root / "full", "positive"),
            "lora": random_lora_export(tiny_base, root / "lora", seed=5)}


def test_exports_follow_the_contract_and_plain_transformers_refuses_them(exports):
    for method, directory in exports.items():
        assert check_model_dir(directory)["method"] == method
        assert json.loads((directory / "config.json").read_text())["model_type"] == MEAN_POOL_MODEL_TYPE
    # a process without attune's classifier: Hugging Face's Auto class must fail, not score with BERT's pooler
    script = ("import sys\nfrom transformers import AutoModelForSequenceClassification as A\nfor d in sys.argv[1:]:\n"
              "    try:\n        A.from_pretrained(d); print('loaded')\n"
              "    except ValueError as e:\n        print('refused' if 'attune_mean_pool_bert' in str(e) else e)\n")
    proc = subprocess.run([sys.executable, "-c", script, *map(str, exports.values())], capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.split() == ["refused", "refused"], proc.stdout + proc.stderr[-2000:]


def test_with_attune_loaded_the_auto_class_builds_the_same_mean_pooled_model(exports):
    from transformers import AutoModelForSequenceClassification

    from registry import ExportedClassifier, MeanPoolBertForSequenceClassification

    ours = ExportedClassifier(exports["full"])
    plain = AutoModelForSequenceClassification.from_pretrained(str(exports["full"])).eval()
    assert isinstance(plain, MeanPoolBertForSequenceClassification)
    enc = ours.tokenizer(TEXTS, truncation=True, padding=True, max_length=ours.max_seq_len, return_tensors="pt")
    assert plain(**enc).logits.detach().numpy() == pytest.approx(ours.logits(TEXTS), abs=1e-6)


def test_an_incomplete_export_is_refused_naming_the_missing_file(exports, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exports["lora"], broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidModelDirError, match=r"lora export without \['adapter_model.safetensors'\]"):
        check_model_dir(broken)


def test_scores_are_the_calibrated_softmax_rounded():
    assert softmax([[0.0, 0.0]], 2.0).tolist() == [[0.5, 0.5]]
    one = scores([2.0, 0.0, 9.0], ["a", "b"], 1.0)  # a padded head: the extra logit is ignored
    assert one["label"] == "a" and one["scores"] == {"a": 0.880797, "b": 0.119203}


@pytest.mark.parametrize("method, slope", [("full", 0.0), ("lora", 0.0), ("lora", -0.3)])
def test_a_registered_version_is_an_mlflow_model_that_scores_as_attune(exports, tmp_path, monkeypatch, method, slope):
    import mlflow.pyfunc

    from train import Predictor

    reg = sqlite_registry(tmp_path / "home")
    calibrated = record("john")  # its T is 1.7
    calibrated.lineage.temperature_slope = slope
    version = reg.register_candidate("john", exports[method], calibrated).version
    use_mlflow_store(monkeypatch, reg.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/tenant.john/{version}")
    info = loaded.metadata
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names() == ["label", "scores"]
    assert info.flavors["python_function"]["config"] == {"temperature": TEMPERATURE, "temperature_slope": slope}
    assert reg.get_version("john", version).temperature_slope == slope
    reference = Predictor(exports[method], temperature=TEMPERATURE, temperature_slope=slope).predict(TEXTS)
    if slope:  # the slope changes the scores, row by row
        plain = Predictor(exports[method], temperature=TEMPERATURE).predict(TEXTS)
        assert all(abs(a["scores"][k] - b["scores"][k]) > 1e-3 for a, b in zip(plain, reference) for k in a["scores"])
    theirs = loaded.predict(pd.DataFrame({"text": TEXTS})).to_dict("records")
    assert [p["label"] for p in theirs] == [p["label"] for p in reference]
    for ours, pyfunc in zip(reference, theirs):
        assert pyfunc["scores"] == pytest.approx(ours["scores"], abs=1e-5)
    assert not FLAVOR_FILES & {p.name for p in exports[method].iterdir()}  # the export itself is not changed
    if method == "full":  # a constant head: +-5 logits; the temperature can be overridden at load time
        assert theirs[0]["scores"]["positive"] == pytest.approx(calibrated_top_score(temperature=TEMPERATURE), abs=1e-5)
        raw = mlflow.pyfunc.load_model(f"models:/tenant.john/{version}", model_config={"temperature": 1.0})
        top = raw.predict(pd.DataFrame({"text": TEXTS[:1]}))["scores"][0]["positive"]
        assert top == pytest.approx(calibrated_top_score(temperature=1.0), abs=1e-5)


def _mlmodel(directory: Path) -> dict:
    import yaml

    return yaml.safe_load((directory / "MLmodel").read_text())


def test_the_checksum_covers_the_flavor_files_and_a_downloaded_version_registers_anew(tmp_path):
    from registry import ArtifactIntegrityError

    reg = sqlite_registry(tmp_path / "home")
    reg.register_candidate("john", fake_model_dir(tmp_path / "export"), record("john"))
    first, _ = reg.download("john", "1", tmp_path / "v1")  # checked against the checksum taken at registration
    assert FLAVOR_FILES <= {p.name for p in first.iterdir()}
    assert _mlmodel(first)["flavors"]["python_function"]["config"] == {"temperature": TEMPERATURE,
                                                                         "temperature_slope": 0.0}
    assert json.loads((first / "input_example.json").read_text())["columns"] == ["text"]

    again = record("john")
    again.lineage.temperature = 2.5
    reg.register_candidate("john", first, again)  # an export downloaded from the registry, imported again
    second, _ = reg.download("john", "2", tmp_path / "v2")
    assert _mlmodel(second)["flavors"]["python_function"]["config"] == {"temperature": 2.5, "temperature_slope": 0.0}
    assert _mlmodel(first)["flavors"]["python_function"]["config"]["temperature"] == TEMPERATURE  # untouched

    stored = Path(reg.get_version("john", "1").source.removeprefix("file://")) / "MLmodel"
    stored.write_text(stored.read_text().replace("temperature: 1.7", "temperature: 9.0"))
    with pytest.raises(ArtifactIntegrityError, match="do not match the checksum"):
        reg.download("john", "1", tmp_path / "tampered")


def test_registration_refuses_an_incomplete_export_before_making_a_run(tmp_path):
    reg = sqlite_registry(tmp_path / "home")
    export = fake_model_dir(tmp_path / "export")
    (export / "config.json").unlink()
    with pytest.raises(InvalidModelDirError, match=r"full export without \['config.json'\]"):
        reg.register_candidate("john", export, record("john"))
    assert reg.client.search_runs([e.experiment_id for e in reg.client.search_experiments()]) == []


def test_the_pyfunc_names_a_missing_text_column():
    from registry._pyfunc import PyfuncInputError, _texts

    assert _texts(pd.DataFrame({"text": ["a", "b"]})) == ["a", "b"] and _texts("one") == ["one"]
    with pytest.raises(PyfuncInputError, match="no 'text'"):
        _texts(pd.DataFrame({"body": ["a"]}))
    with pytest.raises(PyfuncInputError, match=r"rows \[1\] are not strings"):
        _texts(["a", 3])


def test_a_lora_export_of_an_earlier_attune_gets_its_config_at_registration(exports, tmp_path):
    import shutil

    older = tmp_path / "older"
    shutil.copytree(exports["lora"], older)
    (older / "config.json").unlink()  # LoRA exports carried no config.json: transformers loaded the bare base
    reg = sqlite_registry(tmp_path / "home")
    reg.register_candidate("john", older, record("john"))
    stored, _ = reg.download("john", "1", tmp_path / "v1")
    config = json.loads((stored / "config.json").read_text())
    assert config["model_type"] == MEAN_POOL_MODEL_TYPE and config["id2label"] == {"0": "negative", "1": "positive"}
    assert not (older / "config.json").exists()


def test_a_registered_base_resolves_through_the_environments_registry(attune_home, tmp_path):
    """A LoRA version trained from ``models:/base.<name>/<version>`` loads (attune predict, the pyfunc) with
    that base fetched from the registry, as training fetched it."""
    from cluster import get_settings
    from registry import Lineage, Registry, RunRecord, resolve_base

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    lineage = Lineage(kind="pretrain", base="tiny", data_uri="/data/wiki.txt", data_hash="c" * 64,
                      code_version="abc123", attune_version="0.1.0")
    Registry.from_settings(get_settings()).register_base("wiki", base, RunRecord(run_name="wiki", lineage=lineage))
    local = resolve_base("models:/base.wiki/1")
    assert local.is_relative_to(attune_home.resolve()) and json.loads((local / "config.json").read_text()) == {
        "model_type": "bert", "hidden_size": 32}


def test_the_manifests_temperature_slope_is_what_an_export_predicts_with(exports, tmp_path):
    """``attune predict --model DIR`` (no registry) applies the export's own temperature and slope."""
    import shutil

    from registry import ExportedClassifier, read_manifest, write_manifest
    from train import Predictor

    sloped = tmp_path / "sloped"
    shutil.copytree(exports["lora"], sloped)
    write_manifest(sloped, {**read_manifest(sloped), "temperature": 2.0, "temperature_slope": -0.4})
    logits = ExportedClassifier(sloped).logits(TEXTS)
    expected = [scores(row, read_manifest(sloped)["labels"], 2.0, -0.4) for row in logits]
    predicted = Predictor(sloped).predict(TEXTS)
    assert [p["scores"] for p in predicted] == [e["scores"] for e in expected]
    assert [p["scores"] for p in predicted] != [p["scores"] for p in Predictor(exports["lora"]).predict(TEXTS)]

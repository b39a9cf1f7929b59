"""Serving tenants on an MPNet base (all-mpnet-base-v2's shape: mean pooling) next to MiniLM-style BERT ones,
without Ray: LoRA tenants of MPNet share one gathered bank, a replica holds one bank per base and runs a
mixed batch as one pass per base, and a full MPNet fine-tune is served by its mean-pooled classifier."""
from __future__ import annotations

import asyncio
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

from serve._artifacts import softmax
from serve._backoff import LoadBackoff
from serve._batch import Request, run_batch
from serve._cache import ModelCache
from serve._errors import ModelUnavailableError
from tests.conftest import make_tiny_mpnet
from tests.serve_helpers import LABELS, random_lora_export

TEXTS = ["gold is up 150% in after-hours trading", "oil slumps", "a much longer headline about rates " * 4]
THREE = ("bearish", "bullish", "neutral")


@pytest.fixture(scope="module")
def mpnet_base(tmp_path_factory) -> Path:
    return make_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet") / "base")


@pytest.fixture(scope="module")
def exports(mpnet_base, tiny_base, tmp_path_factory) -> dict[str, Path]:
    """Three MPNet LoRA tenants (ranks 4 and 8, two label sets) and two BERT ones, saved as `attune
    finetune --method lora` saves them (PEFT over attune's classifier, random lora_A, lora_B and head)."""
    root = tmp_path_factory.mktemp("mpnet-exports")
    out = {f"m{s}": random_lora_export(mpnet_base, root / f"m{s}", 10 + s, THREE if s == 1 else tuple(LABELS),
                                       rank=8 if s == 2 else 4, max_seq_len=12 + s) for s in range(3)}
    out.update({f"b{s}": random_lora_export(tiny_base, root / f"b{s}", 20 + s, THREE if s else tuple(LABELS),
                                            rank=4, max_seq_len=14) for s in range(2)})
    return out


class _Store:
    """The registry's download, from a dict of export folders (tenant -> folder; every version is "1")."""

    def __init__(self, exports: dict[str, Path]):
        self.exports = exports

    def __call__(self, tenant: str, version: str, dest: Path) -> Path:
        shutil.copytree(self.exports[tenant], dest)
        return dest


def _cache(exports: dict[str, Path]) -> ModelCache:
    return ModelCache(_Store(exports), adapter_budget_bytes=2**30, max_full_models=4, load_timeout_s=60.0,
                      backoff=LoadBackoff(0.5, 2.0))


def _acquire(cache: ModelCache, tenants: list[str]) -> list:
    async def go():
        return [await cache.acquire(tenant, "1", "sum") for tenant in tenants]
    return asyncio.run(go())


@functools.cache
def _alone(export: Path, base: Path, text: str) -> np.ndarray:
    """The logits of ``text`` by the export's own PEFT model (PeftModel over the base's mean-pooled
    classifier, ``registry.load_classifier``), computed for this text alone."""
    [row] = _peft_model(export, base).logits([text])
    return row


@functools.cache
def _peft_model(export: Path, base: Path):
    from registry import ExportedClassifier

    return ExportedClassifier(export, base_dir=base)


def test_mpnet_lora_tenants_share_one_bank_and_score_as_their_own_peft_model(exports, mpnet_base):
    from serve._artifacts import read_lora_adapter

    adapter = read_lora_adapter(exports["m0"])
    assert sorted(adapter.layers) == [f"encoder.layer.{i}.attention.attn.{p}" for i in (0, 1) for p in "kqv"]
    cache = _cache({t: exports[t] for t in ("m0", "m1", "m2")})
    models = _acquire(cache, ["m0", "m1", "m2"])
    (bank,) = cache.banks.values()
    assert type(bank.encoder).__name__ == "MPNetModel" and bank.encoder.pooler is None
    assert len(bank.used) == 3 and bank.rank == 8 and len(bank.layers) == 6
    texts = [TEXTS[(i + i // 3) % 3] for i in range(len(models) * 2)]  # each tenant with two different texts
    owners = [models[i % 3] for i in range(len(texts))]
    rows = bank.logits([m.slot for m in owners], texts, [m.max_seq_len for m in owners])
    for model, text, row in zip(owners, texts, rows):
        reference = _alone(exports[model.tenant], mpnet_base, text)
        np.testing.assert_allclose(row[:len(model.labels)], reference, atol=1e-5)
    # the adapters matter: without them (the plain base and each tenant's head), every row scores otherwise
    for layer in bank.layers.values():
        layer.active = None
    plain = [bank.head_weight[m.slot] @ p + bank.head_bias[m.slot] for m, p in zip(owners, _pooled(bank, texts))]
    assert min(float(np.abs(row - p.numpy()).max()) for row, p in zip(rows, plain)) > 1e-2


def _pooled(bank, texts: list[str]):
    import torch

    from registry import mean_pool
    from serve._lora import encode

    ids, mask = encode(bank.tokenizer, texts, [64] * len(texts))
    with torch.inference_mode():
        return mean_pool(bank.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def test_a_replica_holds_one_bank_per_base_and_runs_a_mixed_batch_as_one_pass_per_base(exports, mpnet_base,
                                                                                         tiny_base):
    tenants = ["m0", "b0", "m1", "b1", "m2"]
    cache = _cache(exports)
    models = _acquire(cache, tenants)
    assert set(cache.banks) == {str(mpnet_base.resolve()), str(tiny_base.resolve())}
    kinds = {type(bank.encoder).__name__: len(bank.used) for bank in cache.banks.values()}
    assert kinds == {"MPNetModel": 3, "BertModel": 2}
    calls = []
    for bank in cache.banks.values():
        forward = bank.logits
        bank.logits = lambda slots, texts, lengths, _bank=bank, _f=forward: (
            calls.append((_bank, list(slots))) or _f(slots, texts, lengths))
    requests = [Request(m, [TEXTS[(i + j) % 3] for j in range(1 + i % 2)], 1.0) for i, m in enumerate(models)]
    mixed = run_batch(requests)
    row_slots = {prefix: sorted(r.model.slot for r in requests for _ in r.texts if r.model.tenant[0] == prefix)
                 for prefix in "bm"}
    assert sorted((type(b.encoder).__name__, sorted(s)) for b, s in calls) == [
        ("BertModel", row_slots["b"]), ("MPNetModel", row_slots["m"])]  # one pass per base, every row in it
    for model, request, answers in zip(models, requests, mixed):
        base = mpnet_base if model.tenant.startswith("m") else tiny_base
        assert model.bank is cache.banks[str(base.resolve())]
        for text, answer in zip(request.texts, answers):
            expected = softmax(_alone(exports[model.tenant], base, text))
            assert answer["label"] == model.labels[int(expected.argmax())]
            assert [answer["scores"][label] for label in model.labels] == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_full_mpnet_fine_tune_is_served_by_its_mean_pooled_classifier(mpnet_base, tmp_path):
    import torch

    from serve._full import FullModel
    from serve._lora import encode
    from train._base import load_tokenizer
    from train.finetune.export import build_manifest, export_model
    from train.finetune.model import build_classifier

    torch.manual_seed(3)
    model = build_classifier(mpnet_base, list(THREE), method="full").eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
        model.classifier.bias.normal_(0, 0.5)
    manifest = build_manifest(tenant="m", labels=list(THREE), base=str(mpnet_base), method="full", data_hash="x",
                              metrics={}, temperature=1.0, max_seq_len=16)
    export = export_model(model, load_tokenizer(mpnet_base), tmp_path / "full", manifest)
    full = FullModel(export)
    assert type(full.model).__name__ == "MeanPoolMPNetForSequenceClassification"
    served = full.logits(TEXTS, [16] * len(TEXTS))
    for text, row in zip(TEXTS, served):
        ids, mask = encode(full.tokenizer, [text], [16])
        with torch.no_grad():
            own = model(input_ids=ids, attention_mask=mask).logits[0].numpy()
            first_token = model.classifier(model.mpnet(input_ids=ids, attention_mask=mask).last_hidden_state[0, 0])
        np.testing.assert_allclose(row, own, atol=1e-5)
        assert float(np.abs(row - first_token.numpy()).max()) > 1e-3  # mean-pooled, not read off the first token


def test_a_base_that_is_not_mean_pooled_gets_no_bank(mpnet_base, tmp_path):
    from serve._lora import LoraBank

    cls_base = make_tiny_mpnet(tmp_path / "cls-mpnet", mean=False)
    with pytest.raises(ModelUnavailableError, match=r"mean-pooled base.*'mpnet' without mean pooling.*full"):
        LoraBank(cls_base)
    assert type(LoraBank(mpnet_base).encoder).__name__ == "MPNetModel"

"""Encoder presets: sizes, one builder, tied MLM decoder, activation checkpointing, MiniLM with a new head."""
from __future__ import annotations

import pytest
import torch

from train._errors import ConfigError
from train._presets import (
    PRESETS,
    analytic_parameter_count,
    build_mlm_model,
    count_parameters,
    encoder_config,
    load_mlm_model,
    preset_shape,
)

BERT_VOCAB = 30522


@pytest.mark.parametrize("preset, vocab, low, high", [
    ("tiny", 4096, 0.8e6, 1.2e6),     # "about 1M" at its default vocabulary
    ("small", BERT_VOCAB, 25e6, 35e6),
    ("base", BERT_VOCAB, 105e6, 115e6),  # BERT-base: 110M
    ("large", BERT_VOCAB, 330e6, 345e6),  # BERT-large: 340M
])
def test_preset_sizes(preset, vocab, low, high):
    with torch.device("meta"):  # no memory, no initialisation: base and large cost nothing
        model = build_mlm_model(encoder_config(preset, vocab))
    count = count_parameters(model)
    assert low <= count <= high
    assert count == analytic_parameter_count(preset, vocab)
    assert PRESETS[preset].default_vocab == vocab


def test_tiny_decoder_is_tied_to_the_word_embeddings():
    model = build_mlm_model(encoder_config("tiny", 512))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    out = model(input_ids=torch.tensor([[2, 10, 11, 3]]), labels=torch.tensor([[-100, 10, -100, -100]]))
    assert out.logits.shape == (1, 4, 512) and torch.isfinite(out.loss)


def test_activation_checkpointing_is_on_for_base_and_large_only():
    assert [p for p, s in PRESETS.items() if s.activation_checkpointing] == ["base", "large"]
    model = build_mlm_model(encoder_config("tiny", 256), activation_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    out = model(input_ids=torch.tensor([[2, 10, 11, 3]]), labels=torch.tensor([[-100, 10, 11, -100]]))
    out.loss.backward()  # recomputation in backward works
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match="--preset 'huge' is unknown; choose one of tiny, small, base, large"):
        preset_shape("huge")


def test_minilm_gets_a_fresh_tied_mlm_head_and_keeps_its_encoder():
    from transformers import AutoModel

    from train import resolve_base

    minilm = resolve_base("minilm")
    model = load_mlm_model(minilm)
    encoder = AutoModel.from_pretrained(str(minilm))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert torch.equal(model.bert.encoder.layer[5].output.dense.weight, encoder.encoder.layer[5].output.dense.weight)
    assert model.config.vocab_size == 30522 and model.config.num_hidden_layers == 6


def test_continuing_an_mpnet_keeps_its_mean_pooling_in_the_export(tmp_path):
    """`attune pretrain --init mpnet`: MPNet gets a masked-LM head, and the export keeps the base's
    sentence-transformers pooling rule, so a tenant fine-tuned from it is mean-pooled like one on mpnet."""
    from registry import mean_pool_family
    from tests.conftest import make_tiny_mpnet
    from train.pretrain.export import keep_pooling

    base = make_tiny_mpnet(tmp_path / "base")
    model = load_mlm_model(base)
    assert type(model).__name__ == "MPNetForMaskedLM" and model.attune_new_head
    out = tmp_path / "export"
    model.save_pretrained(str(out))
    assert mean_pool_family(out) is None  # without the rule: transformers' first-token MPNet head
    assert keep_pooling(base, out)
    assert mean_pool_family(out) == "mpnet"
    (tmp_path / "no-rule").mkdir()
    assert not keep_pooling(tmp_path / "no-rule", tmp_path / "other")  # a base without a rule: nothing to copy
    assert not (tmp_path / "other").exists()

"""Head warm-up: a new MLM head trains alone first, the encoder (and the tied embeddings) untouched."""
from __future__ import annotations

import pytest
import torch

from train._presets import build_mlm_model, encoder_config, load_mlm_model
from train.pretrain.config import PretrainConfig
from train.pretrain.mlm import mask_tokens
from train.pretrain.mlm_head import MaskedLMLoss
from train.pretrain.warmup import head_parameters, head_warmup_steps, warm_head

VOCAB = 256


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny plain BertModel on disk: an encoder without an MLM head, as all-MiniLM-L6-v2 ships."""
    torch.manual_seed(0)
    mlm = build_mlm_model(encoder_config("tiny", VOCAB))
    path = tmp_path_factory.mktemp("encoder")
    mlm.bert.save_pretrained(str(path))
    return path


def _config(**overrides) -> PretrainConfig:
    return PretrainConfig(**{"name": "x", "corpus": "c.txt", "init": "minilm", "max_steps": 200, **overrides})


def test_a_loaded_encoder_without_a_head_is_marked_and_gets_warm_up_steps(encoder_dir, tmp_path):
    model = load_mlm_model(encoder_dir)
    assert model.attune_new_head
    assert head_warmup_steps(_config(), model) == 40  # 20% of 200
    assert head_warmup_steps(_config(max_steps=5000), model) == 200  # capped
    assert head_warmup_steps(_config(head_warmup_steps=7), model) == 7
    model.save_pretrained(str(tmp_path / "with-head"))  # an encoder exported with its MLM head: nothing to warm
    again = load_mlm_model(tmp_path / "with-head")
    assert not again.attune_new_head and head_warmup_steps(_config(), again) == 0


def test_head_warm_up_needs_init():
    with pytest.raises(ValueError, match="--head-warmup-steps 10 needs --init"):
        PretrainConfig(name="x", corpus="c.txt", preset="tiny", head_warmup_steps=10)


def test_the_head_parameters_are_the_transform_and_bias_not_the_tied_decoder(encoder_dir):
    model = load_mlm_model(encoder_dir)
    head = {id(p) for p in head_parameters(model)}
    names = sorted(n for n, p in model.named_parameters() if id(p) in head)
    assert names and all(n.startswith("cls.predictions.") for n in names)
    assert id(model.bert.embeddings.word_embeddings.weight) not in head
    assert "cls.predictions.transform.dense.weight" in names


def test_warm_up_trains_only_the_head_and_lowers_the_loss(encoder_dir, one_rank_group):
    torch.manual_seed(1)
    wrapped = MaskedLMLoss(load_mlm_model(encoder_dir))
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    ids = torch.randint(5, 40, (8, 16))  # a small repeated batch: the head can fit it

    def mask(batch, i):
        return mask_tokens(batch, mask_id=4, vocab_size=VOCAB, special_ids=[0, 1, 2, 3, 4],
                           generator=torch.Generator().manual_seed(i), prob=0.3)

    losses = warm_head(wrapped, iter([ids] * 30), mask, 30, torch.device("cpu"), 0, 1, interval_s=60.0)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    head = {id(p) for p in head_parameters(wrapped.model)}
    for name, p in wrapped.named_parameters():
        assert p.requires_grad  # everything trains again afterwards
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (id(p) in head), name
    assert wrapped.training

"""The masked-LM objective's data: 15% / 80-10-10 masking, packing, sharding, the training stream."""
from __future__ import annotations

import random

import pytest
import torch

from train.pretrain.mlm import IGNORE_INDEX, TrainStream, eval_sequences, mask_tokens, pack, shard, shuffled, tokenize

CLS, SEP, MASK, PAD = 2, 3, 4, 0
SPECIAL = [PAD, 1, CLS, SEP, MASK]
VOCAB = 1000


def _masked(ids: torch.Tensor, seed: int = 0, prob: float = 0.15):
    return mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL,
                       generator=torch.Generator().manual_seed(seed), prob=prob)


def _packed_batch(rows: int = 400, length: int = 128) -> torch.Tensor:
    body = torch.randint(10, VOCAB, (rows, length - 2), generator=torch.Generator().manual_seed(1))
    return torch.cat([torch.full((rows, 1), CLS), body, torch.full((rows, 1), SEP)], dim=1)


def test_masking_chooses_15_percent_with_80_10_10_replacement():
    ids = _packed_batch()
    inputs, labels = _masked(ids)
    chosen = labels != IGNORE_INDEX
    body = ids.numel() - 2 * ids.shape[0]  # [CLS] and [SEP] are never chosen
    assert chosen.sum().item() / body == pytest.approx(0.15, abs=0.005)
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    n = chosen.sum().item()
    became_mask = (inputs[chosen] == MASK).sum().item() / n
    unchanged = (inputs[chosen] == ids[chosen]).sum().item() / n
    random_other = 1 - became_mask - unchanged
    assert became_mask == pytest.approx(0.80, abs=0.01)
    # a random replacement equals the original with probability 1/VOCAB, so "unchanged" is ~10% + tiny
    assert unchanged == pytest.approx(0.10, abs=0.01)
    assert random_other == pytest.approx(0.10, abs=0.01)
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else is touched


def test_masking_is_deterministic_per_seed_and_differs_across_seeds():
    ids = _packed_batch(rows=8)
    first, second, other = _masked(ids, seed=3), _masked(ids, seed=3), _masked(ids, seed=4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_masking_never_leaves_a_batch_without_a_prediction():
    ids = torch.tensor([[CLS, 50, 51, SEP]])
    for seed in range(50):
        _, labels = _masked(ids, seed=seed, prob=0.01)
        assert (labels != IGNORE_INDEX).sum() >= 1


def test_pack_makes_full_cls_sep_sequences_across_texts():
    texts = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34, 35, 36]]
    seqs = list(pack(texts, seq_len=6, cls_id=CLS, sep_id=SEP))
    assert all(len(s) == 6 and s[0] == CLS and s[-1] == SEP for s in seqs)
    bodies = [s[1:-1] for s in seqs]
    # texts are joined by [SEP]; a long text continues in the next sequence; the partial tail is dropped
    assert bodies == [[10, 11, 12, SEP], [20, 21, SEP, 30], [31, 32, 33, 34]]


def test_pack_never_starts_a_sequence_with_a_separator():
    seqs = list(pack([[1, 2, 3, 4], [5, 6, 7, 8], [9]], seq_len=6, cls_id=CLS, sep_id=SEP))
    assert [s[1] for s in seqs] == [1, 5]


def test_shard_splits_texts_round_robin_without_overlap():
    texts = [f"t{i}" for i in range(10)]
    parts = [list(shard(texts, r, 3)) for r in range(3)]
    assert parts[0] == ["t0", "t3", "t6", "t9"]
    assert sorted(sum(parts, [])) == sorted(texts)


def test_shuffled_is_a_seeded_permutation():
    items = list(range(100))
    out = list(shuffled(items, 16, random.Random(1)))
    assert sorted(out) == items and out != items
    assert out == list(shuffled(items, 16, random.Random(1)))


class _FakeTokenizer:
    """Whitespace tokenizer over integers: the text "5 6 7" is the ids [5, 6, 7]."""

    cls_token_id, sep_token_id = CLS, SEP

    def __call__(self, texts, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


def _texts(n: int = 40):
    return [" ".join(str(100 + i * 10 + j) for j in range(5)) for i in range(n)]


def test_tokenize_batches_keep_order():
    assert list(tokenize(["5 6", "7", "8 9 10"], _FakeTokenizer(), batch=2)) == [[5, 6], [7], [8, 9, 10]]


def test_train_stream_is_reproducible_and_resumes_at_a_batch():
    def stream():
        return TrainStream(lambda: iter(_texts()), _FakeTokenizer(), seq_len=8, batch_size=3, rank=0, world=2,
                           seed=5, shuffle_buffer=4)

    full = stream().batches()
    first = [next(full) for _ in range(12)]  # more than one pass over the shard: it cycles
    assert all(b.shape == (3, 8) for b in first)
    resumed = stream().batches(skip=7)
    assert all(torch.equal(next(resumed), first[i]) for i in range(7, 12))


def test_train_stream_ranks_see_disjoint_texts():
    def tokens(rank):
        s = TrainStream(lambda: iter(_texts()), _FakeTokenizer(), seq_len=12, batch_size=2, rank=rank, world=2,
                        seed=0)
        batches = s.batches()
        return {int(t) for _ in range(5) for t in next(batches).flatten() if t >= 100}

    assert tokens(0).isdisjoint(tokens(1))


def test_train_stream_too_small_a_shard_is_a_clear_error():
    from train.pretrain.corpus import CorpusError

    s = TrainStream(lambda: iter(["100 101"]), _FakeTokenizer(), seq_len=64, batch_size=2, rank=0, world=1, seed=0)
    with pytest.raises(CorpusError, match="--seq-len 64"):
        next(s.batches())


def test_eval_sequences_takes_the_first_count():
    ids = eval_sequences(iter(_texts()), _FakeTokenizer(), seq_len=8, count=5)
    assert ids.shape == (5, 8) and ids[0, 1].item() == 100


def test_masked_only_head_gives_the_full_heads_loss_and_gradients():
    from train._presets import build_mlm_model, encoder_config
    from train.pretrain.mlm_head import MaskedLMLoss, unwrap_state_dict

    torch.manual_seed(0)
    model = build_mlm_model(encoder_config("tiny", VOCAB)).eval()  # no dropout: both paths are deterministic
    inputs, labels = _masked(_packed_batch(rows=4, length=32))
    wrapped = MaskedLMLoss(model)
    fast = wrapped(input_ids=inputs, labels=labels)
    fast.backward()
    fast_grad = model.bert.embeddings.word_embeddings.weight.grad.clone()
    model.zero_grad()
    full = model(input_ids=inputs, labels=labels).loss
    full.backward()
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)
    assert torch.allclose(fast_grad, model.bert.embeddings.word_embeddings.weight.grad, atol=1e-6)
    assert set(unwrap_state_dict(wrapped.state_dict())) == set(model.state_dict())

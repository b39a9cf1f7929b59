import random

from train.finetune.batching import LengthBucketSampler


def _lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 80) for _ in range(n)]


def test_ranks_cover_every_row_with_equal_step_counts():
    lengths = _lengths(1001)
    samplers = [LengthBucketSampler(lengths, 16, rank=r, world=2, seed=3) for r in range(2)]
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(batches[1]) == len(samplers[0])
    seen = [i for rank in batches for batch in rank for i in batch]
    assert set(seen) == set(range(1001))
    assert len(seen) == 1002  # padded by one row so both ranks hold 501


def test_batches_group_similar_lengths():
    lengths = _lengths()
    sampler = LengthBucketSampler(lengths, 16, seed=1)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in sampler) / len(sampler)
    random_spread = 0
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunks = [order[i:i + 16] for i in range(0, len(order), 16)]
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in chunks) / len(chunks)
    assert spread < random_spread / 4


def test_seeded_and_epoch_dependent():
    lengths = _lengths()
    a, b = LengthBucketSampler(lengths, 8, seed=5), LengthBucketSampler(lengths, 8, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_no_shuffle_keeps_every_row_once():
    lengths = _lengths(37)
    batches = list(LengthBucketSampler(lengths, 8, shuffle=False))
    assert sorted(i for b in batches for i in b) == list(range(37))


def test_bucket_batches_one_keeps_batches_random():
    lengths = sorted(_lengths())  # length order == index order: bucketing would make runs of indices
    batches = list(LengthBucketSampler(lengths, 16, seed=2, bucket_batches=1))
    spread = sum(max(b) - min(b) for b in batches) / len(batches)
    assert spread > 300  # indices (and so lengths) span the data set, not a narrow band

"""The masked-LM objective and its data: sharding, tokenising, packing and 15% / 80-10-10 masking.

Each worker streams the corpus, keeps every ``world``-th text (its shard), tokenises in
batches and packs the token stream into ``[CLS] ... [SEP]`` sequences of exactly
``seq_len`` tokens (texts are separated by ``[SEP]``), so no padding is ever needed.
The order is a pure function of (seed, rank, world), which makes a resumed run see the
same batches it would have seen without the interruption.
"""
from __future__ import annotations

import random
from typing import Callable, Iterable, Iterator, Sequence

from train.pretrain.corpus import CorpusError

IGNORE_INDEX = -100  # label of tokens that are not predicted


def mask_tokens(input_ids, *, mask_id: int, vocab_size: int, special_ids: Sequence[int], generator,
                prob: float = 0.15):
    """BERT masking: choose ``prob`` of the non-special tokens; of those 80% become ``[MASK]``,
    10% a random token and 10% stay. Returns ``(inputs, labels)``; unchosen labels are -100."""
    import torch

    shape = input_ids.shape
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    chosen = (torch.rand(shape, generator=generator) < prob) & ~special
    if not bool(chosen.any()) and bool((~special).any()):  # a batch always predicts something
        chosen.view(-1)[int((~special).view(-1).nonzero()[0])] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    draw = torch.rand(shape, generator=generator)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs = input_ids.clone()
    inputs[to_mask] = mask_id
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype)
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


def shard(texts: Iterable[str], rank: int, world: int) -> Iterator[str]:
    """Every ``world``-th text starting at ``rank``."""
    for i, text in enumerate(texts):
        if i % world == rank:
            yield text


def tokenize(texts: Iterable[str], tokenizer, batch: int = 256) -> Iterator[list[int]]:
    """Token ids of each text (no special tokens), tokenised ``batch`` texts at a time."""
    pending: list[str] = []
    for text in texts:
        pending.append(text)
        if len(pending) >= batch:
            yield from tokenizer(pending, add_special_tokens=False)["input_ids"]
            pending = []
    if pending:
        yield from tokenizer(pending, add_special_tokens=False)["input_ids"]


def pack(token_lists: Iterable[list[int]], seq_len: int, cls_id: int, sep_id: int) -> Iterator[list[int]]:
    """``[CLS] body [SEP]`` sequences of exactly ``seq_len`` tokens from a stream of texts.

    Texts are joined with ``[SEP]``; a text longer than one sequence continues in the next.
    The final partial sequence is dropped.
    """
    body = seq_len - 2
    buffer: list[int] = []
    for ids in token_lists:
        if not ids:
            continue
        if buffer:
            buffer.append(sep_id)
        buffer.extend(ids)
        while len(buffer) >= body:
            yield [cls_id, *buffer[:body], sep_id]
            del buffer[:body]
            if buffer and buffer[0] == sep_id:
                del buffer[0]


def shuffled(items: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    """A streaming shuffle through a buffer of ``buffer_size`` items."""
    buffer: list = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(buffer_size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class TrainStream:
    """Endless micro-batches (``[batch, seq_len]`` id tensors) of one rank's shard, pass after pass."""

    def __init__(self, texts: Callable[[], Iterable[str]], tokenizer, *, seq_len: int, batch_size: int,
                 rank: int, world: int, seed: int, shuffle_buffer: int = 2048):
        self.texts, self.tokenizer = texts, tokenizer
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world, self.seed, self.shuffle_buffer = rank, world, seed, shuffle_buffer
        self.passes = 0

    def sequences(self) -> Iterator[list[int]]:
        while True:
            rng = random.Random(f"{self.seed}/{self.rank}/{self.world}/{self.passes}")
            tokens = tokenize(shard(self.texts(), self.rank, self.world), self.tokenizer)
            packed = pack(tokens, self.seq_len, self.tokenizer.cls_token_id, self.tokenizer.sep_token_id)
            count = 0
            for seq in shuffled(packed, self.shuffle_buffer, rng):
                count += 1
                yield seq
            if count == 0:
                raise CorpusError(
                    f"rank {self.rank}'s share of the corpus (every {self.world}th text) holds fewer than "
                    f"{self.seq_len} tokens, so not one sequence of --seq-len {self.seq_len} can be packed; "
                    "use a larger corpus, a smaller --seq-len or fewer --workers")
            self.passes += 1

    def batches(self, skip: int = 0) -> Iterator:
        """Micro-batches, after skipping the first ``skip`` (those a resumed run already trained on)."""
        import torch

        pending: list[list[int]] = []
        index = 0
        for seq in self.sequences():
            pending.append(seq)
            if len(pending) < self.batch_size:
                continue
            if index >= skip:
                yield torch.tensor(pending, dtype=torch.long)
            index += 1
            pending = []


def eval_sequences(texts: Iterable[str], tokenizer, *, seq_len: int, count: int):
    """The first ``count`` packed sequences of ``texts`` as one ``[n, seq_len]`` tensor (n <= count)."""
    import torch

    packed = pack(tokenize(texts, tokenizer), seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
    rows = []
    for seq in packed:
        rows.append(seq)
        if len(rows) >= count:
            break
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), seq_len)


def special_ids(tokenizer) -> list[int]:
    return sorted(set(tokenizer.all_special_ids))

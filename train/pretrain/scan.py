"""One pass over the corpus in a Ray task: hash it, count it, and train (or load) the tokenizer."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Optional

from train.pretrain.corpus import CorpusError, CorpusFile, corpus_hash, is_held_out, iter_texts

logger = logging.getLogger("attune.train")


def training_texts(files, eval_files, holdout_every: int, endpoint_url: Optional[str]) -> Iterator[str]:
    """The texts trained on: all of them with an --eval-corpus, else those not held out."""
    texts = iter_texts(files, endpoint_url)
    return texts if eval_files else (t for t in texts if not is_held_out(t, holdout_every))


def held_out_texts(files, eval_files, holdout_every: int, endpoint_url: Optional[str]) -> Iterator[str]:
    """The texts evaluated on: the --eval-corpus, else 1 in ``holdout_every`` corpus texts."""
    if eval_files:
        return iter_texts(eval_files, endpoint_url)
    return (t for t in iter_texts(files, endpoint_url) if is_held_out(t, holdout_every))


def scan_corpus(files: list[CorpusFile], eval_files: Optional[list[CorpusFile]], *, holdout_every: int,
                tokenizer: str, vocab_size: Optional[int], init_dir: Optional[str],
                reuse_tokenizer: Optional[dict], endpoint_url: Optional[str], log_level: str = "INFO") -> dict:
    """Corpus hash, text/byte counts, and the tokenizer's files (trained for ``tokenizer="train"``)."""
    from train._base import resolve_base
    from train.pretrain.vocab import packaged_tokenizer_files, tokenizer_files, train_wordpiece, vocab_size_of

    logging.basicConfig(level="WARNING", format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(log_level)
    counter = _Counter()
    texts = counter.count(training_texts(files, eval_files, holdout_every, endpoint_url))
    if reuse_tokenizer is not None:
        files_out = reuse_tokenizer
        for _ in texts:
            pass
    elif tokenizer == "train":
        files_out = train_wordpiece(texts, vocab_size)
    else:
        for _ in texts:
            pass
        source = resolve_base("minilm") if tokenizer == "minilm" else Path(init_dir)
        files_out = (packaged_tokenizer_files(source) if (source / "tokenizer.json").is_file()
                     else tokenizer_files(source))
    if counter.texts == 0:
        raise CorpusError(f"the corpus {_where(files)} has no non-blank text to train on")
    held_out = sum(1 for _ in held_out_texts(files, eval_files, holdout_every, endpoint_url))
    if held_out == 0:
        raise CorpusError(
            f"--eval-corpus {_where(eval_files)} has no non-blank text" if eval_files else
            f"the corpus {_where(files)} is too small to hold out 1 text in {holdout_every} for evaluation; "
            "pass --eval-corpus PATH")
    return {"corpus_hash": corpus_hash(files, endpoint_url), "texts": counter.texts, "chars": counter.chars,
            "held_out_texts": held_out, "tokenizer_files": files_out,
            "vocab_size": vocab_size_of(files_out)}


def _where(files) -> str:
    return files[0].uri if len(files) == 1 else f"({len(files)} files)"


class _Counter:
    """Counts texts and characters as they stream past; logs progress at least every 10 s."""

    def __init__(self):
        self.texts = self.chars = 0
        self.last = time.monotonic()

    def count(self, texts: Iterator[str]) -> Iterator[str]:
        for text in texts:
            self.texts += 1
            self.chars += len(text)
            if time.monotonic() - self.last >= 10:
                self.last = time.monotonic()
                logger.info("reading the corpus: %d texts, %.1fM characters so far", self.texts, self.chars / 1e6)
            yield text

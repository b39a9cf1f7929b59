"""Tokenizers for pretraining: a WordPiece vocabulary trained on the corpus, or an existing one.

A trained tokenizer travels as its files (``{name: text}``), so it can be made in one Ray
task and rebuilt identically on every worker and in the export.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MIN_VOCAB = 64


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> dict[str, str]:
    """Train a lower-cased BERT WordPiece vocabulary on ``texts`` (streamed); return its files."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return _as_files(tok)


# What ``AutoTokenizer`` needs besides tokenizer.json (BertTokenizer: the fast one when tokenizer.json exists)
_TOKENIZER_CONFIG = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512,
                     "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                     "mask_token": "[MASK]"}
_TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _as_files(tok) -> dict[str, str]:
    """The files of a Hugging Face tokenizer directory, without importing transformers."""
    special = {k: v for k, v in _TOKENIZER_CONFIG.items() if k.endswith("_token")}
    return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(_TOKENIZER_CONFIG, indent=2),
            "special_tokens_map.json": json.dumps(special, indent=2)}


def packaged_tokenizer_files(directory: Path) -> dict[str, str]:
    """The tokenizer files of a BERT-style model directory with a tokenizer.json (e.g. MiniLM), as they are."""
    return {name: (directory / name).read_text(encoding="utf-8") for name in _TEXT_FILES
            if (directory / name).is_file()}


def vocab_size_of(files: dict[str, str]) -> int:
    from tokenizers import Tokenizer

    if "tokenizer.json" not in files:
        return len(files["vocab.txt"].splitlines())
    return Tokenizer.from_str(files["tokenizer.json"]).get_vocab_size(with_added_tokens=True)


def tokenizer_files(directory: Path) -> dict[str, str]:
    """The tokenizer files of a Hugging Face model directory (to ship or to save)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    with tempfile.TemporaryDirectory(prefix="attune-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}


def tokenizer_from_files(files: dict[str, str]):
    """Rebuild the Hugging Face tokenizer from :func:`train_wordpiece`'s files."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="attune-vocab-") as tmp:
        write_files(files, Path(tmp))
        return AutoTokenizer.from_pretrained(tmp)


def write_files(files: dict[str, str], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory

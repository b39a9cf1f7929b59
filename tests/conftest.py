"""Fixtures shared by every test tier."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from train._data import write_jsonl  # noqa: F401  (re-exported for tests)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TWEETS_DIR = SHARED_DATA / "twitter-financial-news-sentiment"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_tiny_base(directory: Path) -> Path:
    """A randomly initialised 2-layer BERT (about 1M parameters) with MiniLM's tokenizer.

    A real local Hugging Face model directory, small enough that a distributed
    fine-tune finishes in seconds; used where a test checks mechanics, not accuracy.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from train._model import resolve_base

    minilm = resolve_base("minilm")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """john.jsonl and jane.jsonl as `attune data demo` writes them (newsdesk not needed)."""
    from train._demo import demo_rows

    directory = tmp_path_factory.mktemp("demo-data")
    john, jane = demo_rows()
    for name, rows in (("john", john), ("jane", jane)):
        write_jsonl(directory / f"{name}.jsonl", rows)
    return directory


@pytest.fixture
def attune_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "attune-home"
    monkeypatch.setenv("ATTUNE_HOME", str(home))
    return home

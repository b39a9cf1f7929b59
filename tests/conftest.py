"""Fixtures shared by every test tier."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

from cluster import get_settings
from train import write_jsonl  # noqa: F401  (re-exported for tests)

# The real services' fixtures (PostgreSQL, SeaweedFS S3, mlflow server): started only by the tests that ask.
pytest_plugins = ["tests.services.fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TWEETS_DIR = SHARED_DATA / "twitter-financial-news-sentiment"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# attune falls back to MLflow's own variable when ATTUNE_MLFLOW_TRACKING_URI is unset (cluster._settings):
# one exported in the developer's shell must not send the suite's runs to that server. Tests that need
# it set it themselves (monkeypatch, or a subprocess's env).
os.environ.pop("MLFLOW_TRACKING_URI", None)

NO_CUDA_REASON = "needs CUDA; no GPU on this machine"
# The named bases the developer installed (`attune bases install mpnet`), read before any test points
# ATTUNE_HOME at a temporary folder; tests marked ``mpnet`` use that base and are skipped without it.
INSTALLED_BASES_DIR = get_settings().bases_dir
NO_MPNET_REASON = (f"needs the mpnet base, not installed in {INSTALLED_BASES_DIR}; run `attune bases install mpnet` "
                   "(or set ATTUNE_BASES_DIR to where it is)")


@functools.cache
def cuda_available() -> bool:
    """Whether torch sees a CUDA device; asked once per session, and only if a test needs it."""
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Skip every test marked ``gpu`` when there is no CUDA device (torch is imported only if one is collected),
    and every test marked ``mpnet`` when that base is not installed."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not cuda_available():
        skip = pytest.mark.skip(reason=NO_CUDA_REASON)
        for item in gpu_items:
            item.add_marker(skip)
    mpnet_items = [item for item in items if item.get_closest_marker("mpnet") is not None]
    if mpnet_items and not mpnet_installed():
        skip = pytest.mark.skip(reason=NO_MPNET_REASON)
        for item in mpnet_items:
            item.add_marker(skip)


def mpnet_installed() -> bool:
    from train._bases import installed_path

    return installed_path("mpnet", INSTALLED_BASES_DIR) is not None


def make_tiny_base(directory: Path) -> Path:
    """A randomly initialised 2-layer BERT (about 1M parameters) with MiniLM's tokenizer.

    A real local Hugging Face model directory, small enough that a distributed
    fine-tune finishes in seconds; used where a test checks mechanics, not accuracy.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from train import resolve_base

    minilm = resolve_base("minilm")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def make_tiny_mpnet(directory: Path, mean: bool = True) -> Path:
    """A randomly initialised 2-layer MPNet with MiniLM's tokenizer and a sentence-transformers pooling
    config (mean pooling, as all-mpnet-base-v2's; ``mean=False``: [CLS] pooling)."""
    import torch
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    from train import resolve_base

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base("minilm")))
    config = MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    MPNetModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": mean, "pooling_mode_cls_token": not mean}))
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """john.jsonl and jane.jsonl as `attune data demo` writes them (newsdesk not needed)."""
    from train._demo_data import demo_rows

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

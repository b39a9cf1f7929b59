"""A pretrained base's export: Hugging Face ``BertForMaskedLM`` weights, tokenizer, manifest, metrics.

The directory loads with ``AutoModel`` (the encoder) or ``AutoModelForMaskedLM`` (with its head),
and ``attune finetune --base DIR`` fine-tunes from it. ``attune.json`` says what it is
(``"kind": "pretrain"``); ``metrics.jsonl`` has one line per held-out evaluation.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Optional

from cluster import attune_version
from registry import POOLING_CONFIG
from train._manifest import write_manifest
from train.pretrain.config import PretrainConfig

METRICS_FILE = "metrics.jsonl"
POOLING_DIR = Path(POOLING_CONFIG).parent.name  # the sentence-transformers pooling rule mean_pool_family reads


def build_pretrain_manifest(cfg: PretrainConfig, summary: dict, corpus_hash: str) -> dict:
    return {
        "kind": "pretrain",
        "name": cfg.name,
        "preset": cfg.preset,
        "init": cfg.init,
        "base": cfg.preset if cfg.init is None else cfg.init,
        "tokenizer": cfg.effective_tokenizer,
        "vocab_size": summary["vocab_size"],
        "corpus": cfg.corpus,
        "eval_corpus": cfg.eval_corpus,
        "corpus_hash": corpus_hash,
        "data_hash": corpus_hash,
        "steps": summary["steps"],
        "seq_len": cfg.seq_len,
        "parameters": summary["parameters"],
        "initial_eval_perplexity": summary["initial_eval_perplexity"],
        "final_eval_perplexity": summary["final_eval_perplexity"],
        "metrics": {k: summary[k] for k in ("initial_eval_perplexity", "final_eval_perplexity", "tokens_per_s",
                                            "train_tokens", "train_time_s", "restarts")},
        "zero_stage": summary["zero_stage"],
        "num_workers": summary["num_workers"],
        "params": cfg.model_dump(mode="json", exclude={"out"}),
        "attune_version": attune_version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_export(out_dir: Path, model, tokenizer, cfg: PretrainConfig, summary: dict, corpus_hash: str,
                 init_dir: Optional[Path] = None) -> Path:
    """Write the model, its tokenizer, ``attune.json`` and ``metrics.jsonl`` into ``out_dir``; with ``init_dir``
    (``--init``'s folder), also its pooling rule (:func:`keep_pooling`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    if init_dir is not None:
        keep_pooling(Path(init_dir), out_dir)
    manifest = build_pretrain_manifest(cfg, summary, corpus_hash)
    write_manifest(out_dir, manifest)
    with open(out_dir / METRICS_FILE, "w") as handle:
        for row in summary["history"]:
            handle.write(json.dumps(row) + "\n")
    return out_dir


def keep_pooling(init_dir: Path, out_dir: Path) -> bool:
    """Copy ``--init``'s sentence-transformers pooling rule (``1_Pooling/``) into the export, so a tenant
    fine-tuned from it pools as the base did (all-mpnet-base-v2: mean pooling; without the rule an MPNet
    would get transformers' first-token head). True when there was one to copy."""
    source = Path(init_dir) / POOLING_DIR
    if not source.is_dir():
        return False
    shutil.copytree(source, Path(out_dir) / POOLING_DIR, dirs_exist_ok=True)
    return True

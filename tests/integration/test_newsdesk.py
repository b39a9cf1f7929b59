"""Real data: the newsdesk tenant (Twitter Financial News Sentiment) learns from MiniLM.

The >= 80% test-accuracy figure needs the full train split (9,602 rows, 3 epochs: about
17-27 minutes on 2 CPU cores), which does not fit the suite's time budget; it is reproduced with

    attune data demo --out data && attune finetune --tenant newsdesk --data data/newsdesk.jsonl --epochs 3 --patience 1

and reported in the training issue's note. This test trains as `attune demo` trains newsdesk
(one epoch on a 2,000-row subsample, 48 tokens, the default learning rate) and evaluates on the
whole test split; it must clear the majority-class baseline (about 0.65 accuracy, 0.26 macro-F1)
by a wide margin.
"""
from __future__ import annotations

import pytest

from tests.conftest import TWEETS_DIR, write_jsonl
from train import FinetuneConfig
from train._demo_data import newsdesk_rows
from train.finetune.driver import finetune

SUBSAMPLE = dict(max_train_rows=2000, epochs=1, max_seq_len=48)  # the demo's newsdesk settings


@pytest.mark.skipif(not (TWEETS_DIR / "sent_train.csv").is_file(), reason=f"{TWEETS_DIR} not present")
def test_newsdesk_subsample_learns_real_data_from_minilm(ray_session, tmp_path):
    data = tmp_path / "newsdesk.jsonl"
    write_jsonl(data, newsdesk_rows(TWEETS_DIR))
    config = FinetuneConfig(tenant="newsdesk", data=str(data), base="minilm", num_workers=2, zero_stage=2,
                            out=tmp_path / "model", register_model=False, **SUBSAMPLE)
    summary = finetune(config, settings=ray_session)
    metrics = summary["metrics"]
    print(f"newsdesk: {summary['split_counts']} accuracy {metrics['test_accuracy']:.4f} "
          f"macro-F1 {metrics['test_macro_f1']:.4f} ECE {metrics['ece_before']:.4f}->{metrics['ece_after']:.4f} "
          f"(T={metrics['temperature']:.3f}; {metrics['calibration']})")
    assert summary["split_counts"]["test"] >= 1000  # evaluated on the whole test split
    assert metrics["test_accuracy"] >= 0.72
    assert metrics["test_macro_f1"] >= 0.60
    assert set(metrics["test_per_class_f1"]) == {"bearish", "bullish", "neutral"}
    assert metrics["ece_after"] <= metrics["ece_before"]  # temperature scaling helps on real data

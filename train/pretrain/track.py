"""Log a finished pretraining run to MLflow, through the registry: experiment ``base.<name>``.

Parameters are the run's settings; metrics are the final figures plus one point per
held-out evaluation (``eval_perplexity``, ``eval_loss``, ``train_loss``, ``lr``, ``tokens_per_s``,
with MLflow's step = the optimizer step).
"""
from __future__ import annotations

from cluster import Settings, attune_version, code_version
from train.pretrain.config import PretrainConfig

BASE_EXPERIMENT_PREFIX = "base."  # the registry's name space for pretrained bases


def pretrain_record(config: PretrainConfig, output: dict, corpus_hash: str):
    """The registry's ``RunRecord`` of one pretraining run."""
    from registry import Lineage, RunRecord

    lineage = Lineage(kind="pretrain", base=config.preset or config.init, data_uri=config.corpus,
                      data_hash=corpus_hash, code_version=code_version(),
                      attune_version=attune_version())
    final = {k: output[k] for k in ("steps", "initial_eval_perplexity", "final_eval_perplexity", "tokens_per_s",
                                    "parameters", "restarts")
             if isinstance(output.get(k), (int, float)) and not isinstance(output.get(k), bool)}
    history = [{k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
               for row in output.get("history", [])]
    params = {**config.model_dump(mode="json"), "model_dir": output["model_dir"],
              "effective_lr": config.effective_lr, "effective_tokenizer": config.effective_tokenizer,
              "vocab_size": output.get("vocab_size")}
    return RunRecord(run_name=config.run_name, params=params, metrics=final, history=history, lineage=lineage)


def log_pretrain_run(settings: Settings, config: PretrainConfig, output: dict, scan: dict) -> str:
    """Log the run; returns its MLflow run id."""
    from registry import Registry

    record = pretrain_record(config, output, scan["corpus_hash"])
    return Registry.from_settings(settings).log_run(BASE_EXPERIMENT_PREFIX + config.name, record)

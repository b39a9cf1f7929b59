"""A pretraining run in MLflow, through the registry: experiment ``base.<name>``, and the export registered
as the next version of the registered model ``base.<name>`` (alias ``newest``).

The run opens when training starts (:func:`opening_record`: params, lineage, the corpus as its
dataset input) and is named ``pretrain-<name>-<preset or init>-<time>``. Each held-out evaluation
is logged as it happens (``eval_perplexity``, ``eval_loss``, ``train_loss``, ``lr``, ``tokens_per_s``,
MLflow's step = the optimizer step); the final figures and the export come with the registration
(:func:`register_pretrained`), which a tenant's ``--base models:/base.<name>@newest`` then finds.
"""
from __future__ import annotations

from cluster import Settings, attune_version, code_version
from train.pretrain.config import PretrainConfig

BASE_EXPERIMENT_PREFIX = "base."  # the registry's name space for pretrained bases


def run_title(config: PretrainConfig) -> str:
    """``pretrain-<name>-<preset>-<time>`` (``init`` for a continued encoder)."""
    from registry import run_name

    return run_name("pretrain", config.name, config.preset or "init")


def params_of(config: PretrainConfig, output: dict) -> dict:
    params = {**config.model_dump(mode="json"), "effective_lr": config.effective_lr,
              "effective_tokenizer": config.effective_tokenizer}
    if "model_dir" in output:
        params.update(model_dir=output["model_dir"], vocab_size=output.get("vocab_size"))
    return params


def pretrain_record(config: PretrainConfig, output: dict, corpus_hash: str, run_name: str | None = None):
    """The registry's ``RunRecord`` of one pretraining run (``output``: the summary so far)."""
    from registry import Lineage, RunRecord

    lineage = Lineage(kind="pretrain", base=config.preset or config.init, data_uri=config.corpus,
                      data_hash=corpus_hash, code_version=code_version(),
                      attune_version=attune_version())
    final = {k: output[k] for k in ("steps", "initial_eval_perplexity", "final_eval_perplexity", "tokens_per_s",
                                    "parameters", "restarts")
             if isinstance(output.get(k), (int, float)) and not isinstance(output.get(k), bool)}
    history = [{k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
               for row in output.get("history", [])]
    return RunRecord(run_name=run_name or run_title(config), params=params_of(config, output), metrics=final,
                     history=history, lineage=lineage)


def opening_record(config: PretrainConfig, corpus_hash: str):
    """What the run shows while it trains."""
    return pretrain_record(config, {}, corpus_hash)


def register_pretrained(settings: Settings, config: PretrainConfig, output: dict, corpus_hash: str, live) -> dict:
    """Complete the live run and register the export from it as the next version of ``base.<name>``; the
    summary's ``mlflow_run_id``, ``base_version`` and ``base_uri`` (``models:/base.<name>/<version>``)."""
    from pathlib import Path

    from registry import Registry

    record = pretrain_record(config, output, corpus_hash, run_name=live.name)
    info = Registry.from_settings(settings).register_base(config.name, Path(output["model_dir"]),
                                                          record.model_copy(update={"run_id": live.run_id}))
    return {"mlflow_run_id": live.run_id, "base_version": info.version,
            "base_uri": f"models:/{BASE_EXPERIMENT_PREFIX}{config.name}/{info.version}"}

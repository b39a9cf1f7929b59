"""``attune relocalize``: fine-tune a tenant's next version on its data plus its feedback, then gate it.

    attune relocalize --tenant john             # data + feedback -> next version, gated, promoted if better
    attune relocalize --status john             # when it last ran, why, and whether it is due
    attune relocalize --auto                    # every tenant the policy says is due (a cron job, or
                                                # `attune submit -- relocalize --auto` on a cluster)

The run uses the champion's base, method and training options; its data is the champion's data
file plus the tenant's feedback (:mod:`train.relocalize.data` says how the newest rule wins); the
gate scores the candidate and the champion on held-out rows that include the newest feedback.
"""
from __future__ import annotations

import ast
import datetime as _dt
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

from cluster import Settings, get_settings
from registry import FeedbackStore, Registry, RelocalizeLog, database_url
from train._base import resolve_base
from train._errors import ConfigError
from train.relocalize.data import data_dir, next_rows, sentence_embedder, write_next_data

logger = logging.getLogger("attune.train")
# the champion's run parameters a relocalization keeps (everything but tenant, data, output and gate options)
CARRIED = ("epochs", "lr", "batch_size", "max_seq_len", "seed", "weight_decay", "warmup_ratio", "head_warmup_steps",
           "patience", "lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "max_train_rows", "num_workers",
           "zero_stage", "max_failures")


class NothingToRelocalizeError(ConfigError):
    """The tenant has no feedback (since ``--since``) to relocalize from."""


def relocalize(tenant: str, *, settings: Optional[Settings] = None, since: Optional[str] = None,
               data: Optional[str] = None, trigger: str = "by hand") -> dict:
    """The tenant's next version from its data plus feedback; the ``--json`` summary."""
    settings = settings or get_settings()
    registry = Registry.from_settings(settings)
    champion = registry.champion(tenant)
    feedback = feedback_since(tenant, settings, since)
    if not feedback:
        raise NothingToRelocalizeError(
            f"tenant {tenant!r} has no feedback{' since ' + since if since else ''} to relocalize from; send "
            f"labelled texts with POST /v1/tenants/{tenant}/feedback first")
    data_uri = data or champion.tags.get("attune.data_uri")
    if not data_uri:
        raise ConfigError(f"{tenant} version {champion.version} records no data file (tag attune.data_uri); "
                          "pass --data PATH, the tenant's labelled data")
    log = RelocalizeLog.from_settings(settings)
    row_id = log.start(tenant, trigger)
    try:
        summary = _relocalize(tenant, settings, registry, champion, feedback, data_uri)
    except BaseException as exc:
        log.finish(row_id, "failed", feedback_rows=len(feedback), message=f"{type(exc).__name__}: {exc}")
        raise
    promoted = summary["promotion"]["promoted"]
    log.finish(row_id, "promoted" if promoted else "not promoted", version=summary["model_version"],
               feedback_rows=len(feedback), message=summary["promotion"]["reason"])
    return summary


def _relocalize(tenant: str, settings: Settings, registry: Registry, champion, feedback: list[dict],
                data_uri: str) -> dict:
    from train._data import read_rows
    from train.finetune.config import FinetuneConfig
    from train.finetune.driver import finetune

    started = time.monotonic()
    base = champion.tags.get("attune.base", settings.base)
    predicted = _champion_labels(registry, tenant, [item["text"] for item in feedback])
    embed = sentence_embedder(resolve_base(base))
    rows = read_rows(data_uri, endpoint_url=settings.s3_endpoint_url)
    made = next_rows(rows, feedback, predicted, embed, settings.relocalize_similarity)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = data_dir(settings, tenant) / f"relocalized-{stamp}.jsonl"
    dataset = write_next_data(made, path, endpoint_url=settings.s3_endpoint_url)
    logger.info("relocalizing %s from version %s: %d feedback texts (%d corrections) relabel %d contradicted rows; "
                "next data %s (%d rows)", tenant, champion.version, made.feedback_rows, len(made.corrections),
                len(made.contradicted), path, len(made.rows))
    options = fit_workers(champion_options(registry, champion), settings)
    config = FinetuneConfig(tenant=tenant, data=str(path), base=base,
                            method=champion.tags.get("attune.method", "full"), **options)
    result = finetune(config, settings=settings, dataset=dataset)
    registry.tag_version(tenant, result["model_version"], provenance(champion, made, data_uri))
    return {"tenant": tenant, "model_version": result["model_version"], "alias": result["alias"],
            "promotion": result["promotion"], "previous_version": champion.version,
            "data": {**made.report(), "dataset_digest": dataset.data_hash, "data_uri": str(path),
                     "source_data_uri": data_uri, "split_counts": dataset.split_counts()},
            "metrics": result["metrics"], "train_seconds": result["train_seconds"],
            "seconds": round(time.monotonic() - started, 2)}


def provenance(champion, made, data_uri: str) -> dict[str, str]:
    """The relocalized version's tags: what it was made from. ``attune.source_data_hash`` follows a chain
    of relocalizations back to the tenant's own data file (when its data was the champion's)."""
    tags = {"attune.relocalized_from": champion.version, "attune.source_data_uri": data_uri,
            "attune.feedback_rows": str(made.feedback_rows), "attune.contradicted_rows": str(len(made.contradicted))}
    if data_uri == champion.tags.get("attune.data_uri"):
        source = champion.tags.get("attune.source_data_hash") or champion.tags.get("attune.data_hash")
        if source:
            tags["attune.source_data_hash"] = source
    return tags


def feedback_since(tenant: str, settings: Settings, since: Optional[str]) -> list[dict]:
    """The tenant's feedback (oldest first), only what arrived at or after ``since`` (ISO 8601) if given."""
    items = FeedbackStore(database_url(settings)).items(tenant)
    if since is None:
        return items
    cut = parse_time(since)
    return [item for item in items if parse_time(item["received_at"]) >= cut]


def parse_time(text: str) -> _dt.datetime:
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not an ISO 8601 time; e.g. 2026-12-07 or "
                          "2026-12-07T14:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=_dt.timezone.utc)


def champion_options(registry: Registry, champion) -> dict:
    """The training options of the champion's run, as FinetuneConfig fields (absent ones take defaults)."""
    if not champion.run_id:
        return {}
    params = registry.get_run(champion.run_id)["params"]
    options = {}
    for key in CARRIED:
        if key in params and params[key] not in ("None", ""):
            try:
                options[key] = ast.literal_eval(params[key])
            except (ValueError, SyntaxError):
                logger.warning("ignoring the champion run's parameter %s=%r (not a literal)", key, params[key])
    return options


def fit_workers(options: dict, settings: Settings) -> dict:
    """The champion's worker count, or fewer on a local Ray whose free CPUs cannot hold it: a relocalization
    runs next to the endpoint that collected the feedback, which holds some of the CPUs."""
    from cluster import free_local_cpus, init_ray

    wanted = int(options.get("num_workers", settings.num_workers))
    init_ray(settings)
    free = free_local_cpus(settings)
    if free is None or free >= wanted or free < 1:  # enough, a cluster that can grow, or finetune says why not
        return options
    logger.warning("the local Ray has %d free CPU(s) next to the endpoint; relocalizing with %d worker(s) instead of "
                   "the champion's %d", free, free, wanted)
    return {**options, "num_workers": free}


def _champion_labels(registry: Registry, tenant: str, texts: list[str]) -> list[str]:
    """What the tenant's champion predicts for ``texts`` (checksum-verified download)."""
    from train.finetune.predict import Predictor

    with tempfile.TemporaryDirectory(prefix="attune-relocalize-") as tmp:
        model_dir, info = registry.download(tenant, "champion", Path(tmp) / "model")
        predictor = Predictor(model_dir, temperature=info.temperature, temperature_slope=info.temperature_slope)
        return [p["label"] for p in predictor.predict(texts)]

"""One batch of requests, run as few forward passes as possible.

Each request is one tenant's texts with the model it resolved (pinned by ``serve._cache``) and its
version's calibration (temperature and slope). LoRA requests on the same base share one forward pass,
whatever their tenants (``serve._lora``); with ``cross_tenant=False`` (``model.cross_tenant_batching: false``,
the baseline of ``tests/benchmarks/tenant_scale.py``) each tenant's requests get their own pass, as
Ray Serve's per-model batching would. Full models always run per model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from serve._artifacts import scores
from serve._cache import Model


@dataclass
class Request:
    model: Model
    texts: list
    temperature: float
    temperature_slope: float = 0.0


def run_batch(requests: Sequence[Request], cross_tenant: bool = True) -> list[list[dict]]:
    """Every request's predictions (a list per request, a dict per text), in request order."""
    rows = [(i, request.model, text) for i, request in enumerate(requests) for text in request.texts]
    groups: dict[tuple, list[int]] = {}
    for r, (_, model, _) in enumerate(rows):
        shared = model.kind == "lora" and cross_tenant
        groups.setdefault((model.kind, id(model.bank) if shared else model.key), []).append(r)
    logits: list = [None] * len(rows)
    for members in groups.values():
        models = [rows[r][1] for r in members]
        texts = [rows[r][2] for r in members]
        lengths = [m.max_seq_len for m in models]
        if models[0].kind == "lora":
            out = models[0].bank.logits([m.slot for m in models], texts, lengths)
        else:
            out = models[0].full.logits(texts, lengths)
        for r, row in zip(members, out):
            logits[r] = row
    results: list[list[dict]] = [[] for _ in requests]
    for (i, model, _), row in zip(rows, logits):
        results[i].append(scores(row, model.labels, requests[i].temperature, requests[i].temperature_slope))
    return results

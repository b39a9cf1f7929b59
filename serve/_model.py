"""The multiplexed ``TenantModel`` deployment: a replica caches tenant models and batches per model.

A request carries ``multiplexed_model_id = "<tenant>:<version>"``; Serve routes it to a replica
that already holds that model when it can. A replica loads a missing model through the
registry (download, checksum, load) into its cache directory, keeps at most
``model.max_models_per_replica`` models (LRU), and batches requests of one model together.
A failed load answers 503 for that model only and is retried after a back-off.
"""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path

from ray import serve as ray_serve

from serve._backoff import LoadBackoff
from serve._config import AppSpec
from serve._errors import ModelUnavailableError, ServeError
from serve._loader import ModelLoader, TenantPredictor
from serve._metrics import ModelMetrics

logger = logging.getLogger("attune.serve")


def split_model_id(model_id: str) -> tuple[str, str]:
    tenant, sep, version = model_id.rpartition(":")
    if not sep or not tenant or not version.isdigit():
        raise ModelUnavailableError(f"malformed model id {model_id!r}; expected '<tenant>:<version>'")
    return tenant, version


@ray_serve.deployment(name="TenantModel")
class TenantModel:
    """Loads, caches and runs tenant models; one instance per replica."""

    def __init__(self, spec: dict):
        from registry import Registry

        self.spec = AppSpec(**spec)
        cfg = self.spec.config.model
        _warm_imports()  # so the first request does not pay for importing transformers and peft
        self.registry = Registry(self.spec.tracking_uri, self.spec.artifact_root)
        self.loader = ModelLoader(device=_device(cfg.num_gpus), max_seq_len=cfg.max_seq_len)
        self.backoff = LoadBackoff(cfg.load_retry_initial_s, cfg.load_retry_max_s)
        self.metrics = ModelMetrics()
        self.replica_id = ray_serve.get_replica_context().replica_id.unique_id
        root = Path(self.spec.config.cache_dir or Path(tempfile.gettempdir()) / "attune-serve-cache")
        self.cache_dir = root / self.replica_id
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._resident: dict[str, TenantPredictor] = {}

        async def load_tenant_model(model_id: str) -> TenantPredictor:
            return await self._load(model_id)

        # wired at init so the cache size comes from the config (Serve detects it on the instance)
        self.get_model = ray_serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)(
            load_tenant_model)
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def predict(self, texts: list[str]) -> list[dict]:
        """Calibrated predictions of the request's model (``multiplexed_model_id``) for ``texts``."""
        model_id = ray_serve.get_multiplexed_model_id()
        tenant, _ = split_model_id(model_id)
        self.backoff.check(model_id)
        hit = model_id in self.resident()
        self.metrics.lookup(tenant, hit)
        try:
            model = await self.get_model(model_id)
        except ServeError as exc:
            raise self.backoff.failed(model_id, exc) from None
        except Exception as exc:  # noqa: BLE001 - any load failure is this tenant's 503, never a crash
            logger.exception("loading %s failed", model_id)
            raise self.backoff.failed(model_id, exc) from None
        return await self._batched(texts, model)

    @ray_serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)  # both set from the config in __init__
    async def _batched(self, texts_lists: list[list[str]], models: list[TenantPredictor]) -> list[list[dict]]:
        """One forward pass for a batch of requests; Serve splits batches by model id."""
        flat = [text for texts in texts_lists for text in texts]
        predictions = await asyncio.to_thread(models[0].predict, flat)
        out, start = [], 0
        for texts in texts_lists:
            out.append(predictions[start:start + len(texts)])
            start += len(texts)
        return out

    async def _load(self, model_id: str) -> TenantPredictor:
        tenant, version = split_model_id(model_id)
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(self._load_sync, tenant, version, model_id)
        except Exception as exc:
            self.metrics.loaded(tenant, None, ok=False)
            if getattr(exc, "http_status", None) is not None and not isinstance(exc, ServeError):
                raise ModelUnavailableError(f"tenant {tenant!r} version {version}: {exc}") from None
            raise
        seconds = time.perf_counter() - started
        self.metrics.loaded(tenant, seconds, ok=True)
        self.backoff.succeeded(model_id)
        self._resident = {k: v for k, v in self._resident.items() if not v.released}
        self._resident[model_id] = model
        logger.info("loaded %s (%s) in %.3fs", model_id, type(model).__name__, seconds)
        return model

    def _load_sync(self, tenant: str, version: str, model_id: str) -> TenantPredictor:
        dest = self.cache_dir / tenant / version
        dest.parent.mkdir(parents=True, exist_ok=True)
        path, info = self.registry.download(tenant, version, dest)
        model = self.loader.load(path, model_id, info.temperature)
        model.files = path
        return model

    def resident(self) -> dict[str, TenantPredictor]:
        return {k: v for k, v in self._resident.items() if not v.released}

    async def ready(self) -> bool:
        return True

    async def stats(self) -> dict:
        """This replica's models and shared bases (``attune serve status``, tests)."""
        models = {}
        for model_id, model in self.resident().items():
            base = getattr(model, "base", None)
            models[model_id] = {"kind": type(model).__name__, "temperature": model.temperature,
                                "base_encoder_id": id(base.encoder) if base else None}
        bases = {path: {"encoder_id": id(b.encoder), "adapters": sorted(b.adapters),
                        "param_bytes": sum(p.numel() * p.element_size() for p in b.encoder.parameters())}
                 for path, b in self.loader.bases.items()}
        return {"replica": self.replica_id, "pid": os.getpid(), "models": models, "bases": bases,
                "backoff": self.backoff.snapshot()}

    async def record_routing_stats(self) -> dict:
        """Serve's per-replica stats hook; ``attune serve status`` reads it from each replica actor."""
        return await self.stats()


def _warm_imports() -> None:
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    from transformers import AutoTokenizer, BertModel  # noqa: F401


def _device(num_gpus: float) -> str:
    if num_gpus > 0:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"

"""A replica's tenant models: loaded once, pinned while in use, evicted least recently used first.

LoRA tenants live in :class:`serve._lora.LoraBank` slots, one bank per base directory (a replica may
hold MiniLM's and MPNet's side by side), and share a budget in bytes (``model.adapter_cache_mib``);
full models are bounded by count (``model.max_models_per_replica``).

Never mixing weights: a request *pins* its model from the moment it is resolved until its batch
has run. A pinned model is never evicted; a model that must make room for another waits for a
pin to be released instead (up to the load timeout). A new version of a tenant is another model
(its own key and slot), so a request that resolved the old champion still runs on the old
weights. A model's key includes its checksum: a tenant id reused after an erasure is never served
its predecessor's weights from a replica's memory.

Failing tenants hurt nobody else: a model loads once however many requests wait for it (the
others await the same load), a failed load backs off (:mod:`serve._backoff`) and every request in
the back-off gets its 503 with ``Retry-After`` at once, without trying again, and a load that
takes longer than ``model.load_timeout_s`` answers 503 too.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from registry import max_seq_len as manifest_max_seq_len
from serve._artifacts import read_lora_adapter, read_manifest, resolve_base
from serve._backoff import LoadBackoff
from serve._errors import ModelUnavailableError

logger = logging.getLogger("attune.serve")


@dataclass
class Model:
    """One loaded tenant version in this replica."""

    key: str
    tenant: str
    version: str
    kind: str  # "lora" or "full"
    labels: list
    max_seq_len: int
    bytes: int
    bank: object = None  # LoraBank (lora)
    slot: int = -1  # its slot in the bank (lora)
    full: object = None  # FullModel (full)
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)


def model_key(tenant: str, version: str, checksum: Optional[str]) -> str:
    return f"{tenant}:{version}:{(checksum or 'unverified')[:16]}"


class ModelCache:
    """Loads, pins and evicts the tenant models of one replica (see the module doc).

    ``download(tenant, version, dest) -> path`` fetches and verifies a version's files (the registry).
    All methods run on the replica's event loop; loading and bank changes run in worker threads.
    """

    def __init__(self, download: Callable, *, device: str = "cpu", adapter_budget_bytes: int,
                 max_full_models: int, load_timeout_s: float, backoff: LoadBackoff,
                 max_seq_len: Optional[int] = None, scratch: Optional[Path] = None, on_load=None,
                 on_lookup=None):
        self.download = download
        self.device = device
        self.adapter_budget_bytes = adapter_budget_bytes
        self.max_full_models = max_full_models
        self.load_timeout_s = load_timeout_s
        self.backoff = backoff
        self.max_seq_len = max_seq_len
        self.scratch = Path(scratch or tempfile.gettempdir())
        self.on_load = on_load  # (tenant, seconds or None, ok) -> None: metrics
        self.on_lookup = on_lookup  # (tenant, hit) -> None: metrics
        self.models: dict[str, Model] = {}
        self.banks: dict[str, object] = {}  # base directory -> LoraBank
        self._banks_lock = threading.Lock()  # concurrent first loads of a base create one bank
        self._loading: dict[str, asyncio.Future] = {}
        self._released = asyncio.Event()
        self._adapter_lock: Optional[asyncio.Lock] = None  # one adapter joins the banks at a time
        self._adapter_lock_loop = None
        self._full_pending = 0  # full models that have their room and are being read
        self.hits = self.misses = 0
        self.load_seconds: list[float] = []  # every cold load's time, for load_summary()

    # -- pinning -------------------------------------------------------------------------------

    async def acquire(self, tenant: str, version: str, checksum: Optional[str]) -> Model:
        """The loaded model of ``tenant`` ``version``, pinned: call :meth:`release` when its batch ran."""
        key = model_key(tenant, version, checksum)
        model = self.models.get(key)
        if self.on_lookup:
            self.on_lookup(tenant, model is not None)
        if model is not None:
            self.hits += 1
            return self._pin(model)
        self.misses += 1
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            self.backoff.check(key)  # a failing model answers at once while it backs off
            model = await self._loaded(key, tenant, version, deadline)
            if self.models.get(key) is model:  # pinned before anything else runs: it cannot be evicted now
                return self._pin(model)
            # evicted between its load and this waiter's turn (another load needed the room): again

    async def _loaded(self, key: str, tenant: str, version: str, deadline: float) -> Model:
        """The model once loaded: this caller's load, or the one already under way (single flight)."""
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(self._load(key, tenant, version))
            self._loading[key] = future
            future.add_done_callback(lambda _f: self._loading.pop(key, None))
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise self.backoff.failed(key, TimeoutError(f"loading took longer than {self.load_timeout_s:g}s")) \
                from None

    def release(self, model: Model) -> None:
        model.pins -= 1
        model.last_used = time.monotonic()
        if model.pins == 0:
            self._released.set()

    def _pin(self, model: Model) -> Model:
        model.pins += 1
        model.last_used = time.monotonic()
        return model

    # -- loading -------------------------------------------------------------------------------

    async def _load(self, key: str, tenant: str, version: str) -> Model:
        started = time.perf_counter()
        try:
            model = await self._load_once(key, tenant, version)
        except Exception as exc:
            if self.on_load:
                self.on_load(tenant, None, False)
            if not isinstance(exc, ModelUnavailableError):
                logger.exception("loading %s failed", key)
            raise self.backoff.failed(key, exc) from None
        seconds = time.perf_counter() - started
        self.load_seconds.append(seconds)
        self.backoff.succeeded(key)
        if self.on_load:
            self.on_load(tenant, seconds, True)
        logger.info("loaded %s (%s) in %.3fs", key, model.kind, seconds)
        return model

    async def _load_once(self, key: str, tenant: str, version: str) -> Model:
        files = Path(tempfile.mkdtemp(prefix="load-", dir=self._scratch()))
        try:
            path = await asyncio.to_thread(self.download, tenant, version, files / "model")
            manifest = await asyncio.to_thread(read_manifest, path)
            meta = {"key": key, "tenant": tenant, "version": version, "labels": list(manifest["labels"]),
                    "max_seq_len": int(self.max_seq_len or manifest_max_seq_len(manifest))}
            if manifest["method"] == "lora":
                return await self._add_lora(path, manifest, meta)
            return await self._add_full(path, meta)
        finally:
            shutil.rmtree(files, ignore_errors=True)

    async def _add_lora(self, path: Path, manifest: dict, meta: dict) -> Model:
        adapter = await asyncio.to_thread(read_lora_adapter, path)
        bank = await asyncio.to_thread(self._bank, manifest["base"])
        if bank.slot_bytes_with(adapter) > self.adapter_budget_bytes:
            raise ModelUnavailableError(f"one adapter needs {bank.slot_bytes_with(adapter) / 2**20:.1f} MiB, more "
                                        f"than model.adapter_cache_mib ({self.adapter_budget_bytes / 2**20:.0f} MiB)")
        # Room and slot under one lock: two loads that each saw room for one more adapter would
        # otherwise both add theirs while the other's was still being written, past the budget.
        async with self._adapters_locked():
            await self._make_room("lora",
                                  lambda: self._lora_bytes(adding=(bank, adapter)) <= self.adapter_budget_bytes)
            bank.max_slots = self.adapter_budget_bytes // bank.slot_bytes_with(adapter)
            slot = await asyncio.to_thread(bank.add, adapter)
            model = Model(kind="lora", bytes=bank.slot_bytes, bank=bank, slot=slot, **meta)
            self.models[model.key] = model
        return model

    async def _add_full(self, path: Path, meta: dict) -> Model:
        from serve._full import FullModel

        # A full model takes seconds to read: its room is reserved instead of held under a lock.
        await self._make_room("full", lambda: self._full_count() + self._full_pending < self.max_full_models)
        self._full_pending += 1
        try:
            full = await asyncio.to_thread(FullModel, path, self.device)
        except BaseException:
            self._released.set()  # the reserved room is free again
            raise
        finally:
            self._full_pending -= 1
        model = Model(kind="full", bytes=full.bytes, full=full, **meta)
        self.models[model.key] = model
        return model

    def _adapters_locked(self) -> asyncio.Lock:
        """The lock that serializes adapters joining the banks, on the running event loop (a replica has
        one loop; tests may run several in turn)."""
        loop = asyncio.get_running_loop()
        if self._adapter_lock is None or self._adapter_lock_loop is not loop:
            self._adapter_lock, self._adapter_lock_loop = asyncio.Lock(), loop
        return self._adapter_lock

    def _bank(self, base: str):
        from serve._lora import LoraBank

        base_dir = resolve_base(base)
        with self._banks_lock:
            bank = self.banks.get(str(base_dir))
            if bank is None:  # LoraBank refuses a base that is not mean-pooled (serve._lora.load_encoder)
                bank = self.banks[str(base_dir)] = LoraBank(base_dir, self.device)
        return bank

    # -- capacity ------------------------------------------------------------------------------

    async def _make_room(self, kind: str, fits: Callable[[], bool]) -> None:
        """Evict unpinned models of ``kind``, least recently used first, until ``fits()``; wait for pins
        to drop when every candidate is in use (bounded by the caller's load timeout)."""
        while not fits():
            idle = sorted((m for m in self.models.values() if m.kind == kind and m.pins == 0),
                          key=lambda m: m.last_used)
            if idle:
                self.evict(idle[0])
                continue
            self._released.clear()
            await self._released.wait()

    def evict(self, model: Model) -> None:
        """Drop an unpinned model from this replica."""
        if model.pins:
            raise RuntimeError(f"{model.key} is in use and cannot be evicted")
        self.models.pop(model.key, None)
        if model.kind == "lora":
            model.bank.remove(model.slot)
        logger.debug("evicted %s", model.key)

    def retain(self, champions: dict[str, str], also: Optional[dict[str, str]] = None) -> list[str]:
        """Evict every idle model that is not its tenant's champion in ``champions`` (tenant -> version)
        nor the version ``also`` keeps for it (the one serving while a new champion fails to load): an
        erased tenant's, a demoted version's. A pinned one goes at a later call. The keys evicted."""
        also = also or {}
        gone = [m for m in self.models.values()
                if m.pins == 0 and m.version not in (champions.get(m.tenant), also.get(m.tenant))]
        for model in gone:
            self.evict(model)
        if gone:
            logger.info("dropped %d model(s) that no champion needs: %s", len(gone),
                        ", ".join(m.key for m in gone[:10]))
        return [m.key for m in gone]

    def _lora_bytes(self, adding: Optional[tuple] = None) -> int:
        """The adapters' bytes in every bank; with ``adding=(bank, adapter)``, as they would be with it
        (a larger rank, a new target or more labels make every slot of that bank larger)."""
        total = 0
        for bank in self.banks.values():
            if adding is not None and adding[0] is bank:
                total += (len(bank.used) + 1) * bank.slot_bytes_with(adding[1])
            else:
                total += len(bank.used) * bank.slot_bytes
        return total

    def _full_count(self) -> int:
        return sum(m.kind == "full" for m in self.models.values())

    def _scratch(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict:
        return {"models": {k: {"kind": m.kind, "pins": m.pins, "bytes": m.bytes, "slot": m.slot}
                           for k, m in self.models.items()},
                "bases": {path: {"adapters": len(b.used), "capacity": b.capacity, "rank": b.rank,
                                 "slot_bytes": b.slot_bytes, "layers": sorted(b.layers),
                                 "encoder_id": id(b.encoder)} for path, b in self.banks.items()},
                "adapter_bytes": self._lora_bytes(), "adapter_budget_bytes": self.adapter_budget_bytes,
                "hits": self.hits, "misses": self.misses, "loads": self.load_summary(),
                "backoff": self.backoff.snapshot()}

    def load_summary(self) -> dict:
        """Cold loads so far: how many, and their p50 and p99 in seconds."""
        ordered = sorted(self.load_seconds)
        pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4) if ordered else None
        return {"count": len(ordered), "p50_s": pick(0.5), "p99_s": pick(0.99)}

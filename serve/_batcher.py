"""Batching the requests a replica is handling, without making a lone request wait.

A replica serves HTTP and runs the models in one process, so between two forward passes its event
loop has a backlog: requests that are authenticated, reading their bodies or resolving their
champions, and will want the next batch. Ray Serve's ``@serve.batch`` takes only what is queued
when the batch starts (or waits a fixed time, even for a lone request); with a fleet on a CPU,
batches then held about one request (``tests/benchmarks/tenant_scale.py``). This batcher waits for
the requests *already inside the replica* that have not reached it yet, up to ``gather_s``, and
never waits when there are none: a lone request starts its batch at once. ``wait_s`` is a fixed
wait on top (``model.batch_wait_timeout_s``, default 0), for devices where bigger batches pay even
at the cost of latency.

The forward pass runs on the event loop itself: on a CPU replica a second thread would only
contend for the GIL with the request handling (measured slower), and the batch is over in tens of
milliseconds.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Sequence


class Batcher:
    def __init__(self, run: Callable[[Sequence[Any]], list], *, max_batch_size: int, wait_s: float = 0.0,
                 gather_s: float = 0.01, clock: Callable[[], float] = time.monotonic):
        self.run, self.max_batch_size, self.wait_s, self.gather_s = run, max_batch_size, wait_s, gather_s
        self.clock = clock
        self.arriving = 0  # requests inside the replica that will submit but have not yet
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._changed = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.stats = {"batches": 0, "requests": 0, "seconds": 0.0}

    def expect(self) -> None:
        """A request entered the replica and may submit later."""
        self.arriving += 1

    def gone(self) -> None:
        """A request that called :meth:`expect` left without submitting (an error before its batch)."""
        self.arriving -= 1
        self._changed.set()

    async def submit(self, item: Any):
        """Run ``item`` in a batch; returns its own result. The caller must have called :meth:`expect`."""
        future = asyncio.get_running_loop().create_future()
        self.arriving -= 1
        self._queue.append((item, future))
        self._changed.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._serve())
        return await future

    async def _serve(self) -> None:
        while self._queue:
            batch = await self._gather()
            started = time.perf_counter()
            try:
                results = self.run([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["seconds"] += time.perf_counter() - started
            await asyncio.sleep(0)  # let the requests that arrived meanwhile move on before the next batch

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        start = self.clock()
        while len(self._queue) < self.max_batch_size:
            now = self.clock()
            fixed_left = start + self.wait_s - now
            gather_left = start + max(self.wait_s, self.gather_s) - now
            if fixed_left <= 0 and (self.arriving <= 0 or gather_left <= 0):
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(fixed_left, gather_left, 0.0))
            except asyncio.TimeoutError:
                break
        batch, self._queue = self._queue[:self.max_batch_size], self._queue[self.max_batch_size:]
        return batch

"""The replica's batcher: a lone request never waits, requests already inside the replica are waited
for (up to the gather time), batches are capped, and every request gets its own result or error."""
from __future__ import annotations

import asyncio
import time

import pytest

from serve._batcher import Batcher


def _batcher(**kw):
    runs = []

    def run(items):
        runs.append(list(items))
        if any(item == "boom" for item in items):
            raise ValueError("boom")
        return [f"{item}!" for item in items]

    kw.setdefault("max_batch_size", 4)
    kw.setdefault("gather_s", 0.5)
    return Batcher(run, **kw), runs


def test_a_lone_request_starts_its_batch_at_once():
    batcher, runs = _batcher()

    async def go():
        batcher.expect()
        started = time.monotonic()
        result = await batcher.submit("a")
        return result, time.monotonic() - started

    result, seconds = asyncio.run(go())
    assert result == "a!" and runs == [["a"]] and seconds < 0.1  # far below the 0.5 s gather time


def test_requests_already_inside_the_replica_are_waited_for():
    batcher, runs = _batcher()

    async def late(item, delay):
        await asyncio.sleep(delay)  # e.g. reading its body
        return await batcher.submit(item)

    async def go():
        for _ in range(3):
            batcher.expect()
        return await asyncio.gather(batcher.submit("a"), late("b", 0.02), late("c", 0.05))

    assert asyncio.run(go()) == ["a!", "b!", "c!"]
    assert runs == [["a", "b", "c"]]  # one batch, though b and c came later than a


def test_the_wait_ends_when_an_expected_request_leaves_and_is_bounded_by_the_gather_time():
    batcher, runs = _batcher(gather_s=0.2)

    async def leaves():
        await asyncio.sleep(0.02)
        batcher.gone()  # failed authentication, say: it will not submit

    async def go():
        batcher.expect()
        batcher.expect()
        started = time.monotonic()
        await asyncio.gather(batcher.submit("a"), leaves())
        first = time.monotonic() - started
        batcher.expect()
        batcher.expect()  # this one never comes nor leaves (its model is still loading)
        started = time.monotonic()
        await batcher.submit("b")
        return first, time.monotonic() - started

    first, second = asyncio.run(go())
    assert first < 0.15 and 0.15 <= second < 0.5
    assert runs == [["a"], ["b"]]


def test_batches_are_capped_and_an_error_reaches_every_request_of_its_batch():
    batcher, runs = _batcher(max_batch_size=2, gather_s=0.05)

    async def go():
        for _ in range(5):
            batcher.expect()
        return await asyncio.gather(*(batcher.submit(i) for i in ("a", "b", "boom", "c", "d")),
                                    return_exceptions=True)

    results = asyncio.run(go())
    assert [len(batch) for batch in runs] == [2, 2, 1]
    assert results[:2] == ["a!", "b!"] and results[4] == "d!"
    assert all(isinstance(r, ValueError) for r in results[2:4])  # boom's batch: boom and c


@pytest.mark.parametrize("wait_s", [0.05])
def test_a_fixed_wait_applies_even_to_a_lone_request(wait_s):
    batcher, _ = _batcher(wait_s=wait_s, gather_s=0.0)

    async def go():
        batcher.expect()
        started = time.monotonic()
        await batcher.submit("a")
        return time.monotonic() - started

    assert asyncio.run(go()) >= wait_s

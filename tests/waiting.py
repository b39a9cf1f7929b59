"""The one polling loop of the test suite: wait for a condition instead of sleeping a fixed time."""
from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2, *,
             raise_on_timeout: bool = True) -> Optional[T]:
    """Call ``predicate`` every ``interval_s`` until it returns a truthy value, and return that value.

    After ``timeout_s`` (the predicate is called once more at the deadline) raise an
    ``AssertionError`` naming ``what``, or return None if ``raise_on_timeout`` is false (for a
    caller that reports the timeout itself). An exception from ``predicate`` ends the wait.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(interval_s, left))
    if raise_on_timeout:
        raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
    return None

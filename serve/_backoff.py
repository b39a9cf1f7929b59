"""Failed model loads: answer 503 quickly while backing off, then try again (never cached forever)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from serve._errors import ModelUnavailableError


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    message: str


class LoadBackoff:
    """Per-model exponential back-off: ``initial_s``, doubling per failure, capped at ``max_s``."""

    def __init__(self, initial_s: float, max_s: float, clock: Callable[[], float] = time.monotonic):
        self.initial_s = initial_s
        self.max_s = max_s
        self.clock = clock
        self._failures: dict[str, _Failure] = {}

    def check(self, model_id: str) -> None:
        """Raise :class:`ModelUnavailableError` while ``model_id`` is backing off after a failure."""
        failure = self._failures.get(model_id)
        if failure is not None and self.clock() < failure.retry_at:
            wait = failure.retry_at - self.clock()
            raise ModelUnavailableError(
                f"model {model_id} failed to load ({failure.attempts} attempt(s)): {failure.message}; "
                f"next attempt in {wait:.1f}s", retry_after_s=wait)

    def failed(self, model_id: str, error: BaseException) -> ModelUnavailableError:
        """Record a failed load; returns the 503 to raise."""
        previous = self._failures.get(model_id)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.initial_s * 2 ** (attempts - 1), self.max_s)
        message = str(getattr(error, "message", None) or error)[:500]
        self._failures[model_id] = _Failure(attempts, self.clock() + delay, message)
        return ModelUnavailableError(f"model {model_id} failed to load (attempt {attempts}, retry in "
                                     f"{delay:.1f}s): {message}", retry_after_s=delay)

    def succeeded(self, model_id: str) -> None:
        self._failures.pop(model_id, None)

    def snapshot(self) -> dict[str, dict]:
        now = self.clock()
        return {mid: {"attempts": f.attempts, "retry_in_s": round(max(0.0, f.retry_at - now), 2),
                      "error": f.message} for mid, f in self._failures.items()}

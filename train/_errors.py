"""The train package's error tree, under attune's ``AttuneError``. Every error pickles, so it survives
Ray actor boundaries. A ``TrainError`` is a training that failed (exit status 1); the ones that
also subclass ``UsageError`` are the user's input (exit status 2)."""
from __future__ import annotations

from typing import Sequence

from cluster import AttuneError, UsageError


class TrainError(AttuneError):
    """Base class of every error raised by ``train``: a training that could not run or finish."""


class DataValidationError(TrainError, UsageError):
    """A tenant data file has problems. ``problems`` holds every one found, in file order."""

    MAX_SHOWN = 20

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        shown = self.problems[: self.MAX_SHOWN]
        lines = [f"{self.source}: {len(self.problems)} problem(s) found in tenant data:"]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        lines.append("Fix the file and run the command again; nothing was trained or written.")
        return "\n".join(lines)

    def __reduce__(self):
        return (type(self), (self.source, self.problems))


class ConfigError(TrainError, UsageError):
    """A training option is invalid or inconsistent with the others."""


class BaseModelError(TrainError, UsageError):
    """The ``--base`` reference cannot be resolved to a model directory."""

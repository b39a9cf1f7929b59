"""The train package's error tree. Every error pickles, so it survives Ray actor boundaries."""
from __future__ import annotations

from typing import Sequence


class TrainError(Exception):
    """Base class of every error raised by ``train``."""


class DataValidationError(TrainError):
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


class ConfigError(TrainError):
    """A training option is invalid or inconsistent with the others."""


class BaseModelError(TrainError):
    """The ``--base`` reference cannot be resolved to a model directory."""

"""The tune package's errors. They subclass ``train``'s, so the CLI reports them without a traceback."""
from __future__ import annotations

from train._errors import ConfigError, TrainError


class TuneError(TrainError):
    """A search cannot start, cannot resume, or ended without a usable trial."""


class SpaceError(ConfigError):
    """A search space (``--space FILE`` or the flags that shape the default space) is invalid."""

"""The tune package's errors, under attune's ``AttuneError``: a ``TuneError`` is a search that failed
(exit status 1); ``TuneUsageError`` and ``SpaceError`` are the user's input or a search's state the
user must change (exit status 2)."""
from __future__ import annotations

from cluster import AttuneError, UsageError
from train import ConfigError


class TuneError(AttuneError):
    """A search cannot start, cannot resume, or ended without a usable trial."""


class TuneUsageError(TuneError, UsageError):
    """A search that cannot run as asked: bad input, a trial too big for the cluster, nothing to resume."""


class SpaceError(TuneError, ConfigError):
    """A search space (``--space FILE`` or the flags that shape the default space) is invalid."""

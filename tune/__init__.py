"""Per-tenant hyperparameter search on Ray Tune: spaces, schedulers, the trial driver, best-trial hand-off."""
from tune._errors import SpaceError, TuneError
from tune._job import TuneJob
from tune._space import SearchSpace, default_space, load_space

__all__ = [
    "TuneJob",
    "SearchSpace",
    "default_space",
    "load_space",
    "TuneError",
    "SpaceError",
    "tune_tenant",
    "erase_tune_files",
]


def __getattr__(name: str):  # Ray and torch only when a search runs
    if name == "tune_tenant":
        from tune._tune import tune_tenant

        return tune_tenant
    if name == "erase_tune_files":
        from tune._erase import erase_tune_files

        return erase_tune_files
    raise AttributeError(name)

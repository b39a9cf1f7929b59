"""Erase a tenant from every store attune keeps it in: ``attune registry delete-tenant``.

Each package that stores tenant data declares an eraser in the entry-point group ``attune.erasers``
(``pyproject.toml``), in the order they run: the API keys first (the tenant's callers are locked
out at once), then the registry (its replicas stop serving it), then the feedback its callers sent
(``POST .../feedback``), then the files under ``ATTUNE_HOME`` that training and tuning wrote.
An eraser is ``erase(tenant, settings) -> dict``::

    {"where": "sqlite:///.../keys.db", "removed": ["API key 1f0c...", ...], "notes": [...]}

The report names each store by its entry point (``keys``, ``registry``, ``feedback``, ``training``,
``tuning``).

Every eraser is idempotent, and every one runs even when another fails: an erasure interrupted or
failed part-way is finished by running it again. A store that could not be erased raises
:class:`ErasureError` at the end, naming it, after the others have done their part.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

from cluster._entry_points import entry_points
from cluster._errors import AttuneError, UsageError

ERASERS_GROUP = "attune.erasers"
logger = logging.getLogger("attune")


class ErasureError(AttuneError):
    """A store could not be erased; the others were. Running the erasure again finishes it."""


class NothingToEraseError(UsageError):
    """No store holds anything of the tenant (exit status 2, like an unknown tenant)."""


def erase_tenant(tenant: str, settings, *, on_store: Optional[Callable[[dict], None]] = None) -> dict:
    """Run every eraser for ``tenant``; the report: what each store removed, and where.

    ``on_store(part)`` is called as each store finishes (progress for the CLI). Raises
    :class:`NothingToEraseError` when no store held anything, :class:`ErasureError` when a store failed.
    """
    stores, failed = [], []
    for entry in entry_points(ERASERS_GROUP):
        try:
            part = {"store": entry.name, **entry.load()(tenant, settings)}
        except AttuneError as exc:
            failed.append((entry.name, str(exc)))
            part = {"store": entry.name, "where": None, "removed": [], "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one store's failure must not stop the others' erasure
            logger.exception("erasing %s from %s failed", tenant, entry.name)
            failed.append((entry.name, f"{type(exc).__name__}: {exc}"))
            part = {"store": entry.name, "where": None, "removed": [], "error": f"{type(exc).__name__}: {exc}"}
        stores.append(part)
        if on_store is not None:
            on_store(part)
    report = {"tenant": tenant, "stores": stores, "removed": sum(len(p["removed"]) for p in stores)}
    if failed:
        names = "; ".join(f"{name}: {message}" for name, message in failed)
        raise ErasureError(f"tenant {tenant!r} is not fully erased: {names}. The other stores were erased; "
                           f"fix the cause and run `attune registry delete-tenant {tenant} --yes` again",
                           ) from None
    if report["removed"] == 0:
        raise NothingToEraseError(f"tenant {tenant!r} has nothing to erase: no registered model, run, API key or "
                                  f"file under {settings.home} belongs to it; check the id (`attune registry list`)")
    return report


def remove_paths(paths: Iterable[Path]) -> list[str]:
    """Delete each file or folder (a folder with everything in it); the paths removed. A path that is
    already gone is skipped; one that cannot be removed raises, naming it."""
    removed = []
    for path in sorted(set(paths)):
        if not path.exists() and not path.is_symlink():
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise ErasureError(f"cannot remove {path}: {exc}; fix its permissions and run the erasure again") \
                from None
        removed.append(str(path))
    return removed

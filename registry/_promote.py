"""Moving ``champion``: promote and roll back, each checked first and all or nothing.

Before ``champion`` moves, the stored copy of the version it moves to is downloaded and checked
against the checksum recorded at registration; a missing or damaged copy refuses the move and the
champion stays. The alias write is the commit point: what is written before it (the history
event, the version's decision tags) is undone if the move fails.

The champion history is an append-only log: each promotion or rollback is its own tag on the
registered model, ``attune.champion_event.<time_ns>-<random>``, whose value says what happened.
Two promotions at once write two different keys, so neither can overwrite the other: a single JSON
tag rewritten by read-modify-write lost one of them, and MLflow offers no compare-and-swap on tags
or a lock that works across machines. A tag write is one upsert of one row, the same on SQLite,
PostgreSQL and an ``mlflow server``. The history (a stack of champions) is the replay of the log in
key order; keys order by the writer's clock, so two promotions within a clock skew of each other
may replay in either order, but both are there. The newest ``MAX_EVENTS`` events are kept. A
registry written before this keeps its ``attune.champion_history`` JSON list: the first event
copies it into a ``base`` event (a fixed key, so racing writers write the same one).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from registry import _store as store
from registry._errors import ArtifactIntegrityError, NothingToRollBackError, RegistryError
from registry._names import CHAMPION, TAG_CHAMPION_HISTORY, TAG_PROMOTED, TAG_PROMOTED_AT, TAG_REASON, tenant_model_name
from registry._records import VersionInfo

if TYPE_CHECKING:
    from registry._registry import Registry

logger = logging.getLogger("attune.registry")

EVENT_PREFIX = "attune.champion_event."
BASE_EVENT = EVENT_PREFIX + "0" * 20 + "-legacy"
MAX_EVENTS = 100


# -- the history -----------------------------------------------------------------------------------

def history(tags: dict[str, str]) -> list[str]:
    """The champions in order, oldest first, from a registered model's tags."""
    keys = sorted(k for k in tags if k.startswith(EVENT_PREFIX))
    stack: list[str] = [] if keys else list(json.loads(tags.get(TAG_CHAMPION_HISTORY, "[]")))
    for key in keys:
        try:
            event = json.loads(tags[key])
        except ValueError:
            logger.warning("ignoring the unreadable champion history event %s=%r", key, tags[key])
            continue
        if event.get("op") == "base":
            stack = [str(v) for v in event["versions"]]
        elif event.get("op") == "promote" and (not stack or stack[-1] != event["version"]):
            stack.append(event["version"])
        elif event.get("op") == "rollback":
            stack = _drop_through(stack, event["from"])
            if not stack or stack[-1] != event["to"]:
                stack.append(event["to"])
    return stack


def _drop_through(stack: list[str], version: str) -> list[str]:
    """``stack`` without its topmost ``version`` and everything above it (a promotion that never took
    effect, or lost a race, sits above the champion and goes with it)."""
    if version not in stack:
        return list(stack)
    return stack[:len(stack) - 1 - stack[::-1].index(version)]


def _predecessors(stack: list[str], champion: str) -> list[str]:
    """What a rollback from ``champion`` may go back to, the likeliest previous champion last.

    Normally the history below the champion's topmost entry. When nothing is below it but other
    versions are above it, promotions raced: the champion's event was written first and its alias
    last, so the versions above were champions for a moment in between; the newest of them is the
    previous champion (its stored copy is checked before the move, as always)."""
    below = _drop_through(stack, champion)
    return below or [version for version in stack if version != champion]


def append_event(registry: Registry, name: str, event: dict) -> str:
    """Write one history event under a key of its own; its key."""
    tags = registry.client.get_registered_model(name).tags or {}
    if TAG_CHAMPION_HISTORY in tags and not any(k.startswith(EVENT_PREFIX) for k in tags):
        legacy = json.dumps({"op": "base", "versions": json.loads(tags[TAG_CHAMPION_HISTORY])})
        registry._write(lambda: registry.client.set_registered_model_tag(name, BASE_EVENT, legacy), "history")
        try:
            registry._write(lambda: registry.client.delete_registered_model_tag(name, TAG_CHAMPION_HISTORY), "history")
        except Exception as exc:  # a racing writer migrated it first
            if not store.not_found(exc):
                raise
    key = f"{EVENT_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    value = json.dumps({**event, "at": now()})
    registry._write(lambda: registry.client.set_registered_model_tag(name, key, value), "history")
    return key


def prune_events(registry: Registry, name: str) -> None:
    """Keep the newest ``MAX_EVENTS`` events (best effort: a racing pruner may have removed some)."""
    keys = sorted(k for k in (registry.client.get_registered_model(name).tags or {}) if k.startswith(EVENT_PREFIX))
    for key in keys[:max(0, len(keys) - MAX_EVENTS)]:
        try:
            registry._write(lambda k=key: registry.client.delete_registered_model_tag(name, k), "history")
        except Exception as exc:  # noqa: BLE001 - an old event left behind is harmless
            logger.debug("could not prune champion history event %s of %s: %s", key, name, exc)


# -- promote and roll back -----------------------------------------------------------------------

def promote(registry: Registry, tenant: str, version: str, reason: str) -> dict:
    """Point ``champion`` at ``version`` after checking its stored copy; record it in the history."""
    name = tenant_model_name(tenant)
    info = registry.get_version(tenant, str(version))
    previous = registry.champion_or_none(tenant)
    was = previous.version if previous else None
    if was == info.version:
        return {"tenant": tenant, "champion": info.version, "previous": info.version, "changed": False}
    check_stored_copy(registry, tenant, info, was)
    event = append_event(registry, name, {"op": "promote", "version": info.version})
    before = {k: info.tags.get(k) for k in (TAG_PROMOTED, TAG_REASON, TAG_PROMOTED_AT)}
    try:
        registry.record_decision(tenant, info.version, True, reason)
        registry._write(lambda: registry.client.set_model_version_tag(name, info.version, TAG_PROMOTED_AT, now()),
                        "tag")
        registry._write(lambda: registry.client.set_registered_model_alias(name, CHAMPION, info.version), "alias")
    except Exception as exc:
        if not _champion_is(registry, tenant, info.version):
            undone = _undo(registry, name, info.version, event, before)
            raise _failed(exc, f"promoting version {info.version} of tenant {tenant!r} failed: {exc}. "
                               f"{_stays(was)}; {undone}") from exc
    prune_events(registry, name)
    logger.info("%s: champion is now version %s (was %s)", name, info.version, was)
    return {"tenant": tenant, "champion": info.version, "previous": was, "changed": True}


def rollback(registry: Registry, tenant: str) -> dict:
    """Move ``champion`` back to the previous champion, after checking its stored copy."""
    name = tenant_model_name(tenant)
    current = registry.champion(tenant)
    earlier = _predecessors(history(registry._model(tenant).tags), current.version)
    if not earlier:
        raise NothingToRollBackError(f"tenant {tenant!r} has no previous champion to roll back to "
                                     f"(champion is version {current.version}); use `attune registry promote`")
    target = registry.get_version(tenant, earlier[-1])
    check_stored_copy(registry, tenant, target, current.version)
    event = append_event(registry, name, {"op": "rollback", "from": current.version, "to": target.version})
    try:
        registry._write(lambda: registry.client.set_registered_model_alias(name, CHAMPION, target.version), "alias")
    except Exception as exc:
        if not _champion_is(registry, tenant, target.version):
            undone = _undo(registry, name, None, event, {})
            raise _failed(exc, f"rolling tenant {tenant!r} back to version {target.version} failed: {exc}. "
                               f"{_stays(current.version)}; {undone}") from exc
    _note_rollback(registry, name, current.version, target.version)
    prune_events(registry, name)
    return {"tenant": tenant, "champion": target.version, "previous": current.version}


def check_stored_copy(registry: Registry, tenant: str, info: VersionInfo, champion: Optional[str]) -> None:
    """Download ``info``'s stored model and check it against its registration checksum, or refuse the move."""
    try:
        with tempfile.TemporaryDirectory(prefix="attune-verify-") as tmp:
            registry.download(tenant, info.version, Path(tmp) / "model")
    except Exception as exc:  # noqa: BLE001 - whatever the cause, this copy cannot be served
        problem = str(exc) if isinstance(exc, ArtifactIntegrityError) else (
            f"its stored copy at {info.source} cannot be downloaded ({type(exc).__name__}: {exc}); register the "
            f"model again (`attune registry import DIR` or `attune finetune --tenant {tenant} ...`), or promote "
            "another version")
        raise ArtifactIntegrityError(f"refusing to make version {info.version} of tenant {tenant!r} its champion "
                                     f"({_stays(champion).lower()}): {problem}") from exc


# -- helpers ------------------------------------------------------------------------------------

def _champion_is(registry: Registry, tenant: str, version: str) -> bool:
    """Whether the alias write landed after all (it may fail after the store applied it)."""
    try:
        champion = registry.champion_or_none(tenant)
    except Exception:  # noqa: BLE001 - unknown: treat as not moved, and undo
        return False
    return champion is not None and champion.version == version


def _undo(registry: Registry, name: str, version: Optional[str], event: str, before: dict) -> str:
    try:
        registry._write(lambda: registry.client.delete_registered_model_tag(name, event), "history")
        for key, value in before.items():
            if value is None:
                registry._write(lambda k=key: registry.client.delete_model_version_tag(name, version, k), "tag")
            else:
                registry._write(lambda k=key, v=value: registry.client.set_model_version_tag(name, version, k, v),
                                "tag")
    except Exception as exc:  # noqa: BLE001 - reported in the raised error
        return (f"undoing its history entry and tags also failed ({exc}): run `attune registry show "
                f"{name.removeprefix('tenant.')}` and try again")
    return "nothing was changed; try again"


def _note_rollback(registry: Registry, name: str, left: str, target: str) -> None:
    """Notes for people (the history already has the rollback): best effort once the champion moved."""
    try:
        registry._write(lambda: registry.client.set_model_version_tag(
            name, left, "attune.rolled_back", f"rolled back to version {target} at {now()}"), "tag")
        registry._write(lambda: registry.client.set_registered_model_tag(
            name, "attune.last_rollback", json.dumps({"from": left, "to": target, "at": now()})), "tag")
    except Exception as exc:  # noqa: BLE001 - the rollback itself is done
        logger.warning("%s rolled back to version %s, but its notes could not be written: %s", name, target, exc)


def _stays(champion: Optional[str]) -> str:
    return f"The champion stays version {champion}" if champion else "The tenant still has no champion"


def _failed(exc: Exception, message: str) -> RegistryError:
    return (type(exc) if isinstance(exc, RegistryError) else RegistryError)(message)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

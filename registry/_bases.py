"""Pretrained bases in the registry: every ``attune pretrain`` export is a version of ``base.<name>``.

    info = registry.register_base("wiki", export_dir, record)          # version N, alias "newest"
    path, uri = registry.download_base("models:/base.wiki@newest", cache)  # uri: models:/base.wiki/N

A tenant trained from a base records the pinned ``models:/base.<name>/<version>`` as its lineage.
Downloads are verified against the registration checksum and cached as ``<cache>/base.<name>/<version>``.
Bases are never tenants: every tenant query asks for ``tenant.*`` names only.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from registry import _store as store
from registry._errors import ArtifactIntegrityError, VersionNotFoundError
from registry._names import BASE_ALIAS, BASE_PREFIX, TAG_CHECKSUM, base_model_name, base_uri, parse_base_uri
from registry._records import RunRecord, VersionInfo, version_info

if TYPE_CHECKING:
    from registry._registry import Registry

logger = logging.getLogger("attune.registry")
CACHE_MARK = ".attune-checksum"  # in a cached base: the checksum it was verified against


def register_base(registry: Registry, name: str, model_dir: Path, record: RunRecord) -> VersionInfo:
    """``model_dir`` as the next version of ``base.<name>``, aliased ``newest`` (all or nothing)."""
    from registry._register import register_version

    model = base_model_name(name)
    return register_version(registry, model, Path(model_dir), record, BASE_ALIAS, None,
                            lambda version: base_version(registry, base_uri(name, version)))


def base_version(registry: Registry, uri: str) -> VersionInfo:
    """The version ``uri`` (``models:/base.<name>@alias``, ``/<version>`` or ``/latest``) names."""
    name, ref = parse_base_uri(uri)
    model = base_model_name(name)
    try:
        aliases = dict(registry.client.get_registered_model(model).aliases or {})
    except Exception as exc:
        if not store.not_found(exc):
            raise store.wrap(exc, f"reading {model}", registry.tracking_uri) from exc
        raise VersionNotFoundError(f"--base {uri}: no base named {name!r} is registered ({_known(registry)}); "
                                   f"`attune pretrain --name {name} ...` registers one") from None
    versions = sorted(int(mv.version) for mv in registry._write(
        lambda: registry.client.search_model_versions(f"name='{model}'"), "search"))
    if ref == "latest" and versions:
        ref = str(versions[-1])
    version = ref if ref.isdigit() else aliases.get(ref)
    if version is None or int(version) not in versions:
        have = ", ".join(f"@{a} = version {v}" for a, v in sorted(aliases.items())) or "no aliases"
        raise VersionNotFoundError(f"--base {uri}: {model} has no {'version' if ref.isdigit() else 'alias'} "
                                   f"{ref!r} (it has versions {versions or 'none'}; {have}); see "
                                   "`attune registry ui` or pass one of those")
    return version_info(registry.client.get_model_version(model, str(version)))


def pinned_uri(registry: Registry, uri: str) -> str:
    return base_uri(parse_base_uri(uri)[0], base_version(registry, uri).version)


def download_base(registry: Registry, uri: str, cache_dir: Path) -> tuple[Path, str]:
    """The base ``uri`` names, as a local folder (cached, checksum-verified), and its pinned URI."""
    name, _ = parse_base_uri(uri)
    info = base_version(registry, uri)
    pinned = base_uri(name, info.version)
    target = Path(cache_dir) / f"{BASE_PREFIX}{name}" / info.version
    expected = info.tags.get(TAG_CHECKSUM)
    mark = target / CACHE_MARK
    if mark.is_file() and mark.read_text().strip() == expected:
        return target, pinned
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        local = store.download(info.source, staging, registry.tracking_uri)
        actual = store.dir_checksum(local)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{pinned}: the files at {info.source} do not match the checksum recorded at registration "
                f"(expected {expected}, got {actual}); the stored base was changed or damaged. Register it "
                "again with `attune pretrain`, or pass another version")
        (local / CACHE_MARK).write_text(expected or "")
        shutil.rmtree(target, ignore_errors=True)
        try:
            local.rename(target)
        except OSError:  # another process cached it at the same moment
            if not (target / CACHE_MARK).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("base %s downloaded to %s", pinned, target)
    return target, pinned


def _known(registry: Registry) -> str:
    found = registry.client.search_registered_models(filter_string=f"name LIKE '{BASE_PREFIX}%'", max_results=100)
    names = sorted(m.name for m in found if m.name.startswith(BASE_PREFIX))
    return "registered bases: " + ", ".join(names) if names else "no base is registered"

"""Base encoders: resolve a ``--base`` reference to a local Hugging Face model directory, and its tokenizer.

Fine-tuning (``--base``) and pretraining (``--init``) both start from one: ``minilm``, a directory, or
a base in the registry (``models:/base.<name>@<alias>`` or ``models:/base.<name>/<version>``), which is
downloaded once through the registry into ``$ATTUNE_HOME/cache/bases/base.<name>/<version>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from train._errors import BaseModelError

MINILM = "minilm"
MODELS_SCHEME = "models:/"


def resolve_base(base: str, settings=None) -> Path:
    """Map a ``--base`` reference to a local Hugging Face model directory: ``minilm`` (packaged), a named
    base installed with ``attune bases install`` (``mpnet``), a registered base
    (``models:/base.<name>@<alias>``, through the registry of ``settings``) or a directory with
    ``config.json`` (e.g. an ``attune pretrain`` export). The artifact contract's
    ``registry.resolve_base`` decides; here its refusal is the user's input error."""
    from cluster import UsageError
    from registry import InvalidModelDirError
    from registry import resolve_base as contract_resolve
    from train._bases import CATALOG

    if base != MINILM and base not in CATALOG and "/" not in base and not Path(base).is_dir():
        raise BaseModelError(f"--base {base!r}: no such base; the named bases are {MINILM} (packaged) and "
                             f"{', '.join(sorted(CATALOG))} (`attune bases install NAME`); or pass "
                             "models:/base.NAME@newest or the path of a Hugging Face model directory")
    try:
        return contract_resolve(base, settings)
    except (InvalidModelDirError, UsageError) as exc:
        raise BaseModelError(f"--base {base}: {exc}") from None


def register_installed_base(registry, name: str, settings, say) -> dict:
    """Register the installed named base ``name`` as the next version of ``base.<name>``, unless its newest
    version already holds these files (same checksum); ``{"base_version", "base_uri"}``."""
    from cluster import attune_version, code_version
    from registry import Lineage, RunRecord, VersionNotFoundError, dir_checksum
    from train._bases import CATALOG

    path, spec = resolve_base(name, settings), CATALOG[name]
    uri = f"models:/base.{name}@newest"
    try:
        current = registry.base_version(uri)
    except VersionNotFoundError:  # not registered yet
        current = None
    if current is not None and current.checksum == dir_checksum(path):
        say(f"base.{name} version {current.version} already holds these files")
        return {"base_version": current.version, "base_uri": f"models:/base.{name}/{current.version}"}
    say(f"registering {path} as the next version of base.{name} (uploading {spec.size_mb} MB)")
    lineage = Lineage(kind="import", base=spec.description.split(" ")[0], data_uri="pypi:" + ",".join(spec.packages),
                      data_hash=spec.model_sha256, code_version=code_version(), attune_version=attune_version())
    record = RunRecord(run_name=f"bases-install-{name}", params={"packages": ",".join(spec.packages)}, lineage=lineage)
    info = registry.register_base(name, path, record)
    say(f"registered base.{name} version {info.version} (alias newest)")
    return {"base_version": info.version, "base_uri": f"models:/base.{name}/{info.version}"}


def fetch_registered_base(uri: str, settings=None) -> tuple[Path, str]:
    """A registered base's local folder (downloaded once, checksum-verified) and its version-pinned URI
    ``models:/base.<name>/<version>``, which a tenant trained from it records as its lineage."""
    from cluster import UsageError, get_settings
    from registry import Registry

    settings = settings or get_settings()
    try:
        return Registry.from_settings(settings).download_base(uri, Path(settings.home).resolve() / "cache" / "bases")
    except UsageError as exc:  # an unknown name, alias or version, or not a base URI
        raise BaseModelError(str(exc)) from None


def pinned_base(base: str, settings=None) -> tuple[str, Optional[Path]]:
    """``base`` as a run records it (a registered base pinned to its version) and, for a registered base,
    its local folder (what the workers load); a preset or a directory is returned as it is, with None."""
    if not base.startswith(MODELS_SCHEME):
        return base, None
    path, uri = fetch_registered_base(base, settings)
    return uri, path


def load_tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dir))

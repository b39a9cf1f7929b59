"""``attune bases``: named bases installed on demand (``attune bases install mpnet``)."""
from __future__ import annotations

import argparse
import sys

from cluster import add_json_flag


def register(subparsers) -> None:
    p = subparsers.add_parser("bases", help="named base encoders: list them, install one on demand")
    sub = p.add_subparsers(dest="bases_command", metavar="ACTION", required=True)
    install = sub.add_parser("install", help="download a named base from PyPI into the base cache, check its "
                                             "SHA-256 and register it as base.<name>")
    install.add_argument("name", help="the base to install: mpnet (all-mpnet-base-v2, about 405 MB)")
    install.add_argument("--force", action="store_true", help="download and install again if it is installed")
    install.add_argument("--index-url", default=None, help="pip's package index (default: pip's own setting)")
    add_json_flag(install)
    install.set_defaults(handler=_install)
    listing = sub.add_parser("list", help="the named bases: packaged, installed or installable")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)


def _install(args: argparse.Namespace) -> int:
    from cluster import emit_json, get_settings
    from train._bases import install

    settings = get_settings(home=args.home, log_level=args.log_level)
    say = lambda text: print(text, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    pip_args = ["--index-url", args.index_url] if args.index_url else []
    summary = install(args.name, settings.bases_dir, pip_args=pip_args, force=args.force, say=say)
    summary.update(register_named_base(args.name, settings, say))
    if args.json:
        emit_json(summary)
    return 0


def register_named_base(name: str, settings, say) -> dict:
    """Register the installed base as a version of ``base.<name>`` (unless its files are registered already)."""
    from registry import Registry
    from train._base import register_installed_base

    return register_installed_base(Registry.from_settings(settings), name, settings, say)


def _list(args: argparse.Namespace) -> int:
    from cluster import emit_json, get_settings
    from train._bases import CATALOG, installed_path

    settings = get_settings(home=args.home, log_level=args.log_level)
    rows = [{"base": "minilm", "status": "packaged", "path": None,
             "description": "sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters), the default"}]
    for name, spec in sorted(CATALOG.items()):
        path = installed_path(name, settings.bases_dir)
        rows.append({"base": name, "status": "installed" if path else "installable",
                     "path": str(path) if path else None, "description": spec.description})
    if args.json:
        emit_json({"bases": rows})
    else:
        for row in rows:
            hint = row["path"] or (f"attune bases install {row['base']}" if row["status"] == "installable" else "")
            print(f"{row['base']:<8} {row['status']:<12} {row['description']}  {hint}")
    return 0

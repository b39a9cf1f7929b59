"""The ``attune`` command line. Run ``attune --help``.

Each package contributes its subcommands through a small ``register(subparsers)``
function, loaded by name so ``cluster`` never imports the ML packages eagerly.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Callable, Optional, Sequence

from cluster._settings import SettingsError, get_settings

# Modules that add subcommands: each exposes ``register(subparsers) -> None``.
COMMAND_MODULES = [
    "train._cli",
    "train._pretrain_cli",
    "tune._cli",
    "registry._cli",
    "serve._cli",
    "cluster._demo",
    "cluster._jobs_cli",
]

logger = logging.getLogger("attune")


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attune",
        description="Fine-tune, register and serve one classifier per tenant on Ray.",
    )
    parser.add_argument("--home", help="state directory (env ATTUNE_HOME, default ./.attune)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env ATTUNE_LOG_LEVEL)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def emit_json(payload: dict) -> None:
    """Print ``payload`` as the last line of stdout (after flushing everything else)."""
    sys.stderr.flush()
    sys.stdout.flush()
    print(json.dumps(payload, default=str), flush=True)


def emit(args: argparse.Namespace, payload: dict, text: str) -> int:
    """``--json``: ``payload`` as the last stdout line; otherwise the human-readable ``text``."""
    if args.json:
        emit_json(payload)
    else:
        print(text)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = get_settings(home=args.home, log_level=args.log_level)
    except SettingsError as exc:
        print(f"attune: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("attune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors carry their own advice
        if _is_user_error(exc):
            print(f"attune: error: {exc}", file=sys.stderr)
            return 2
        raise


def _is_user_error(exc: Exception) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"CommandError", "TrainError", "SettingsError", "ValidationError",
                         "RegistryError", "ServeError", "ConnectionError"})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

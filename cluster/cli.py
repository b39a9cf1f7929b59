"""The ``attune`` command line. Run ``attune --help``.

Each top-level command is an entry point of the group ``attune.commands`` in ``pyproject.toml``:
its name is the command, its value a ``register(subparsers)`` function in the package that owns
it. The list of commands lives there, in one place, and ``cluster`` imports no other package.

Exit status: 0 on success, 2 for a usage or input error, 1 for a runtime failure (see
``cluster._errors``), 130 on Ctrl-C. Any other exception is a bug and prints its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata
from typing import Callable, Optional, Sequence

from cluster._entry_points import entry_points
from cluster._errors import AttuneError, UsageError
from cluster._settings import get_settings
from cluster._version import attune_version, git_commit

ENTRY_POINT_GROUP = "attune.commands"

logger = logging.getLogger("attune")


class CommandError(UsageError):
    """A command was used wrongly, or its input cannot work: printed without a traceback, exit status 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the default is unset (None) or a flag's off."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """attune's parser: every command's help shows defaults, and a command's one-line ``help`` is also
    its description. Sub-parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)


class _Commands(argparse._SubParsersAction):
    def add_parser(self, name, **kwargs):
        if kwargs.get("help"):
            kwargs.setdefault("description", kwargs["help"])
        return super().add_parser(name, **kwargs)


def command_entry_points() -> list[metadata.EntryPoint]:
    """The ``attune.commands`` entry points, in the order ``pyproject.toml`` lists them."""
    return entry_points(ENTRY_POINT_GROUP)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="attune", description="Fine-tune, register and serve one classifier per tenant on Ray.")
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--home", help="state directory (env ATTUNE_HOME, default ./.attune)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env ATTUNE_LOG_LEVEL, default INFO); "
                                            "DEBUG also shows Ray's own log lines")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in command_entry_points():
        entry.load()(subparsers)
    return parser


def version_text() -> str:
    commit = git_commit()
    return f"attune {attune_version()}" + (f" (git {commit[:12]})" if commit else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = get_settings(home=args.home, log_level=args.log_level)
    except AttuneError as exc:
        return _report(exc)
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("attune: interrupted", file=sys.stderr)
        return 130
    except AttuneError as exc:  # attune's own errors carry their advice; anything else is a bug
        return _report(exc)


def _report(exc: AttuneError) -> int:
    print(f"attune: error: {exc}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

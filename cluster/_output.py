"""What commands print: a human-readable text, or with ``--json`` one JSON object as the last stdout line."""
from __future__ import annotations

import argparse
import json
import sys


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json``: every command that prints a result can print it as one JSON object instead."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object, the last line of "
                                                             "stdout (progress and logs go to stderr)")


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

"""``attune data demo``: write the demo tenants' data."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster import add_json_flag


def register_data(subparsers) -> None:
    data = subparsers.add_parser("data", help="tenant data utilities")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    demo = data_sub.add_parser("demo", help="write the demo tenants' data (john, jane, newsdesk)")
    demo.add_argument("--out", required=True, type=Path, help="directory to write the JSONL files into")
    demo.add_argument("--newsdesk-source", type=Path, default=None,
                      help="folder with the Twitter Financial News CSVs (env ATTUNE_NEWSDESK_DATA; "
                           "default ../shared/data/twitter-financial-news-sentiment)")
    add_json_flag(demo)
    demo.set_defaults(handler=_run_data_demo)


def _run_data_demo(args: argparse.Namespace) -> int:
    from cluster import UsageError, emit_json
    from train._demo_data import default_newsdesk_source, write_demo_data

    source = args.newsdesk_source or default_newsdesk_source()
    try:
        summary = write_demo_data(args.out, newsdesk_source=source)
    except FileNotFoundError as exc:
        raise UsageError(f"{exc}. Pass --newsdesk-source DIR (the folder holding sent_train.csv and "
                           "sent_valid.csv) or unset ATTUNE_NEWSDESK_DATA to skip newsdesk.") from None
    if args.json:
        emit_json(summary)
    else:
        for tenant, path in summary["files"].items():
            print(f"{tenant:<9} {summary['rows'][tenant]:>6} rows  {path}")
        print(f"john and jane disagree on {summary['conflicting_rows']} rows "
              f"({summary['conflict_fraction']:.0%})")
        if "newsdesk" not in summary["files"]:
            print("newsdesk skipped: Twitter Financial News CSVs not found; pass --newsdesk-source DIR",
                  file=sys.stderr)
    return 0

"""``attune relocalize``: the tenant's next version from its data plus its feedback (see ``driver``)."""
from __future__ import annotations

import argparse

from cluster import add_json_flag


def register(subparsers) -> None:
    p = subparsers.add_parser("relocalize", help="fine-tune a tenant's next version on its data plus its feedback, "
                                                 "gate it against the champion, promote it if it wins")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", help="relocalize this tenant now")
    which.add_argument("--status", metavar="TENANT", help="when TENANT was last relocalized, why, how it ended, "
                                                          "and whether the policy says it is due")
    which.add_argument("--auto", action="store_true",
                       help="relocalize every tenant the policy says is due (ATTUNE_RELOCALIZE_MIN_NEW_LABELS new "
                            "feedback texts, or drift with ATTUNE_RELOCALIZE_ON_DRIFT); run it from a schedule, or "
                            "as a cluster job: attune submit -- relocalize --auto")
    p.add_argument("--since", default=None, help="with --tenant: use only feedback received at or after this ISO "
                                                 "8601 time (default: all of the tenant's feedback)")
    p.add_argument("--data", default=None, help="with --tenant: the tenant's labelled data (default: the data file "
                                                "the champion was trained on)")
    add_json_flag(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from cluster import UsageError, emit_json, get_settings, shutdown_ray

    settings = get_settings(home=args.home, log_level=args.log_level)
    if (args.since or args.data) and not args.tenant:
        raise UsageError("--since and --data go with --tenant")
    if args.status:
        from train.relocalize.policy import status

        summary = status(args.status, settings)
        emit_json(summary) if args.json else print(_status_text(summary))
        return 0
    try:
        if args.auto:
            from train.relocalize.policy import run_due

            summary = run_due(settings)
        else:
            from train.relocalize.driver import relocalize

            summary = relocalize(args.tenant, settings=settings, since=args.since, data=args.data)
    finally:
        shutdown_ray()
    emit_json(summary) if args.json else print(_auto_text(summary) if args.auto else _text(summary))
    return 0


def _text(s: dict) -> str:
    d, m = s["data"], s["metrics"]
    return "\n".join([
        f"{s['tenant']}: data {d['rows']} rows ({d['feedback_rows']} feedback texts, {d['corrections']} corrections "
        f"of the champion; {d['contradicted_rows']} older rows contradicted, relabelled) -> {d['data_uri']}",
        f"version {s['model_version']} (from v{s['previous_version']}): test macro-F1 {m['test_macro_f1']:.4f}, "
        f"accuracy {m['test_accuracy']:.4f}, {s['train_seconds']:.0f}s",
        f"{s['alias']}: {s['promotion']['reason']}",
    ])


def _status_text(s: dict) -> str:
    lines = [f"{s['tenant']}: {'due' if s['due'] else 'not due'} ({s['why']})"]
    last = s["last"]
    if last is None:
        lines.append("never relocalized")
    else:
        lines.append(f"last relocalized {last['started_at']} ({last['trigger']}): {last['outcome']}"
                     + (f", version {last['version']}" if last.get("version") else "")
                     + (f"; {last['message']}" if last.get("message") else ""))
    return "\n".join(lines)


def _auto_text(s: dict) -> str:
    if not s["tenants"]:
        return "no tenant has feedback"
    return "\n".join(f"{t['tenant']}: {t['action']} ({t['why']})" + (f", version {t['model_version']}"
                                                                      if t.get("model_version") else "")
                     for t in s["tenants"])

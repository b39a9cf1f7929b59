"""``attune registry list|show|promote|rollback|delete-tenant|import|ui``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cluster import add_json_flag
from registry._artifact import temperature_text


def register(subparsers) -> None:
    reg = subparsers.add_parser("registry", help="browse and change the model registry (MLflow)")
    sub = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="one row per tenant with its champion version and metrics")
    add_json_flag(p)
    p.set_defaults(handler=_run_list)
    p = sub.add_parser("show", help="a tenant's versions, aliases, metrics, lineage, promotion decisions, and its "
                                    "champion's live quality on feedback (accuracy, ECE, drift test)")
    p.add_argument("tenant")
    add_json_flag(p)
    p.set_defaults(handler=_run_show)
    p = sub.add_parser("promote", help="make VERSION the tenant's champion")
    p.add_argument("tenant")
    p.add_argument("version")
    p.add_argument("--reason", default="promoted by hand with `attune registry promote`",
                   help="why; recorded on the version")
    add_json_flag(p)
    p.set_defaults(handler=_run_promote)
    p = sub.add_parser("rollback", help="move champion back to the previous champion")
    p.add_argument("tenant")
    add_json_flag(p)
    p.set_defaults(handler=_run_rollback)
    p = sub.add_parser("delete-tenant", help="erase a tenant everywhere: API keys, registered model, runs, artifacts, "
                                             "feedback and its files under ATTUNE_HOME; prints what was removed, "
                                             "where")
    p.add_argument("tenant")
    p.add_argument("--yes", action="store_true", help="required: confirms the erasure")
    add_json_flag(p)
    p.set_defaults(handler=_run_delete)
    p = sub.add_parser("import", help="register exported model directories (or a folder of them) as tenant "
                                      "versions, without training")
    p.add_argument("path", type=Path, help="an export (a model_dir of attune finetune) or a folder of exports")
    p.add_argument("--tenant", help="register the export as this tenant's version (default: its manifest's tenant)")
    p.add_argument("--promote", action="store_true", help="make each imported version its tenant's champion "
                                                          "(default: challenger)")
    add_json_flag(p)
    p.set_defaults(handler=_run_import)
    p = sub.add_parser("ui", help="start the MLflow UI on the configured stores")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on")
    p.add_argument("--port", type=int, default=5000, help="port the UI listens on")
    p.set_defaults(handler=_run_ui)


def _registry(args):
    from cluster import get_settings
    from registry._registry import Registry

    return Registry.from_settings(get_settings(home=args.home, log_level=args.log_level))


def _out(args, payload: dict, text: str) -> int:
    from cluster import emit

    return emit(args, payload, text)


def _run_list(args: argparse.Namespace) -> int:
    rows = _registry(args).list_tenants()
    lines = [f"{'tenant':<24} {'champion':>8} {'test_acc':>9} {'macro_f1':>9} {'ece_after':>9}  promoted_at"]
    for r in rows:
        m = r["metrics"]
        fmt = lambda k: f"{m[k]:.4f}" if k in m else "-"  # noqa: E731
        lines.append(f"{r['tenant']:<24} {r['champion_version'] or '-':>8} {fmt('test_accuracy'):>9} "
                     f"{fmt('test_macro_f1'):>9} {fmt('ece_after'):>9}  {r['promoted_at'] or '-'}")
    if not rows:
        lines = ["no tenants registered yet; run `attune finetune --tenant T --data PATH`"]
    return _out(args, {"tenants": rows}, "\n".join(lines))


def _run_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    shown = registry.show(args.tenant)
    shown["live_quality"], unavailable = _live_quality(args, registry)
    lines = [f"{shown['name']}  aliases: {json.dumps(shown['aliases'])}  "
             f"champion history: {shown['champion_history']}"]
    for v in shown["versions"]:
        m, lin, promo = v["metrics"], v["lineage"], v["promotion"]
        nan = float("nan")
        lines.append(f"  v{v['version']:<4} {','.join(v['aliases']) or '-':<20} "
                     f"acc {m.get('test_accuracy', nan):.4f}  macro-F1 {m.get('test_macro_f1', nan):.4f}"
                     f"  ECE {m.get('ece_before', nan):.4f}->{m.get('ece_after', nan):.4f}"
                     f"  T={temperature_text(v['temperature'], v['temperature_slope'])}"
                     f"  base={lin.get('base')}  data={lin.get('data_hash', '')[:12]}"
                     f"  code={lin.get('code_version', '')[:12]}")
        if promo:
            lines.append(f"        promotion: {'promoted' if promo['promoted'] else 'not promoted'}: {promo['reason']}")
    lines += [f"live quality: unavailable: {unavailable}"] if unavailable else _quality_lines(shown["live_quality"])
    if unavailable:
        shown["live_quality_error"] = unavailable
    return _out(args, shown, "\n".join(lines))


def _live_quality(args, registry) -> tuple:
    """The champion's live quality, or None and why the feedback store could not be read (the rest of
    ``show`` stands)."""
    from cluster import get_settings
    from registry._feedback import FeedbackStoreError
    from registry._quality import champion_quality

    try:
        return champion_quality(registry, get_settings(home=args.home, log_level=args.log_level), args.tenant), None
    except FeedbackStoreError as exc:
        return None, str(exc)


def _quality_lines(quality) -> list[str]:
    """``show``'s live quality: the champion's accuracy and ECE on feedback, and the drift test."""
    if quality is None:
        return ["live quality: no champion"]
    drift = quality["drift"]
    head = (f"live quality of champion v{quality['version']} since {quality['since'] or '(unknown)'}: "
            f"{quality['rows']} feedback text(s) scored")
    if quality["rows"]:
        head += (f", accuracy {quality['accuracy']:.4f} ({quality['correct']}/{quality['rows']}), "
                 f"ECE {quality['ece']:.4f}")
    if drift["status"] == "not_enough_rows":
        verdict = f"not tested: {drift['n']} of the {drift['min_rows']} rows needed"
    elif drift["status"] == "no_test_accuracy":
        verdict = "not tested: the version has no test_accuracy"
    else:
        verdict = f"{'DRIFT' if drift['flag'] else 'no drift'} (p = {drift['p_value']:.3g}, alpha {drift['alpha']:g})"
    against = f" against test accuracy {quality['test_accuracy']:.4f} - {drift['tolerance']:g}" \
        if quality["test_accuracy"] is not None else ""
    return [head, f"  drift test{against}: {verdict}", f"  rule: {drift['rule']}"]


def _run_promote(args: argparse.Namespace) -> int:
    result = _registry(args).promote(args.tenant, args.version, reason=args.reason)
    return _out(args, result, f"{args.tenant}: champion is version {result['champion']} "
                              f"(was {result['previous']})")


def _run_rollback(args: argparse.Namespace) -> int:
    result = _registry(args).rollback(args.tenant)
    return _out(args, result, f"{args.tenant}: champion rolled back from version {result['previous']} "
                              f"to version {result['champion']}")


def _run_delete(args: argparse.Namespace) -> int:
    import sys

    from cluster import UsageError, erase_tenant, get_settings
    from registry._names import check_tenant_id

    check_tenant_id(args.tenant)
    if not args.yes:
        raise UsageError(f"delete-tenant erases {args.tenant!r} everywhere (API keys, registered model, runs, "
                         f"artifacts, feedback, files under ATTUNE_HOME) and cannot be undone; add --yes to confirm: "
                         f"attune registry delete-tenant {args.tenant} --yes")
    settings = get_settings(home=args.home, log_level=args.log_level)

    def progress(part: dict) -> None:  # each store as it finishes; stderr, so --json's stdout stays one line
        state = "FAILED: " + part["error"] if part.get("error") else f"{len(part['removed'])} removed"
        print(f"  {part['store']:<17} {state}", file=sys.stderr, flush=True)

    print(f"erasing tenant {args.tenant}", file=sys.stderr, flush=True)
    report = erase_tenant(args.tenant, settings, on_store=progress)
    lines = [f"erased tenant {args.tenant}: {report['removed']} item(s) removed"]
    for part in report["stores"]:
        lines.append(f"{part['store']} ({part['where']}):")
        lines += [f"  removed {item}" for item in part["removed"]] or ["  nothing of the tenant"]
        lines += [f"  note: {note}" for note in part.get("notes", [])]
    lines.append("running endpoints refuse the tenant's keys (401) and drop its models (404) within their "
                 "refresh periods (ATTUNE_SERVE_KEYS_REFRESH_S, ATTUNE_SERVE_REFRESH_S)")
    return _out(args, report, "\n".join(lines))


def _run_import(args: argparse.Namespace) -> int:
    from registry._import import import_exports

    result = import_exports(_registry(args), args.path, tenant=args.tenant, promote=args.promote)
    lines = [f"{row['tenant']:<24} v{row['version']:<5} {'champion' if row['promoted'] else 'challenger'}"
             for row in result["imported"]]
    lines.append(f"imported {len(result['imported'])} export(s) in {result['seconds']:.1f}s")
    return _out(args, result, "\n".join(lines))


def _run_ui(args: argparse.Namespace) -> int:
    from registry._ui import run_ui

    return run_ui(_registry(args), host=args.host, port=args.port)

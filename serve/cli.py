"""``attune serve up|status|down`` and ``attune keys create|revoke|list``.

    attune keys create --tenant john --json
    attune serve up --port 8000 --detach
    curl -H "Authorization: Bearer $KEY" -d '{"texts": ["gold is up"]}' localhost:8000/v1/tenants/john/predict
    attune serve status
    attune serve down
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Optional

from cluster import add_json_flag

logger = logging.getLogger("attune.serve")

INSECURE_BANNER = ("\n" + "!" * 78 + "\n!!  AUTHENTICATION IS DISABLED (--insecure-no-auth): anyone who reaches this "
                   "port\n!!  can call every tenant's model. Use it for local experiments only.\n" + "!" * 78)


def register_serve(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve every tenant's champion behind one HTTP endpoint")
    sub = serve.add_subparsers(dest="serve_command", metavar="ACTION", required=True)
    p = sub.add_parser("up", help="deploy the application (foreground until Ctrl-C, or --detach)")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP endpoint listens on")
    p.add_argument("--port", type=int, default=8000, help="port of the HTTP endpoint")
    p.add_argument("--config", type=Path, help="serve config YAML (see serve/configs/example.yaml)")
    p.add_argument("--detach", action="store_true", help="return once /readyz answers 200; leave it running")
    p.add_argument("--insecure-no-auth", action="store_true", help="no API keys (local experiments only)")
    p.add_argument("--ready-timeout-s", type=float, default=180.0,
                   help="how long --detach waits for /readyz before failing")
    add_json_flag(p)
    p.set_defaults(handler=_run_up)
    p = sub.add_parser("status", help="replicas, loaded models per replica and health")
    add_json_flag(p)
    p.set_defaults(handler=_run_status)
    p = sub.add_parser("down", help="tear the application down (and the local Ray head attune started)")
    add_json_flag(p)
    p.set_defaults(handler=_run_down)


def register_keys(subparsers) -> None:
    keys = subparsers.add_parser("keys", help="create, revoke and list API keys")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = ksub.add_parser("create", help="create a key for one tenant (or --admin) and print it once")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="the tenant id this key may call")
    who.add_argument("--admin", action="store_true", help="a key that may call any tenant")
    add_json_flag(p)
    p.set_defaults(handler=_run_keys_create)
    p = ksub.add_parser("revoke", help="revoke a key (effective within ATTUNE_SERVE_KEYS_REFRESH_S, at most 10 s)")
    p.add_argument("key_id")
    add_json_flag(p)
    p.set_defaults(handler=_run_keys_revoke)
    p = ksub.add_parser("list", help="key ids, tenants and revocation times (never the keys)")
    add_json_flag(p)
    p.set_defaults(handler=_run_keys_list)


def _settings(args):
    from cluster import get_settings

    return get_settings(home=args.home, log_level=args.log_level)


def _out(args, payload: dict, text: str) -> int:
    from cluster import emit

    return emit(args, payload, text)


def _store(settings):
    from serve._keys import KeyStore, keys_url

    return KeyStore(keys_url(settings))


# -- keys -------------------------------------------------------------------------------------------

def _run_keys_create(args: argparse.Namespace) -> int:
    from registry import check_tenant_id

    if args.tenant:
        check_tenant_id(args.tenant)
    created = _store(_settings(args)).create(None if args.admin else args.tenant, admin=args.admin)
    who = "admin (any tenant)" if args.admin else f"tenant {args.tenant}"
    return _out(args, created, f"key_id: {created['key_id']}  ({who})\nkey:    {created['key']}\n"
                               "Store the key now: it is not shown again.")


def _run_keys_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    revoked = _store(settings).revoke(args.key_id)
    return _out(args, revoked, f"revoked key {args.key_id}; serving rejects it within "
                               f"{settings.serve_keys_refresh_s:g} s")


def _run_keys_list(args: argparse.Namespace) -> int:
    rows = _store(_settings(args)).list()
    lines = [f"{'key_id':<14} {'tenant':<24} {'admin':<6} {'created_at':<26} revoked_at"]
    lines += [f"{r['key_id']:<14} {r['tenant'] or '*':<24} {str(r['admin']).lower():<6} {r['created_at']:<26} "
              f"{r['revoked_at'] or '-'}" for r in rows]
    return _out(args, {"keys": rows}, "\n".join(lines) if rows else "no keys; run `attune keys create --tenant T`")


# -- serve ------------------------------------------------------------------------------------------

def _run_up(args: argparse.Namespace) -> int:
    from cluster import init_ray, start_local_head
    from serve._app import deploy, teardown, write_state
    from serve._config import AppSpec, load_config
    from serve._errors import DeployError

    settings = _settings(args)
    spec = AppSpec.from_settings(settings, load_config(args.config), insecure_no_auth=args.insecure_no_auth)
    _check_auth(settings, args.insecure_no_auth)
    started_head, head = False, None
    if args.detach and not settings.ray_address:
        started_head = _head_missing(settings)
        head = start_local_head(settings)
    _check_head(settings, head)
    init_ray(settings)
    url = deploy(spec, host=args.host, port=args.port)
    if not _wait_ready(settings, head, url, args.ready_timeout_s):
        raise DeployError(f"the application did not become ready within {args.ready_timeout_s:g}s "
                           f"({url}/readyz); see `attune serve status`")
    state = {"url": url, "host": args.host, "port": args.port, "ray_address": settings.ray_address,
             "started_head": started_head, "detached": args.detach, "insecure_no_auth": args.insecure_no_auth}
    if args.detach:
        write_state(settings.home, state)
        return _out(args, state, f"attune is serving at {url} (detached); stop it with `attune serve down`")
    _out(args, state, f"attune is serving at {url}; Ctrl-C stops it")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        logger.info("stopping the application")
    finally:
        teardown()
    return 0


def _check_auth(settings, insecure: bool) -> None:
    if insecure:
        logger.warning(INSECURE_BANNER)
        return
    count = _store(settings).count_active()
    if count == 0:
        logger.warning("no API keys exist yet, so every request will get 401; create one with "
                       "`attune keys create --tenant T` (or `--admin`)")


def _wait_ready(settings, head: Optional[dict], url: str, timeout_s: float) -> bool:
    """Wait for ``url/readyz``; a local head that exits meanwhile fails at once, not at the timeout."""
    from serve._app import wait_ready

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if wait_ready(url, min(1.0, deadline - time.monotonic())):
            return True
        _check_head(settings, head)
    return False


def _check_head(settings, head: Optional[dict]) -> None:
    """Raise when the local head ``serve up --detach`` started (or joined) is gone."""
    from cluster import RayUnavailableError, local_head

    if head is not None and local_head(settings) is None:
        raise RayUnavailableError(
            f"the local Ray head (pid {head['pid']}, {head['address']}) exited while the endpoint was starting; "
            f"see its output in {head.get('log', Path(settings.home) / 'ray-head.log')} and Ray's logs in "
            f"{head.get('ray_logs', 'its temp folder')}, then run `attune serve up --detach` again")


def _head_missing(settings) -> bool:
    from cluster import local_head

    return local_head(settings) is None


def _connect(settings) -> bool:
    """Connect to RAY_ADDRESS or the recorded local head; False when neither exists (nothing to inspect)."""
    from cluster import init_ray, local_head

    if not settings.ray_address and local_head(settings) is None:
        return False
    init_ray(settings)
    return True


def _run_status(args: argparse.Namespace) -> int:
    from serve._app import read_state, status

    settings = _settings(args)
    state = read_state(settings.home) or {}
    if not _connect(settings):
        return _out(args, {"running": False}, "attune serve is not running (no RAY_ADDRESS and no local head)")
    shown = status(state.get("url"))
    return _out(args, shown, _status_text(shown))


def _status_text(shown: dict) -> str:
    if not shown["running"]:
        return "attune serve is not running on this Ray cluster"
    lines = [f"application {shown['app']}: {shown['status']}  url: {shown.get('url') or '?'}  "
             f"healthz: {shown.get('healthz')}  readyz: {shown.get('readyz')}"]
    for name, d in shown["deployments"].items():
        lines.append(f"  {name:<12} {d['status']:<10} replicas: {d['replica_states']}")
    for replica in shown["replicas"]:
        models = list(replica.get("models", []))
        count = replica.get("num_models", len(models))
        shown_models = ", ".join(models[:8]) + (f", ... ({count} in all)" if count > 8 else "")
        memory = f"  adapters {replica['adapter_bytes'] / 2**20:.1f} MiB" if "adapter_bytes" in replica else ""
        lines.append(f"  Endpoint replica {replica.get('replica')}: models {shown_models or '-'}{memory}"
                     + (f"  error: {replica['error']}" if "error" in replica else ""))
    return "\n".join(lines)


def _run_down(args: argparse.Namespace) -> int:
    from cluster import shutdown_ray, stop_local_head
    from serve._app import read_state, state_path, teardown

    settings = _settings(args)
    state = read_state(settings.home) or {}
    removed = False
    try:
        if _connect(settings):
            removed = teardown()
            shutdown_ray()
    finally:  # the head attune started goes away even when the teardown failed
        stopped = stop_local_head(settings) if (state.get("started_head") or not settings.ray_address) else False
    state_path(settings.home).unlink(missing_ok=True)
    return _out(args, {"removed": removed, "stopped_head": stopped},
                f"application {'removed' if removed else 'was not running'}"
                + ("; local Ray head stopped" if stopped else ""))

"""``attune demo``: the whole idea in one command, on the embedded default.

It is a script over attune's own commands, run in this process, so it shows exactly
what a user would type: write the demo data, fine-tune john, jane and newsdesk on one
local Ray head (2 workers, ZeRO-2; each run is registered and gated), create a key per
tenant, start the endpoint, and ask john and jane about the same headlines over HTTP.
Then John goes short: he sends 40 corrections over HTTP (``POST .../feedback``), ``attune
relocalize --tenant john`` trains and gates his next version, and once the endpoint follows
the new champion the same headlines are asked again, before and after side by side.
A re-run reuses every champion whose data and base are unchanged (``--retrain`` forces).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shlex
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from cluster._errors import AttuneError, UsageError
from cluster._output import add_json_flag

SEED_SENTENCE = "gold is up 150% in after-hours trading"
TEXTS = [
    SEED_SENTENCE,
    "gold futures tumble 3% on profit-taking",
    "oil slumps 4% after OPEC meeting",
    "Barrick Gold names new chief financial officer",
]
COMPARED = ("john", "jane")
# Sized so the three fine-tunes fit the demo's 10-minute budget on 2 CPUs. The headlines are
# short (32 tokens); newsdesk trains one epoch on a 2,000-row subsample of its 9,602 train rows.
TRAINING = {
    "john": ["--epochs", "3", "--max-seq-len", "32"],
    "jane": ["--epochs", "3", "--max-seq-len", "32"],
    "newsdesk": ["--epochs", "1", "--max-seq-len", "48", "--max-train-rows", "2000"],
}
COMMON = ["--workers", "2", "--zero-stage", "2"]


class DemoError(AttuneError):
    """The demo cannot go on; the message says which step failed and what to do. A step that failed
    gives the demo its exit status."""

    def __init__(self, message: str, exit_code: Optional[int] = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class DemoUsageError(DemoError, UsageError):
    """The demo cannot start as asked (e.g. its port is taken)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the end-to-end demo: fine-tune john, jane and newsdesk, serve, compare")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the endpoint on 127.0.0.1")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the endpoint (and the local Ray head) up; stop it with `attune serve down`")
    p.add_argument("--retrain", action="store_true", help="fine-tune every tenant even if its champion is current")
    p.add_argument("--base", default="minilm", help="base encoder for the three tenants: 'minilm' "
                   "or a Hugging Face model directory, e.g. an `attune pretrain` export")
    p.add_argument("--data-dir", type=Path, default=None, help="where to write the demo data "
                   "(default $ATTUNE_HOME/demo-data)")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cluster import get_settings, start_local_head
    from cluster._output import emit_json

    started = time.monotonic()
    settings = get_settings(home=args.home, log_level=args.log_level)
    say = _Say(args.json)
    _check_port_free(args.port)
    demo = _Demo(args, say)
    data_dir = args.data_dir or settings.home / "demo-data"
    written = demo.call("data", "demo", "--out", str(data_dir))
    files, feedback, refresh_s = written["files"], written["feedback"], settings.serve_refresh_s
    if not settings.ray_address:
        head = start_local_head(settings)
        say(f"local Ray head at {head['address']} (one cluster for training and serving)")
    try:
        versions = {tenant: demo.train(tenant, Path(path), args.base, args.retrain)
                    for tenant, path in files.items()}
        keys = {tenant: demo.call("keys", "create", "--tenant", tenant)["key"] for tenant in versions}
        endpoint = demo.call("serve", "up", "--host", "127.0.0.1", "--port", str(args.port), "--detach")["url"]
        results = [_compare(endpoint, keys, text) for text in TEXTS]
        say(_table(results))
        if demo.relocalized("john", versions["john"]):
            say(f"john: champion v{versions['john']} is already relocalized (John is short); --retrain to redo")
            relocalized = {"tenant": "john", "reused": versions["john"], "promoted": False}
        else:
            relocalized = demo.john_goes_short(endpoint, keys, Path(feedback["john"]), results, refresh_s)
            say(_side_by_side(results, relocalized["results"]))
        say(_next_steps(endpoint, keys, args))
    finally:
        if not args.keep_running:
            demo.call("serve", "down")
            say("endpoint stopped (run with --keep-running to leave it up)")
    summary = {"results": results, "relocalized": relocalized, "endpoint": endpoint,
               "seconds": round(time.monotonic() - started, 1)}
    versions["john"] = relocalized["relocalize"]["model_version"] if relocalized["promoted"] else versions["john"]
    say(f"demo finished in {summary['seconds']:.0f}s; champions: "
        + ", ".join(f"{t} v{v}" for t, v in versions.items()))
    if args.json:
        emit_json(summary)
    return 0


class _Say:
    """Human output: stdout normally, stderr under ``--json`` so the JSON stays the last stdout line."""

    def __init__(self, to_stderr: bool):
        self.stream = sys.stderr if to_stderr else sys.stdout

    def __call__(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class _Demo:
    def __init__(self, args: argparse.Namespace, say: _Say):
        self.global_args = [*(["--home", str(args.home)] if args.home else []),
                            *(["--log-level", args.log_level] if args.log_level else [])]
        self.say = say

    def call(self, *argv: str, quiet: bool = False) -> dict:
        """Run ``attune ARGV --json`` in this process; returns its JSON summary."""
        from cluster.cli import main

        if not quiet:
            self.say(f"$ attune {' '.join(shlex.quote(a) for a in argv)}")
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            status = main([*self.global_args, *argv, "--json"])
        if status != 0:
            raise DemoError(f"`attune {' '.join(argv)}` failed (exit status {status}); "
                            "its message is above. Fix that and run `attune demo` again.", exit_code=status)
        return _last_json(captured.getvalue(), argv)

    def train(self, tenant: str, data: Path, base: str, retrain: bool) -> str:
        """Fine-tune ``tenant`` unless its champion was trained on this exact data from ``base``."""
        current = None if retrain else self._current_champion(tenant, data, base)
        if current is not None:
            self.say(f"{tenant}: champion v{current} was trained on this data; reusing it (--retrain to redo)")
            return current
        summary = self.call("finetune", "--tenant", tenant, "--data", str(data), "--base", base,
                            *COMMON, *TRAINING[tenant])
        m = summary["metrics"]
        self.say(f"{tenant}: test accuracy {m['test_accuracy']:.3f}, macro-F1 {m['test_macro_f1']:.3f}, "
                 f"v{summary['model_version']} {summary['alias']} ({summary['promotion']['reason']}), "
                 f"{summary['train_seconds']:.0f}s")
        if summary["alias"] != "champion" and self._champion_version(tenant) is None:
            raise DemoError(f"{tenant} v{summary['model_version']} was not promoted and {tenant} has no "
                            f"champion to serve: {summary['promotion']['reason']}")
        return self._champion_version(tenant)

    def john_goes_short(self, endpoint: str, keys: dict, corrections: Path, before: list[dict],
                        refresh_s: float) -> dict:
        """John's corrections over HTTP, ``attune relocalize --tenant john``, then the same headlines again
        once the endpoint answers with the new champion (it follows within its refresh time)."""
        items = [json.loads(line) for line in corrections.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.say(f"\nJohn closes his long gold position and goes short. He sends {len(items)} corrections "
                 "(rising gold is now negative for him, falling gold positive):")
        self.say(f"$ curl -X POST {endpoint}/v1/tenants/john/feedback -d '{{\"items\": [...{len(items)} items]}}'")
        stored = _post(endpoint, "john", "feedback", keys["john"], {"items": items})
        summary = self.call("relocalize", "--tenant", "john")
        data, m = summary["data"], summary["metrics"]
        self.say(f"john: {data['feedback_rows']} feedback texts, {data['contradicted_rows']} older rows contradicted "
                 f"and relabelled; v{summary['model_version']} test macro-F1 {m['test_macro_f1']:.3f}, "
                 f"{summary['alias']} ({summary['promotion']['reason']}), {summary['train_seconds']:.0f}s")
        promoted = bool(summary["promotion"]["promoted"])
        if promoted:
            _wait_for_version(endpoint, keys["john"], summary["model_version"], timeout_s=refresh_s * 3 + 30)
        after = [_compare(endpoint, keys, row["text"]) for row in before]
        return {"tenant": "john", "feedback_sent": len(items), "feedback_stored": stored["stored"],
                "relocalize": summary, "promoted": promoted, "results": after}

    def _champion_version(self, tenant: str) -> Optional[str]:
        rows = self.call("registry", "list", quiet=True)["tenants"]
        return next((r["champion_version"] for r in rows if r["tenant"] == tenant), None)

    def _current_champion(self, tenant: str, data: Path, base: str) -> Optional[str]:
        version = self._champion_version(tenant)
        if version is None:
            return None
        shown = self.call("registry", "show", tenant, quiet=True)
        champion = next(v for v in shown["versions"] if v["version"] == version)
        lineage = champion["lineage"]
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
        same_data = digest in (lineage.get("data_hash"), lineage.get("source_data_hash"))  # or relocalized from it
        return version if same_data and lineage.get("base") == base else None

    def relocalized(self, tenant: str, version: str) -> bool:
        """Whether ``version`` of ``tenant`` came from ``attune relocalize``."""
        shown = self.call("registry", "show", tenant, quiet=True)
        return any(v["version"] == version and "relocalized_from" in v["lineage"] for v in shown["versions"])


def _last_json(stdout: str, argv) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise DemoError(f"`attune {' '.join(argv)} --json` printed no JSON summary; its output was: {stdout[-500:]!r}")


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise DemoUsageError(f"port {port} on 127.0.0.1 is already in use (a running `attune serve`? stop it with "
                            "`attune serve down`); or pick another with --port")


def _compare(endpoint: str, keys: dict, text: str) -> dict:
    row = {"text": text}
    for tenant in COMPARED:
        body = _predict(endpoint, tenant, keys[tenant], [text])
        pred = body["predictions"][0]
        row[tenant] = {"label": pred["label"], "scores": pred["scores"], "model_version": body["model_version"]}
    return row


def _predict(endpoint: str, tenant: str, key: str, texts: list[str]) -> dict:
    return _post(endpoint, tenant, "predict", key, {"texts": texts})


def _wait_for_version(endpoint: str, key: str, version: str, timeout_s: float) -> None:
    """Poll john's endpoint until the new champion answers (its refresh time), or fail saying so."""
    deadline = time.monotonic() + timeout_s
    while True:
        answered = _predict(endpoint, "john", key, [SEED_SENTENCE])["model_version"]
        if answered == version:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"the endpoint still answers john with v{answered}, not the new champion v{version}, "
                            f"after {timeout_s:.0f}s; see `attune serve status`")
        time.sleep(0.5)


def _post(endpoint: str, tenant: str, route: str, key: str, body: dict) -> dict:
    request = urllib.request.Request(f"{endpoint}/v1/tenants/{tenant}/{route}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise DemoError(f"POST {request.full_url} answered {exc.code}: {exc.read().decode(errors='replace')}; "
                        "see `attune serve status`") from None


def _table(results: list[dict]) -> str:
    width = max(len(r["text"]) for r in results) + 2
    cell = lambda p: f"{p['label']:<9} {p['scores'][p['label']]:.2f}  v{p['model_version']}"  # noqa: E731
    lines = [f"{'headline':<{width}}{'john (long gold)':<24}jane (short gold)"]
    lines += [f"{r['text']:<{width}}{cell(r['john']):<24}{cell(r['jane'])}" for r in results]
    return "\n".join(["", *lines, ""])


def _side_by_side(before: list[dict], after: list[dict]) -> str:
    """John before and after relocalizing, and Jane (unchanged), per headline."""
    width = max(len(r["text"]) for r in before) + 2
    cell = lambda p: f"{p['label']:<9} {p['scores'][p['label']]:.2f}  v{p['model_version']}"  # noqa: E731
    lines = [f"{'headline':<{width}}{'john before':<24}{'john after (short)':<24}jane"]
    lines += [f"{b['text']:<{width}}{cell(b['john']):<24}{cell(a['john']):<24}{cell(a['jane'])}"
              for b, a in zip(before, after)]
    return "\n".join(["", *lines, ""])


def _next_steps(endpoint: str, keys: dict, args: argparse.Namespace) -> str:
    home = f" --home {shlex.quote(str(args.home))}" if args.home else ""
    body = json.dumps({"texts": [SEED_SENTENCE]})
    curls = [f"curl -s -X POST {endpoint}/v1/tenants/{tenant}/predict -H 'Authorization: Bearer {key}' "
             f"-H 'Content-Type: application/json' -d '{body}'" for tenant, key in keys.items()]
    lines = [f"endpoint: {endpoint}   (OpenAPI: {endpoint}/docs)", "try it:", *(f"  {c}" for c in curls),
             f"registry UI: attune{home} registry ui   (then open http://127.0.0.1:5000)"]
    if args.keep_running:
        lines.append(f"the endpoint stays up; stop it with: attune{home} serve down")
    return "\n".join(lines)

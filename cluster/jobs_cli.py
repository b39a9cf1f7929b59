"""``attune submit`` and ``attune jobs``: run any attune command as a job on a Ray cluster.

    attune submit --address http://HEAD:8265 --wait -- finetune --tenant john --data s3://bucket/john.jsonl
    attune jobs list
    attune jobs status JOB_ID
    attune jobs logs JOB_ID --follow
    attune jobs stop JOB_ID

The address is ``--address``, else ``ATTUNE_RAY_DASHBOARD``, else ``RAY_ADDRESS`` (see ``cluster._jobs``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import sys

from cluster._output import add_json_flag

logger = logging.getLogger("attune.cluster")
NOT_SUBMITTABLE = {"submit", "jobs"}


def register_submit(subparsers) -> None:
    p = subparsers.add_parser("submit", help="run an attune command as a job on a Ray cluster (Ray Jobs API)",
                              description="Run `attune ARGS...` as a Ray job; the project code and every ATTUNE_* "
                                          "variable set here go with it, except credentials (the cluster "
                                          "uses its own). Usage: attune submit [options] -- ARGS...")
    _address(p)
    p.add_argument("--wait", action="store_true", help="stream the job's logs; exit with its status")
    p.add_argument("--name", help="the job's submission id (unique on the cluster; default: generated)")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="also pass this environment variable to the job (repeatable; never a credential)")
    add_json_flag(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGS", help="the attune command to run")
    p.set_defaults(handler=_run_submit)


def register_jobs(subparsers) -> None:
    jobs = subparsers.add_parser("jobs", help="list, inspect, follow and stop submitted jobs")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="every job on the cluster, oldest first")
    _address(p)
    add_json_flag(p)
    p.set_defaults(handler=_run_list)
    for action, text, handler in (("status", "one job's status, times and exit code", _run_status),
                                  ("stop", "ask a job to stop", _run_stop)):
        p = sub.add_parser(action, help=text)
        p.add_argument("job_id")
        _address(p)
        add_json_flag(p)
        p.set_defaults(handler=handler)
    p = sub.add_parser("logs", help="a job's logs so far (or --follow them to its end)")
    p.add_argument("job_id")
    _address(p)
    p.add_argument("--follow", action="store_true", help="keep streaming until the job ends; exit with its status")
    p.set_defaults(handler=_run_logs)


def _address(p) -> None:
    p.add_argument("--address", help="Ray dashboard URL http://HEAD:8265, ray://HEAD or HEAD:PORT "
                                     "(env ATTUNE_RAY_DASHBOARD, else RAY_ADDRESS)")


def _settings(args):
    from cluster._settings import get_settings

    return get_settings(home=args.home, log_level=args.log_level)


def _connect(args, settings=None):
    """(client, dashboard URL) for the command's address."""
    from cluster import _jobs

    settings = settings or _settings(args)
    if settings.log_level != "DEBUG":  # Ray's client logs every packaging step at INFO
        logging.getLogger("ray").setLevel(logging.ERROR)
    address, source = _jobs.pick_address(args.address, settings)
    url = _jobs.dashboard_url(address, source)
    return _jobs.client(url), url


def _out(args, payload: dict, text: str) -> int:
    from cluster._output import emit

    return emit(args, payload, text)


# -- submit -----------------------------------------------------------------------------------------

def checked_argv(argv: list[str]) -> list[str]:
    """The attune command after ``--``, parsed here first: a typo never reaches the cluster."""
    from cluster.cli import CommandError, build_parser

    argv = argv[1:] if argv[:1] == ["--"] else argv
    if not argv:
        raise CommandError("nothing to submit: give the attune command after `--`, "
                           "e.g. `attune submit -- finetune --tenant john --data s3://bucket/john.jsonl`")
    try:
        parsed = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):  # `-- finetune --help` printed the help: nothing to do
            raise
        raise CommandError(f"not submitted: `attune {' '.join(argv)}` is not a valid attune command "
                           "(see the usage error above)") from None
    if parsed.command in NOT_SUBMITTABLE:
        raise CommandError(f"`attune {parsed.command}` talks to the cluster from here; submit a command that "
                           "does the work, e.g. `attune submit -- finetune ...`")
    if parsed.command == "keys" and getattr(parsed, "keys_command", None) == "create":
        raise CommandError(f"not submitted: `attune {' '.join(argv)}` prints the new key's secret, and a job's "
                           "output stays in its logs on the Ray dashboard, readable by anyone who can open it. "
                           f"Run `attune {' '.join(argv)}` directly on a machine that reaches the key store "
                           "(the same ATTUNE_KEYS_DB_URL as the cluster, e.g. the head node)")
    _refuse_credentials(argv)
    return argv


def _refuse_credentials(argv: list[str]) -> None:
    """A job's command line is shown on the Ray dashboard: no argument may carry a credential."""
    from cluster import _jobs
    from cluster.cli import CommandError

    for position, arg in enumerate(argv, 1):
        what = _jobs.credential_in(arg)
        if what is not None:
            raise CommandError(f"not submitted: argument {position} of `attune {argv[0]} ...` holds {what}, "
                               "and the Ray dashboard shows a job's command line to anyone who can open it. "
                               "Leave the credential out of the command and give the cluster its credentials "
                               f"in its own environment (see {_jobs.CREDENTIALS_DOC})")


def _run_submit(args: argparse.Namespace) -> int:
    from cluster import _jobs

    try:
        argv = checked_argv(args.argv)
    except SystemExit:
        return 0
    settings = _settings(args)
    jobs, url = _connect(args, settings)
    env = _jobs.job_env_vars(settings, url, args.env, home_flag=bool(args.home))
    withheld = _jobs.withheld_settings()
    if withheld:
        print(_jobs.withheld_line(withheld), file=sys.stderr, flush=True)
    _warn_private_registry(settings, url, {**withheld, **env})  # a withheld tracking URI is still set
    job_id = _jobs.submit(jobs, argv, env, args.name)
    print(f"submitted job {job_id} to {url}", flush=True)
    payload = {"job_id": job_id, "address": url, "entrypoint": _jobs.entrypoint(argv)}
    if not args.wait:
        return _out(args, payload, f"follow it with `attune jobs logs {job_id} --follow --address {url}`")
    try:
        info = _jobs.follow(jobs, job_id)
    except KeyboardInterrupt:
        print(f"\nattune: stopped following; job {job_id} keeps running "
              f"(stop it with `attune jobs stop {job_id} --address {url}`)", file=sys.stderr)
        return 130
    code = _jobs.exit_code(info)
    _out(args, {**payload, **info, "exit_code": code}, _jobs.summary_line(info))
    return code


def _warn_private_registry(settings, url: str, env: dict) -> None:
    from cluster import _jobs

    if _jobs.is_local(url) or {"ATTUNE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"} & set(env):
        return
    logger.warning("the cluster at %s is not on this machine and neither ATTUNE_MLFLOW_TRACKING_URI nor "
                   "MLFLOW_TRACKING_URI is set: the job uses the registry its own environment configures (by "
                   "default a SQLite file on the cluster node), not %s. Set ATTUNE_MLFLOW_TRACKING_URI to a shared "
                   "tracking server to share one.",
                   url, settings.tracking_uri)


# -- jobs -------------------------------------------------------------------------------------------

def _run_list(args: argparse.Namespace) -> int:
    from cluster import _jobs

    jobs, url = _connect(args)
    rows = _jobs.list_jobs(jobs)
    lines = [f"{'job_id':<32} {'status':<10} {'started':<20} entrypoint"]
    lines += [f"{r['job_id']:<32} {r['status']:<10} {_when(r['start_time']):<20} {r['entrypoint']}" for r in rows]
    return _out(args, {"address": url, "jobs": rows}, "\n".join(lines) if rows else f"no jobs on {url}")


def _run_status(args: argparse.Namespace) -> int:
    from cluster import _jobs

    jobs, _ = _connect(args)
    info = _jobs.describe(jobs, args.job_id)
    text = (f"job {info['job_id']}: {info['status']}\n  entrypoint: {info['entrypoint']}\n"
            f"  started: {_when(info['start_time'])}  ended: {_when(info['end_time'])}"
            f"  exit code: {info['driver_exit_code'] if info['driver_exit_code'] is not None else '-'}"
            + (f"\n  message: {info['message']}" if info.get("message") else ""))
    return _out(args, info, text)


def _run_stop(args: argparse.Namespace) -> int:
    from cluster import _jobs

    jobs, _ = _connect(args)
    _jobs.describe(jobs, args.job_id)  # a clear error for an unknown id
    stopped = bool(jobs.stop_job(args.job_id))
    return _out(args, {"job_id": args.job_id, "stopped": stopped},
                f"job {args.job_id}: " + ("stop requested" if stopped else "was not running"))


def _run_logs(args: argparse.Namespace) -> int:
    from cluster import _jobs

    jobs, _ = _connect(args)
    _jobs.describe(jobs, args.job_id)
    if not args.follow:
        sys.stdout.write(jobs.get_job_logs(args.job_id))
        return 0
    try:
        info = _jobs.follow(jobs, args.job_id)
    except KeyboardInterrupt:
        return 130
    print(_jobs.summary_line(info), file=sys.stderr)
    return _jobs.exit_code(info)


def _when(seconds) -> str:
    if not seconds:
        return "-"
    return _dt.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")

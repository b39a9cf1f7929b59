"""The local Ray head's start-up: port picking, port ownership, a head that dies, a port that is taken.

A stub ``ray`` executable stands in for Ray here (no Ray starts); the real ``ray start`` with a taken
GCS port is tests/integration/test_local_head.py.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from cluster import RayUnavailableError, _head, _ports, _runtime, get_settings, local_head
from cluster._runtime import start_local_head

needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


@pytest.fixture
def listening():
    """A socket of this process listening on a free port; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def settings(tmp_path):
    yield get_settings(environ={}, home=str(tmp_path / "home"))


def _stub_ray(tmp_path: Path, monkeypatch, body: str) -> None:
    """Make ``start_local_head`` run a shell script instead of Ray's CLI (``get-auth-token`` succeeds)."""
    script = tmp_path / "ray"
    script.write_text(f'#!/bin/sh\ncase "$1" in get-auth-token) exit 0;; esac\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(_runtime, "ray_executable", lambda: str(script))


def test_free_ports_skips_a_taken_port_and_avoids_the_ephemeral_range(listening):
    chosen = _ports.free_ports(2, candidates=[listening, listening, 20001, 20001, 20002, 20003])
    assert listening not in chosen and len(set(chosen)) == 2
    low, _ = _ports.ephemeral_range()
    assert all(_ports._LOWEST_PORT <= p < low for p in _ports.free_ports(7))


@needs_proc
def test_listeners_tell_a_session_s_own_socket_from_another_process_s(listening):
    mine = _ports.listeners([listening], sid=os.getsid(0))
    assert mine == {listening: _ports.Listener(listening, ours=True)}
    theirs = _ports.listeners([listening], sid=os.getsid(0) + 100000)[listening]
    assert not theirs.ours and theirs.pid == os.getpid() and "python" in theirs.command
    assert _ports.listeners([_ports.free_ports(1)[0]], sid=os.getsid(0)) == {}


@needs_proc
def test_a_recorded_head_whose_gcs_port_another_process_holds_is_stale(settings, listening):
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        _head.head_file(settings).parent.mkdir(parents=True)
        _head.head_file(settings).write_text(f'{{"address": "127.0.0.1:{listening}", "pid": {sleeper.pid}}}')
        assert local_head(settings) is None  # alive, and the port answers: but not as this head
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_head_that_exits_at_once_is_reported_at_once_with_its_output_and_log(settings, tmp_path, monkeypatch):
    _stub_ray(tmp_path, monkeypatch, 'echo "raylet: cannot open /dev/shm: out of space"; exit 1')
    started = time.monotonic()
    with pytest.raises(RayUnavailableError) as caught:
        start_local_head(settings, timeout_s=60)
    assert time.monotonic() - started < 5  # not the 60 s timeout
    message = str(caught.value)
    assert "exited with status 1" in message and "cannot open /dev/shm: out of space" in message
    assert str(_head.head_log(settings)) in message and "ray-head.log" in message
    assert not _head.head_file(settings).exists()


def test_address_in_use_is_retried_with_fresh_ports_then_reported(settings, tmp_path, monkeypatch, caplog):
    tried = tmp_path / "tried"
    _stub_ray(tmp_path, monkeypatch, f'''for a in "$@"; do case "$a" in --port=*) p="${{a#--port=}}";; esac; done
echo "$p" >> {tried}; echo "[Errno 98] bind 0.0.0.0:$p: Address already in use"; exit 1''')
    with caplog.at_level(logging.WARNING, logger="attune.cluster"), pytest.raises(RayUnavailableError) as caught:
        start_local_head(settings, timeout_s=60)
    ports = [int(p) for p in tried.read_text().split()]
    assert len(ports) == _head.MAX_START_ATTEMPTS == len(set(ports))  # fresh ports on every try
    retries = [r.getMessage() for r in caplog.records if "retrying with fresh ports" in r.getMessage()]
    assert len(retries) == _head.MAX_START_ATTEMPTS - 1 and f"port {ports[0]} was taken" in retries[0]
    message = str(caught.value)
    assert f"port {ports[-1]} was taken" in message and "Address already in use" in message
    assert str(_head.head_log(settings)) in message


@needs_proc
def test_a_port_another_process_listens_on_is_noticed_while_the_head_runs(settings, tmp_path, monkeypatch,
                                                                         listening, caplog):
    pids = tmp_path / "pids"
    _stub_ray(tmp_path, monkeypatch, f"echo $$ >> {pids}; exec sleep 60")  # alive, never ready
    picks = []

    def pick(count: int) -> list[int]:  # the GCS port is taken after the pick, before Ray binds it
        picks.append([listening, *_ports.free_ports(count - 1)])
        return picks[-1]

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="attune.cluster"), pytest.raises(RayUnavailableError) as caught:
        start_local_head(settings, timeout_s=60, pick_ports=pick)
    assert time.monotonic() - started < 15  # each try is given up within about a second, not 60 s
    assert len(picks) == _head.MAX_START_ATTEMPTS
    message = str(caught.value)
    assert f"port {listening} was taken by pid {os.getpid()} (" in message and "python" in message
    assert sum("retrying with fresh ports" in r.getMessage() for r in caplog.records) == 2
    assert all(not _head._pid_alive(int(pid)) for pid in pids.read_text().split())  # every try was killed


def test_serve_up_s_wait_for_readiness_ends_at_once_when_the_head_dies(settings):
    from serve.cli import _wait_ready

    gone = subprocess.Popen(["true"], start_new_session=True)
    gone.wait()
    port = _ports.free_ports(1)[0]
    head = {"address": f"127.0.0.1:{port}", "pid": gone.pid, "log": "/home/x/ray-head.log",
            "ray_logs": "/tmp/attune-ray-x/session_latest/logs"}
    _head.head_file(settings).parent.mkdir(parents=True)
    _head.head_file(settings).write_text(json.dumps(head))
    started = time.monotonic()
    with pytest.raises(RayUnavailableError) as caught:
        _wait_ready(settings, head, f"http://127.0.0.1:{_ports.free_ports(1)[0]}", timeout_s=60)
    assert time.monotonic() - started < 10  # not the 60 s readiness timeout
    assert f"pid {gone.pid}" in str(caught.value) and "/home/x/ray-head.log" in str(caught.value)

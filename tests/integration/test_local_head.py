"""A real ``ray start`` whose GCS port another process takes: the local head comes up on fresh ports.

The GCS port is the one that fooled the old readiness check (the port answered, but as another
process) while ``ray start`` hung on it for more than 40 s.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from cluster import _head, _ports, get_settings, local_head, start_local_head, stop_local_head


def test_a_taken_gcs_port_is_retried_on_fresh_ports(tmp_path, caplog):
    settings = get_settings(environ={}, home=str(tmp_path / "home"), ray_num_cpus=1)
    picks: list[list[int]] = []

    def pick(count: int) -> list[int]:  # the first pick's GCS port is taken between the pick and Ray's bind
        ports = _ports.free_ports(count)
        if not picks:
            ports[0] = taken_port
        picks.append(ports)
        return ports

    head = None
    with socket.socket() as taken, caplog.at_level(logging.WARNING, logger="attune.cluster"):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        started = time.monotonic()
        try:
            head = start_local_head(settings, timeout_s=120, pick_ports=pick)
            elapsed = time.monotonic() - started
            assert len(picks) == 2 and head["address"] == f"127.0.0.1:{picks[1][0]}" != f"127.0.0.1:{taken_port}"
            assert local_head(settings) == head  # alive, and its GCS port is its own
            owners = _ports.listeners(picks[1], sid=head["pid"])
            assert sorted(p for p, who in owners.items() if who.ours) == sorted(picks[1])  # every port it was given
            retries = [r.getMessage() for r in caplog.records if "retrying with fresh ports" in r.getMessage()]
            assert retries == [retries[0]] and f"port {taken_port} was taken by pid {os.getpid()}" in retries[0]
            assert elapsed < 150, f"the head took {elapsed:.0f}s to start"
        finally:
            stop_local_head(settings)
    assert head is not None and not _head._pid_alive(head["pid"]) and _ports.session_pids(head["pid"]) == []

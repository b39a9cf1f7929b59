"""Ports for the local Ray head: picking free ones, and telling who listens on a port.

Ports are picked outside the kernel's ephemeral range, so no outgoing connection (Ray's own
processes make many while a head starts) can take one between the pick and Ray's bind. Whether
a listening socket belongs to the head attune started is read from Linux's ``/proc``: the socket's
inode in ``/proc/net/tcp{,6}``, and the descriptors of the processes in the head's session
(``ray start`` runs in a session of its own and every Ray process it starts stays in it). Without
``/proc`` the owner is unknown and callers fall back to "the port answers".
"""
from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
# Below the ephemeral range and above Ray's default worker ports (10002-19999).
_LOWEST_PORT = 20000


@dataclass(frozen=True)
class Listener:
    """Who listens on a port: ``ours`` when a process of the head's session holds the socket."""

    port: int
    ours: bool
    pid: Optional[int] = None  # the holder, when it could be found
    command: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "a process attune cannot see (another user's, or one that just exited)"
        return f"pid {self.pid} ({self.command or '?'})"


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default when unknown)."""
    try:
        low, high = (PROC / "sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_is_free(port: int) -> bool:
    """True when a listening socket could bind ``port`` on every address (as Ray's GCS does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _candidates() -> Iterator[int]:
    low = _LOWEST_PORT
    high = ephemeral_range()[0] - 1
    if high - low < 1000:  # an unusual ephemeral range: let the kernel pick
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                yield sock.getsockname()[1]
    while True:
        yield random.randint(low, high)


def free_ports(count: int, candidates: Optional[Iterable[int]] = None, max_tries: int = 1000) -> list[int]:
    """``count`` distinct ports that are free now, picked outside the ephemeral range."""
    chosen: list[int] = []
    for tries, port in enumerate(candidates if candidates is not None else _candidates()):
        if tries >= max_tries:
            break
        if port not in chosen and port_is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise OSError(f"found only {len(chosen)} of {count} free ports in {max_tries} tries")


def _listening_inodes() -> Optional[dict[int, set[int]]]:
    """port -> inodes of the sockets listening on it, from /proc/net/tcp and tcp6; None without /proc."""
    found: dict[int, set[int]] = {}
    readable = False
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN:
                port = int(fields[1].rsplit(":", 1)[1], 16)
                found.setdefault(port, set()).add(int(fields[9]))
    return found if readable else None


def session_pids(sid: int, running: bool = False) -> list[int]:
    """Every process in session ``sid`` (the head's ``ray start`` and all it started); ``running``:
    leave out the ones that have exited and wait to be reaped (zombies)."""
    pids = []
    for entry in PROC.glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and not (running and fields[0] == "Z"):
            pids.append(int(entry.name))
    return pids


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in (PROC / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _holder(inodes: set[int]) -> tuple[Optional[int], str]:
    """The pid and command line of a process holding one of ``inodes``, when this user may see it."""
    for entry in PROC.glob("[0-9]*"):
        if _socket_inodes(int(entry.name)) & inodes:
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                command = ""
            return int(entry.name), command.strip()[:120]
    return None, ""


def listeners(ports: Iterable[int], sid: int) -> Optional[dict[int, Listener]]:
    """Who listens on each of ``ports`` (a port nobody listens on is left out), judged against the
    session ``sid``; None where ``/proc`` cannot tell."""
    table = _listening_inodes()
    if table is None:
        return None
    wanted = {port: table[port] for port in ports if port in table}
    if not wanted:
        return {}
    ours = set().union(*(_socket_inodes(pid) for pid in session_pids(sid)))
    found = {}
    for port, inodes in wanted.items():
        if inodes & ours:
            found[port] = Listener(port, ours=True)
        else:
            pid, command = _holder(inodes)
            found[port] = Listener(port, ours=False, pid=pid, command=command)
    return found


def port_answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0

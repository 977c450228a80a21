"""Starting servers under test and making sure every process they spawned is gone afterwards.

Why sessions and not process groups: a server is started with
``start_new_session=True``, so it and everything it forks share a session id
(SID) equal to its pid. Ray's worker processes (the Serve proxy, controller
and replicas) put themselves into their *own process groups*, so killing the
leader's group would leave them running; they do keep the session. Stopping a
server therefore signals exactly the processes of the session we created --
never other Ray instances on the machine (``ray stop --force`` would) -- plus
any descendant that might have left the session.

Also here: CPU accounting that tells how much of the machine *other*
processes used during a measurement, because on a shared 2-core box a
benchmark without that number cannot be trusted.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcInfo:
    """The few fields of /proc/PID/stat we need."""

    pid: int
    ppid: int
    sid: int
    state: str
    cpu_ticks: int
    start_ticks: int  # start time since boot: with pid, identifies a process despite pid reuse


def read_proc(pid: int) -> ProcInfo | None:
    """Parse /proc/PID/stat; None if the process is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rfind(")") + 2:].split()  # comm may contain spaces and parentheses
    # rest[0]=state [1]=ppid [2]=pgrp [3]=session ... [11]=utime [12]=stime ... [19]=starttime
    return ProcInfo(pid, int(rest[1]), int(rest[3]), rest[0], int(rest[11]) + int(rest[12]), int(rest[19]))


def all_procs() -> list[ProcInfo]:
    """Every process visible in /proc."""
    out = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            info = read_proc(int(entry.name))
            if info is not None:
                out.append(info)
    return out


def family(leader: int, leader_alive: bool = True) -> list[ProcInfo]:
    """Live (non-zombie) processes in ``leader``'s session, plus their descendants wherever they went.

    Once the leader has been reaped its pid may be reused (pid_max can be as
    low as 32768), so it is then left out and only the session counts.
    """
    procs = all_procs()
    members = {p.pid for p in procs if p.sid == leader and (leader_alive or p.pid != leader)}
    if leader_alive:
        members.add(leader)
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    stack = list(members)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in members:
                members.add(child)
                stack.append(child)
    return [p for p in procs if p.pid in members and p.state != "Z"]


LOWEST_PORT = 20000
"""Ports for servers under test are drawn from here up to the kernel's ephemeral range (and above it)."""
_handed_out: set[int] = set()


def ephemeral_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range:
    """The ports the kernel hands out to outgoing connections and to binds to port 0 (Linux's default where
    it cannot be read)."""
    try:
        low, high = (int(x) for x in path.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback TCP port nothing holds now, outside the kernel's ephemeral range, not handed out before by
    this process.

    A port the kernel picked (bind to port 0) went back to its ephemeral pool when the probe closed, so any
    outgoing connection, or any of Ray's servers binding port 0, could take it in the seconds before the server
    under test bound it: in one full test run 56 tests failed that way ("cannot listen for gRPC ... Address
    already in use"). Outside that range only an explicit bind to the same number can collide."""
    ephemeral = ephemeral_ports()
    candidates = [p for p in range(LOWEST_PORT, 65536) if p not in ephemeral and p not in _handed_out]
    rng = random.Random()
    for port in rng.sample(candidates, min(200, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a machine that leaves no room outside it
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server under test running in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    known: dict[int, int] = field(default_factory=dict)  # pid -> start_ticks of every process seen

    @property
    def pid(self) -> int:
        """The session leader's pid (= the session id)."""
        return self.popen.pid

    def alive(self) -> list[ProcInfo]:
        """Live processes belonging to this server (also remembers them for a later stop)."""
        procs = family(self.pid, leader_alive=self.popen.poll() is None)
        self.known.update((p.pid, p.start_ticks) for p in procs)
        return procs

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the server's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 30.0) -> list[int]:
        """SIGTERM the leader (so Ray/Serve shut down cleanly), then SIGKILL whatever is left.

        Returns the pids that survived even SIGKILL (should be empty).
        """
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        if self._wait_gone(grace_s):
            return []
        for proc in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self._strays():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        self._wait_gone(10.0)
        return [p.pid for p in self.alive() + self._strays()]

    def _strays(self) -> list[ProcInfo]:
        """Processes seen earlier that left the session and lost their parent (same pid AND start time)."""
        out = []
        for pid, start in self.known.items():
            info = read_proc(pid)
            if info is not None and info.state != "Z" and info.start_ticks == start:
                out.append(info)
        return out

    def _wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self.popen.poll()  # reap the leader so it does not linger as a zombie
            if not self.alive() and not self._strays():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def start_server(name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> Server:
    """Start ``command`` in a new session with stdout+stderr going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=full_env,
        )
    server = Server(name=name, popen=popen, log_path=log_path)
    server.alive()
    return server


@contextlib.contextmanager
def running(name: str, command: list[str], log_path: Path, grace_s: float = 30.0,
            env: dict[str, str] | None = None) -> Iterator[Server]:
    """Context manager: the server is stopped (and verified gone) however the block exits."""
    server = start_server(name, command, log_path, env)
    try:
        yield server
    finally:
        leftovers = server.stop(grace_s)
        if leftovers:
            raise RuntimeError(f"{name}: processes survived SIGKILL: {leftovers}")


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """One blocking loopback HTTP request (readiness probes only, not the hot path)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(
    server: Server, port: int, infer_path: str, infer_body: bytes, timeout_s: float,
    health_path: str | None = None,
) -> float:
    """Wait until the server answers a real inference request with an OIP body; returns seconds waited.

    A health endpoint saying "ready" is not enough: what is measured is
    inference, so readiness is a successful inference.
    """
    t0 = time.monotonic()
    headers = {"Content-Type": "application/json"}
    while True:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.popen.returncode}:\n{server.log_tail()}")
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{server.name} not ready after {timeout_s:.0f} s:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if health_path is None or http_request(port, "GET", health_path)[0] == 200:
                status, body = http_request(port, "POST", infer_path, infer_body, headers)
                if status == 200 and b'"outputs"' in body:
                    return time.monotonic() - t0
        time.sleep(0.5)


class CpuMeter:
    """How busy the machine was during a window, split into "ours" and "everyone else's".

    Ours = the bench process itself plus every process of the server under
    test. Everything else (other users' jobs) is interference, and is reported
    so that a number measured on a busy shared machine is not mistaken for a
    clean one.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self._t0 = time.monotonic()
        self._busy0 = _machine_busy_ticks()
        self._ours0 = self._our_ticks()

    def _our_ticks(self) -> dict[int, int]:
        procs = self._server.alive() + [p for p in [read_proc(os.getpid())] if p is not None]
        return {p.pid: p.cpu_ticks for p in procs}

    def result(self) -> tuple[float, float]:
        """(our CPU, foreign CPU) as percent of ONE core, averaged over the window."""
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy = _machine_busy_ticks() - self._busy0
        ours1 = self._our_ticks()
        ours = sum(t - self._ours0.get(pid, 0) for pid, t in ours1.items())
        to_pct = 100.0 / (CLK_TCK * wall)
        return ours * to_pct, max(0.0, (busy - ours) * to_pct)


def _machine_busy_ticks() -> int:
    """Non-idle CPU ticks of all cores since boot (first line of /proc/stat)."""
    fields = (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    return sum(values) - values[3] - values[4]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo."""
    for line in (_PROC / "cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def foreign_cpu_pct(window_s: float) -> float:
    """CPU used by every process except this one over ``window_s``, in % of one core (blocks)."""
    me = os.getpid()

    def own() -> int:
        info = read_proc(me)
        return info.cpu_ticks if info is not None else 0

    busy0, own0, t0 = _machine_busy_ticks(), own(), time.monotonic()
    time.sleep(window_s)
    busy, mine, wall = _machine_busy_ticks() - busy0, own() - own0, time.monotonic() - t0
    return max(0.0, (busy - mine) * 100.0 / (CLK_TCK * wall))


def wait_for_quiet(max_wait_s: float, threshold_pct: float, window_s: float = 2.0) -> tuple[float, float]:
    """Wait (at most ``max_wait_s``) until other processes use less than ``threshold_pct`` of one core.

    Returns (seconds waited, last measured foreign CPU %). Used between
    servers on a shared machine so that a colleague's test run does not
    silently land in one server's numbers and not in another's.
    """
    t0 = time.monotonic()
    while True:
        pct = foreign_cpu_pct(window_s)
        waited = time.monotonic() - t0
        if pct < threshold_pct or waited >= max_wait_s:
            return waited, pct

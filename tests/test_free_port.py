"""Ports for servers under test: free, outside the kernel's ephemeral range, never the same one twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from loadtests.procs import LOWEST_PORT, ephemeral_ports, free_port


def test_ports_are_free_outside_the_ephemeral_range_and_distinct() -> None:
    ephemeral = ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert port >= LOWEST_PORT and port not in ephemeral, (port, ephemeral)
    with socket.socket() as sock:  # handed out free: a server can bind it
        sock.bind(("127.0.0.1", ports[0]))


def test_a_port_taken_meanwhile_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two candidates, the first held by another socket: the second is what comes back."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    held = taken.getsockname()[1]
    with taken:
        monkeypatch.setattr("loadtests.procs.LOWEST_PORT", held)
        monkeypatch.setattr("loadtests.procs.ephemeral_ports", lambda: range(held + 2, 65536))
        assert free_port() == held + 1


def test_the_ephemeral_range_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    source = tmp_path / "ip_local_port_range"
    source.write_text("40000\t50000\n", encoding="ascii")
    assert ephemeral_ports(source) == range(40000, 50001)
    assert ephemeral_ports(tmp_path / "missing") == range(32768, 61000)

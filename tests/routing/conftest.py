"""Fixtures of the routing and admin end-to-end tests: one gateway with five versions, shared by both
modules and stopped when this package's tests end (package scope), so that its Ray cluster does not
compete for the CPU with the timing-sensitive tests elsewhere in the suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningGateway, copy_version, free_port, start_gateway, stop_gateway


@pytest.fixture(scope="package")
def routing_repository(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo champion model plus a slow (4) and a failing (5) copy of version 1 (tests/routing_support.py)."""
    from tests.routing.support import FAILING, MODEL, SLOW

    root = tmp_path_factory.mktemp("routing-repo") / "models"
    shutil.copytree(demo_repository / MODEL, root / MODEL)
    copy_version(root / MODEL, "1", SLOW)
    copy_version(root / MODEL, "1", FAILING)
    return root


@pytest.fixture(scope="package")
def routed(routing_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One gateway serving the routing repository, shared by the routing and admin tests."""
    from tests.routing.support import routing_config

    workdir = tmp_path_factory.mktemp("routing-gateway")
    http_port, grpc_port = free_port(), free_port()
    config = routing_config(routing_repository, workdir / "state.db", http_port, grpc_port)
    running = start_gateway(config, workdir, http_port, grpc_port, routing_repository)
    yield running
    stop_gateway(running)

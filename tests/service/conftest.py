"""Fixtures for the service tests: the tiny random model's bundle and a real server on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .serving import Server, start_server, stop_server, tiny_weights

pytest.importorskip("fastapi", reason="dossr serve's extra is not installed: pip install 'dossr[serve]'")


@pytest.fixture(scope="session")
def service_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny random bundle (seed 0: the command-line tests' tiny_weights, byte for byte)."""
    return tiny_weights(tmp_path_factory.mktemp("service-weights"))


@pytest.fixture(scope="module")
def server(service_weights: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a test module: loopback, no token, batches of up to 4."""
    running = start_server(service_weights, tmp_path_factory.mktemp("server"), "--batch-size", "4")
    yield running
    stop_server(running.process)

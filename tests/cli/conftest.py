"""Fixtures for the command-line tests: a tiny random-weight bundle, built once per session, and
`dossr`, which runs the command line in this process on it (helpers.py has the rest)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dossr_cli.checkpoint.bundle import save_bundle
from dossr_cli.random_weights import random_networks

from .helpers import Result, run_in_process


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bundle folder of random tiny networks, passed as --weights."""
    return str(save_bundle(random_networks(seed=0), tmp_path_factory.mktemp("weights") / "tiny"))


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second tiny bundle, from other random numbers: other weights, other pixels."""
    return str(save_bundle(random_networks(seed=1), tmp_path_factory.mktemp("weights") / "other"))


@pytest.fixture(scope="session")
def verified_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A dossr cache shared by the in-process runs (its bookkeeping, not a shortcut: every load still
    hashes the tiny bundle as it reads it, which takes milliseconds)."""
    return str(tmp_path_factory.mktemp("dossr-cache-shared"))


@pytest.fixture
def dossr(tiny_weights: str, verified_cache: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`dossr COMMAND ARGS...` in process on the tiny weights, 1 step unless ARGS say otherwise
    (Click takes the last value of an option given twice)."""
    monkeypatch.setenv("DOSSR_CACHE_DIR", verified_cache)

    def run(command: str, *args: object, stdin: bytes | None = None) -> Result:
        return run_in_process([command, "--weights", tiny_weights, "--steps", "1", *map(str, args)], stdin)

    return run

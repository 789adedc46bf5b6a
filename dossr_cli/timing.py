"""Per-stage wall time of a pipeline run, for `dossr bench`.

A GPU runs asynchronously, so a stage's time is only its own when the device is
synchronised at both ends; that costs a little, so the pipeline gets a `NullTimer`
(which does nothing and never synchronises) unless a benchmark asks for the times.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class NullTimer:
    """The timer a normal run uses: no synchronisation, nothing recorded."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def mark(self) -> None:
        pass

    def lap(self, name: str) -> None:
        pass


class StageTimer(NullTimer):
    """Seconds per named stage, summed over every run it sees."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter()

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self._now()
        try:
            yield
        finally:
            self._add(name, self._now() - start)

    def mark(self) -> None:
        """Start a run of laps (the solver's steps)."""
        self._last = self._now()

    def lap(self, name: str) -> None:
        """The time since the last mark or lap goes to `name`."""
        now = self._now()
        self._add(name, now - self._last)
        self._last = now


__all__ = ["NullTimer", "StageTimer"]

"""Where a tiled VAE's waiting tiles keep their state: on the host, so the device holds one tile.

A tile's state between two GroupNorms (tiled_vae.py) is a dict of named tensors that
owns them; parking it moves every tensor to the host and drops the device copies, and
unparking brings them back. On CUDA the host copies are pinned and both copies
asynchronous: the device runs the next tile while its predecessor streams out, and no
copy makes the host wait (the caching host allocator keeps a pinned block until the copy
that uses it is done). On the CPU the host is the device, so tiles stay where they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

State = dict[str, torch.Tensor]


def park_on_host(device: torch.device) -> bool:
    """Whether waiting tiles leave the device: everywhere but the CPU, whose memory is the host's."""
    return device.type != "cpu"


def pinned_copies(device: torch.device) -> bool:
    """Pinned host memory and asynchronous copies: CUDA (other devices copy synchronously)."""
    return device.type == "cuda"


class Resident:
    """Tiles stay on the device (the CPU, or a run that fits)."""

    def park(self, state: State) -> State:
        return state

    def unpark(self, state: State) -> State:
        return state

    def host_copy(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def on_host(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(t.device)


class HostParking:
    """Waiting tiles on `host`; tensors one state shares (a residual that is also the input) move once.

    `host_allocation` wraps the making of host tensors: a memory tracker passes a context that
    books them as host memory (benchmarks/memory_model.py, tests that park to a second CPU copy).
    `bytes_to_host` and `bytes_to_device` count what moved.
    """

    def __init__(self, device: torch.device, host: torch.device | str = "cpu", pinned: bool = False,
                 non_blocking: bool = False,
                 host_allocation: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext) -> None:
        self.device, self.host = torch.device(device), torch.device(host)
        self.pinned, self.non_blocking = pinned, non_blocking
        self.host_allocation = host_allocation
        self.bytes_to_host = self.bytes_to_device = 0

    def on_host(self) -> AbstractContextManager[object]:
        """Around work whose tensors live on the host (the tiles' share maps)."""
        return self.host_allocation()

    def host_copy(self, t: torch.Tensor) -> torch.Tensor:
        with self.host_allocation():
            copy = self._host_empty_like(t)  # the same strides: the same kernels
            copy.copy_(t, non_blocking=self.non_blocking)
        self.bytes_to_host += t.numel() * t.element_size()
        return copy

    def _host_empty_like(self, t: torch.Tensor) -> torch.Tensor:
        """Pinned while the driver grants page-locked memory (a 4096x4096 decode parks ~13 GB), then pageable
        for the rest of the run: slower, synchronous copies rather than a failed image."""
        if self.pinned:
            try:
                return torch.empty_like(t, device=self.host, pin_memory=True)
            except RuntimeError:
                self.pinned = self.non_blocking = False
        return torch.empty_like(t, device=self.host)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        copy = torch.empty_like(t, device=self.device)
        copy.copy_(t, non_blocking=self.non_blocking)
        self.bytes_to_device += t.numel() * t.element_size()
        return copy

    def _move(self, state: State, move: Callable[[torch.Tensor], torch.Tensor]) -> State:
        moved: dict[int, torch.Tensor] = {}
        out: State = {}
        for name in list(state):
            tensor = state.pop(name)  # the caller's dict lets go as we go: one tensor at a time in flight
            if id(tensor) not in moved:
                moved[id(tensor)] = move(tensor)
            out[name] = moved[id(tensor)]
            del tensor
        return out

    def park(self, state: State) -> State:
        return self._move(state, self.host_copy)

    def unpark(self, state: State) -> State:
        return self._move(state, self.to_device)


Parking = Resident | HostParking


def parking_for(device: torch.device) -> Parking:
    """The policy for `device`: host parking (pinned and asynchronous on CUDA) unless the host is the device.
    On the meta device (the memory model) the host copies are meta tensors too: shapes, no data."""
    if not park_on_host(device):
        return Resident()
    if device.type == "meta":
        return HostParking(device, host="meta")
    pinned = pinned_copies(device)
    return HostParking(device, pinned=pinned, non_blocking=pinned)

"""Tile plans (pure functions of sizes) and the blending loop that runs a network tile by tile.

At every solver step the networks run on overlapping latent tiles, batched, and their
predictions are blended into one full latent before the solver updates it (Mixture of
Diffusers), so every step sees one consistent image and no seam can form.

The blend weights are a raised-cosine taper across each overlap rather than Mixture of
Diffusers' Gaussian: the Gaussian never reaches zero, so the predictions at a tile's
edge, where the convolutions see zero padding, always leak in. The taper is exactly zero
within a guard band of every interior tile edge, so a network whose receptive field fits
in the guard gives the untiled result to float precision, and it is as smooth as the
Gaussian where tiles meet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def axis_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts so that neighbours overlap by at least `overlap` and the last ends at `size`."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than its overlap ({overlap})")
    if tile >= size:
        return [0]
    count = math.ceil((size - tile) / (tile - overlap)) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of one size (min(tile, side) on each axis) covering height x width, row by row."""
    tile_h, tile_w = min(tile, height), min(tile, width)
    return [Tile(top, left, tile_h, tile_w) for top in axis_starts(height, tile, overlap)
            for left in axis_starts(width, tile, overlap)]


def _taper(length: int, at_start: bool, at_end: bool, overlap: int, guard: int) -> torch.Tensor:
    """1 inside; at an interior edge 0 for `guard` samples, then a raised cosine up to 1 at `overlap - guard`."""
    distance = torch.arange(length, dtype=torch.float64)
    ramp_width = max(overlap - 2 * guard, 1)

    def ramp(d: torch.Tensor) -> torch.Tensor:
        x = ((d - guard + 0.5) / ramp_width).clamp(0, 1)
        return torch.where(d < guard, torch.zeros_like(x), 0.5 - 0.5 * torch.cos(math.pi * x))

    weight = torch.ones(length, dtype=torch.float64)
    if at_start:
        weight = weight * ramp(distance)
    if at_end:
        weight = weight * ramp(length - 1 - distance)
    return weight


def blend_weights(tile: Tile, height: int, width: int, overlap: int, guard: int) -> torch.Tensor:
    """(tile.height, tile.width) float64 weights; edges on the image border are not tapered."""
    rows = _taper(tile.height, tile.top > 0, tile.top + tile.height < height, overlap, guard)
    cols = _taper(tile.width, tile.left > 0, tile.left + tile.width < width, overlap, guard)
    return rows[:, None] * cols[None, :]


def default_guard(overlap: int) -> int:
    """A quarter of the overlap on each side stays unused; the middle half blends."""
    return overlap // 4


@dataclass(frozen=True)
class TiledPlan:
    height: int
    width: int
    tiles: tuple[Tile, ...]
    weights: tuple[torch.Tensor, ...]  # per tile, float64
    overlap: int = 0
    guard: int = 0
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)  # device -> (weights, total)

    @classmethod
    def make(cls, height: int, width: int, tile: int, overlap: int, guard: int | None = None) -> TiledPlan:
        guard = default_guard(overlap) if guard is None else guard
        if not 0 <= 2 * guard < max(overlap, 1):
            raise ValueError(f"guard {guard} must leave room to blend inside the overlap {overlap}")
        tiles = tuple(plan_tiles(height, width, tile, overlap))
        weights = tuple(blend_weights(t, height, width, overlap, guard) for t in tiles)
        return cls(height, width, tiles, weights, overlap, guard)

    @property
    def is_single(self) -> bool:
        return len(self.tiles) == 1

    def on(self, device: torch.device) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The float32 blend weights and their sum on `device`, copied there once: a copy from the host
        inside the solver loop would make the host wait for the device at every step."""
        key = str(device)
        if key not in self._on_device:
            total = torch.zeros(self.height, self.width, dtype=torch.float64)
            for tile, weight in zip(self.tiles, self.weights):
                total[tile.slices] += weight
            self._on_device[key] = (tuple(w.to(device, torch.float32) for w in self.weights),
                                    total.to(device, torch.float32))
        return self._on_device[key]

    def scaled(self, factor: int) -> TiledPlan:
        """The same tiling at `factor` times the resolution (a network's output of a tile)."""
        tiles = tuple(Tile(t.top * factor, t.left * factor, t.height * factor, t.width * factor) for t in self.tiles)
        height, width = self.height * factor, self.width * factor
        overlap, guard = self.overlap * factor, self.guard * factor
        weights = tuple(blend_weights(t, height, width, overlap, guard) for t in tiles)
        return TiledPlan(height, width, tiles, weights, overlap, guard)


def tile_groups(count: int, per_call: int) -> list[tuple[tuple[int, ...], int]]:
    """The tiles each call runs, as (indices, how many are real): every call the same size, so a
    compiled network sees one shape a run. As few calls as `per_call` allows, with as few tiles
    each as fill them (9 at 4 a call: 3 calls of 3); the last call's spare places repeat its
    last tile, whose results are dropped (25 at 4: 7 calls of 4, the last with 3 repeats)."""
    if count < 1 or per_call < 1:
        raise ValueError(f"need at least one tile and one tile a call; got {count} and {per_call}")
    calls = math.ceil(count / per_call)
    size = math.ceil(count / calls)
    groups = []
    for start in range(0, count, size):
        real = list(range(start, min(start + size, count)))
        groups.append((tuple(real + [real[-1]] * (size - len(real))), len(real)))
    return groups


def run_tiled(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], plan: TiledPlan, *,
              scale_in: int = 1, scale_out: int = 1, tiles_per_call: int = 4,
              on_tiles: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """fn over tiles of `inputs` (one tile of each per call), blended into one full output.

    `plan` is in grid units; a tile spans `scale_in` input and `scale_out` output pixels
    per unit (the x4 preprocessor: 1 and 4). For networks without image-wide statistics:
    a VAE's GroupNorm would give each tile its own tone (see tiled_vae.py). Tiles run up to
    `tiles_per_call` at a time as one batch of the same size every call (`tile_groups`);
    `on_tiles(done, total)` hears after each batch. One tile covering everything is just
    fn(*inputs), bit for bit. The blend weights come from `plan.on(device)`: call it before a
    loop of run_tiled calls, so that no step copies them from the host.
    """
    if plan.is_single:
        return fn(*inputs)
    batch = inputs[0].shape[0]
    device = inputs[0].device
    out_plan = plan if scale_out == 1 else plan.scaled(scale_out)
    weights, total = out_plan.on(device)
    out: torch.Tensor | None = None
    done = 0
    for indices, real in tile_groups(len(plan.tiles), tiles_per_call):
        group = [plan.tiles[i] for i in indices]
        pieces = [torch.cat([x[..., t.top * scale_in:(t.top + t.height) * scale_in,
                               t.left * scale_in:(t.left + t.width) * scale_in] for t in group]) for x in inputs]
        ys = fn(*pieces).float()
        if out is None:
            out = torch.zeros(batch, ys.shape[1], out_plan.height, out_plan.width, dtype=torch.float32, device=device)
        for k, index in enumerate(indices[:real]):
            out[(..., *out_plan.tiles[index].slices)] += ys[k * batch:(k + 1) * batch] * weights[index]
        done += real
        if on_tiles is not None:
            on_tiles(done, len(plan.tiles))
    assert out is not None
    return out / total

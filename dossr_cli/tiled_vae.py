"""The VAE's encoders and decoder tile by tile, with GroupNorm statistics of the whole image.

Why shared statistics rather than overlap and blend alone: every GroupNorm of the VAE
normalises with image-wide statistics, and a tile's own statistics differ, so each
tile would come out in its own tone (the colour shift users of tiled VAEs report; a
test in tests/test_tiling.py measures it). So the tiles run layer-synchronously: a coder
is written below as a flat program of steps cut at every GroupNorm; each phase between
two GroupNorms runs tile after tile, each tile handing over its partial sums (weighted by
its share of each pixel, which add up to one over the tiles), and the next phase starts
with the image-wide mean and variance. Two-pass statistics were tried first and diverge on
a deep network: each pass corrects only one more layer.

What a tile needs from one phase to the next is its state, a dict of named tensors and
the only owner of them (no caller frame holds any), so a waiting tile can be moved to the
host whole and the device holds one tile's work at a time (tile_parking.py). The
GroupNorms work in channel chunks with float32 temporaries a fraction of the tensor's size.

What stays approximate: the mid-block attention sees only its tile.
The steps mirror diffusers' Encoder, Decoder, ResnetBlock2D and the VAE attention; a
one-tile run equals the module's own forward (tested), which guards against drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dossr_cli.tile_parking import Parking, State, parking_for
from dossr_cli.tiling import TiledPlan

Step = Callable[[State], None]  # rewrites a tile's state in place: pops what it consumes, sets what it makes
NORM_CHUNKS = 8  # a GroupNorm's float32 temporaries span about 1/8 of its tensor's channels


@dataclass(frozen=True)
class Norm:
    """A barrier: state["x"] normalised with image-wide statistics, then `act` (SiLU or None)."""

    norm: nn.GroupNorm
    act: nn.Module | None = None


def _resnet(block: nn.Module) -> list[Step | Norm]:
    def start(s: State) -> None:  # the shortcut first: a smaller skip and an unshared x to normalise in place
        s["skip"] = block.conv_shortcut(s["x"]) if block.conv_shortcut is not None else s["x"]

    def conv1(s: State) -> None:
        s["x"] = block.conv1(s.pop("x"))

    def conv2(s: State) -> None:
        h = block.conv2(block.dropout(s.pop("x")))
        h += s.pop("skip")  # diffusers: (input + hidden) / factor, the same sum
        s["x"] = h / block.output_scale_factor if block.output_scale_factor != 1 else h

    return [start, Norm(block.norm1, block.nonlinearity), conv1, Norm(block.norm2, block.nonlinearity), conv2]


def _attention(attn: nn.Module) -> list[Step | Norm]:
    def start(s: State) -> None:
        s["residual"] = s["x"]

    def attend(s: State) -> None:
        x = s.pop("x")
        b, c, h, w = x.shape
        hs = x.reshape(b, c, h * w).transpose(1, 2)
        del x
        q, k, v = (proj(hs).reshape(b, h * w, attn.heads, -1).transpose(1, 2)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, -1)
        del q, k, v, hs
        out = attn.to_out[1](attn.to_out[0](out)).transpose(1, 2).reshape(b, c, h, w)
        residual = s.pop("residual")
        if attn.residual_connection:
            out = out + residual
        s["x"] = out / attn.rescale_output_factor

    return [start, Norm(attn.group_norm), attend]


def _mid_block(block: nn.Module) -> list[Step | Norm]:
    program = _resnet(block.resnets[0])
    for attn, resnet in zip(block.attentions, block.resnets[1:]):
        if attn is not None:
            program += _attention(attn)
        program += _resnet(resnet)
    return program


def _apply(module: nn.Module) -> Step:
    def step(s: State) -> None:
        s["x"] = module(s.pop("x"))
    return step


def decoder_program(decoder: nn.Module) -> list[Step | Norm]:
    up_dtype = next(iter(decoder.up_blocks.parameters())).dtype

    def to_up_dtype(s: State) -> None:
        s["x"] = s.pop("x").to(up_dtype)

    def upsample(conv: nn.Module) -> Step:
        def step(s: State) -> None:
            s["x"] = conv(F.interpolate(s.pop("x"), scale_factor=2.0, mode="nearest"))
        return step

    program = [_apply(decoder.conv_in), *_mid_block(decoder.mid_block), to_up_dtype]
    for up in decoder.up_blocks:
        for resnet in up.resnets:
            program += _resnet(resnet)
        program += [upsample(upsampler.conv) for upsampler in up.upsamplers or []]
    return [*program, Norm(decoder.conv_norm_out, decoder.conv_act), _apply(decoder.conv_out)]


def encoder_program(encoder: nn.Module) -> list[Step | Norm]:
    def downsample(conv: nn.Module) -> Step:
        def step(s: State) -> None:
            s["x"] = conv(F.pad(s.pop("x"), (0, 1, 0, 1)))
        return step

    program: list[Step | Norm] = [_apply(encoder.conv_in)]
    for down in encoder.down_blocks:
        for resnet in down.resnets:
            program += _resnet(resnet)
        program += [downsample(downsampler.conv) for downsampler in down.downsamplers or []]
    program += _mid_block(encoder.mid_block)
    return [*program, Norm(encoder.conv_norm_out, encoder.conv_act), _apply(encoder.conv_out)]


PROGRAMS = {"encoder": encoder_program, "decoder": decoder_program}


def _chunks(channels: int, group_size: int) -> list[slice]:
    """Whole groups, about NORM_CHUNKS of them."""
    step = max(channels // NORM_CHUNKS // group_size, 1) * group_size
    return [slice(c, min(c + step, channels)) for c in range(0, channels, step)]


def partial_sums(norm: nn.GroupNorm, x: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """(3, batch, groups) float64: this tile's sums of share*x, share*x^2 and share per group."""
    n, c = x.shape[:2]
    group_size = c // norm.num_groups
    s1, s2 = x.new_empty((n, c), dtype=torch.float32), x.new_empty((n, c), dtype=torch.float32)
    for sl in _chunks(c, group_size):
        t = x[:, sl] * share  # float32, the share map being float32
        s1[:, sl] = t.sum((2, 3))
        t *= x[:, sl]
        s2[:, sl] = t.sum((2, 3))
        del t
    count = (share.sum() * group_size).expand(n, norm.num_groups)
    sums = torch.stack([s1.reshape(n, -1, group_size).sum(-1), s2.reshape(n, -1, group_size).sum(-1), count])
    return sums.to(sums_device(x.device), torch.float64)


def sums_device(device: torch.device) -> torch.device:
    """Where the image-wide sums add up in float64: the device itself, but the CPU for MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


def statistics(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-wide (mean, var) per (batch, group), float64, from the tiles' summed partial sums."""
    mean = sums[0] / sums[2]
    return mean, (sums[1] / sums[2] - mean * mean).clamp_min(0)


def normalise(norm: Norm, state: State, mean: torch.Tensor, var: torch.Tensor) -> None:
    """state["x"] = act(GroupNorm(x)) with the given statistics: (x - mean) * (weight / std) + bias per
    channel in float32, chunk by chunk, written in x's dtype; into x itself where nothing else holds it."""
    x = state.pop("x")
    n, c = x.shape[:2]
    gn = norm.norm
    group_size = c // gn.num_groups
    mean_c = mean.repeat_interleave(group_size, dim=1)  # float64 where the sums are
    inv_std = torch.rsqrt(var.repeat_interleave(group_size, dim=1) + gn.eps)
    scale = inv_std * gn.weight.to(mean.device, torch.float64) if gn.affine else inv_std
    bias = gn.bias.to(mean.device, torch.float64).expand(n, c) if gn.affine else torch.zeros_like(mean_c)
    mean_c, scale, bias = (v.to(x.device, torch.float32)[:, :, None, None] for v in (mean_c, scale, bias))
    shared = any(v is x for v in state.values())
    out = torch.empty_like(x) if shared else x
    for sl in _chunks(c, group_size):
        t = x[:, sl] - mean_c[:, sl]  # float32
        t.mul_(scale[:, sl]).add_(bias[:, sl])
        if isinstance(norm.act, nn.SiLU):
            F.silu(t, inplace=True)
        elif norm.act is not None:
            t = norm.act(t)
        out[:, sl] = t
        del t
    state["x"] = out


def _share_maps(plan: TiledPlan, scale_out: int) -> list[torch.Tensor]:
    """Per tile, its share of each output pixel (weight / sum of weights), (1, 1, h, w) float32 on the CPU."""
    out_plan = plan.scaled(scale_out)
    total = torch.zeros(out_plan.height, out_plan.width, dtype=torch.float64)
    for tile, weight in zip(out_plan.tiles, out_plan.weights):
        total[tile.slices] += weight
    return [(weight / total[tile.slices]).float()[None, None] for tile, weight in zip(out_plan.tiles, out_plan.weights)]


def run_synchronized(coder: nn.Module, kind: str, x: torch.Tensor, plan: TiledPlan, scale_in: int,
                     scale_out: int, parking: Parking | None = None) -> torch.Tensor:
    """`coder` (a diffusers Encoder or Decoder) over the tiles of x, with image-wide GroupNorm.

    `plan` is in latent units; `kind` is "encoder" or "decoder". Returns float32 on x's device.
    `parking` (default: `parking_for(x.device)`) holds the waiting tiles.
    """
    parking = parking if parking is not None else parking_for(x.device)
    program = PROGRAMS[kind](coder)
    phases: list[list[Step]] = [[]]
    norms: list[Norm] = []
    for item in program:
        if isinstance(item, Norm):
            norms.append(item)
            phases.append([])
        else:
            phases[-1].append(item)
    with parking.on_host():
        shares = _share_maps(plan, scale_out)
        out_plan = plan.scaled(scale_out)
    share_at: list[dict[tuple[int, int], torch.Tensor]] = [{} for _ in shares]  # host copies, by size

    def share(i: int, size: tuple[int, int]) -> torch.Tensor:
        if size not in share_at[i]:
            with parking.on_host():
                share_at[i][size] = parking.host_copy(F.interpolate(shares[i], size=size, mode="area"))
        return parking.to_device(share_at[i][size])

    states: list[State | None] = [
        {"x": x[..., t.top * scale_in:(t.top + t.height) * scale_in, t.left * scale_in:(t.left + t.width) * scale_in]}
        for t in plan.tiles]
    out: torch.Tensor | None = None
    stats: tuple[torch.Tensor, torch.Tensor] | None = None
    for k, steps in enumerate(phases):
        sums: torch.Tensor | None = None
        for i in range(len(states)):
            state, states[i] = parking.unpark(states[i]), None
            if k > 0:
                normalise(norms[k - 1], state, *stats)
            for step in steps:
                step(state)
            y = state["x"]
            if k < len(norms):
                partial = partial_sums(norms[k].norm, y, share(i, tuple(y.shape[-2:])))
                sums = partial if sums is None else sums + partial
                del y, partial
                states[i] = parking.park(state)
            else:
                if out is None:
                    out = torch.zeros(*y.shape[:2], out_plan.height, out_plan.width, dtype=torch.float32,
                                      device=x.device)
                out[(..., *out_plan.tiles[i].slices)] += y * share(i, tuple(y.shape[-2:]))
                del y
            del state
        if sums is not None:
            stats = statistics(sums)
    assert out is not None
    return out

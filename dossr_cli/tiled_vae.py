"""The VAE's encoders and decoder tile by tile, with GroupNorm statistics of the whole image.

Why shared statistics rather than overlap and blend alone: every GroupNorm of the VAE
normalises with image-wide statistics, and a tile's own statistics differ, so each
tile would come out in its own tone (the colour shift users of tiled VAEs report; a
test in tests/test_tiling.py measures it). So the tiles run layer-synchronously: each
tile's forward is written below as a generator that stops at every GroupNorm and hands
over its partial sums (weighted by its share of each pixel, which add up to one over
the tiles); the driver adds them up and sends the image-wide mean and variance back to
every tile before any goes further. While a tile waits, the tensors it still needs are
parked on the CPU, so the device holds one tile's work at a time. Two-pass statistics
were tried first and diverge on a deep network: each pass corrects only one more layer.

What stays approximate: the mid-block attention sees only its tile.
The forwards mirror diffusers' Encoder, Decoder, ResnetBlock2D and the VAE attention;
a one-tile run equals the module's own forward (tested), which guards against drift.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dossr_cli.tiling import TiledPlan

Stats = tuple[torch.Tensor, torch.Tensor]  # image-wide (mean, var), each (batch, groups)
Step = Generator[torch.Tensor, Stats, torch.Tensor]  # yields partial sums, receives stats, returns the output


class _Tile:
    """One tile's context: its share map and where its parked tensors go."""

    def __init__(self, share: torch.Tensor, device: torch.device) -> None:
        self.share = share  # (1, 1, H, W) at the output resolution, float32, on the CPU
        self.device = device

    def park(self, x: torch.Tensor) -> torch.Tensor:
        return x.to("cpu") if self.device.type != "cpu" else x

    def unpark(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device) if self.device.type != "cpu" else x

    def group_norm(self, norm: nn.GroupNorm, x: torch.Tensor) -> Step:
        groups = norm.num_groups
        n, c, h, w = x.shape
        share = F.interpolate(self.share, size=(h, w), mode="area").to(x.device)[:, None]  # (1, 1, 1, h, w)
        xg = x.float().reshape(n, groups, c // groups, h, w)
        count = (share.sum() * (c // groups)).expand(n, groups)
        partial = torch.stack([(xg * share).sum((2, 3, 4)), (xg * xg * share).sum((2, 3, 4)), count]).double().cpu()
        del xg
        x = self.park(x)
        mean, var = yield partial
        x = self.unpark(x)
        xg = x.float().reshape(n, groups, c // groups, h, w)
        mean = mean.to(x.device, torch.float32)[..., None, None, None]
        std = torch.sqrt(var.to(x.device, torch.float32)[..., None, None, None] + norm.eps)
        out = ((xg - mean) / std).reshape(n, c, h, w)
        if norm.affine:
            out = out * norm.weight.float()[None, :, None, None] + norm.bias.float()[None, :, None, None]
        return out.to(x.dtype)

    def resnet(self, block: nn.Module, x: torch.Tensor) -> Step:
        skip = self.park(x)
        h = block.nonlinearity((yield from self.group_norm(block.norm1, x)))
        h = block.conv1(h)
        h = block.nonlinearity((yield from self.group_norm(block.norm2, h)))
        h = block.conv2(block.dropout(h))
        skip = self.unpark(skip)
        if block.conv_shortcut is not None:
            skip = block.conv_shortcut(skip)
        return (skip + h) / block.output_scale_factor

    def attention(self, attn: nn.Module, x: torch.Tensor) -> Step:
        residual = self.park(x)
        b, c, h, w = x.shape
        hs = (yield from self.group_norm(attn.group_norm, x)).reshape(b, c, h * w).transpose(1, 2)
        heads = attn.heads
        q, k, v = (proj(hs).reshape(b, h * w, heads, -1).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, -1)
        out = attn.to_out[1](attn.to_out[0](out)).transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + self.unpark(residual)
        return out / attn.rescale_output_factor

    def mid_block(self, block: nn.Module, x: torch.Tensor) -> Step:
        x = yield from self.resnet(block.resnets[0], x)
        for attn, resnet in zip(block.attentions, block.resnets[1:]):
            if attn is not None:
                x = yield from self.attention(attn, x)
            x = yield from self.resnet(resnet, x)
        return x

    def decoder(self, decoder: nn.Module, z: torch.Tensor) -> Step:
        x = decoder.conv_in(z)
        x = (yield from self.mid_block(decoder.mid_block, x)).to(next(iter(decoder.up_blocks.parameters())).dtype)
        for up in decoder.up_blocks:
            for resnet in up.resnets:
                x = yield from self.resnet(resnet, x)
            for upsampler in up.upsamplers or []:
                x = upsampler.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = decoder.conv_act((yield from self.group_norm(decoder.conv_norm_out, x)))
        return decoder.conv_out(x)

    def encoder(self, encoder: nn.Module, x: torch.Tensor) -> Step:
        x = encoder.conv_in(x)
        for down in encoder.down_blocks:
            for resnet in down.resnets:
                x = yield from self.resnet(resnet, x)
            for downsampler in down.downsamplers or []:
                x = downsampler.conv(F.pad(x, (0, 1, 0, 1)))
        x = yield from self.mid_block(encoder.mid_block, x)
        x = encoder.conv_act((yield from self.group_norm(encoder.conv_norm_out, x)))
        return encoder.conv_out(x)


def run_synchronized(coder: nn.Module, kind: str, x: torch.Tensor, plan: TiledPlan, scale_in: int,
                     scale_out: int) -> torch.Tensor:
    """`coder` (a diffusers Encoder or Decoder) over the tiles of x, with image-wide GroupNorm.

    `plan` is in latent units; `kind` is "encoder" or "decoder".
    """
    out_plan = plan.scaled(scale_out)
    total = torch.zeros(out_plan.height, out_plan.width, dtype=torch.float64)
    for tile, weight in zip(out_plan.tiles, out_plan.weights):
        total[tile.slices] += weight
    steps: list[Step] = []
    for tile, out_tile, weight in zip(plan.tiles, out_plan.tiles, out_plan.weights):
        share = (weight / total[out_tile.slices]).float()[None, None]
        runner = _Tile(share, x.device)
        piece = x[..., tile.top * scale_in:(tile.top + tile.height) * scale_in,
                  tile.left * scale_in:(tile.left + tile.width) * scale_in]
        steps.append(getattr(runner, kind)(coder, piece))
    outputs: dict[int, torch.Tensor] = {}
    partials: dict[int, torch.Tensor] = {}
    message: Any = None
    while len(outputs) < len(steps):
        for i, step in enumerate(steps):
            if i in outputs:
                continue
            try:
                partials[i] = step.send(message)
            except StopIteration as done:
                outputs[i] = done.value.float().cpu() if x.device.type != "cpu" else done.value.float()
        if len(outputs) < len(steps):
            if len(outputs) and len(partials) != len(steps):
                raise RuntimeError("tiles went out of step: their networks differ")  # cannot happen for one coder
            sums = sum(partials.values())
            mean = sums[0] / sums[2]
            message = (mean, (sums[1] / sums[2] - mean * mean).clamp_min(0))
            partials = {}
    out = None
    for i, (tile, weight) in enumerate(zip(out_plan.tiles, out_plan.weights)):
        if out is None:
            out = torch.zeros(*outputs[i].shape[:2], out_plan.height, out_plan.width, dtype=torch.float32)
        out[(..., *tile.slices)] += outputs[i] * weight.float()
    return (out / total.float()).to(x.device)

"""Image geometry of the pipeline: output sizes, padding to the networks' multiple, the antialiased resize,
and the solver's tile plan. Pure functions of sizes and pixels, shared by the pipeline, trust and the front
ends (which size outputs before any model is loaded)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dossr_cli.tiling import TiledPlan

DEFAULT_TILE_OVERLAP = 256  # pixels of the x4 image: 32 latent pixels, as tiled-diffusion users settle on
LATENT_FACTOR = 8


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """ceil(scale x input size), as the authors' script sizes its result."""
    if not (math.isfinite(scale) and scale >= 1):
        raise ValueError(f"scale must be a number >= 1, got {scale}")
    return math.ceil(scale * height - 1e-9), math.ceil(scale * width - 1e-9)


def reflect_pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom and right up to a multiple; repeated where the pad exceeds the image."""
    height, width = image.shape[-2:]
    target_h, target_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    while image.shape[-2] < target_h or image.shape[-1] < target_w:
        h, w = image.shape[-2:]
        pad_h = min(target_h - h, h - 1) if h > 1 else 0
        pad_w = min(target_w - w, w - 1) if w > 1 else 0
        if pad_h == 0 and pad_w == 0:  # a 1-pixel side cannot reflect
            return F.pad(image, (0, target_w - w, 0, target_h - h), mode="replicate")
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect")
    return image


def lanczos_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, H, W) floats with PIL's Lanczos (antialiased when shrinking), channel by channel."""
    if tuple(images.shape[-2:]) == size:
        return images
    height, width = size
    out = torch.empty(images.shape[0], images.shape[1], height, width, dtype=torch.float32)
    arrays = images.detach().to("cpu", torch.float32).numpy()
    for b in range(arrays.shape[0]):
        for c in range(arrays.shape[1]):
            resized = Image.fromarray(arrays[b, c], mode="F").resize((width, height), Image.LANCZOS)
            out[b, c] = torch.from_numpy(np.array(resized))
    return out


def latent_tile_plan(latent_height: int, latent_width: int, tile_size: int | None,
                     tile_overlap: int = DEFAULT_TILE_OVERLAP) -> TiledPlan:
    """The solver's tiling from sizes in pixels of the x4 image (tile: a multiple of 64, overlap of 8)."""
    if tile_size is None:
        return TiledPlan.make(latent_height, latent_width, max(latent_height, latent_width) + 1, 0)
    if tile_size < 64 or tile_size % 64:
        raise ValueError(f"tile_size must be a multiple of 64 pixels (the UNet halves a latent tile three times); "
                         f"got {tile_size}")
    if tile_overlap < 0 or tile_overlap % LATENT_FACTOR or tile_overlap >= tile_size:
        raise ValueError(f"tile_overlap must be a multiple of 8 pixels below tile_size; got {tile_overlap}")
    return TiledPlan.make(latent_height, latent_width, tile_size // LATENT_FACTOR, tile_overlap // LATENT_FACTOR)

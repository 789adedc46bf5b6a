"""ComfyUI's tensors to and from what `dossr_cli.batch.job` takes; no ComfyUI import here.

ComfyUI passes an `IMAGE` as float32 `[B, H, W, C]` in [0, 1] and a `MASK` as `[B, H, W]`,
where a mask is the image's transparency (LoadImage gives `1 - alpha`) and an opaque image
comes with a 64x64 block of zeros, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dossr_cli import imageio
from dossr_cli.errors import UsageError

# ComfyUI's LoadImage gives this mask, all zeros, for an image without alpha, whatever its size.
PLACEHOLDER_MASK_SIDE = 64
# A mask this close to the 8-bit grid came from an 8-bit alpha channel: it is snapped back to it,
# so the colour the model sees, and with it each image's seed, is the command line's to the bit.
GRID_TOLERANCE = 1e-4


def decoded_images(image: torch.Tensor, mask: torch.Tensor | None = None) -> list[imageio.DecodedImage]:
    """An `IMAGE` batch (and optional `MASK`) as DecodedImages, one per image, alpha = 1 - mask.

    A fourth colour channel is alpha when no mask is given; grey (one channel) is repeated.
    """
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
        raise UsageError(f"image must be an IMAGE tensor [batch, height, width, 1, 3 or 4 channels]; "
                         f"got shape {list(image.shape)}")
    pixels = np.clip(np.nan_to_num(image.detach().to("cpu", torch.float32).numpy()), 0, 1)
    batch, height, width = pixels.shape[:3]
    alphas = _alphas(mask, batch, height, width)
    if alphas is None and pixels.shape[-1] == 4:
        alphas = [_on_8bit_grid(pixels[i, ..., 3]) for i in range(batch)]
    rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]
    return [imageio.DecodedImage(np.ascontiguousarray(rgb[i]), None if alphas is None else alphas[i],
                                 8, "png", None, None) for i in range(batch)]


def _alphas(mask: torch.Tensor | None, batch: int, height: int, width: int) -> list[np.ndarray] | None:
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    values = np.clip(np.nan_to_num(mask.detach().to("cpu", torch.float32).numpy()), 0, 1)
    if values.ndim != 3:
        raise UsageError(f"mask must be a MASK tensor [batch, height, width]; got shape {list(mask.shape)}")
    if values.shape[1:] != (height, width):
        if values.shape[1:] == (PLACEHOLDER_MASK_SIDE, PLACEHOLDER_MASK_SIDE) and not values.any():
            return None  # LoadImage's stand-in for "no alpha"
        raise UsageError(f"the mask is {values.shape[2]}x{values.shape[1]} and the image {width}x{height}: "
                         f"give the mask of this image (or none)")
    if values.shape[0] not in (1, batch):
        raise UsageError(f"{values.shape[0]} masks for {batch} images: give one mask, or one per image")
    alpha = [_on_8bit_grid(np.float32(1) - m) for m in values]
    return alpha * batch if len(alpha) == 1 else alpha


def _on_8bit_grid(alpha: np.ndarray) -> np.ndarray:
    levels = np.round(alpha * 255)
    if np.abs(alpha * 255 - levels).max() < GRID_TOLERANCE:
        return levels.astype(np.float32) / np.float32(255)  # as dossr_cli.imageio decodes an 8-bit alpha
    return np.ascontiguousarray(alpha, dtype=np.float32)


def image_tensor(rgbs: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """Results (H, W, 3) float32 as one `IMAGE` tensor [B, H, W, 3] in [0, 1]."""
    return torch.from_numpy(np.clip(np.stack(rgbs), 0, 1).astype(np.float32)).to(device)


def mask_tensor(alphas: Sequence[np.ndarray | None], height: int, width: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The results' transparency as one `MASK` [B, H, W] (1 - alpha; zeros where an image had none)."""
    masks = [np.zeros((height, width), np.float32) if a is None else np.float32(1) - a for a in alphas]
    return torch.from_numpy(np.clip(np.stack(masks), 0, 1).astype(np.float32)).to(device)

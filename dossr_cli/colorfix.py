"""Colour fixes that give the diffusion output the preprocessed image's colours.

As in the authors' code (borrowed from StableSR): `wavelet` keeps the result's high
frequencies over the reference's low ones; `adain` matches per-channel mean and std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dossr_cli.choices import COLOR_FIXES

WAVELET_LEVELS = 5


def _wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype,
                          device=image.device) / 16
    channels = image.shape[1]
    kernel = kernel.expand(channels, 1, 3, 3)
    padded = F.pad(image, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_low_frequency(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The image blurred by `levels` a-trous levels (dilation 2**i)."""
    for i in range(levels):
        image = _wavelet_blur(image, 2**i)
    return image


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """high(image) + low(reference); high = image - low, which the authors sum level by level."""
    return image - wavelet_low_frequency(image) + wavelet_low_frequency(reference)


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]

    image_mean, image_std = mean_std(image)
    ref_mean, ref_std = mean_std(reference)
    return (image - image_mean) / image_std * ref_std + ref_mean


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    if method == "wavelet":
        return wavelet_color_fix(image, reference)
    if method == "adain":
        return adain_color_fix(image, reference)
    if method == "none":
        return image
    raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}; got {method!r}")

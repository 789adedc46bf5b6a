"""PSNR and SSIM on the Y channel, as BasicSR's `calculate_psnr` / `calculate_ssim` compute them
(`test_y_channel=True`), with scikit-image doing the arithmetic.

BasicSR's conventions, which the SR papers' tables (DoSSR's among them) follow:
- 8-bit images: both are taken as integers 0..255 (a 16-bit file is rounded to 8 bits first);
- `crop_border` pixels are dropped from every edge before anything else;
- Y is ITU-R BT.601 luma on [0, 255] (Matlab's `rgb2ycbcr`: 16 + 65.481 R + 128.553 G + 24.966 B, RGB in [0, 1]);
- PSNR over the Y values with a peak of 255; SSIM with an 11x11 Gaussian window (sigma 1.5), population
  statistics, averaged over the 'valid' region only (5 pixels in from each edge).
scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` filters
with an 11-tap Gaussian (truncate 3.5 sigma) and crops (11 - 1) // 2 = 5 pixels before the mean: the same window
and the same region as BasicSR's `cv2.filter2D(...)[5:-5, 5:-5]`, so the edge padding never counts.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dossr_cli.errors import DossrError

SSIM_WINDOW = 11  # BasicSR's window side; an image smaller than this (after the crop) has no valid region


class PairError(DossrError):
    """A result and its reference that cannot be compared (sizes differ, too small after the crop)."""


def to_8bit(rgb: np.ndarray) -> np.ndarray:
    """Decoded float RGB in [0, 1] -> the 0..255 integers BasicSR reads with cv2 (as float64)."""
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0)


def y_channel(rgb255: np.ndarray) -> np.ndarray:
    """BT.601 luma on [0, 255] (float64) of an RGB image holding 0..255 values."""
    return rgb2ycbcr(rgb255 / 255.0)[..., 0]


def crop(image: np.ndarray, border: int) -> np.ndarray:
    return image[border:-border, border:-border] if border > 0 else image


def psnr_ssim_y(result_rgb: np.ndarray, reference_rgb: np.ndarray, crop_border: int) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of a result against its reference; inf dB for identical Y channels."""
    if result_rgb.shape[:2] != reference_rgb.shape[:2]:
        (h, w), (rh, rw) = result_rgb.shape[:2], reference_rgb.shape[:2]
        raise PairError(f"the result is {w}x{h} but its reference is {rw}x{rh}; compare images of the same size")
    result = y_channel(crop(to_8bit(result_rgb), crop_border))
    reference = y_channel(crop(to_8bit(reference_rgb), crop_border))
    if min(result.shape) < SSIM_WINDOW:
        h, w = result.shape
        raise PairError(f"{w}x{h} after cropping {crop_border} pixels per edge is smaller than SSIM's "
                        f"{SSIM_WINDOW}x{SSIM_WINDOW} window; use a smaller --crop-border or larger images")
    mse = float(np.mean((result - reference) ** 2))
    psnr = math.inf if mse == 0 else float(peak_signal_noise_ratio(reference, result, data_range=255))
    ssim = float(structural_similarity(reference, result, data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))
    return psnr, ssim

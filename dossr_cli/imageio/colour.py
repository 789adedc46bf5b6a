"""Alpha (premultiplied filtering, Lanczos for the alpha plane) and colour management."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dossr_cli.imageio.common import ALPHA_EPSILON


def premultiply(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour times alpha, so filters never pull hidden colour out of transparent pixels."""
    check_alpha_shape(rgb, alpha)
    return (rgb * alpha[..., None]).astype(np.float32, copy=False)


def unpremultiply(rgb_premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour over alpha, clipped to [0, 1]; 0 where alpha <= ALPHA_EPSILON (invisible), never NaN/inf."""
    check_alpha_shape(rgb_premultiplied, alpha)
    visible = alpha > ALPHA_EPSILON
    colour = rgb_premultiplied / np.where(visible, alpha, 1)[..., None]
    colour = np.where(visible[..., None], colour, 0)
    return np.clip(colour, 0, 1).astype(np.float32, copy=False)


def upscale_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Alpha resized to (height, width) with Lanczos on float data, clipped: its ringing is not opacity."""
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be a positive (height, width); got {size}")
    plane = Image.fromarray(np.ascontiguousarray(alpha, dtype=np.float32))
    resized = plane.resize((width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def check_alpha_shape(rgb: np.ndarray, alpha: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or alpha.shape != rgb.shape[:2]:
        raise ValueError(f"expected colour (H, W, 3) and alpha (H, W); got {rgb.shape} and {alpha.shape}")


"""Alpha (premultiplied filtering, Lanczos for the alpha plane) and colour management.

CMYK and grey pixels that carry an ICC profile are converted to sRGB through it (littlecms via
Pillow's ImageCms), so a print CMYK file or a gamma-1.8 grey scan keeps its colours; without a
profile Pillow's plain conversion stays, as viewers show untagged files.
"""

from __future__ import annotations

import io
import struct
from functools import cache

import numpy as np
from PIL import Image, ImageCms

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



# ---------------------------------------------------------------------------------------------
# colour management

# ICC data colour space (header bytes 16-19) that describes each Pillow mode's pixels.
_PROFILE_SPACE = {"CMYK": b"CMYK", "L": b"GRAY", "LA": b"GRAY", "I;16": b"GRAY"}


class ProfileError(ValueError):
    """An embedded ICC profile that littlecms cannot use for these pixels."""


def profile_matches(mode: str, icc_profile: bytes | None) -> bool:
    """Whether `icc_profile` describes pixels of Pillow mode `mode` (CMYK, or grey at 8 or 16 bits)."""
    return bool(icc_profile) and len(icc_profile) >= 128 and _PROFILE_SPACE.get(mode) == icc_profile[16:20]


def to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    """CMYK -> RGB, L -> RGB, LA -> RGBA, I;16 -> I;16 sRGB-encoded grey, all through `icc_profile`."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if image.mode == "I;16":
            return ImageCms.profileToProfile(image, source, _srgb_grey_profile(), outputMode="I;16")
        if image.mode == "LA":
            grey, alpha = image.split()
            rgb = ImageCms.profileToProfile(grey, source, _srgb_profile(), outputMode="RGB")
            rgb.putalpha(alpha)
            return rgb
        return ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
        raise ProfileError(" ".join(str(error).split()) or type(error).__name__) from error


def srgb_profile_bytes() -> bytes:
    """The sRGB profile that pixels converted here are tagged with."""
    return _srgb_profile().tobytes()


def grey_profile(gamma: float | None = None, description: str = "sRGB grey") -> bytes:
    """A minimal ICC v2 grey display profile: D50 white and one tone curve, a pure gamma or (None) sRGB's.

    littlecms needs a grey destination to convert 16-bit grey at 16 bits (Pillow has no 16-bit
    RGB mode), and ImageCms can only create RGB, Lab and XYZ profiles. Curves are parametric,
    so littlecms inverts them exactly rather than through a table (which loses the near-blacks).
    """
    if gamma is None:  # IEC 61966-2-1 as ICC parametric function 3: Y = (aX + b)^g above d, cX below
        curve = b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(
            _s15_fixed16(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    else:
        curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))  # u8Fixed8 gamma
    text = description.encode("ascii", "replace")
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0" * 80),
            (b"wtpt", b"XYZ \0\0\0\0" + _D50_XYZ), (b"kTRC", curve), (b"cprt", b"text\0\0\0\0no copyright\0")]
    offset, table, body = 128 + 4 + 12 * len(tags), struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I4sI4s4s4s", offset + len(body), b"\0" * 4, 0x02100000, b"mntr", b"GRAY", b"XYZ ")
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + _D50_XYZ + b"\0" * 48)
    return header + table + body


def _s15_fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1): encoded [0, 1] -> linear light."""
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)


_D50_XYZ = b"".join(_s15_fixed16(v) for v in (0.9642, 1.0, 0.8249))


@cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@cache
def _srgb_grey_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(grey_profile()))

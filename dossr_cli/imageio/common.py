"""What every part of imageio shares: the errors, the formats and the decoded-image type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dossr_cli.errors import DossrError


class ImageReadError(DossrError, ValueError):
    """An input that cannot be decoded; the message names it and says what to do."""


class ImageTooLargeError(ImageReadError):
    """An input that declares more pixels than the limit: refused from its header, before decoding."""


class ImageWriteError(DossrError, OSError):
    """An output that cannot be encoded or written; the message names it and says what to do."""


class MetadataWarning(UserWarning):
    """ICC/EXIF left out of an output; the image itself was written (USER_LESSONS 7)."""


FORMATS = ("png", "jpg", "webp", "tiff", "bmp")
METADATA_MODES = ("all", "icc", "none")

# The declared size of an input, checked before any pixel is decoded. 64 Mpx admits every
# common camera (61 Mpx full frame) and 8K frames (33 Mpx) while a float32 RGB + alpha copy
# stays at 1 GiB; a larger declaration is far more often a decompression bomb or a mistake
# than an image worth upscaling (4x of it would be a gigapixel output).
DEFAULT_MAX_PIXELS = 64_000_000

ALPHA_FORMATS = ("png", "webp", "tiff")
SIXTEEN_BIT_FORMATS = ("png", "tiff")
JPEG_QUALITY = 95
WEBP_QUALITY = 95  # lossy; quality 100 asks for lossless WebP
# The longest side each format can store (WebP and JPEG headers hold 14 and 16 bits).
MAX_SIDE = {"jpg": 65_535, "webp": 16_383, "bmp": 2**31 - 1, "png": 2**31 - 1, "tiff": 2**32 - 1}
# Alpha at or below half the smallest 16-bit step is transparent in every output format,
# so colour there carries no information and dividing by it would only amplify noise.
ALPHA_EPSILON = 0.5 / 65535

_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "webp": "webp",
               "tif": "tiff", "tiff": "tiff", "bmp": "bmp"}


@dataclass(frozen=True)
class DecodedImage:
    """An upright image as the pipeline wants it, plus what an output needs to look the same.

    `alpha` is None exactly when the file has no alpha channel or transparency key; an alpha
    channel that happens to be all opaque is kept, so RGBA in gives RGBA out.
    `icc_profile` is only ever an RGB profile (a grey or CMYK one does not describe `rgb`); CMYK
    and grey converted through their own profile come out as sRGB and carry an sRGB profile.
    `exif` is the EXIF block as a JPEG APP1 payload (starting b"Exif\\0\\0").
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    format: str
    icc_profile: bytes | None
    exif: bytes | None
    notes: tuple[str, ...] = ()  # what the user should hear (only the first page read, a profile unusable)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), the order `upscale_alpha` takes."""
        return self.rgb.shape[0], self.rgb.shape[1]


# ---------------------------------------------------------------------------------------------
# names and extensions


def format_from_name(name: str | Path) -> str | None:
    """The format a file name's extension asks for ("x.JPEG" -> "jpg", ".tif" -> "tiff"), else None."""
    base = Path(name).name
    if "." not in base:
        return None
    return _EXTENSIONS.get(base.rpartition(".")[2].lower())


def extension(format: str) -> str:
    """The extension written for a format, with its dot."""
    if format not in FORMATS:
        raise ValueError(f"unknown image format {format!r}; expected one of {', '.join(FORMATS)}")
    return f".{format}"



def one_line(error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return " ".join(text.split()) or type(error).__name__

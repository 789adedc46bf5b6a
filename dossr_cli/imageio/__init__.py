"""Read and write images without losing what users notice: alpha, 16 bits, ICC, EXIF, old files.

Pillow decodes and carries metadata; OpenCV does the pixels wherever Pillow would cut 16-bit
colour to 8 bits (16-bit RGB/RGBA PNG and TIFF, in and out). Every decoded image leaves here
as float32 RGB in [0, 1] plus an optional alpha plane, upright (EXIF orientation applied).
Decoding is strict: a truncated file or a corrupt chunk is an ImageReadError, never grey fill.
Outputs are encoded to bytes first and then written with `write_atomic`, so a failure or a
Ctrl-C never leaves a half-written file under the final name.

decode.py reads (integrity.py refuses damaged files), encode.py and atomic.py write, metadata.py
carries ICC/EXIF, colour.py holds alpha and colour management.
"""

from dossr_cli.imageio.atomic import link_without_clobbering, write_atomic
from dossr_cli.imageio.colour import premultiply, unpremultiply, upscale_alpha
from dossr_cli.imageio.common import (
    ALPHA_EPSILON,
    ALPHA_FORMATS,
    DEFAULT_MAX_PIXELS,
    FORMATS,
    JPEG_QUALITY,
    MAX_SIDE,
    METADATA_MODES,
    SIXTEEN_BIT_FORMATS,
    WEBP_QUALITY,
    DecodedImage,
    ImageReadError,
    ImageTooLargeError,
    ImageWriteError,
    MetadataWarning,
    extension,
    format_from_name,
)
from dossr_cli.imageio.decode import read_image
from dossr_cli.imageio.encode import encode_image

__all__ = [
    "ALPHA_EPSILON", "ALPHA_FORMATS", "DEFAULT_MAX_PIXELS", "FORMATS", "JPEG_QUALITY", "MAX_SIDE", "METADATA_MODES",
    "SIXTEEN_BIT_FORMATS", "WEBP_QUALITY", "DecodedImage", "ImageReadError", "ImageTooLargeError", "ImageWriteError", "MetadataWarning",
    "encode_image", "extension", "format_from_name", "link_without_clobbering", "premultiply", "read_image",
    "unpremultiply", "upscale_alpha", "write_atomic",
]

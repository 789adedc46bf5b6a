"""Read and write images without losing what users notice: alpha, 16 bits, ICC, EXIF, old files.

Pillow decodes and carries metadata; OpenCV does the pixels wherever Pillow would cut 16-bit
colour to 8 bits (16-bit RGB/RGBA PNG and TIFF, in and out). Every decoded image leaves here
as float32 RGB in [0, 1] plus an optional alpha plane, upright (EXIF orientation applied).
Outputs are encoded to bytes first and then written with `write_atomic`, so a failure or a
Ctrl-C never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin

from dossr_cli.errors import DossrError


class ImageReadError(DossrError, ValueError):
    """An input that cannot be decoded; the message names it and says what to do."""


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
# Alpha at or below half the smallest 16-bit step is transparent in every output format,
# so colour there carries no information and dividing by it would only amplify noise.
ALPHA_EPSILON = 0.5 / 65535

_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp"}
_PILLOW_OPENERS = ["PNG", "JPEG", "WEBP", "TIFF", "BMP"]  # no other parser sees untrusted bytes
_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "webp": "webp",
               "tif": "tiff", "tiff": "tiff", "bmp": "bmp"}
MAX_SIDE = {"jpg": 65_535, "webp": 16_383, "bmp": 2**31 - 1, "png": 2**31 - 1, "tiff": 2**32 - 1}
_KNOWN_OTHERS = ((b"GIF8", "a GIF"), (b"8BPS", "a Photoshop PSD"), (b"%PDF", "a PDF"), (b"\xff\x0a", "a JPEG XL"),
                 (b"\x00\x00\x00\x0cJXL ", "a JPEG XL"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000"))
_FULL_PRECISION_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow keeps these at 16+ bits
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_PIXEL_X_DIMENSION = 0xA002
_PIXEL_Y_DIMENSION = 0xA003
_EXIF_HEADER = b"Exif\x00\x00"
# Descriptive tags worth carrying from a TIFF's own IFD; the rest describe its pixel layout.
_TIFF_DESCRIPTIVE_TAGS = (270, 271, 272, _ORIENTATION, 305, 306, 315, 33432)
# Layout tags an EXIF block must not impose on a TIFF we write (sizes, strips, samples, ICC).
_TIFF_LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325,
                               338, 339, 513, 514, 530, 531, 532, 34675})
_TIFF_EXTRA_SAMPLES = 338
_TIFF_STRIP_OFFSETS = 273
_TIFF_STRIP_BYTE_COUNTS = 279
_TIFF_ICC_PROFILE = 34675
_UNASSOCIATED_ALPHA = 2

_pillow_limit_lock = threading.Lock()
_opencv_log_lock = threading.Lock()


@dataclass(frozen=True)
class DecodedImage:
    """An upright image as the pipeline wants it, plus what an output needs to look the same.

    `alpha` is None exactly when the file has no alpha channel or transparency key; an alpha
    channel that happens to be all opaque is kept, so RGBA in gives RGBA out.
    `icc_profile` is only ever an RGB profile (a grey or CMYK one does not describe `rgb`).
    `exif` is the EXIF block as a JPEG APP1 payload (starting b"Exif\\0\\0").
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    format: str
    icc_profile: bytes | None
    exif: bytes | None

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


# ---------------------------------------------------------------------------------------------
# reading


def read_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a file, or bytes read from stdin, fully and upright; every failure is one ImageReadError.

    The whole image is decoded here, so a truncated file fails before any model work starts.
    """
    name, data = _read_source(source)
    if not data:
        raise ImageReadError(f"{name}: the file is empty (0 bytes); pass a complete image file")
    image = _open(data, name, max_pixels)
    with image, warnings.catch_warnings():
        # Pillow's "corrupt EXIF" chatter: bad metadata is dropped or carried as is, never fatal.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        image_format = _PILLOW_FORMATS[image.format or ""]
        sixteen_bit_colour = _sixteen_bit_colour(image, data)
        # Pillow rotates TIFFs itself while loading and then drops the tag: read it first.
        stored_orientation = _orientation(image) if image_format == "tiff" else None
        try:
            _load(image)
        except MemoryError:
            raise
        except Exception as error:
            raise ImageReadError(f"{name}: the {image_format} file is truncated or corrupt ({_one_line(error)}); "
                                 "re-export or re-download it") from error
        pending_orientation = _orientation(image)  # what the decoded pixels still need
        if stored_orientation is None:
            stored_orientation = pending_orientation
        icc_profile = image.info.get("icc_profile") or None
        exif = _read_exif(image, image_format, reset_orientation=stored_orientation != 1)
        colour, alpha, bit_depth = _decode_with_pillow(image, name)
        colour = _apply_orientation(colour, pending_orientation)
        alpha = None if alpha is None else _apply_orientation(alpha, pending_orientation)
        if sixteen_bit_colour:
            colour, alpha, bit_depth = _decode_with_opencv(data, name, colour, stored_orientation,
                                                           opencv_orients=image_format == "tiff")

    if icc_profile is not None and not _is_rgb_profile(icc_profile):
        icc_profile = None  # a grey/CMYK profile would mislabel the RGB we return
    return DecodedImage(rgb=_to_unit_float(colour), alpha=None if alpha is None else _to_unit_float(alpha),
                        bit_depth=bit_depth, format=image_format, icc_profile=icc_profile, exif=exif)


def _read_source(source: str | Path | bytes) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "stdin", bytes(source)
    path = Path(source)
    name = f"'{path}'"
    if path.is_dir():
        raise ImageReadError(f"{name}: is a folder, not an image file; pass an image file")
    try:
        return name, path.read_bytes()
    except FileNotFoundError as error:
        raise ImageReadError(f"{name}: no such file; check the path") from error
    except PermissionError as error:
        raise ImageReadError(f"{name}: permission denied; check that you may read the file") from error
    except OSError as error:
        raise ImageReadError(f"{name}: cannot be read ({_one_line(error)}); check the file") from error


def _open(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Open lazily (header only) and enforce our pixel limit instead of Pillow's global one."""
    try:
        try:
            image = _open_with_pillow(data)
        except Image.DecompressionBombError:
            with _pillow_limit_lifted():  # over Pillow's own limit: read the header, then apply ours
                image = _open_with_pillow(data)
    except Exception as error:
        raise _not_an_image(data, name, error) from error

    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageReadError(f"{name}: declares {width}x{height} = {width * height / 1e6:.1f} Mpx, over the "
                             f"{max_pixels / 1e6:g} Mpx input limit; if the image is genuine, raise the limit "
                             "with --max-pixels N")
    if image.format not in _PILLOW_FORMATS:
        image.close()
        raise ImageReadError(f"{name}: {image.format} images are not supported; convert it to png first")
    return image


@contextlib.contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Pillow's global bomb limit off for one call, so that `max_pixels` alone decides."""
    with _pillow_limit_lock:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _load(image: Image.Image) -> None:
    """Decode every pixel now; some plugins re-check Pillow's limit here, which ours replaces."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.size[0] * image.size[1] > limit:
        with _pillow_limit_lifted():
            image.load()
    else:
        image.load()


def _open_with_pillow(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our max_pixels decides
        return Image.open(io.BytesIO(data), formats=_PILLOW_OPENERS)


def _not_an_image(data: bytes, name: str, error: Exception) -> ImageReadError:
    for magic, kind in _KNOWN_OTHERS:
        if data.startswith(magic):
            return ImageReadError(f"{name}: looks like {kind} file, which dossr does not read; "
                                  f"convert it to one of {', '.join(FORMATS)}")
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return ImageReadError(f"{name}: looks like a HEIF/AVIF file, which dossr does not read; "
                              f"convert it to one of {', '.join(FORMATS)}")
    if isinstance(error, Image.UnidentifiedImageError):
        return ImageReadError(f"{name}: not an image dossr can read (it reads {', '.join(FORMATS)}); "
                              "check that this is the file you meant")
    return ImageReadError(f"{name}: the image header is corrupt ({_one_line(error)}); re-export or re-download it")


def _sixteen_bit_colour(image: Image.Image, data: bytes) -> bool:
    """Whether Pillow would cut this file to 8 bits (it keeps only 16-bit grey at full precision)."""
    if image.mode in _FULL_PRECISION_MODES:
        return False
    if image.format == "PNG":
        return data[12:16] == b"IHDR" and data[24] > 8
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def _decode_with_pillow(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(colour HxWx3, alpha HxW or None, bit depth) in the image's own integer or float type."""
    if image.mode in _FULL_PRECISION_MODES:
        grey = np.asarray(image)
        if grey.dtype.kind in "iu":
            grey = np.clip(grey, 0, 65535).astype(np.uint16)  # "I" holds 16-bit grey in older files
        transparency = image.info.get("transparency")
        alpha = None
        if isinstance(transparency, int) and grey.dtype == np.uint16:
            alpha = np.where(grey == transparency, 0, 65535).astype(np.uint16)
        return np.repeat(grey[..., None], 3, axis=2), alpha, 16

    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    try:
        converted = image.convert("RGBA" if has_alpha else "RGB")
    except (ValueError, OSError) as error:
        raise ImageReadError(f"{name}: colour mode {image.mode} is not supported ({_one_line(error)}); "
                             "convert it to RGB first") from error
    pixels = np.asarray(converted)
    if has_alpha:
        return pixels[..., :3], pixels[..., 3], 8
    return pixels, None, 8


def _decode_with_opencv(data: bytes, name: str, reference: np.ndarray, orientation: int, *,
                        opencv_orients: bool) -> tuple[np.ndarray, np.ndarray | None, int]:
    """The 16-bit pixels, upright, checked against Pillow's upright 8-bit decode of the same file.

    Whether OpenCV applies the orientation tag itself depends on the format and its version
    (5.0: TIFF yes, PNG no), so the candidate whose high bytes match Pillow's pixels is taken;
    `opencv_orients` only orders the candidates, for images symmetric enough to match both.
    """
    with _quiet_opencv():
        try:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as error:
            raise ImageReadError(f"{name}: OpenCV could not decode the 16-bit pixels ({_one_line(error)}); "
                                 "re-export the file") from error
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ImageReadError(f"{name}: OpenCV could not decode the 16-bit colour pixels; re-export the file "
                             "(as a 16-bit PNG, or 8-bit if 16 bits are not needed)")
    colour = pixels[..., 2::-1]
    alpha = pixels[..., 3] if pixels.shape[2] == 4 else None
    candidates = [(colour, alpha)]
    if orientation != 1:
        oriented = (_apply_orientation(colour, orientation),
                    None if alpha is None else _apply_orientation(alpha, orientation))
        candidates.insert(len(candidates) if opencv_orients else 0, oriented)
    for upright, upright_alpha in candidates:
        if upright.shape == reference.shape and _same_high_bytes(upright, reference):
            return np.ascontiguousarray(upright), upright_alpha, 16
    raise ImageReadError(f"{name}: Pillow and OpenCV decode different 16-bit pixels; re-export the file "
                         "(as a 16-bit PNG)")


def _same_high_bytes(sixteen_bit: np.ndarray, eight_bit: np.ndarray) -> bool:
    """Pillow reduces 16-bit samples to 8 by their high byte; allow one level for other roundings."""
    step = max(1, min(sixteen_bit.shape[:2]) // 64)  # a sparse grid is plenty to tell orientations apart
    high = (sixteen_bit[::step, ::step] >> 8).astype(np.int16)
    return bool(np.abs(high - eight_bit[::step, ::step].astype(np.int16)).max() <= 1)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV logs decoder complaints to stderr; our exceptions say it instead."""
    with _opencv_log_lock:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(level)


def _to_unit_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels, dtype=np.float32) / np.float32(255)
    if pixels.dtype == np.uint16 or pixels.dtype.kind in "iu":
        return np.ascontiguousarray(pixels, dtype=np.float32) / np.float32(65535)
    return np.clip(np.nan_to_num(np.ascontiguousarray(pixels, dtype=np.float32)), 0, 1)


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF Orientation 2-8 -> upright pixels; the same mapping as PIL.ImageOps.exif_transpose."""
    if orientation == 2:
        pixels = pixels[:, ::-1]
    elif orientation == 3:
        pixels = pixels[::-1, ::-1]
    elif orientation == 4:
        pixels = pixels[::-1]
    elif orientation == 5:
        pixels = pixels.swapaxes(0, 1)
    elif orientation == 6:
        pixels = np.rot90(pixels, -1)
    elif orientation == 7:
        pixels = pixels.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        pixels = np.rot90(pixels, 1)
    return np.ascontiguousarray(pixels)


# ---------------------------------------------------------------------------------------------
# metadata


def _is_rgb_profile(icc_profile: bytes) -> bool:
    """The ICC header's data colour space (bytes 16-19) is RGB; our pixels always are."""
    return len(icc_profile) >= 128 and icc_profile[16:20] == b"RGB "


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF means no orientation, not an unreadable image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _read_exif(image: Image.Image, image_format: str, reset_orientation: bool) -> bytes | None:
    """EXIF as an APP1 payload, with Orientation 1 once applied; a broken block is dropped, not fatal."""
    try:
        parsed = image.getexif()
        if image_format == "tiff":
            return _exif_from_tiff_tags(parsed, reset_orientation)
        raw = image.info.get("exif")
        if isinstance(raw, bytes) and raw:
            exif = raw if raw.startswith(_EXIF_HEADER) else _EXIF_HEADER + raw
        elif len(parsed):
            exif = parsed.tobytes()  # e.g. the ImageMagick "Raw profile type exif" PNG text chunk
        else:
            return None
    except Exception:  # noqa: BLE001 - unreadable metadata must not cost the image (USER_LESSONS 7)
        return None
    return _reset_orientation(exif) if reset_orientation else exif


def _exif_from_tiff_tags(parsed: Image.Exif, reset_orientation: bool) -> bytes | None:
    """A TIFF's EXIF lives among its layout tags; keep only the descriptive ones and the sub-IFDs."""
    exif = Image.Exif()
    for tag in _TIFF_DESCRIPTIVE_TAGS:
        if tag in parsed:
            exif[tag] = parsed[tag]
    for pointer in (_EXIF_IFD, _GPS_IFD):
        if pointer in parsed and (sub_ifd := parsed.get_ifd(pointer)):
            exif[pointer] = sub_ifd
    if reset_orientation or _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    return exif.tobytes() if len(exif) else None


def _reset_orientation(exif: bytes) -> bytes | None:
    """Orientation -> 1 once the pixels are upright; patched in place so maker notes stay valid."""
    patched = _patch_exif_integers(exif, {_ORIENTATION: 1}, {})
    if patched is not None and _ORIENTATION in patched[1]:
        return patched[0]
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        parsed[_ORIENTATION] = 1
        return parsed.tobytes()
    except Exception:  # noqa: BLE001 - without a consistent orientation, no EXIF beats a wrong one
        return None


def _patch_exif_integers(exif: bytes, ifd0_values: dict[int, int],
                         exif_ifd_values: dict[int, int]) -> tuple[bytes, set[int]] | None:
    """Overwrite single SHORT/LONG values of tags already present: (new block, tags patched), or None
    if the block is malformed. In place, so offsets and maker notes stay valid."""
    start = len(_EXIF_HEADER) if exif.startswith(_EXIF_HEADER) else 0
    buffer = bytearray(exif)
    order = {b"II": "<", b"MM": ">"}.get(bytes(buffer[start:start + 2]))
    if order is None:
        return None
    try:
        if struct.unpack_from(order + "H", buffer, start + 2)[0] != 42:
            return None
        ifd0 = start + struct.unpack_from(order + "I", buffer, start + 4)[0]
        exif_ifd = None
        patched = set()
        for entry, tag, kind, count in _ifd_entries(buffer, ifd0, order):
            if tag == _EXIF_IFD and kind in (4, 13) and count == 1:
                exif_ifd = start + struct.unpack_from(order + "I", buffer, entry + 8)[0]
            if _patch_entry(buffer, entry, order, kind, count, ifd0_values.get(tag)):
                patched.add(tag)
        if exif_ifd is not None and exif_ifd_values:
            for entry, tag, kind, count in _ifd_entries(buffer, exif_ifd, order):
                if _patch_entry(buffer, entry, order, kind, count, exif_ifd_values.get(tag)):
                    patched.add(tag)
    except struct.error:
        return None
    return bytes(buffer), patched


def _ifd_entries(buffer: bytearray, offset: int, order: str) -> Iterator[tuple[int, int, int, int]]:
    (count,) = struct.unpack_from(order + "H", buffer, offset)
    for index in range(count):
        entry = offset + 2 + 12 * index
        tag, kind, values = struct.unpack_from(order + "HHI", buffer, entry)
        yield entry, tag, kind, values


def _patch_entry(buffer: bytearray, entry: int, order: str, kind: int, count: int, value: int | None) -> bool:
    if value is None or count != 1:
        return False
    if kind == 3 and value < 2**16:  # SHORT
        struct.pack_into(order + "H", buffer, entry + 8, value)
        return True
    if kind == 4:  # LONG
        struct.pack_into(order + "I", buffer, entry + 8, value)
        return True
    return False


def _exif_payload(exif: bytes) -> bytes:
    """The TIFF stream inside an EXIF block, as PNG eXIf and WebP EXIF chunks store it."""
    return exif.removeprefix(_EXIF_HEADER)


# ---------------------------------------------------------------------------------------------
# alpha


def premultiply(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour times alpha, so filters never pull hidden colour out of transparent pixels."""
    _check_alpha_shape(rgb, alpha)
    return (rgb * alpha[..., None]).astype(np.float32, copy=False)


def unpremultiply(rgb_premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour over alpha, clipped to [0, 1]; 0 where alpha <= ALPHA_EPSILON (invisible), never NaN/inf."""
    _check_alpha_shape(rgb_premultiplied, alpha)
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


def _check_alpha_shape(rgb: np.ndarray, alpha: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or alpha.shape != rgb.shape[:2]:
        raise ValueError(f"expected colour (H, W, 3) and alpha (H, W); got {rgb.shape} and {alpha.shape}")


# ---------------------------------------------------------------------------------------------
# encoding


def encode_image(rgb: np.ndarray, alpha: np.ndarray | None, format: str, *, bit_depth: int = 8,
                 quality: int | None = None, icc_profile: bytes | None = None, exif: bytes | None = None,
                 metadata: str = "all") -> bytes:
    """The file's bytes; encoding apart from writing lets `write_atomic` make the write all-or-nothing.

    alpha is kept in png, webp and tiff; jpg and bmp have no alpha, so there the image is
    composited over white (what a viewer shows on a page) rather than exposing the colour
    hidden under transparent pixels. bit_depth 16 is honoured by png and tiff, others write 8.
    quality applies to jpg (default 95, 4:4:4 chroma) and webp (default 95 lossy; 100 =
    lossless) and is ignored by the lossless formats. An ICC/EXIF copy that fails, or a format
    that cannot hold it (bmp), gives a MetadataWarning and an image without it, never an error.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16; got {bit_depth!r}")
    if metadata not in METADATA_MODES:
        raise ValueError(f"metadata must be one of {', '.join(METADATA_MODES)}; got {metadata!r}")
    if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"quality must be an integer from 1 to 100; got {quality!r}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"rgb must be (H, W, 3); got {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        _check_alpha_shape(rgb, alpha)
    height, width = rgb.shape[:2]
    if max(height, width) > MAX_SIDE[format]:
        raise ImageWriteError(f"{format} cannot store {width}x{height} (at most {MAX_SIDE[format]} px a side); "
                              "choose png or tiff")
    bad = int(np.count_nonzero(~np.isfinite(rgb)))
    if alpha is not None:
        bad += int(np.count_nonzero(~np.isfinite(alpha)))
    if bad:
        raise ImageWriteError(f"the image has {bad} NaN/infinite values, a numerical failure upstream; not written")

    if alpha is not None and format not in ALPHA_FORMATS:
        rgb = rgb * alpha[..., None] + (1 - alpha[..., None])  # over white
        alpha = None
    depth = bit_depth if format in SIXTEEN_BIT_FORMATS else 8
    colour = _quantize(rgb, depth)
    opacity = None if alpha is None else _quantize(alpha, depth)

    icc_profile, exif = _select_metadata(format, metadata, icc_profile, exif, (height, width))
    encoder = _ENCODERS[format]
    if icc_profile is not None or exif is not None:
        try:
            return encoder(colour, opacity, quality, icc_profile, exif)
        except Exception as error:  # noqa: BLE001 - a metadata copy must never cost the image
            warnings.warn(f"could not store ICC/EXIF in the {format} output ({_one_line(error)}); "
                          "wrote the image without them", MetadataWarning, stacklevel=2)
    try:
        return encoder(colour, opacity, quality, None, None)
    except Exception as error:
        raise ImageWriteError(f"could not encode the image as {format} ({_one_line(error)})") from error


def _quantize(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] -> 8/16-bit integers, rounded to nearest so a read/write round trip is exact."""
    top = 255 if bit_depth == 8 else 65535
    scaled = np.clip(values, 0, 1) * np.float32(top)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _select_metadata(format: str, metadata: str, icc_profile: bytes | None, exif: bytes | None,
                     size: tuple[int, int]) -> tuple[bytes | None, bytes | None]:
    icc_profile = (icc_profile or None) if metadata in ("all", "icc") else None
    exif = (exif or None) if metadata == "all" else None
    if icc_profile is not None and not _is_rgb_profile(icc_profile):
        warnings.warn(f"the ICC profile is not an RGB profile; the {format} output is written without it",
                      MetadataWarning, stacklevel=3)
        icc_profile = None
    if exif is not None and not _exif_is_readable(exif):
        warnings.warn(f"the EXIF block is corrupt; the {format} output is written without it",
                      MetadataWarning, stacklevel=3)
        exif = None
    if format == "bmp" and (icc_profile is not None or exif is not None):
        warnings.warn("bmp cannot hold ICC/EXIF; the output is written without them", MetadataWarning, stacklevel=3)
        return None, None
    if exif is not None:
        # The EXIF pixel size describes the file it sits in; keep it true after upscaling.
        height, width = size
        patched = _patch_exif_integers(exif, {}, {_PIXEL_X_DIMENSION: width, _PIXEL_Y_DIMENSION: height})
        exif = exif if patched is None else patched[0]
    return icc_profile, exif


def _exif_is_readable(exif: bytes) -> bool:
    """Pillow parses it, sub-IFDs included, without complaint (it warns rather than raises)."""
    with warnings.catch_warnings(record=True) as complaints:
        warnings.simplefilter("always")
        try:
            parsed = Image.Exif()
            parsed.load(exif)
            for pointer in (_EXIF_IFD, _GPS_IFD):
                if pointer in parsed:
                    parsed.get_ifd(pointer)
        except Exception:  # noqa: BLE001 - any parse failure means "not readable"
            return False
    return not complaints and len(parsed) > 0


def _encode_png(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                exif: bytes | None) -> bytes:
    data = _opencv_encode(".png", colour, alpha, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    chunks = b""
    if icc_profile is not None:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
    if exif is not None:
        chunks += _png_chunk(b"eXIf", _exif_payload(exif))
    if data[12:16] != b"IHDR":
        raise ValueError("OpenCV wrote a PNG without a leading IHDR chunk")
    end_of_ihdr = 8 + 12 + 13  # signature, then IHDR's length, type, 13 bytes of data and CRC
    return data[:end_of_ihdr] + chunks + data[end_of_ihdr:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode_tiff(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                 exif: bytes | None) -> bytes:
    """OpenCV's LZW strips (8 or 16 bits) under an IFD rebuilt by Pillow to add alpha, ICC and EXIF tags."""
    data = _opencv_encode(".tiff", colour, alpha, [])
    if alpha is None and icc_profile is None and exif is None:
        return data
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    if struct.unpack_from(order + "H", data, 2)[0] != 42:
        raise ValueError("OpenCV wrote a BigTIFF, whose directory cannot be extended here")
    header = data[:8]
    source = TiffImagePlugin.ImageFileDirectory_v2(ifh=header)
    stream = io.BytesIO(data)
    stream.seek(struct.unpack_from(order + "I", data, 4)[0])
    source.load(stream)

    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=header)
    if exif is not None:
        parsed = Image.Exif()
        parsed.load(exif)
        for tag in parsed:
            if tag in _TIFF_LAYOUT_TAGS:
                continue
            value = parsed.get_ifd(tag) if tag in (_EXIF_IFD, _GPS_IFD) else parsed[tag]
            if not (isinstance(value, dict) and not value):
                ifd[tag] = value
    for tag, value in source.items():
        ifd[tag] = value
        ifd.tagtype[tag] = source.tagtype[tag]
    if alpha is not None:
        ifd[_TIFF_EXTRA_SAMPLES] = (_UNASSOCIATED_ALPHA,)  # OpenCV leaves the 4th sample unnamed
    if icc_profile is not None:
        ifd[_TIFF_ICC_PROFILE] = icc_profile

    # Pillow writes the IFD first and shifts StripOffsets past it: give offsets into the strip block.
    strips, relative, position = [], [], 0
    for offset, length in zip(source[_TIFF_STRIP_OFFSETS], source[_TIFF_STRIP_BYTE_COUNTS], strict=True):
        strips.append(data[offset:offset + length])
        relative.append(position)
        position += length
    ifd[_TIFF_STRIP_OFFSETS] = tuple(relative)
    ifd.tagtype[_TIFF_STRIP_OFFSETS] = 4  # LONG
    first_ifd = 8
    head = header[:4] + struct.pack(order + "I", first_ifd)
    return head + ifd.tobytes(first_ifd) + b"".join(strips)


def _encode_jpg(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                exif: bytes | None) -> bytes:
    options: dict[str, object] = {"quality": quality or JPEG_QUALITY, "subsampling": 0}  # 4:4:4: keep colour detail
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    if exif is not None:
        options["exif"] = _EXIF_HEADER + _exif_payload(exif)
    return _pillow_encode(colour, "JPEG", options)


def _encode_webp(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                 exif: bytes | None) -> bytes:
    quality = quality or WEBP_QUALITY
    options: dict[str, object] = {"quality": quality, "lossless": quality == 100, "method": 4}
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    if exif is not None:
        options["exif"] = _exif_payload(exif)
    pixels = colour if alpha is None else np.dstack([colour, alpha])
    return _pillow_encode(pixels, "WEBP", options)


def _encode_bmp(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                exif: bytes | None) -> bytes:
    return _pillow_encode(colour, "BMP", {})


def _pillow_encode(pixels: np.ndarray, pillow_format: str, options: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, pillow_format, **options)
    return buffer.getvalue()


def _opencv_encode(extension_: str, colour: np.ndarray, alpha: np.ndarray | None, params: list[int]) -> bytes:
    bgr = colour[..., ::-1] if alpha is None else np.dstack([colour[..., ::-1], alpha])
    ok, encoded = cv2.imencode(extension_, np.ascontiguousarray(bgr), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode {extension_}")
    return encoded.tobytes()


_ENCODERS = {"png": _encode_png, "jpg": _encode_jpg, "webp": _encode_webp, "tiff": _encode_tiff, "bmp": _encode_bmp}


# ---------------------------------------------------------------------------------------------
# writing


def write_atomic(path: str | Path, data: bytes, overwrite: bool = False) -> None:
    """All or nothing under `path`: a temporary file in the same folder, fsync, then one rename/link.

    Without `overwrite` the final step is os.link, which fails if the name exists, so of two
    processes racing for one name exactly one wins and the other's file is never clobbered.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise ImageWriteError(f"cannot write '{path}': the folder '{folder}' does not exist; create it first")
    if path.is_dir():
        raise ImageWriteError(f"cannot write '{path}': it is a folder; give a file name")
    if not overwrite and os.path.lexists(path):
        raise ImageWriteError(f"'{path}' already exists; pass --overwrite to replace it")

    descriptor, temporary = _create_temporary(path)
    placed = False
    try:
        try:
            _write_all(descriptor, data, path)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if overwrite:
            os.replace(temporary, path)
            placed = True
        else:
            _link_without_clobbering(temporary, path)
        _fsync_folder(folder)
    except FileExistsError as error:
        raise ImageWriteError(f"'{path}' already exists; pass --overwrite to replace it") from error
    except OSError as error:
        if isinstance(error, ImageWriteError):
            raise
        raise ImageWriteError(f"cannot write '{path}': {_describe_os_error(error)}") from error
    finally:
        if not placed:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Open a fresh hidden file beside `path`; mode 0o666 lets the umask decide, like a plain open."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    old_mode = path.stat().st_mode & 0o777 if path.is_file() else None  # an overwrite keeps permissions
    mode = 0o666 if old_mode is None else old_mode
    for _ in range(8):
        temporary = path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.tmp")
        try:
            descriptor = os.open(temporary, flags, mode)
        except FileExistsError:
            continue
        except OSError as error:
            raise ImageWriteError(f"cannot write in the folder '{path.parent}': {_describe_os_error(error)}") from error
        if old_mode is not None:
            with contextlib.suppress(OSError):
                os.chmod(temporary, old_mode)  # exactly the old bits, whatever the umask
        return descriptor, temporary
    raise ImageWriteError(f"cannot create a temporary file beside '{path}'; clear stale .tmp files there")


def _write_all(descriptor: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        if written <= 0:
            raise OSError(errno.EIO, f"short write to a temporary file for {path}")
        view = view[written:]


def _link_without_clobbering(temporary: Path, path: Path) -> None:
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError as error:
        # Filesystems without hard links (FAT, exFAT, some network shares): check, then rename.
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from error
        os.rename(temporary, path)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; folders that cannot be fsynced (Windows, some shares) are skipped."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _describe_os_error(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "the disk is full; free some space"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a folder you may write to"
    if error.errno == errno.EROFS:
        return "the filesystem is read-only; choose another folder"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return " ".join(text.split()) or type(error).__name__

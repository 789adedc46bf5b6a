"""Bytes -> an upright DecodedImage: Pillow for metadata and most pixels, OpenCV for 16-bit colour."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from dossr_cli.imageio.colour import ProfileError, profile_matches, srgb_profile_bytes, to_srgb
from dossr_cli.imageio.common import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    DecodedImage,
    ImageReadError,
    ImageTooLargeError,
    one_line,
)
from dossr_cli.imageio.integrity import (
    PNG_SIGNATURE,
    Damage,
    check_jpeg_data,
    check_jpeg_progression,
    check_png_data,
    check_tiff_layout,
    walk_png,
)
from dossr_cli.imageio.metadata import is_rgb_profile, read_exif, read_orientation

_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp"}
_PILLOW_OPENERS = ["PNG", "JPEG", "WEBP", "TIFF", "BMP"]  # no other parser sees untrusted bytes
_KNOWN_OTHERS = ((b"GIF8", "a GIF"), (b"8BPS", "a Photoshop PSD"), (b"%PDF", "a PDF"), (b"\xff\x0a", "a JPEG XL"),
                 (b"\x00\x00\x00\x0cJXL ", "a JPEG XL"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000"))
_OUR_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
              (b"BM", "bmp"), (b"RIFF", "webp"))
_FULL_PRECISION_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow keeps these at 16+ bits
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

T = TypeVar("T")
R = TypeVar("R")

# What Pillow warns, and skips, while reading a TIFF directory that the end of the file cuts off.
_TIFF_CUT_SHORT = re.compile("Tag data larger than file|Truncated File Read")

_pillow_limit_lock = threading.Lock()
_opencv_log_lock = threading.Lock()


def read_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> DecodedImage:
    """Decode a file, or bytes read from stdin, fully and upright; every failure is one ImageReadError.

    The whole image is decoded here, so a truncated file fails before any model work starts.
    `name` is what messages call bytes (default "stdin"; the service passes the upload's name).
    """
    named, data = _read_source(source)
    name = name if name is not None and not isinstance(source, (str, Path)) else named
    if not data:
        raise ImageReadError(f"{name}: the file is empty (0 bytes); pass a complete image file")
    # Walked before Pillow parses it, whose own CRC complaints would read as "not an image".
    png = _refuse_damage(name, "png", walk_png, data) if data.startswith(PNG_SIGNATURE) else None
    with warnings.catch_warnings(record=True) as complaints:
        # Pillow's "corrupt EXIF" chatter: bad metadata is dropped or carried as is, never fatal...
        warnings.simplefilter("always")
        image = _open(data, name, max_pixels)
    if image.format == "TIFF" and any(_TIFF_CUT_SHORT.search(str(w.message)) for w in complaints):
        image.close()  # ...but a TIFF's directory describes its pixels too
        raise ImageReadError(f"{name}: the tiff file is truncated or corrupt: its directory points past the end "
                             "of the file; re-export or re-download it")
    with image, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        image_format = _PILLOW_FORMATS[image.format or ""]
        if png is not None:
            _refuse_damage(name, image_format, check_png_data, png)
        elif image_format == "jpg":
            _refuse_damage(name, image_format, check_jpeg_data, data)
            _refuse_damage(name, image_format, check_jpeg_progression, data)
        elif image_format == "tiff":
            _refuse_damage(name, image_format, lambda opened: check_tiff_layout(opened, len(data)), image)
        notes = _frames_note(image)
        sixteen_bit_colour = _sixteen_bit_colour(image, data)
        # Pillow rotates TIFFs itself while loading and then drops the tag: read it first.
        stored_orientation = read_orientation(image) if image_format == "tiff" else None
        try:
            _load(image)
        except MemoryError:
            raise
        except Exception as error:
            raise ImageReadError(f"{name}: the {image_format} file is truncated or corrupt: {one_line(error)}; "
                                 "re-export or re-download it") from error
        pending_orientation = read_orientation(image)  # what the decoded pixels still need
        if stored_orientation is None:
            stored_orientation = pending_orientation
        icc_profile = image.info.get("icc_profile") or None
        exif = read_exif(image, image_format, reset_orientation=stored_orientation != 1)
        colour, alpha, bit_depth, icc_profile, colour_notes = _decode_with_pillow(image, name, icc_profile)
        notes += colour_notes
        colour = _apply_orientation(colour, pending_orientation)
        alpha = None if alpha is None else _apply_orientation(alpha, pending_orientation)
        if sixteen_bit_colour:
            colour, alpha, bit_depth = _decode_with_opencv(data, name, colour, stored_orientation,
                                                           opencv_orients=image_format == "tiff")

    if icc_profile is not None and not is_rgb_profile(icc_profile):
        icc_profile = None  # a grey/CMYK profile would mislabel the RGB we return
    return DecodedImage(rgb=_to_unit_float(colour), alpha=None if alpha is None else _to_unit_float(alpha),
                        bit_depth=bit_depth, format=image_format, icc_profile=icc_profile, exif=exif,
                        notes=notes)


def _refuse_damage(name: str, image_format: str, check: Callable[[T], R], subject: T) -> R:
    try:
        return check(subject)
    except Damage as damage:
        raise ImageReadError(f"{name}: the {image_format} file is truncated or corrupt: {damage}; "
                             "re-export or re-download it") from damage


def _frames_note(image: Image.Image) -> tuple[str, ...]:
    """Only the first page of a multi-page TIFF, or frame of an animation, is read: say so.

    An MPO's further images (a camera's preview or depth map) are not pages, so they pass silently.
    """
    if image.format not in ("TIFF", "PNG", "WEBP"):
        return ()
    try:
        frames = int(getattr(image, "n_frames", 1))
    except Exception:  # noqa: BLE001 - a broken later page does not concern the first
        frames = 2
    finally:
        image.seek(0)
    if frames < 2:
        return ()
    if image.format == "TIFF":
        return ((f"a multi-page TIFF ({frames} pages): upscaled the first page only; split the file "
                "to upscale the others"),)
    kind = "an animated WebP" if image.format == "WEBP" else "an animated PNG"
    return (f"{kind} ({frames} frames): upscaled the first frame only",)


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
        raise ImageReadError(f"{name}: cannot be read ({one_line(error)}); check the file") from error


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
        raise ImageTooLargeError(f"{name}: declares {width}x{height} = {width * height / 1e6:.1f} Mpx, over the "
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
    kind = next((kind for magic, kind in _OUR_MAGIC if data.startswith(magic)), None)
    if kind is not None:  # one of ours, whose header Pillow could not parse
        detail = "" if isinstance(error, Image.UnidentifiedImageError) else f" ({one_line(error)})"
        return ImageReadError(f"{name}: the {kind} file is truncated or corrupt: its header cannot be "
                              f"read{detail}; re-export or re-download it")
    if isinstance(error, Image.UnidentifiedImageError):
        return ImageReadError(f"{name}: not an image dossr can read (it reads {', '.join(FORMATS)}); "
                              "check that this is the file you meant")
    return ImageReadError(f"{name}: the image header is corrupt ({one_line(error)}); re-export or re-download it")


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


def _decode_with_pillow(image: Image.Image, name: str, icc_profile: bytes | None
                        ) -> tuple[np.ndarray, np.ndarray | None, int, bytes | None, tuple[str, ...]]:
    """(colour HxWx3, alpha HxW or None, bit depth, ICC profile, notes) in the image's own integer type.

    CMYK and grey with a matching embedded profile come out as sRGB, tagged with an sRGB profile.
    """
    notes: tuple[str, ...] = ()
    if image.mode in _FULL_PRECISION_MODES:
        grey = np.asarray(image)
        if grey.dtype.kind in "iu":
            grey = np.clip(grey, 0, 65535).astype(np.uint16)  # "I" holds 16-bit grey in older files
        transparency = image.info.get("transparency")
        alpha = None
        if isinstance(transparency, int) and grey.dtype == np.uint16:
            alpha = np.where(grey == transparency, 0, 65535).astype(np.uint16)
        if grey.dtype == np.uint16 and profile_matches("I;16", icc_profile):
            managed, icc_profile, notes = _manage_colour(Image.fromarray(grey), icc_profile, name)
            grey = grey if managed is None else np.asarray(managed)
        return np.repeat(grey[..., None], 3, axis=2), alpha, 16, icc_profile, notes

    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    managed = None
    if profile_matches(image.mode, icc_profile):
        managed, icc_profile, notes = _manage_colour(image, icc_profile, name)
    try:
        converted = (managed or image).convert("RGBA" if has_alpha else "RGB")
    except (ValueError, OSError) as error:
        raise ImageReadError(f"{name}: colour mode {image.mode} is not supported ({one_line(error)}); "
                             "convert it to RGB first") from error
    pixels = np.asarray(converted)
    if has_alpha:
        return pixels[..., :3], pixels[..., 3], 8, icc_profile, notes
    return pixels, None, 8, icc_profile, notes


def _manage_colour(image: Image.Image, icc_profile: bytes, name: str
                   ) -> tuple[Image.Image | None, bytes | None, tuple[str, ...]]:
    """(sRGB image, sRGB profile, no notes), or a plain conversion and a note if the profile is unusable."""
    try:
        return to_srgb(image, icc_profile), srgb_profile_bytes(), ()
    except ProfileError as error:
        return None, None, ((f"its {image.mode} ICC profile cannot be used ({error}); "
                            "colours converted without it"),)


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
            raise ImageReadError(f"{name}: OpenCV could not decode the 16-bit pixels ({one_line(error)}); "
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


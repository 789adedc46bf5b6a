"""Pixels -> the bytes of a png, jpg, webp, tiff or bmp file, with ICC and EXIF where the format holds them."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin

from dossr_cli.imageio.colour import check_alpha_shape
from dossr_cli.imageio.common import (
    ALPHA_FORMATS,
    FORMATS,
    JPEG_QUALITY,
    MAX_SIDE,
    METADATA_MODES,
    SIXTEEN_BIT_FORMATS,
    WEBP_QUALITY,
    ImageWriteError,
    MetadataWarning,
    one_line,
)
from dossr_cli.imageio.metadata import (
    EXIF_HEADER,
    EXIF_IFD,
    GPS_IFD,
    PIXEL_X_DIMENSION,
    PIXEL_Y_DIMENSION,
    TIFF_EXTRA_SAMPLES,
    TIFF_ICC_PROFILE,
    TIFF_LAYOUT_TAGS,
    TIFF_STRIP_BYTE_COUNTS,
    TIFF_STRIP_OFFSETS,
    UNASSOCIATED_ALPHA,
    exif_is_readable,
    exif_payload,
    is_rgb_profile,
    patch_exif_integers,
)


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
        check_alpha_shape(rgb, alpha)
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
            warnings.warn(f"could not store ICC/EXIF in the {format} output ({one_line(error)}); "
                          "wrote the image without them", MetadataWarning, stacklevel=2)
    try:
        return encoder(colour, opacity, quality, None, None)
    except Exception as error:
        raise ImageWriteError(f"could not encode the image as {format} ({one_line(error)})") from error


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
    if icc_profile is not None and not is_rgb_profile(icc_profile):
        warnings.warn(f"the ICC profile is not an RGB profile; the {format} output is written without it",
                      MetadataWarning, stacklevel=3)
        icc_profile = None
    if exif is not None and not exif_is_readable(exif):
        warnings.warn(f"the EXIF block is corrupt; the {format} output is written without it",
                      MetadataWarning, stacklevel=3)
        exif = None
    if format == "bmp" and (icc_profile is not None or exif is not None):
        warnings.warn("bmp cannot hold ICC/EXIF; the output is written without them", MetadataWarning, stacklevel=3)
        return None, None
    if exif is not None:
        # The EXIF pixel size describes the file it sits in; keep it true after upscaling.
        height, width = size
        patched = patch_exif_integers(exif, {}, {PIXEL_X_DIMENSION: width, PIXEL_Y_DIMENSION: height})
        exif = exif if patched is None else patched[0]
    return icc_profile, exif


def _encode_png(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                exif: bytes | None) -> bytes:
    data = _opencv_encode(".png", colour, alpha, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    chunks = b""
    if icc_profile is not None:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
    if exif is not None:
        chunks += _png_chunk(b"eXIf", exif_payload(exif))
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
            if tag in TIFF_LAYOUT_TAGS:
                continue
            value = parsed.get_ifd(tag) if tag in (EXIF_IFD, GPS_IFD) else parsed[tag]
            if not (isinstance(value, dict) and not value):
                ifd[tag] = value
    for tag, value in source.items():
        ifd[tag] = value
        ifd.tagtype[tag] = source.tagtype[tag]
    if alpha is not None:
        ifd[TIFF_EXTRA_SAMPLES] = (UNASSOCIATED_ALPHA,)  # OpenCV leaves the 4th sample unnamed
    if icc_profile is not None:
        ifd[TIFF_ICC_PROFILE] = icc_profile

    # Pillow writes the IFD first and shifts StripOffsets past it: give offsets into the strip block.
    strips, relative, position = [], [], 0
    for offset, length in zip(source[TIFF_STRIP_OFFSETS], source[TIFF_STRIP_BYTE_COUNTS], strict=True):
        strips.append(data[offset:offset + length])
        relative.append(position)
        position += length
    ifd[TIFF_STRIP_OFFSETS] = tuple(relative)
    ifd.tagtype[TIFF_STRIP_OFFSETS] = 4  # LONG
    first_ifd = 8
    head = header[:4] + struct.pack(order + "I", first_ifd)
    return head + ifd.tobytes(first_ifd) + b"".join(strips)


def _encode_jpg(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                exif: bytes | None) -> bytes:
    options: dict[str, object] = {"quality": quality or JPEG_QUALITY, "subsampling": 0}  # 4:4:4: keep colour detail
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    if exif is not None:
        options["exif"] = EXIF_HEADER + exif_payload(exif)
    return _pillow_encode(colour, "JPEG", options)


def _encode_webp(colour: np.ndarray, alpha: np.ndarray | None, quality: int | None, icc_profile: bytes | None,
                 exif: bytes | None) -> bytes:
    quality = quality or WEBP_QUALITY
    options: dict[str, object] = {"quality": quality, "lossless": quality == 100, "method": 4}
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    if exif is not None:
        options["exif"] = exif_payload(exif)
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

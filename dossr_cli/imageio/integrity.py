"""Strict decoding: what Pillow would let through from a damaged PNG or JPEG is refused here.

Pillow ignores libjpeg's warnings, so a JPEG whose data stops early (or whose frame header was
enlarged) decodes with grey fill; it zero-fills the PNG rows a short zlib stream leaves out, and it
checks no PNG CRC after the first IDAT chunk. So a PNG's chunks are walked and CRC-checked before
Pillow parses them, its image data is inflated and counted, and a JPEG's entropy data is decoded
once by libjpeg-turbo in strict mode (simplejpeg at 1/8 scale: every coefficient is read, few
pixels are made, so a 661-byte "8000x8000" file is refused in milliseconds).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import simplejpeg
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA
_ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # count the inflated bytes a MiB at a time, never holding the image
# libjpeg warnings that say nothing about missing pixels: an unknown JFIF or Adobe version, an ICC
# marker Pillow reads on its own; and what strict mode cannot check (scaled decoding of lossless
# JPEG), left to Pillow.
_HARMLESS_JPEG_WARNINGS = ("unknown JFIF revision", "Unknown Adobe color transform", "bad ICC marker",
                           "not supported", "Unsupported")
# A few stray bytes before the end marker are padding some encoders leave; more are pixel data a
# frame header too small for them leaves out (a patched size that would decode as a crop).
_PADDING_BEFORE_END = re.compile(r"(\d+) extraneous bytes before marker 0xd9")
_MOST_PADDING = 16


class Damage(Exception):
    """A file that is truncated or corrupt; the message says how, in a few words."""


@dataclass(frozen=True)
class PngLayout:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool
    image_data: tuple[memoryview, ...]  # the IDAT chunk bodies, in order


def walk_png(data: bytes) -> PngLayout:
    """Every chunk up to IEND, its CRC checked (Pillow checks none after the first IDAT)."""
    view = memoryview(data)
    position, header, image_data, palette = len(PNG_SIGNATURE), None, [], False
    while True:
        if position + 12 > len(data):
            raise Damage("it ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, position)
        label = _chunk_label(kind)
        end = position + 12 + length
        if end > len(data):
            raise Damage(f"it ends inside its {label} chunk")
        body = view[position + 8:end - 4]
        (stored_crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(body, zlib.crc32(kind)) != stored_crc:
            raise Damage(f"its {label} chunk at byte {position} fails its CRC check")
        if header is None and kind != b"IHDR":
            raise Damage("it does not start with an IHDR chunk")
        if kind == b"IHDR":
            if header is not None:
                raise Damage("it has a second IHDR chunk")
            header = body
        elif kind == b"PLTE":
            palette = True
        elif kind == b"IDAT":
            image_data.append(body)
        elif kind == b"IEND":
            break
        position = end
    if len(header) != 13:
        raise Damage("its IHDR chunk has the wrong length")
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if colour_type not in _PNG_CHANNELS:
        raise Damage(f"its header declares an unknown colour type {colour_type}")
    if colour_type == 3 and not palette:
        raise Damage("it is a palette image without a PLTE chunk")  # Pillow would make one up
    return PngLayout(width, height, bit_depth, colour_type, interlace == 1, tuple(image_data))


def check_png_data(layout: PngLayout) -> None:
    """The zlib stream in IDAT is complete and holds exactly the rows the header declares."""
    expected = _png_data_size(layout)
    inflater = zlib.decompressobj()
    produced = 0
    try:
        for part in layout.image_data:
            if inflater.eof:
                if part:
                    raise Damage("its image data has bytes after the end of the compressed stream")
                continue
            pending: bytes | memoryview = part
            while pending and not inflater.eof:
                produced += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
                if produced > expected:
                    raise Damage(f"its image data is longer than its {layout.width}x{layout.height} header declares")
        while not inflater.eof and (tail := inflater.decompress(b"", _INFLATE_STEP)):
            produced += len(tail)
    except zlib.error as error:
        raise Damage(f"its image data does not decompress ({error})") from error
    if produced > expected:
        raise Damage(f"its image data is longer than its {layout.width}x{layout.height} header declares")
    if produced < expected or not inflater.eof:
        share = 100 * produced / expected if expected else 0
        raise Damage(f"its image data ends early ({share:.2g}% of what its {layout.width}x{layout.height} "
                     "header declares)")
    if inflater.unused_data:
        raise Damage("its image data has bytes after the end of the compressed stream")


def check_jpeg_data(data: bytes) -> None:
    """libjpeg-turbo's warnings about missing or corrupt data are errors here, not grey fill."""
    try:
        colour_space = simplejpeg.decode_jpeg_header(data)[2]
        simplejpeg.decode_jpeg(data, colorspace="CMYK" if colour_space in ("CMYK", "YCCK") else "GRAY",
                               fastdct=True, fastupsample=True, min_height=1, min_width=1, min_factor=8)
    except ValueError as error:
        message = " ".join(str(error).split())
        if any(harmless in message for harmless in _HARMLESS_JPEG_WARNINGS):
            return
        padding = _PADDING_BEFORE_END.search(message)
        if padding and int(padding.group(1)) <= _MOST_PADDING:
            return
        message = message.removeprefix("Corrupt JPEG data: ")
        raise Damage(f"libjpeg reports '{message[:1].lower()}{message[1:]}'") from error


def check_jpeg_progression(data: bytes) -> None:
    """A progressive JPEG's scans code every coefficient of every component to full precision.

    A file cut between scans, with an end marker after it, is valid to libjpeg, which shows it
    blurred without a word (as browsers do while a download is under way); here it is truncated.
    """
    final: dict[int, set[int]] = {}  # component id -> coefficients coded down to the last bit
    components: list[int] = []
    position, progressive = 2, False
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            break
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = data[position + 4:position + 2 + length]
        if marker in (0xC2, 0xC6, 0xCA, 0xCE) and len(segment) >= 6:
            progressive = True
            components = list(segment[6:6 + 3 * segment[5]:3])
        elif marker == 0xDA and segment:
            count = segment[0]
            if len(segment) >= 1 + 2 * count + 3:
                start, end, approximation = segment[1 + 2 * count:4 + 2 * count]
                if approximation & 0x0F == 0:
                    for component in segment[1:1 + 2 * count:2]:
                        final.setdefault(component, set()).update(range(start, end + 1))
            position = _end_of_scan(data, position + 2 + length)
            continue
        position += 2 + length
    if progressive and any(len(final.get(component, ())) < 64 for component in components):
        raise Damage("its progressive scans stop before the image is complete")


def _end_of_scan(data: bytes, position: int) -> int:
    """The next marker after entropy-coded data (0xFF 0x00 is a stuffed byte, 0xFF 0xD0-D7 a restart)."""
    while (position := data.find(b"\xff", position)) >= 0 and position + 1 < len(data):
        following = data[position + 1]
        if following == 0 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1
            continue
        return position
    return len(data)


def check_tiff_layout(image: Image.Image, size: int) -> None:
    """Every page's strips or tiles lie inside the file (libtiff decodes a cut LZW strip as garbage)."""
    page = 0
    try:
        while True:
            offsets = image.tag_v2.get(273) or image.tag_v2.get(324) or ()
            counts = image.tag_v2.get(279) or image.tag_v2.get(325) or ()
            for offset, count in zip(offsets, counts):
                if offset + count > size:
                    raise Damage(f"the image data of page {page + 1} runs past the end of the file")
            page += 1
            image.seek(page)
    except EOFError:
        pass
    except Damage:
        raise
    except Exception as error:
        raise Damage(f"the directory of page {page + 1} is unreadable ({' '.join(str(error).split())})") from error
    finally:
        image.seek(0)


def _png_data_size(layout: PngLayout) -> int:
    """Bytes of filtered rows (a filter byte, then the packed samples) the header implies."""
    bits = layout.bit_depth * _PNG_CHANNELS[layout.colour_type]

    def rows(width: int, height: int) -> int:
        return 0 if width <= 0 or height <= 0 else height * (1 + (width * bits + 7) // 8)

    if not layout.interlaced:
        return rows(layout.width, layout.height)
    return sum(rows((layout.width - x0 + dx - 1) // dx, (layout.height - y0 + dy - 1) // dy)
               for x0, y0, dx, dy in _ADAM7_PASSES)


def _chunk_label(kind: bytes) -> str:
    return kind.decode("ascii") if kind.isalpha() else repr(kind)

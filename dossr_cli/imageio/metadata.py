"""ICC and EXIF: read them from a decoded file, keep Orientation and the pixel size true, check a block parses."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator

from PIL import Image

ORIENTATION = 0x0112
EXIF_IFD = 0x8769
GPS_IFD = 0x8825
PIXEL_X_DIMENSION = 0xA002
PIXEL_Y_DIMENSION = 0xA003
EXIF_HEADER = b"Exif\x00\x00"
# Descriptive tags worth carrying from a TIFF's own IFD; the rest describe its pixel layout.
TIFF_DESCRIPTIVE_TAGS = (270, 271, 272, ORIENTATION, 305, 306, 315, 33432)
# Layout tags an EXIF block must not impose on a TIFF we write (sizes, strips, samples, ICC).
TIFF_LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325,
                               338, 339, 513, 514, 530, 531, 532, 34675})
TIFF_EXTRA_SAMPLES = 338
TIFF_STRIP_OFFSETS = 273
TIFF_STRIP_BYTE_COUNTS = 279
TIFF_ICC_PROFILE = 34675
UNASSOCIATED_ALPHA = 2


def is_rgb_profile(icc_profile: bytes) -> bool:
    """The ICC header's data colour space (bytes 16-19) is RGB; our pixels always are."""
    return len(icc_profile) >= 128 and icc_profile[16:20] == b"RGB "


def read_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF means no orientation, not an unreadable image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_exif(image: Image.Image, image_format: str, reset_orientation: bool) -> bytes | None:
    """EXIF as an APP1 payload, with Orientation 1 once applied; a broken block is dropped, not fatal."""
    try:
        parsed = image.getexif()
        if image_format == "tiff":
            return _exif_from_tiff_tags(parsed, reset_orientation)
        raw = image.info.get("exif")
        if isinstance(raw, bytes) and raw:
            exif = raw if raw.startswith(EXIF_HEADER) else EXIF_HEADER + raw
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
    for tag in TIFF_DESCRIPTIVE_TAGS:
        if tag in parsed:
            exif[tag] = parsed[tag]
    for pointer in (EXIF_IFD, GPS_IFD):
        if pointer in parsed and (sub_ifd := parsed.get_ifd(pointer)):
            exif[pointer] = sub_ifd
    if reset_orientation or ORIENTATION in exif:
        exif[ORIENTATION] = 1
    return exif.tobytes() if len(exif) else None


def _reset_orientation(exif: bytes) -> bytes | None:
    """Orientation -> 1 once the pixels are upright; patched in place so maker notes stay valid."""
    patched = patch_exif_integers(exif, {ORIENTATION: 1}, {})
    if patched is not None and ORIENTATION in patched[1]:
        return patched[0]
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        parsed[ORIENTATION] = 1
        return parsed.tobytes()
    except Exception:  # noqa: BLE001 - without a consistent orientation, no EXIF beats a wrong one
        return None


def patch_exif_integers(exif: bytes, ifd0_values: dict[int, int],
                         exif_ifd_values: dict[int, int]) -> tuple[bytes, set[int]] | None:
    """Overwrite single SHORT/LONG values of tags already present: (new block, tags patched), or None
    if the block is malformed. In place, so offsets and maker notes stay valid."""
    start = len(EXIF_HEADER) if exif.startswith(EXIF_HEADER) else 0
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
            if tag == EXIF_IFD and kind in (4, 13) and count == 1:
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


def exif_payload(exif: bytes) -> bytes:
    """The TIFF stream inside an EXIF block, as PNG eXIf and WebP EXIF chunks store it."""
    return exif.removeprefix(EXIF_HEADER)



def exif_is_readable(exif: bytes) -> bool:
    """Pillow parses it, sub-IFDs included, without complaint (it warns rather than raises)."""
    with warnings.catch_warnings(record=True) as complaints:
        warnings.simplefilter("always")
        try:
            parsed = Image.Exif()
            parsed.load(exif)
            for pointer in (EXIF_IFD, GPS_IFD):
                if pointer in parsed:
                    parsed.get_ifd(pointer)
        except Exception:  # noqa: BLE001 - any parse failure means "not readable"
            return False
    return not complaints and len(parsed) > 0


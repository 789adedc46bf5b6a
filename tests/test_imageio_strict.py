"""Strict decoding (issue 11): damaged files are refused, never grey-filled; only the first page of a
multi-page file is read, and said so; CMYK and grey are colour-managed through their ICC profile."""

import io
import itertools
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from dossr_cli.imageio import ImageReadError, encode_image, read_image
from dossr_cli.imageio.colour import grey_profile, srgb_decode

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# sRGB primaries adapted to the D50 profile connection space (Bradford), as in ICC sRGB profiles.
SRGB_TO_XYZ_D50 = np.array([[0.4360747, 0.3850649, 0.1430804],
                            [0.2225045, 0.7168786, 0.0606169],
                            [0.0139322, 0.0971045, 0.7141733]])


def pillow_bytes(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(size=(64, 48), mode="RGB"):
    return Image.effect_noise(size, 60).convert(mode)


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_file(width, height, rows, colour_type=2, extra_chunks=()):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    chunks = [png_chunk(b"IHDR", ihdr), *extra_chunks, png_chunk(b"IDAT", zlib.compress(rows)), png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


def rgb_rows(pixels):
    return b"".join(b"\x00" + row.tobytes() for row in pixels)


def assert_refused_as_damaged(data, *phrases):
    with pytest.raises(ImageReadError) as caught:
        read_image(data)
    message = str(caught.value)
    assert "truncated or corrupt" in message and "re-export or re-download" in message and "\n" not in message
    for phrase in phrases:
        assert phrase in message, message


def describe(icc_profile):
    return ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)).profile.profile_description


def srgb_encode(linear):
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


# ------------------------------------------------------------------------------------------------ JPEG


def test_jpeg_frame_header_enlarged_to_8000x8000_is_refused_at_once():
    """The issue's repro: 661 bytes whose SOF says 8000x8000 used to decode to 64 Mpx of grey."""
    data = bytearray(pillow_bytes(Image.new("RGB", (48, 40), "gray"), "JPEG"))
    frame = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, 8000, 8000)
    started = time.perf_counter()
    assert_refused_as_damaged(bytes(data), "premature end of data")
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_short_before_its_end_marker_is_refused(progressive):
    data = pillow_bytes(noise((256, 256)), "JPEG", quality=90, progressive=progressive)
    assert_refused_as_damaged(data[: len(data) // 2] + b"\xff\xd9", "premature end")


def test_jpeg_frame_header_shrunk_to_a_crop_is_refused():
    data = bytearray(pillow_bytes(noise((64, 64)), "JPEG"))
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, 32, 32)
    assert_refused_as_damaged(bytes(data), "extraneous bytes")


def test_jpeg_with_a_few_padding_bytes_before_its_end_marker_still_reads():
    """Some encoders leave a byte or two there; libjpeg warns, viewers show the image, so do we."""
    data = pillow_bytes(noise((64, 64)), "JPEG")
    assert read_image(data[:-2] + b"\x12\x34\x56\xff\xd9").rgb.shape == (64, 64, 3)


def test_cmyk_jpeg_cut_short_is_refused():
    data = pillow_bytes(noise((128, 128), "CMYK"), "JPEG")
    assert_refused_as_damaged(data[: len(data) // 2] + b"\xff\xd9", "premature end")


def test_progressive_jpeg_cut_between_scans_is_refused():
    """libjpeg shows such a file blurred (the later scans missing) without a warning."""
    data = pillow_bytes(noise((64, 64)), "JPEG", quality=90, progressive=True)
    scans = [i for i in range(len(data)) if data[i:i + 2] == b"\xff\xda"]
    assert len(scans) > 3
    assert_refused_as_damaged(data[:scans[3]] + b"\xff\xd9", "progressive scans stop")


# ------------------------------------------------------------------------------------------------ PNG


def test_png_declaring_a_million_pixels_wide_from_a_tiny_file_is_refused_at_once():
    """Like the issue's 638-byte file that decoded to 1,048,616x48: a complete zlib stream far too short."""
    rows = rgb_rows(np.asarray(noise((48, 4))))
    data = png_file(1_048_616, 48, rows)
    assert len(data) < 1000
    started = time.perf_counter()
    assert_refused_as_damaged(data, "image data ends early", "1048616x48")
    assert time.perf_counter() - started < 0.5


def test_png_whose_image_data_stops_halfway_is_refused():
    pixels = np.asarray(noise((64, 64)))
    assert_refused_as_damaged(png_file(64, 64, rgb_rows(pixels[:32])), "image data ends early (50%")


def test_png_with_more_image_data_than_its_header_declares_is_refused():
    pixels = np.asarray(noise((64, 64)))
    assert_refused_as_damaged(png_file(64, 32, rgb_rows(pixels)), "longer than its 64x32 header")


def test_png_without_its_iend_chunk_is_refused():
    data = pillow_bytes(noise(), "PNG")
    assert data.endswith(png_chunk(b"IEND", b""))
    assert_refused_as_damaged(data[:-12], "ends before its IEND chunk")


@pytest.mark.parametrize("chunk", [b"IHDR", b"tEXt", b"IDAT", b"zTXt", b"IEND"])
def test_png_chunk_with_a_bad_crc_is_refused(chunk):
    """Pillow checks no CRC after the first IDAT, nor ancillary ones; a text chunk sits on each side."""
    pixels = np.asarray(noise((16, 16)))
    data = bytearray(png_file(16, 16, rgb_rows(pixels), extra_chunks=[png_chunk(b"tEXt", b"Title\x00x")]))
    data[-12:-12] = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"after the pixels"))
    start = data.index(chunk) - 4
    (length,) = struct.unpack_from(">I", data, start)
    data[start + 8 + length] ^= 0x01  # the first byte of the chunk's CRC
    assert_refused_as_damaged(bytes(data), f"{chunk.decode()} chunk", "CRC")


def test_palette_png_without_its_palette_is_refused():
    pixels = np.zeros((4, 4), np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    assert_refused_as_damaged(png_file(4, 4, rows, colour_type=3), "without a PLTE chunk")


def test_png_with_a_second_ihdr_is_refused():
    pixels = np.asarray(noise((16, 16)))
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    assert_refused_as_damaged(png_file(16, 16, rgb_rows(pixels), extra_chunks=[ihdr]), "second IHDR")


# ------------------------------------------------------------------------------------------------ TIFF


def test_lzw_tiff_cut_inside_its_strip_is_refused():
    """Our own writer puts the directory first, so a cut leaves it whole and shortens the LZW strips."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode_image(np.asarray(noise((64, 64))) / 255, None, "tiff", icc_profile=srgb)
    assert read_image(data).rgb.shape == (64, 64, 3)
    assert_refused_as_damaged(data[:-100], "runs past the end of the file")


def test_tiff_whose_directory_is_cut_off_is_refused():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = pillow_bytes(noise((32, 32)), "TIFF", compression="tiff_lzw", icc_profile=srgb)
    assert data.endswith(srgb[-100:])  # the profile is the last thing in the file
    assert_refused_as_damaged(data[:-200], "directory points past the end")


def test_multi_page_tiff_with_a_later_page_cut_short_is_refused():
    pages = [noise((32, 32)) for _ in range(3)]
    data = pillow_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert_refused_as_damaged(data[:-500], "page 3")


# ------------------------------------------------------------------------------------------------ pages


@pytest.mark.parametrize(("fmt", "options", "phrase"), [
    ("TIFF", {}, "multi-page TIFF (3 pages): upscaled the first page only"),
    ("TIFF", {"compression": "tiff_lzw"}, "multi-page TIFF (3 pages): upscaled the first page only"),
    ("WEBP", {"lossless": True}, "animated WebP (3 frames): upscaled the first frame only"),
    ("PNG", {}, "animated PNG (3 frames): upscaled the first frame only"),
])
def test_only_the_first_page_or_frame_is_read_and_that_is_said(fmt, options, phrase):
    pages = [Image.new("RGB", (32, 24), colour) for colour in ("red", "lime", "blue")]
    decoded = read_image(pillow_bytes(pages[0], fmt, save_all=True, append_images=pages[1:], **options))
    np.testing.assert_allclose(decoded.rgb.mean((0, 1)), [1, 0, 0], atol=0.01)
    assert any(phrase in note for note in decoded.notes), decoded.notes


# ------------------------------------------------------------------------------------------------ ICC


def icc_profile(device_class, colour_space, pcs, tags):
    """An ICC v2 profile from (signature, tag data) pairs."""
    offset, table, body = 128 + 4 + 12 * len(tags), struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    d50 = b"".join(struct.pack(">i", round(v * 65536)) for v in (0.9642, 1.0, 0.8249))
    header = (struct.pack(">I4sI4s4s4s", offset + len(body), b"\0" * 4, 0x02100000, device_class, colour_space, pcs)
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + d50 + b"\0" * 48)
    return header + table + body


def paper_cmyk_profile(paper_srgb):
    """A tiny print profile: paper of colour `paper_srgb` and inks that multiply its light (2-point CLUT to XYZ)."""
    paper = srgb_decode(np.asarray(paper_srgb) / 255)
    corners = [SRGB_TO_XYZ_D50 @ (paper * (1 - np.array([c, m, y])) * (1 - k))
               for c, m, y, k in itertools.product((0, 1), repeat=4)]  # the first channel varies slowest
    identity = b"".join(struct.pack(">i", 65536 * (i == j)) for i in range(3) for j in range(3))
    ramp = struct.pack(">HH", 0, 65535)
    lut = (b"mft2\0\0\0\0" + bytes([4, 3, 2, 0]) + identity + struct.pack(">HH", 2, 2) + ramp * 4
           + np.round(np.asarray(corners) * 32768).astype(">u2").tobytes() + ramp * 3)  # XYZ as u1Fixed15
    white = b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(v * 65536)) for v in (0.9642, 1.0, 0.8249))
    description = b"desc\0\0\0\0" + struct.pack(">I", 6) + b"paper\0" + b"\0" * 80
    return icc_profile(b"prtr", b"CMYK", b"XYZ ", [(b"desc", description), (b"wtpt", white), (b"A2B0", lut)])


def test_cmyk_jpeg_is_converted_through_its_embedded_profile():
    """Plain conversion makes cyan ink (0,255,255) and 50% black mid grey; on this cream paper they are not."""
    cream = srgb_decode(np.asarray((255, 240, 200)) / 255)
    image = Image.new("CMYK", (32, 16), (255, 0, 0, 0))
    image.paste((0, 0, 0, 128), (16, 0, 32, 16))  # half black on the right
    decoded = read_image(pillow_bytes(image, "JPEG", quality=95, icc_profile=paper_cmyk_profile((255, 240, 200))))
    np.testing.assert_allclose(decoded.rgb[8, 4], srgb_encode(cream * [0, 1, 1]), atol=3 / 255)
    np.testing.assert_allclose(decoded.rgb[8, 28], srgb_encode(cream * (1 - 128 / 255)), atol=3 / 255)
    assert describe(decoded.icc_profile) == "sRGB built-in"  # the pixels are sRGB now, and an output says so


GAMMA_18 = grey_profile(1.8, "Gray Gamma 1.8")


def test_grey_png_with_a_gamma_18_profile_is_converted_to_srgb():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    decoded = read_image(pillow_bytes(Image.fromarray(levels), "PNG", icc_profile=GAMMA_18))
    expected = srgb_encode((levels / 255) ** 1.8)
    for channel in range(3):
        np.testing.assert_allclose(decoded.rgb[..., channel], expected, atol=1.5 / 255)
    assert describe(decoded.icc_profile) == "sRGB built-in"


def test_sixteen_bit_grey_with_a_profile_is_converted_at_sixteen_bits():
    levels = (np.arange(4096, dtype=np.uint32) * 16 + 7).astype(np.uint16).reshape(64, 64)
    decoded = read_image(pillow_bytes(Image.fromarray(levels), "PNG", icc_profile=GAMMA_18))
    assert decoded.bit_depth == 16
    expected = srgb_encode((levels / 65535) ** 1.8)
    np.testing.assert_allclose(decoded.rgb[..., 1], expected, atol=6e-3)  # littlecms' deep shadows
    above_the_shadows = levels > 4096
    np.testing.assert_allclose(decoded.rgb[..., 1][above_the_shadows], expected[above_the_shadows], atol=1e-3)
    assert np.all(np.diff(decoded.rgb[..., 1].ravel()[2048:]) > 0)  # 16 input levels apart stay apart


def test_grey_alpha_png_with_a_profile_keeps_its_alpha():
    grey_alpha = Image.merge("LA", [Image.new("L", (8, 8), 64), Image.new("L", (8, 8), 200)])
    decoded = read_image(pillow_bytes(grey_alpha, "PNG", icc_profile=GAMMA_18))
    np.testing.assert_allclose(decoded.rgb[0, 0], srgb_encode((64 / 255) ** 1.8), atol=1.5 / 255)
    np.testing.assert_allclose(decoded.alpha, 200 / 255)


def test_an_unusable_profile_costs_only_the_colour_management_and_is_said():
    broken = icc_profile(b"prtr", b"CMYK", b"XYZ ", [])  # a CMYK header without any tables
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    decoded = read_image(pillow_bytes(image, "JPEG", quality=95, icc_profile=broken))
    np.testing.assert_allclose(decoded.rgb.mean((0, 1)), [1, 0, 0], atol=0.03)  # Pillow's plain conversion
    assert decoded.icc_profile is None
    assert any("ICC profile cannot be used" in note for note in decoded.notes), decoded.notes

import errno
import io
import os
import resource
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageCms, ImageOps

from dossr_cli import imageio
from dossr_cli.imageio import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    DecodedImage,
    ImageReadError,
    ImageWriteError,
    MetadataWarning,
    encode_image,
    extension,
    format_from_name,
    premultiply,
    read_image,
    unpremultiply,
    upscale_alpha,
    write_atomic,
)

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# jpg/webp at the default quality 95 on a smooth image: mean and largest absolute error allowed
# (measured: jpg 0.003 / 0.017, webp 0.007 / 0.05).
LOSSY_MEAN_ERROR, LOSSY_MAX_ERROR = 0.012, 0.08


def levels(shape, bit_depth=8, seed=0):
    """Random values that are exact 8/16-bit levels, as floats in [0, 1]."""
    top = 255 if bit_depth == 8 else 65535
    return (np.random.default_rng(seed).integers(0, top + 1, shape) / top).astype(np.float32)


def smooth(height=24, width=32):
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    return np.stack([x, y, 0.5 + 0.4 * np.sin(3 * x + 2 * y)], axis=-1).astype(np.float32)


def pillow_bytes(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def opencv_bytes(ext, array):
    ok, encoded = cv2.imencode(ext, array)
    assert ok
    return encoded.tobytes()


def make_exif(orientation=None, make="DossrCam", pixel_size=None):
    exif = Image.Exif()
    exif[271] = make
    if orientation is not None:
        exif[274] = orientation
    if pixel_size is not None:
        exif[0x8769] = {0xA002: pixel_size[0], 0xA003: pixel_size[1]}
    return exif.tobytes()


def exif_of(data):
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.getexif()


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("fmt", ["png", "tiff", "bmp"])
def test_lossless_formats_round_trip_exactly_through_a_file(tmp_path, fmt):
    rgb = levels((9, 13, 3))
    path = tmp_path / f"out{extension(fmt)}"
    write_atomic(path, encode_image(rgb, None, fmt))
    decoded = read_image(path)
    assert decoded.format == fmt and decoded.bit_depth == 8 and decoded.alpha is None
    assert decoded.rgb.dtype == np.float32 and decoded.size == (9, 13)
    np.testing.assert_array_equal(decoded.rgb, rgb)


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_lossy_formats_round_trip_within_tolerance(tmp_path, fmt):
    rgb = smooth()
    path = tmp_path / f"out{extension(fmt)}"
    write_atomic(path, encode_image(rgb, None, fmt))
    decoded = read_image(path)
    assert decoded.format == fmt and decoded.rgb.shape == rgb.shape and decoded.bit_depth == 8
    error = np.abs(decoded.rgb - rgb)
    assert error.mean() < LOSSY_MEAN_ERROR and error.max() < LOSSY_MAX_ERROR


def test_webp_quality_100_is_lossless():
    rgb, alpha = levels((7, 11, 3)), levels((7, 11), seed=1)
    decoded = read_image(encode_image(rgb, alpha, "webp", quality=100))
    np.testing.assert_array_equal(decoded.alpha, alpha)
    visible = alpha > 0  # WebP may rewrite the colour of fully transparent pixels
    np.testing.assert_array_equal(decoded.rgb[visible], rgb[visible])


def test_rounding_is_to_nearest_not_truncation():
    rgb = np.full((2, 2, 3), 0.999 * 200 / 255 + 0.001 * 201 / 255, np.float32)  # just above 200/255
    rgb[0, 0] = 200.6 / 255
    decoded = read_image(encode_image(rgb, None, "png"))
    assert round(decoded.rgb[1, 1, 0] * 255) == 200 and round(decoded.rgb[0, 0, 0] * 255) == 201


@pytest.mark.parametrize(("fmt", "bit_depth"), [("png", 8), ("png", 16), ("tiff", 8), ("tiff", 16), ("webp", 8)])
def test_alpha_round_trips(fmt, bit_depth):
    rgb, alpha = levels((6, 10, 3), bit_depth), levels((6, 10), bit_depth, seed=3)
    decoded = read_image(encode_image(rgb, alpha, fmt, bit_depth=bit_depth, quality=100))
    assert decoded.bit_depth == bit_depth
    np.testing.assert_array_equal(decoded.alpha, alpha)
    np.testing.assert_array_equal(decoded.rgb[alpha > 0], rgb[alpha > 0])


def test_tiff_alpha_is_marked_as_unassociated_alpha():
    data = encode_image(levels((3, 4, 3)), levels((3, 4)), "tiff", bit_depth=16)
    image = Image.open(io.BytesIO(data))
    assert image.tag_v2[338] == (2,)


def test_all_opaque_alpha_is_kept():
    rgb = levels((4, 5, 3))
    decoded = read_image(encode_image(rgb, np.ones((4, 5), np.float32), "png"))
    assert decoded.alpha is not None and (decoded.alpha == 1).all()


# ------------------------------------------------------------------------------------------------ input kinds


def test_rgba_png():
    pixels = (levels((5, 6, 4)) * 255).round().astype(np.uint8)
    decoded = read_image(pillow_bytes(Image.fromarray(pixels, "RGBA"), "PNG"))
    np.testing.assert_array_equal(decoded.rgb * 255, pixels[..., :3])
    np.testing.assert_array_equal(decoded.alpha * 255, pixels[..., 3])


def test_la_png_becomes_grey_rgb_plus_alpha():
    pixels = (levels((5, 6, 2)) * 255).round().astype(np.uint8)
    decoded = read_image(pillow_bytes(Image.fromarray(pixels, "LA"), "PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(decoded.rgb[..., channel] * 255, pixels[..., 0])
    np.testing.assert_array_equal(decoded.alpha * 255, pixels[..., 1])


def test_palette_png_with_transparency():
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([0, 1, 2, 0, 2, 1, 0, 1])
    decoded = read_image(pillow_bytes(image, "PNG", transparency=1))
    np.testing.assert_array_equal(decoded.rgb[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(decoded.rgb[0, 2], [0, 0, 1])
    np.testing.assert_array_equal(decoded.alpha, [[1, 0, 1, 1], [1, 0, 1, 0]])


def test_rgb_png_with_a_colour_key_gets_alpha():
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[0, 0] = (10, 20, 30)
    decoded = read_image(pillow_bytes(Image.fromarray(pixels), "PNG", transparency=(0, 0, 0)))
    np.testing.assert_array_equal(decoded.alpha, [[1, 0], [0, 0]])


def test_greyscale_png_has_no_alpha_and_equal_channels():
    grey = (levels((5, 7)) * 255).round().astype(np.uint8)
    decoded = read_image(pillow_bytes(Image.fromarray(grey), "PNG"))
    assert decoded.alpha is None and decoded.bit_depth == 8
    np.testing.assert_array_equal(decoded.rgb * 255, np.repeat(grey[..., None], 3, axis=2))


def test_cmyk_jpeg_is_converted_to_rgb():
    cyan_magenta = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    decoded = read_image(pillow_bytes(cyan_magenta, "JPEG", quality=95))
    assert decoded.format == "jpg" and decoded.rgb.shape == (16, 16, 3)
    np.testing.assert_allclose(decoded.rgb.mean((0, 1)), [1, 0, 0], atol=0.03)


def test_multi_picture_jpeg_from_a_camera_reads_as_jpg():
    first, second = Image.new("RGB", (8, 8), (200, 30, 30)), Image.new("RGB", (8, 8), (0, 0, 0))
    data = pillow_bytes(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = read_image(data)
    assert decoded.format == "jpg"
    np.testing.assert_allclose(decoded.rgb.mean((0, 1)), np.array([200, 30, 30]) / 255, atol=0.02)


def test_non_rgb_icc_profile_is_not_reported():
    grey_profile = bytearray(SRGB)
    grey_profile[16:20] = b"GRAY"
    data = pillow_bytes(Image.new("L", (4, 4), 128), "JPEG", icc_profile=bytes(grey_profile))
    assert read_image(data).icc_profile is None


# ------------------------------------------------------------------------------------------------ 16 bits

LOW_BYTE_PAIR = (0x1200, 0x1201)  # differ only in the low byte


def sixteen_bit(shape, seed=0):
    values = np.random.default_rng(seed).integers(0, 65536, shape).astype(np.uint16)
    values.flat[0], values.flat[1] = LOW_BYTE_PAIR
    return values


def assert_sixteen_bit(decoded, expected_rgb):
    assert decoded.bit_depth == 16
    np.testing.assert_array_equal(np.rint(decoded.rgb * 65535), expected_rgb)
    low, high = (decoded.rgb[expected_rgb == value] for value in LOW_BYTE_PAIR)
    assert low.size and high.size and low.max() < high.min()


def assert_written_as_sixteen_bit(decoded, expected_rgb):
    for fmt in ("png", "tiff"):
        data = encode_image(decoded.rgb, decoded.alpha, fmt, bit_depth=decoded.bit_depth)
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16
        np.testing.assert_array_equal(raw[..., 2::-1], expected_rgb)
        assert_sixteen_bit(read_image(data), expected_rgb)


def test_sixteen_bit_grey_png():
    grey = sixteen_bit((5, 6))
    image = Image.fromarray(grey)
    assert image.mode == "I;16"
    decoded = read_image(pillow_bytes(image, "PNG"))
    expected = np.repeat(grey[..., None], 3, axis=2)
    assert_sixteen_bit(decoded, expected)
    assert_written_as_sixteen_bit(decoded, expected)


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_sixteen_bit_rgb_made_by_opencv(ext):
    rgb = sixteen_bit((5, 6, 3))
    decoded = read_image(opencv_bytes(ext, rgb[..., ::-1]))
    assert decoded.alpha is None and decoded.format == ext[1:]
    assert_sixteen_bit(decoded, rgb)
    assert_written_as_sixteen_bit(decoded, rgb)


def test_sixteen_bit_rgba_png():
    rgba = sixteen_bit((4, 5, 4))
    decoded = read_image(opencv_bytes(".png", rgba[..., [2, 1, 0, 3]]))
    assert_sixteen_bit(decoded, rgba[..., :3])
    np.testing.assert_array_equal(np.rint(decoded.alpha * 65535), rgba[..., 3])


def raw_png(depth, colour_type, samples, extra_chunks=b""):
    """A PNG written byte by byte, for layouts neither Pillow nor OpenCV writes (16-bit grey+alpha, tRNS)."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra_chunks + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def test_sixteen_bit_grey_alpha_png():
    grey_alpha = sixteen_bit((3, 4, 2))
    grey_alpha[0, :2, 0] = LOW_BYTE_PAIR
    decoded = read_image(raw_png(16, 4, grey_alpha))
    assert_sixteen_bit(decoded, np.repeat(grey_alpha[..., :1], 3, axis=2))
    np.testing.assert_array_equal(np.rint(decoded.alpha * 65535), grey_alpha[..., 1])


@pytest.mark.parametrize("colour_type", [0, 2])  # grey, RGB
def test_sixteen_bit_colour_key_becomes_alpha(colour_type):
    samples = sixteen_bit((3, 4, 1 if colour_type == 0 else 3))
    key = samples[1, 2]
    decoded = read_image(raw_png(16, colour_type, samples, png_chunk(b"tRNS", key.astype(">u2").tobytes())))
    expected_alpha = np.ones((3, 4), np.float32)
    expected_alpha[(samples == key).all(axis=2)] = 0
    assert_sixteen_bit(decoded, np.broadcast_to(samples, (3, 4, 3)))
    np.testing.assert_array_equal(decoded.alpha, expected_alpha)


def test_sixteen_bit_request_falls_back_to_eight_where_the_format_has_no_sixteen():
    rgb = levels((4, 4, 3), 16)
    for fmt in ("jpg", "webp", "bmp"):
        assert read_image(encode_image(rgb, None, fmt, bit_depth=16)).bit_depth == 8


# ------------------------------------------------------------------------------------------------ orientation, metadata


def upright_positions(height, width, orientation):
    """(rows, cols) such that stored[rows, cols] is what Pillow's exif_transpose shows."""
    index = np.zeros((height, width, 3), np.uint8)
    index[..., 0], index[..., 1] = np.mgrid[0:height, 0:width]
    data = pillow_bytes(Image.fromarray(index), "PNG", exif=make_exif(orientation))
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    return upright[..., 0], upright[..., 1]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("fmt", "bit_depth"), [("png", 8), ("png", 16), ("tiff", 8), ("tiff", 16), ("webp", 8)])
def test_exif_orientation_is_applied_like_pillow(fmt, bit_depth, orientation):
    top = 255 if bit_depth == 8 else 65535
    rgb, alpha = levels((3, 5, 3), bit_depth, seed=orientation), levels((3, 5), bit_depth, seed=9) * 0.5 + 0.5
    alpha = np.round(alpha * top) / top
    data = encode_image(rgb, alpha, fmt, bit_depth=bit_depth, quality=100, exif=make_exif(orientation))
    decoded = read_image(data)
    rows, cols = upright_positions(3, 5, orientation)
    np.testing.assert_array_equal(np.rint(decoded.rgb * top), np.rint(rgb[rows, cols] * top))
    np.testing.assert_array_equal(np.rint(decoded.alpha * top), np.rint(alpha[rows, cols] * top))
    exif = Image.Exif()
    exif.load(decoded.exif)
    assert exif[274] == 1 and exif[271] == "DossrCam"


def test_rotated_camera_jpeg_is_upright_and_its_exif_says_so():
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)  # left half red
    original_exif = make_exif(orientation=6)
    decoded = read_image(pillow_bytes(Image.fromarray(pixels), "JPEG", quality=95, exif=original_exif))
    assert decoded.rgb.shape == (32, 16, 3)  # rotated 90 degrees clockwise: the red half is now on top
    assert decoded.rgb[4, 8, 0] > 0.9 and decoded.rgb[4, 8, 1] < 0.1
    assert decoded.rgb[28, 8, 0] < 0.1
    assert len(decoded.exif) == len(original_exif)  # patched in place: nothing else moved
    written = exif_of(encode_image(decoded.rgb, None, "jpg", exif=decoded.exif))
    assert written[274] == 1 and written[271] == "DossrCam"


@pytest.mark.parametrize(("fmt", "bit_depth"), [("png", 8), ("png", 16), ("jpg", 8), ("webp", 8), ("tiff", 8),
                                                ("tiff", 16)])
@pytest.mark.parametrize("metadata", ["all", "icc", "none"])
def test_icc_and_exif_follow_the_metadata_option(fmt, bit_depth, metadata):
    data = encode_image(smooth(8, 8), None, fmt, bit_depth=bit_depth, icc_profile=SRGB, exif=make_exif(),
                        metadata=metadata)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert (image.info.get("icc_profile") == SRGB) == (metadata in ("all", "icc"))
    assert (image.getexif().get(271) == "DossrCam") == (metadata == "all")
    decoded = read_image(data)
    assert decoded.icc_profile == (SRGB if metadata != "none" else None)
    assert (decoded.exif is not None) == (metadata == "all")


def test_metadata_survives_a_read_write_read_cycle():
    first = read_image(encode_image(smooth(6, 6), None, "png", icc_profile=SRGB, exif=make_exif()))
    second = read_image(encode_image(first.rgb, first.alpha, "webp", icc_profile=first.icc_profile, exif=first.exif))
    assert second.icc_profile == SRGB
    assert exif_of(encode_image(second.rgb, None, "tiff", exif=second.exif))[271] == "DossrCam"


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_exif_pixel_size_is_updated_to_the_output_size(fmt):
    data = encode_image(smooth(4, 6), None, fmt, exif=make_exif(pixel_size=(3, 2)))
    sub_ifd = exif_of(data).get_ifd(0x8769)
    assert (sub_ifd[0xA002], sub_ifd[0xA003]) == (6, 4)


def test_orientation_stored_in_an_unusual_type_is_still_reset():
    # Orientation as SLONG (type 9), which the in-place patch does not touch: the fallback rewrites.
    tiff = b"II*\x00" + struct.pack("<IHHHII", 8, 1, 274, 9, 1, 6) + struct.pack("<I", 0)
    pixels = (levels((2, 3, 3)) * 255).round().astype(np.uint8)
    image_bytes = pillow_bytes(Image.fromarray(pixels), "PNG")
    png = image_bytes[:33] + png_chunk(b"eXIf", tiff) + image_bytes[33:]
    decoded = read_image(png)
    np.testing.assert_array_equal(decoded.rgb * 255, np.rot90(pixels, -1))
    exif = Image.Exif()
    exif.load(decoded.exif)
    assert exif[274] == 1


def test_a_failing_metadata_copy_does_not_fail_the_write():
    corrupt = b"Exif\x00\x00MM\x00*\x00\x00\xff\xff\xff\xff"  # IFD0 offset points past the end
    with pytest.warns(MetadataWarning, match="corrupt"):
        data = encode_image(smooth(4, 4), None, "tiff", icc_profile=SRGB, exif=corrupt)
    decoded = read_image(data)
    assert decoded.rgb.shape == (4, 4, 3) and decoded.exif is None and decoded.icc_profile == SRGB
    too_long = make_exif(make="x" * 70_000)  # JPEG's APP1 holds at most 64 KiB: the encoder refuses it
    with pytest.warns(MetadataWarning, match="could not store"):
        data = encode_image(smooth(4, 4), None, "jpg", icc_profile=SRGB, exif=too_long)
    assert read_image(data).rgb.shape == (4, 4, 3)


def test_unusable_metadata_gives_a_warning_not_an_error():
    grey_profile = bytearray(SRGB)
    grey_profile[16:20] = b"GRAY"
    with pytest.warns(MetadataWarning, match="not an RGB profile"):
        data = encode_image(smooth(4, 4), None, "png", icc_profile=bytes(grey_profile))
    assert read_image(data).icc_profile is None
    with pytest.warns(MetadataWarning, match="bmp"):
        encode_image(smooth(4, 4), None, "bmp", icc_profile=SRGB, exif=make_exif())


# ------------------------------------------------------------------------------------------------ alpha maths


def lanczos(plane, size):
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.LANCZOS), dtype=np.float32)


def test_premultiply_round_trip_where_alpha_is_positive():
    rgb, alpha = levels((6, 7, 3)), levels((6, 7), seed=2) * 0.95 + 0.05
    np.testing.assert_allclose(unpremultiply(premultiply(rgb, alpha), alpha), rgb, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, (3, 4, 3), elements=st.floats(-0.5, 1.5, width=32)),
    arrays(np.float32, (3, 4), elements=st.one_of(st.just(0.0), st.floats(0, 1, width=32))),
)
def test_unpremultiply_is_always_finite_and_in_range(rgb_premultiplied, alpha):
    colour = unpremultiply(rgb_premultiplied, alpha)
    assert colour.dtype == np.float32 and np.isfinite(colour).all()
    assert colour.min() >= 0 and colour.max() <= 1


def test_fully_transparent_pixels_stay_finite():
    rgb_premultiplied = np.array([[[0.5, 0.2, 0.0], [0.0, 0.0, 0.0]]], np.float32)
    colour = unpremultiply(rgb_premultiplied, np.array([[0.0, 1e-9]], np.float32))
    assert np.isfinite(colour).all() and (colour == 0).all()


def test_premultiplied_upscaling_leaves_no_hidden_colour_fringe():
    height, width, scale = 4, 8, 4
    rgb = np.zeros((height, width, 3), np.float32)
    rgb[:, :4] = (1, 0, 0)  # opaque red on the left
    rgb[:, 4:] = (0, 1, 0)  # hidden green under transparent pixels on the right
    alpha = np.zeros((height, width), np.float32)
    alpha[:, :4] = 1
    size = (height * scale, width * scale)

    premultiplied = premultiply(rgb, alpha)
    upscaled = np.stack([lanczos(premultiplied[..., c], size) for c in range(3)], axis=-1)
    alpha_up = upscale_alpha(alpha, size)
    colour = unpremultiply(upscaled, alpha_up)

    edge = (alpha_up > 0.02) & (alpha_up < 0.98)
    assert edge.sum() >= 2 * height * scale  # the test really looks at a soft edge
    assert colour[edge][:, 1].max() < 1e-3  # no green leaks out of the transparent side
    assert colour[edge][:, 0].min() > 0.99  # and the edge is not darkened either

    naive = np.stack([lanczos(rgb[..., c], size) for c in range(3)], axis=-1)
    assert naive[edge][:, 1].max() > 0.2  # without premultiplying the green would show


def test_upscale_alpha_size_and_range():
    alpha = np.zeros((3, 5), np.float32)
    alpha[1, 2] = 1
    up = upscale_alpha(alpha, (12, 20))
    assert up.shape == (12, 20) and up.dtype == np.float32 and up.min() >= 0 and up.max() <= 1
    np.testing.assert_allclose(upscale_alpha(np.full((3, 5), 0.25, np.float32), (9, 15)), 0.25, atol=1e-6)


# ------------------------------------------------------------------------------------------------ encoding rules


def test_jpg_and_bmp_composite_alpha_over_white():
    rgb = np.zeros((8, 8, 3), np.float32)
    alpha = np.ones((8, 8), np.float32)
    alpha[:, 4:] = 0
    for fmt in ("jpg", "bmp"):
        decoded = read_image(encode_image(rgb, alpha, fmt))
        assert decoded.alpha is None
        assert decoded.rgb[:, 6:].min() > 0.95 and decoded.rgb[:, :2].max() < 0.05


def test_encode_rejects_what_it_cannot_write():
    rgb = levels((2, 2, 3))
    with pytest.raises(ValueError, match="format"):
        encode_image(rgb, None, "gif")
    with pytest.raises(ValueError, match="quality"):
        encode_image(rgb, None, "jpg", quality=0)
    with pytest.raises(ValueError, match="metadata"):
        encode_image(rgb, None, "png", metadata="some")
    nan = rgb.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ImageWriteError, match="NaN"):
        encode_image(nan, None, "png")
    with pytest.raises(ImageWriteError, match="png or tiff"):
        encode_image(np.zeros((1, 16_384, 3), np.float32), None, "webp")


def test_names_and_extensions():
    assert format_from_name("a/b/photo.JPEG") == "jpg"
    assert format_from_name(Path("scan.tif")) == "tiff"
    assert format_from_name(".webp") == "webp"
    assert format_from_name("notes.txt") is None and format_from_name("README") is None
    assert [extension(f) for f in FORMATS] == [".png", ".jpg", ".webp", ".tiff", ".bmp"]
    assert all(format_from_name(f"x{extension(f)}") == f for f in FORMATS)


# ------------------------------------------------------------------------------------------------ bad inputs


def noise_file(fmt):
    pixels = (levels((64, 64, 3)) * 255).round().astype(np.uint8)
    return pillow_bytes(Image.fromarray(pixels), fmt)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, this is not an image\n")
    with pytest.raises(ImageReadError, match="not an image") as caught:
        read_image(path)
    assert "notes.png" in str(caught.value) and "\n" not in str(caught.value)


def test_bytes_like_input_from_stdin():
    data = encode_image(levels((3, 3, 3)), None, "png")
    assert read_image(bytearray(data)).size == read_image(memoryview(data)).size == (3, 3)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"stdin.*empty"):
        read_image(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_fail_before_any_work(fmt):
    data = noise_file(fmt)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(data[: len(data) * 2 // 3])


def test_declared_size_over_the_limit_is_refused_without_allocating():
    width = height = 100_000
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (3 * width + 1) * 2)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    assert len(bomb) < 2000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="--max-pixels") as caught:
        read_image(bomb)
    assert "100000x100000" in str(caught.value)
    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert peak_growth_mib < 64


@pytest.mark.parametrize(("fmt", "bit_depth"), [("png", 8), ("tiff", 8), ("tiff", 16), ("jpg", 8)])
def test_max_pixels_is_ours_not_pillows(monkeypatch, fmt, bit_depth):
    data = encode_image(smooth(64, 64), None, fmt, bit_depth=bit_depth)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would call 4096 px a bomb
    assert read_image(data, max_pixels=None).size == (64, 64)
    assert read_image(data, max_pixels=5000).size == (64, 64)
    with pytest.raises(ImageReadError, match="--max-pixels"):
        read_image(data, max_pixels=4000)
    assert Image.MAX_IMAGE_PIXELS == 100
    assert DEFAULT_MAX_PIXELS >= 61_000_000  # today's largest full-frame camera files pass


def test_folder_missing_file_and_unsupported_format(tmp_path):
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="GIF"):
        read_image(pillow_bytes(Image.new("RGB", (4, 4)), "GIF"))


@pytest.mark.skipif(sys.platform == "win32", reason="chmod does not remove read access on Windows")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(noise_file("PNG"))
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user (root) reads a file with mode 000 anyway")
    with pytest.raises(ImageReadError, match="permission"):
        read_image(path)


# ------------------------------------------------------------------------------------------------ atomic writes


def leftovers(folder, keep):
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in keep)


def test_write_refuses_an_existing_file_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    with pytest.raises(ImageWriteError, match="--overwrite"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and leftovers(tmp_path, {"out.png"}) == []


def test_overwrite_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    path.chmod(0o640)
    write_atomic(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path, {"out.png"}) == []


def test_new_file_is_written(tmp_path):
    write_atomic(str(tmp_path / "a.webp"), b"data")
    assert (tmp_path / "a.webp").read_bytes() == b"data" and leftovers(tmp_path, {"a.webp"}) == []


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_final_step_leaves_no_temporary_file(tmp_path, monkeypatch, error, overwrite):
    path = tmp_path / "out.png"
    if overwrite:
        path.write_bytes(b"old")
    monkeypatch.setattr(os, "replace" if overwrite else "link", _raise(error))
    with pytest.raises(ImageWriteError if isinstance(error, OSError) else KeyboardInterrupt):
        write_atomic(path, b"new", overwrite=overwrite)
    assert leftovers(tmp_path, {"out.png"}) == []
    assert path.read_bytes() == b"old" if overwrite else not path.exists()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_data_write_leaves_nothing(tmp_path, monkeypatch, error):
    monkeypatch.setattr(os, "write", _raise(error))
    with pytest.raises(ImageWriteError if isinstance(error, OSError) else KeyboardInterrupt) as caught:
        write_atomic(tmp_path / "out.png", b"new")
    assert leftovers(tmp_path, set()) == []
    if isinstance(error, OSError):
        assert "disk is full" in str(caught.value)


def test_failed_fsync_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _raise(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(ImageWriteError, match="Input/output error"):
        write_atomic(tmp_path / "out.png", b"new")
    assert leftovers(tmp_path, set()) == []


def test_losing_a_race_for_the_name_is_reported(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    real_link = os.link

    def someone_else_wins(source, target):
        Path(target).write_bytes(b"theirs")
        real_link(source, target)

    monkeypatch.setattr(os, "link", someone_else_wins)
    with pytest.raises(ImageWriteError, match="already exists"):
        write_atomic(path, b"mine")
    assert path.read_bytes() == b"theirs" and leftovers(tmp_path, {"out.png"}) == []


def test_missing_folder_and_folder_as_target(tmp_path):
    with pytest.raises(ImageWriteError, match="does not exist"):
        write_atomic(tmp_path / "nope" / "out.png", b"x")
    with pytest.raises(ImageWriteError, match="is a folder"):
        write_atomic(tmp_path, b"x", overwrite=True)


def test_unwritable_folder_simulated(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "open", _raise(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(ImageWriteError, match="permission denied"):
        write_atomic(tmp_path / "out.png", b"x")


@pytest.mark.skipif(sys.platform == "win32", reason="chmod does not make a folder read-only on Windows")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user (root) writes into a 0o500 folder anyway; the simulated test covers the message")
        with pytest.raises(ImageWriteError, match="permission denied"):
            write_atomic(folder / "out.png", b"x")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_decoded_image_is_frozen():
    decoded = read_image(encode_image(levels((2, 2, 3)), None, "png"))
    assert isinstance(decoded, DecodedImage)
    with pytest.raises(AttributeError):
        decoded.format = "jpg"
    assert imageio.FORMATS == ("png", "jpg", "webp", "tiff", "bmp")

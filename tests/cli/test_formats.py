"""Input kinds through `dossr upscale`: alpha, 16 bits, grey, palette, CMYK, ICC and EXIF reach the output file."""

from __future__ import annotations

import io
import struct
import time

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from .helpers import decode, save, smooth_image

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE = 0x010F


def exif_with_make(make: str = "DossrCam") -> bytes:
    exif = Image.Exif()
    exif[MAKE] = make
    return exif.tobytes()


def sixteen_bit_rgb(height: int = 16, width: int = 16) -> np.ndarray:
    """Smooth 16-bit colour whose low bytes matter (an 8-bit detour would zero them)."""
    rgb = np.asarray(smooth_image(height, width), dtype=np.uint16) * 257
    return rgb + np.arange(height * width * 3, dtype=np.uint16).reshape(height, width, 3) % 200


def read_unchanged(path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, f"{path} does not decode"
    return pixels


def test_rgba_keeps_its_alpha_channel(dossr, tmp_path):
    rgba = smooth_image(16, 16).convert("RGBA")
    alpha = np.zeros((16, 16), np.uint8)
    alpha[:, 8:] = 255  # left half transparent, right half opaque
    rgba.putalpha(Image.fromarray(alpha))
    source = save(rgba, tmp_path / "rgba.png")
    assert dossr("upscale", source, "-o", tmp_path / "out.png").code == 0
    out = decode(tmp_path / "out.png")
    assert out.mode == "RGBA" and out.size == (64, 64)
    upscaled_alpha = np.asarray(out)[..., 3]
    assert (upscaled_alpha[:, :16] == 0).all() and (upscaled_alpha[:, 48:] == 255).all()  # Lanczos rings near the edge


def test_rgba_to_jpg_is_flattened_with_a_note(dossr, tmp_path):
    rgba = smooth_image(16, 16).convert("RGBA")
    rgba.putalpha(128)
    source = save(rgba, tmp_path / "rgba.png")
    result = dossr("upscale", source, "-o", tmp_path / "out.jpg")
    assert result.code == 0
    assert "note:" in result.stderr and "transparency flattened" in result.stderr
    assert decode(tmp_path / "out.jpg").mode == "RGB"


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_sixteen_bit_colour_stays_sixteen_bit(dossr, tmp_path, ext):
    source = tmp_path / f"deep{ext}"
    assert cv2.imwrite(str(source), sixteen_bit_rgb()[..., ::-1])
    out = tmp_path / f"out{ext}"
    result = dossr("upscale", source, "-o", out)
    assert result.code == 0, result.stderr
    pixels = read_unchanged(out)
    assert pixels.dtype == np.uint16 and pixels.shape == (64, 64, 3)
    assert np.count_nonzero(pixels % 257)  # not 8-bit values stretched to 16 bits


def test_sixteen_bit_grey_stays_sixteen_bit(dossr, tmp_path):
    grey = sixteen_bit_rgb()[..., 0]
    source = save(Image.fromarray(grey), tmp_path / "grey16.png")
    assert decode(source).mode.startswith("I")
    assert dossr("upscale", source, "-o", tmp_path / "out.png").code == 0
    pixels = read_unchanged(tmp_path / "out.png")
    assert pixels.dtype == np.uint16 and pixels.shape[:2] == (64, 64)


def test_sixteen_bit_to_jpg_says_it_becomes_eight_bit(dossr, tmp_path):
    source = tmp_path / "deep.png"
    assert cv2.imwrite(str(source), sixteen_bit_rgb()[..., ::-1])
    result = dossr("upscale", source, "-o", tmp_path / "out.jpg")
    assert result.code == 0 and "16-bit input written as 8-bit" in result.stderr


def test_greyscale(dossr, tmp_path):
    source = save(smooth_image(16, 16).convert("L"), tmp_path / "grey.png")
    assert dossr("upscale", source, "-o", tmp_path / "out.png").code == 0
    out = decode(tmp_path / "out.png")
    assert out.size == (64, 64) and "A" not in out.mode


def test_palette_with_transparency_gets_alpha(dossr, tmp_path):
    palette = smooth_image(16, 16).quantize(8)
    source = save(palette, tmp_path / "palette.png", transparency=0)
    assert decode(source).mode == "P"
    assert dossr("upscale", source, "-o", tmp_path / "out.png").code == 0
    out = decode(tmp_path / "out.png")
    assert out.mode == "RGBA" and out.size == (64, 64)
    assert np.asarray(out)[..., 3].min() == 0


def test_cmyk_jpeg(dossr, tmp_path):
    source = save(smooth_image(16, 16).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    assert decode(source).mode == "CMYK"
    result = dossr("upscale", source)
    assert result.code == 0, result.stderr
    out = decode(tmp_path / "cmyk_x4.jpg")
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (64, 64)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tiff"])
@pytest.mark.parametrize("metadata", ["all", "icc", "none"])
def test_icc_and_exif_follow_the_metadata_option(dossr, tmp_path, ext, metadata):
    source = save(smooth_image(16, 16), tmp_path / f"tagged{ext}", icc_profile=SRGB, exif=exif_with_make())
    assert decode(source).info.get("icc_profile") == SRGB and decode(source).getexif().get(MAKE) == "DossrCam"
    out = tmp_path / f"out{ext}"
    result = dossr("upscale", source, "-o", out, "--metadata", metadata)
    assert result.code == 0, result.stderr
    image = decode(out)
    assert image.info.get("icc_profile") == (SRGB if metadata in ("all", "icc") else None)
    assert image.getexif().get(MAKE) == ("DossrCam" if metadata == "all" else None)


def test_bmp_output_says_it_drops_the_metadata(dossr, tmp_path):
    source = save(smooth_image(16, 16), tmp_path / "tagged.jpg", icc_profile=SRGB, exif=exif_with_make())
    result = dossr("upscale", source, "--format", "bmp")
    assert result.code == 0 and "bmp cannot hold ICC/EXIF" in result.stderr
    assert decode(tmp_path / "tagged_x4.bmp").size == (64, 64)


def test_multi_page_tiff_upscales_its_first_page_and_says_so(dossr, tmp_path):
    first, second = smooth_image(16, 16), Image.new("RGB", (24, 24), "blue")
    source = save(first, tmp_path / "pages.tiff", save_all=True, append_images=[second])
    result = dossr("upscale", source, "-o", tmp_path / "out.png")
    assert result.code == 0, result.stderr
    assert "note:" in result.stderr and "multi-page TIFF (2 pages): upscaled the first page only" in result.stderr
    assert decode(tmp_path / "out.png").size == (64, 64)


def test_jpeg_whose_header_says_8000x8000_is_refused_at_once(dossr, tmp_path):
    """The issue's 661-byte repro: one line, exit 1, nothing written, before any network runs."""
    data = bytearray(save(Image.new("RGB", (48, 40), "gray"), tmp_path / "small.jpg").read_bytes())
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, 8000, 8000)
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    started = time.perf_counter()
    result = dossr("upscale", tmp_path / "bomb.jpg", "-o", tmp_path / "out.png")
    assert time.perf_counter() - started < 30  # it used to run a 32000x32000 upscale
    assert result.code == 1 and len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert "truncated or corrupt" in result.stderr and "re-download" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_cmyk_jpeg_with_a_profile_comes_out_tagged_srgb(dossr, tmp_path):
    """Its pixels were converted through the CMYK profile (tests/test_imageio_strict.py checks the colours)."""
    from test_imageio_strict import paper_cmyk_profile  # tests/ is on the path, as for conftest

    source = save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cyan.jpg", quality=95,
                  icc_profile=paper_cmyk_profile((255, 240, 200)))
    result = dossr("upscale", source, "-o", tmp_path / "out.png")
    assert result.code == 0, result.stderr
    profile = decode(tmp_path / "out.png").info.get("icc_profile")
    assert profile and ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.profile_description == "sRGB built-in"

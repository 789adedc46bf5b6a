"""What a job may cost is checked up front, from the command line: one line, exit 1, nothing written;
and usage errors come back before torch is even imported."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import pytest
from PIL import Image

from .helpers import files_in, save, smooth_image, subprocess_env
from .test_errors import assert_one_line_failure


def bomb_jpeg() -> bytes:
    """The issue's 661-byte JPEG: 48x40 of pixel data under a frame header that says 8000x8000."""
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), "gray").save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, 8000, 8000)
    return bytes(data)


def test_an_output_over_the_limit_is_refused_naming_the_option(dossr, tmp_path):
    source = save(smooth_image(64, 64), tmp_path / "lr.png")
    result = dossr("upscale", source, "--max-output-pixels", "10000")
    assert_one_line_failure(result, 1, "lr.png", "256x256 = 0.1 Mpx", "--max-output-pixels 65536")
    assert files_in(tmp_path) == {"lr.png"}
    assert dossr("upscale", source, "--max-output-pixels", "65536").code == 0


def test_the_frame_header_bomb_is_refused_and_nothing_is_written(dossr, tmp_path):
    (tmp_path / "bomb.jpg").write_bytes(bomb_jpeg())
    result = dossr("upscale", tmp_path / "bomb.jpg")
    assert result.code == 1 and "Traceback" not in result.stderr and len(result.error_lines) == 1, result.stderr
    assert files_in(tmp_path) == {"bomb.jpg"}


def test_a_webp_output_too_wide_is_refused_before_the_compute(dossr, tmp_path):
    source = save(smooth_image(16, 4097), tmp_path / "wide.png")
    result = dossr("upscale", source, "-o", tmp_path / "wide.webp")
    assert_one_line_failure(result, 1, "16388x64", "webp holds at most 16383 pixels a side")
    assert files_in(tmp_path) == {"wide.png"}


def test_a_batch_records_an_image_too_large_and_finishes_the_rest(dossr, tmp_path):
    save(smooth_image(16, 16), tmp_path / "in" / "small.png")
    save(smooth_image(64, 64), tmp_path / "in" / "large.png")
    result = dossr("batch", tmp_path / "in", "-o", tmp_path / "out", "--max-output-pixels", "5000")
    assert result.code == 1
    assert [line for line in result.error_lines if "large.png" in line and "--max-output-pixels" in line]
    assert files_in(tmp_path / "out") >= {"small_x4.png"} and "large_x4.png" not in files_in(tmp_path / "out")


@pytest.mark.parametrize("args", [["upscale", "x.png", "--scale", "0"], ["batch", ".", "--steps", "0"],
                                  ["upscale", "x.png", "--seed", str(2**64)], ["upscale", "x.png", "--dtype", "fp8"]])
def test_usage_errors_come_before_torch_is_imported(args, tmp_path):
    probe = ("import sys\nfrom dossr_cli.cli.app import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print(e.code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env(), timeout=120, check=False)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.startswith("dossr: error: ") and len(done.stderr.strip().splitlines()) == 1

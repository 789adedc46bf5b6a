"""`dossr upscale`: every option does what its help says (in process, on the tiny weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from .helpers import decode, files_in, save, smooth_image


@pytest.fixture
def lr(tmp_path):
    """A 16x16 input in its own folder."""
    return save(smooth_image(16, 16), tmp_path / "in" / "lr.png")


def test_default_writes_x4_beside_the_input_and_says_so(dossr, lr):
    result = dossr("upscale", lr)
    assert result.code == 0, result.stderr
    out = lr.with_name("lr_x4.png")
    assert decode(out).size == (64, 64)
    assert f"{lr} -> {out} (64x64" in result.stderr
    assert result.stdout == b""  # stdout is for data only


def test_fractional_scale(dossr, tmp_path):
    source = save(smooth_image(32, 32), tmp_path / "lr.png")
    result = dossr("upscale", source, "--scale", "2.5")
    assert result.code == 0, result.stderr
    assert decode(tmp_path / "lr_x2.5.png").size == (80, 80)


@pytest.mark.parametrize(("options", "size", "name"), [
    (["--width", "40"], (40, 32), "lr_40x.png"),  # the input is 20 wide, 16 high: aspect kept
    (["--height", "48"], (60, 48), "lr_x48.png"),
    (["--width", "50", "--height", "30"], (50, 30), "lr_50x30.png"),
])
def test_width_and_height(dossr, tmp_path, options, size, name):
    source = save(smooth_image(16, 20), tmp_path / "lr.png")
    result = dossr("upscale", source, *options)
    assert result.code == 0, result.stderr
    assert decode(tmp_path / name).size == size


# The options that decide the pixels: each one changes them, and the JSON result echoes it. Four
# steps: at three, order 3's only second difference divides by lambda at the top of the schedule
# (~6.5e5), so orders 2 and 3 differ by ~1e-6 and give the same 8-bit pixels.
BASE = {"steps": 4, "order": 3, "t1": 500, "seed": 42, "color_fix": "wavelet"}
VARIANTS = [("steps", 2), ("order", 1), ("order", 2), ("t1", 300), ("seed", 7), ("color_fix", "adain"),
            ("color_fix", "none")]


def upscale_json(dossr, source, out, **params):
    options = [arg for key, value in params.items() for arg in (f"--{key.replace('_', '-')}", value)]
    result = dossr("upscale", source, "-o", out, "--json", "--overwrite", *options)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout), out.read_bytes()


def test_same_options_give_the_same_bytes(dossr, lr, tmp_path):
    first = upscale_json(dossr, lr, tmp_path / "a.png", **BASE)
    second = upscale_json(dossr, lr, tmp_path / "b.png", **BASE)
    assert first == ({**second[0], "output": first[0]["output"], "seconds": first[0]["seconds"]}, second[1])


@pytest.mark.parametrize(("key", "value"), VARIANTS, ids=[f"{k}={v}" for k, v in VARIANTS])
def test_each_pixel_option_changes_the_result(dossr, lr, tmp_path, key, value):
    base_record, base_bytes = upscale_json(dossr, lr, tmp_path / "base.png", **BASE)
    record, data = upscale_json(dossr, lr, tmp_path / "variant.png", **{**BASE, key: value})
    assert record["parameters"][key] == value and base_record["parameters"][key] == BASE[key]
    assert decode(data).size == (64, 64)
    assert not np.array_equal(np.asarray(decode(data)), np.asarray(decode(base_bytes)))


def test_seed_is_reported_per_image_and_derived_from_the_run_seed(dossr, lr, tmp_path):
    other = save(smooth_image(16, 16, "other"), tmp_path / "other.png")
    result = dossr("upscale", lr, other, "-o", tmp_path, "--json", "--seed", "5")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["parameters"]["seed"] for r in records] == [5, 5]
    assert records[0]["seed"] != records[1]["seed"]  # the image's own seed: run seed + its pixels


def test_device_cpu_and_dtype_fp32(dossr, lr, tmp_path):
    explicit = dossr("upscale", lr, "-o", tmp_path / "explicit.png", "--device", "cpu", "--dtype", "fp32")
    assert explicit.code == 0, explicit.stderr
    assert decode(tmp_path / "explicit.png").size == (64, 64)


def test_weights_decide_the_pixels(dossr, lr, tmp_path, other_weights):
    assert dossr("upscale", lr, "-o", tmp_path / "tiny.png").code == 0
    assert dossr("upscale", lr, "-o", tmp_path / "other.png", "--weights", other_weights).code == 0
    tiny, other = (np.asarray(decode(tmp_path / name)) for name in ("tiny.png", "other.png"))
    assert tiny.shape == other.shape and not np.array_equal(tiny, other)


def test_weights_folder_that_is_not_a_bundle_is_refused(dossr, lr, tmp_path):
    (tmp_path / "not-a-bundle").mkdir()
    result = dossr("upscale", lr, "-o", tmp_path / "x.png", "--weights", tmp_path / "not-a-bundle")
    assert result.code == 1 and len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("option", "extension", "pillow_format"), [
    ("png", ".png", "PNG"), ("jpg", ".jpg", "JPEG"), ("jpeg", ".jpg", "JPEG"), ("webp", ".webp", "WEBP"),
    ("tiff", ".tiff", "TIFF"), ("tif", ".tiff", "TIFF"), ("bmp", ".bmp", "BMP"),
])
def test_format(dossr, lr, option, extension, pillow_format):
    result = dossr("upscale", lr, "--format", option)
    assert result.code == 0, result.stderr
    image = decode(lr.with_name(f"lr_x4{extension}"))
    assert image.format == pillow_format and image.size == (64, 64)


def test_output_name_decides_the_format(dossr, lr, tmp_path):
    assert dossr("upscale", lr, "-o", tmp_path / "out.webp").code == 0
    assert decode(tmp_path / "out.webp").format == "WEBP"


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_quality(dossr, lr, tmp_path, fmt):
    sizes = {}
    for quality in (5, 95):
        out = tmp_path / f"q{quality}.{fmt}"
        assert dossr("upscale", lr, "-o", out, "--quality", quality).code == 0
        sizes[quality] = out.stat().st_size
        decode(out)
    assert sizes[5] < sizes[95]


def test_suffix(dossr, lr):
    assert dossr("upscale", lr, "--suffix", "_big").code == 0
    assert decode(lr.with_name("lr_big.png")).size == (64, 64)


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(dossr, lr):
    out = lr.with_name("lr_x4.png")
    out.write_bytes(b"precious")
    refused = dossr("upscale", lr)
    assert refused.code == 1 and out.read_bytes() == b"precious"
    assert refused.error_lines == [f"dossr: error: {lr}: {out} already exists (pass --overwrite to replace it)"]
    replaced = dossr("upscale", lr, "--overwrite")
    assert replaced.code == 0 and decode(out).size == (64, 64)
    assert files_in(lr.parent) == {"lr.png", "lr_x4.png"}


def test_max_pixels(dossr, lr, tmp_path):
    refused = dossr("upscale", lr, "-o", tmp_path / "small.png", "--max-pixels", 255)  # 16x16 = 256
    assert refused.code == 1 and "--max-pixels" in refused.stderr and len(refused.error_lines) == 1
    assert not (tmp_path / "small.png").exists()
    assert dossr("upscale", lr, "-o", tmp_path / "small.png", "--max-pixels", 256).code == 0


def test_compare_is_input_nearest_neighbour_then_gap_then_result(dossr, lr, tmp_path):
    result = dossr("upscale", lr, "-o", tmp_path / "out.png", "--compare", tmp_path / "side.png")
    assert result.code == 0, result.stderr
    side = np.asarray(decode(tmp_path / "side.png").convert("RGB"))
    out = np.asarray(decode(tmp_path / "out.png"))
    gap = max(2, 64 // 64)
    assert side.shape == (64, 64 + gap + 64, 3)
    nearest = np.asarray(Image.open(lr).resize((64, 64), Image.NEAREST))
    np.testing.assert_array_equal(side[:, :64], nearest)
    assert (side[:, 64:64 + gap] == 255).all()
    np.testing.assert_array_equal(side[:, 64 + gap:], out)


def test_compare_folder_for_many_inputs(dossr, lr, tmp_path):
    other = save(smooth_image(16, 24, "other"), tmp_path / "in" / "wide.png")
    (tmp_path / "cmp").mkdir()
    result = dossr("upscale", lr, other, "-o", tmp_path, "--compare", tmp_path / "cmp", "--scale", 2)
    assert result.code == 0, result.stderr
    assert decode(tmp_path / "cmp" / "lr_compare.png").size == (32 + 2 + 32, 32)
    assert decode(tmp_path / "cmp" / "wide_compare.png").size == (48 + 2 + 48, 32)


def test_json_lines_parse_and_report_failures(dossr, lr, tmp_path):
    other = save(smooth_image(16, 24, "other"), tmp_path / "in" / "wide.png")
    result = dossr("upscale", lr, tmp_path / "missing.png", other, "-o", tmp_path, "--json")
    assert result.code == 1
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    by_input = {record["input"]: record for record in records}
    assert len(records) == 3
    assert by_input[str(tmp_path / "missing.png")] == {"input": str(tmp_path / "missing.png"), "status": "failed",
                                                        "error": "no such file"}
    done = by_input[str(lr)]
    assert done["status"] == "ok" and done["size"] == [64, 64] and done["input_size"] == [16, 16]
    assert done["output"] == str(tmp_path / "lr_x4.png") and done["format"] == "png"
    assert by_input[str(other)]["size"] == [96, 64]


def test_json_keeps_file_names_exactly(dossr, tmp_path):
    """Rich would turn ":smile:" into an emoji and "[b]" into markup: names must reach stdout as they are."""
    source = save(smooth_image(16, 16), tmp_path / "a:smile:[b]x.png")
    result = dossr("upscale", source, "--json")
    assert result.code == 0
    assert json.loads(result.stdout)["input"] == str(source)
    assert str(source) in dossr("upscale", source).stderr  # and in messages (output exists by now)


def test_quiet_success_prints_nothing(dossr, lr, tmp_path):
    result = dossr("upscale", lr, "-o", tmp_path / "q.png", "--quiet")
    assert result.code == 0 and result.stderr == "" and result.stdout == b""
    assert decode(tmp_path / "q.png").size == (64, 64)


def test_quiet_still_reports_errors(dossr, tmp_path):
    result = dossr("upscale", tmp_path / "missing.png", "-q")
    assert result.code == 1 and result.error_lines == [f"dossr: error: {tmp_path / 'missing.png'}: no such file"]


def test_output_folder_for_many_inputs(dossr, lr, tmp_path):
    other = save(smooth_image(16, 16, "other"), tmp_path / "in" / "other.jpg")
    (tmp_path / "out").mkdir()
    assert dossr("upscale", lr, other, "-o", tmp_path / "out").code == 0
    assert files_in(tmp_path / "out") == {"lr_x4.png", "other_x4.jpg"}
    assert decode(tmp_path / "out" / "other_x4.jpg").format == "JPEG"


def test_stdin_to_stdout_in_process(dossr, lr):
    result = dossr("upscale", "-", "-o", "-", stdin=lr.read_bytes())
    assert result.code == 0, result.stderr
    assert decode(result.stdout).size == (64, 64) and result.stderr == ""


def test_stdin_to_a_folder_is_named_after_stdin(dossr, lr, tmp_path):
    (tmp_path / "out").mkdir()
    result = dossr("upscale", "-", "-o", tmp_path / "out", stdin=lr.read_bytes())
    assert result.code == 0, result.stderr
    assert files_in(tmp_path / "out") == {"stdin_x4.png"}


def test_debug_shows_a_traceback_where_the_plain_run_does_not(dossr, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    plain = dossr("upscale", broken)
    debug = dossr("upscale", broken, "--debug")
    assert plain.code == debug.code == 1
    assert "Traceback" not in plain.stderr and len(plain.error_lines) == 1
    assert "Traceback" in debug.stderr and "ImageReadError" in debug.stderr
    assert debug.error_lines == plain.error_lines


def test_debug_traceback_for_a_run_level_failure(dossr, lr):
    plain = dossr("upscale", lr, "--weights", "no-such-weights")
    debug = dossr("upscale", lr, "--weights", "no-such-weights", "--debug")
    assert plain.code == debug.code == 1
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr


def test_existing_compare_picture_is_refused_before_any_work(dossr, lr, tmp_path):
    (tmp_path / "side.png").write_bytes(b"precious")
    result = dossr("upscale", lr, "-o", tmp_path / "out.png", "--compare", tmp_path / "side.png")
    assert result.code == 1 and "side.png already exists" in result.error_lines[0]
    assert (tmp_path / "side.png").read_bytes() == b"precious" and not (tmp_path / "out.png").exists()


def test_download_flag_changes_nothing_when_the_weights_are_here(dossr, lr, tmp_path):
    result = dossr("upscale", lr, "-o", tmp_path / "out.png", "--download")
    assert result.code == 0 and decode(tmp_path / "out.png").size == (64, 64)


def test_tile_options(dossr, tmp_path):
    """Tiles that cover the image change nothing; small tiles still give a whole, valid image."""
    source = save(smooth_image(24, 40), tmp_path / "lr.png")
    plain = dossr("upscale", source, "-o", tmp_path / "plain.png", "--tile-size", "0")
    covering = dossr("upscale", source, "-o", tmp_path / "covering.png", "--tile-size", "256")
    tiled = dossr("upscale", source, "-o", tmp_path / "tiled.png", "--tile-size", "64", "--tile-overlap", "32")
    budget = dossr("upscale", source, "-o", tmp_path / "budget.png", "--max-memory", "0.05MB", "--tile-overlap", "32")
    assert plain.code == covering.code == tiled.code == budget.code == 0
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "covering.png").read_bytes()
    for name in ("tiled.png", "budget.png"):
        assert decode(tmp_path / name).size == (160, 96)
    journal_key = json.loads(dossr("upscale", source, "-o", tmp_path / "j.png", "--json").stdout)["parameters"]
    assert journal_key["tile_size"] == "auto" and journal_key["tile_overlap"] is None


@pytest.mark.parametrize(("options", "phrase"), [
    (["--tile-size", "100"], "--tile-size must be"), (["--tile-size", "big"], "--tile-size must be"),
    (["--tile-size", "64", "--tile-overlap", "64"], "--tile-overlap must be"),
    (["--tile-overlap", "12"], "--tile-overlap must be"), (["--max-memory", "lots"], "--max-memory must"),
])
def test_bad_tile_options_are_usage_errors(dossr, tmp_path, options, phrase):
    source = save(smooth_image(16, 16), tmp_path / "lr.png")
    result = dossr("upscale", source, *options)
    assert result.code == 2 and phrase in result.stderr and "Traceback" not in result.stderr
    assert files_in(tmp_path) == {"lr.png"}

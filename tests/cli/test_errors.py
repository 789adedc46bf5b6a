"""Bad inputs and bad options: one line on stderr, the documented exit code, no traceback, no output.

Exit codes (dossr --help): 0 ok, 1 some inputs failed, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import sys
import zlib

import pytest
from PIL import Image

from .helpers import files_in, run_in_process, save, smooth_image


def assert_one_line_failure(result, code, *phrases):
    assert result.code == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and len(result.error_lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    smooth_image(48, 48).save(buffer, fmt)
    return buffer.getvalue()


BAD_FILES = {
    "not-an-image.png": (b"hello, this is not an image\n", "not an image"),
    "empty.png": (b"", "empty"),
    "truncated.png": (encoded("PNG")[:-400], "truncated or corrupt"),
    "truncated.jpg": (encoded("JPEG")[: len(encoded("JPEG")) // 2], "corrupt"),
    "bomb.png": (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                 + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b""),
                 "100000x100000"),
    "photo.gif": (encoded("GIF"), "GIF"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_input_file(dossr, tmp_path, name):
    data, phrase = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    result = dossr("upscale", tmp_path / name)
    assert_one_line_failure(result, 1, name, phrase)
    assert files_in(tmp_path) == {name}


def test_bad_file_does_not_stop_the_good_ones(dossr, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"junk")
    good = save(smooth_image(16, 16), tmp_path / "good.png")
    result = dossr("upscale", tmp_path / "bad.png", good)
    assert result.code == 1 and len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert files_in(tmp_path) == {"bad.png", "good.png", "good_x4.png"}


@pytest.mark.parametrize(("make", "phrase"), [(lambda p: p.mkdir(), "not a file"), (lambda p: None, "no such file")])
def test_folder_or_missing_file_as_input(dossr, tmp_path, make, phrase):
    make(tmp_path / "thing.png")
    assert_one_line_failure(dossr("upscale", tmp_path / "thing.png"), 1, phrase)
    assert not list(tmp_path.glob("thing_x4*"))


@pytest.mark.skipif(sys.platform == "win32", reason="chmod does not remove read access on Windows")
def test_unreadable_input(dossr, tmp_path):
    source = save(smooth_image(16, 16), tmp_path / "secret.png")
    source.chmod(0)
    try:
        if os.access(source, os.R_OK):
            pytest.skip("this user (root) reads a mode-000 file anyway; the simulated test covers the message")
        assert_one_line_failure(dossr("upscale", source), 1, "permission denied")
        assert files_in(tmp_path) == {"secret.png"}
    finally:
        source.chmod(0o600)


def test_unreadable_input_simulated(dossr, tmp_path, monkeypatch):
    source = save(smooth_image(16, 16), tmp_path / "secret.png")
    real_read_bytes = type(source).read_bytes

    def read_bytes(path):
        if path == source:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(type(source), "read_bytes", read_bytes)
    assert_one_line_failure(dossr("upscale", source), 1, "secret.png", "permission denied")
    assert files_in(tmp_path) == {"secret.png"}


@pytest.mark.skipif(sys.platform == "win32", reason="chmod does not make a folder read-only on Windows")
def test_unwritable_output_folder(dossr, tmp_path):
    source = save(smooth_image(16, 16), tmp_path / "lr.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root) writes into a 0o500 folder anyway; the simulated test covers the message")
        assert_one_line_failure(dossr("upscale", source, "-o", locked / "out.png"), 1, "permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_unwritable_output_folder_simulated(dossr, tmp_path, monkeypatch):
    source = save(smooth_image(16, 16), tmp_path / "lr.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)  # the os.open write_atomic calls
    assert_one_line_failure(dossr("upscale", source, "-o", locked / "out.png"), 1, "locked", "permission denied")
    assert list(locked.iterdir()) == []


USAGE_ERRORS = [
    (["--order", "9"], "--order"),
    (["--color-fix", "foo"], "--color-fix"),
    (["--format", "gif"], "--format"),
    (["--dtype", "fp8"], "--dtype"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
    (["--metadata", "xmp"], "--metadata"),
    (["--quality", "0"], "--quality"),
    (["--scale", "0.5"], "--scale"),
    (["--scale", "nan"], "--scale"),
    (["--width", "0"], "--width"),
    (["--steps", "0"], "--steps"),
    (["--t1", "1"], "--t1"),
    (["--max-pixels", "0"], "--max-pixels"),
    (["--max-output-pixels", "0"], "--max-output-pixels"),
    (["--seed", str(2**63)], "--seed must be in -9223372036854775808..9223372036854775807"),
]


@pytest.mark.parametrize(("options", "phrase"), USAGE_ERRORS, ids=[" ".join(o) for o, _ in USAGE_ERRORS])
@pytest.mark.parametrize("command", ["upscale", "batch"])
def test_bad_option_value_is_a_usage_error_before_anything_is_written(dossr, tmp_path, command, options, phrase):
    save(smooth_image(16, 16), tmp_path / "in" / "lr.png")
    before = files_in(tmp_path)
    target = tmp_path / "in" / "lr.png" if command == "upscale" else tmp_path / "in"
    result = dossr(command, target, *options)
    assert_one_line_failure(result, 2, phrase)
    assert files_in(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize(("args", "phrase"), [
    (["IN", "-o", "OUT/noext"], "cannot tell the format"),
    (["IN", "-o", "OUT/x.jpg", "--format", "png"], "make them agree"),
    (["IN", "-o", "OUT/missing/x.png"], "does not exist"),
    (["IN", "IN", "-o", "-"], "single input"),
    (["IN", "-o", "-", "--json"], "--json"),
    (["-", "-"], "stdin"),
    (["IN", "--compare", "OUT/missing/side.png"], "does not exist"),
])
def test_bad_combinations_are_usage_errors(dossr, tmp_path, args, phrase):
    source = save(smooth_image(16, 16), tmp_path / "lr.png")
    (tmp_path / "out").mkdir()
    args = [str(source) if a == "IN" else a.replace("OUT", str(tmp_path / "out")) for a in args]
    assert_one_line_failure(dossr("upscale", *args), 2, phrase)
    assert files_in(tmp_path) == {"lr.png"}


@pytest.mark.parametrize("options", [["--steps", "abc"], ["--no-such-option"]])
def test_click_level_usage_errors(dossr, tmp_path, options):
    source = save(smooth_image(16, 16), tmp_path / "lr.png")
    result = dossr("upscale", source, *options)
    assert result.code == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dossr: error: ") and "'dossr upscale --help'" in lines[0]
    assert files_in(tmp_path) == {"lr.png"}


@pytest.mark.parametrize("command", ["upscale", "batch"])
def test_unknown_weights_name(dossr, tmp_path, command):
    save(smooth_image(16, 16), tmp_path / "in" / "lr.png")
    target = tmp_path / "in" / "lr.png" if command == "upscale" else tmp_path / "in"
    result = dossr(command, target, "--weights", "name-that-does-not-exist")
    assert_one_line_failure(result, 1, "unknown weights 'name-that-does-not-exist'")
    assert files_in(tmp_path) == {"in/lr.png"} and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("command", ["upscale", "batch"])
def test_missing_default_weights_say_how_to_get_them(tmp_path, monkeypatch, command):
    """No --weights, no DOSSR_WEIGHTS and an empty cache (DOSSR_CACHE_DIR is a fresh folder per test)."""
    monkeypatch.delenv("DOSSR_WEIGHTS", raising=False)
    save(smooth_image(16, 16), tmp_path / "in" / "lr.png")
    target = tmp_path / "in" / "lr.png" if command == "upscale" else tmp_path / "in"
    result = run_in_process([command, str(target), "--steps", "1"])
    assert result.code == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("dossr: error: the 'default' weights are not on this machine")
    assert "dossr weights download default" in result.stderr and "dossr weights import" in result.stderr
    assert "--weights PATH" in result.stderr
    assert files_in(tmp_path) == {"in/lr.png"} and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_batch_of_a_file_or_an_empty_folder_is_a_usage_error(dossr, tmp_path):
    source = save(smooth_image(16, 16), tmp_path / "lr.png")
    assert_one_line_failure(dossr("batch", source), 2, "is not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sub").mkdir()
    save(smooth_image(16, 16), tmp_path / "empty" / "sub" / "deep.png")
    assert_one_line_failure(dossr("batch", tmp_path / "empty"), 2, "no images", "use -r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "lr.png"]


def test_pillow_does_not_read_formats_it_was_not_asked_to(dossr, tmp_path):
    """An .png name on a file in a format outside the list is refused by content, not by name."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PPM")
    (tmp_path / "sneaky.png").write_bytes(buffer.getvalue())
    assert_one_line_failure(dossr("upscale", tmp_path / "sneaky.png"), 1, "not an image")


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps"])
def test_device_this_machine_lacks_is_a_usage_error(dossr, tmp_path, device):
    import torch

    count = torch.cuda.device_count()
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if (device == "cuda" and count) or (device == "cuda:7" and count > 7) or (device == "mps" and has_mps):
        pytest.skip(f"this machine has {device}")
    source = save(smooth_image(16, 16), tmp_path / "lr.png")
    assert_one_line_failure(dossr("upscale", source, "--device", device), 2, f"--device {device}", "--device auto")
    assert files_in(tmp_path) == {"lr.png"}

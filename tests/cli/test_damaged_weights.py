"""Damaged weights on the command line: one line naming the file and what to do, exit 1, nothing written."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from .helpers import run_in_process, save, smooth_image


@pytest.fixture
def bundle(tiny_weights, tmp_path, verified_cache, monkeypatch):
    monkeypatch.setenv("DOSSR_CACHE_DIR", verified_cache)
    return shutil.copytree(tiny_weights, tmp_path / "weights")


def upscale(bundle, tmp_path, *args):
    image = save(smooth_image(16, 16), tmp_path / "in.png")
    return run_in_process(["upscale", image, "-o", tmp_path / "out.png", "--weights", bundle, "--steps", "1", *args])


def assert_refused(result, tmp_path, *phrases):
    assert result.code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dossr: error:") and "Traceback" not in result.stderr, lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert not (tmp_path / "out.png").exists()


def test_bit_rot_after_a_good_run_stops_the_next_run_before_any_output(bundle, tmp_path):
    assert upscale(bundle, tmp_path).code == 0  # a good run (it used to leave a trusted stamp)
    (tmp_path / "out.png").unlink()
    target = bundle / "controlnet.safetensors"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime put back
    assert_refused(upscale(bundle, tmp_path), tmp_path, str(target), "sha256", "dossr weights verify")
    result = run_in_process(["weights", "verify", bundle])
    assert result.code == 1 and str(target) in result.stderr


def test_a_damaged_dossr_json_is_one_line_not_a_python_error(bundle, tmp_path):
    config = json.loads((bundle / "dossr.json").read_text())
    config["components"]["unet"] = 3  # used to be "TypeError: 'int' object is not subscriptable"
    (bundle / "dossr.json").write_text(json.dumps(config))
    assert_refused(upscale(bundle, tmp_path), tmp_path, str(bundle / "dossr.json"), "download or import")

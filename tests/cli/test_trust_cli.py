"""The trust measures where users see them: `dossr upscale --json`, its flags, and --trust-map (tiny weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dossr_cli.batch.job import UpscaleParams, run_job
from dossr_cli.geometry import lanczos_resize
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.trust import LEGEND_WIDTH, MAX_PSNR_DB

from .helpers import decode, save, smooth_image


@pytest.fixture
def lr(tmp_path):
    return save(smooth_image(16, 16), tmp_path / "lr.png")


def test_json_carries_the_measures_and_the_map_decodes(dossr, lr, tmp_path):
    result = dossr("upscale", lr, "-o", tmp_path / "out.png", "--json", "--trust-map", tmp_path / "map.png")
    assert result.code == 0, result.stderr
    trust = json.loads(result.stdout)["trust"]
    assert set(trust) == {"departure_psnr_db", "departure_share", "invented_rms", "flagged", "flag_reasons"}
    assert 0 < trust["departure_psnr_db"] < MAX_PSNR_DB and 0 <= trust["departure_share"] <= 1
    assert trust["invented_rms"] > 0  # random weights: the diffusion's output is anything but the regression's
    assert trust["flagged"] == bool(trust["flag_reasons"])
    picture = decode(tmp_path / "map.png")
    assert picture.width == LEGEND_WIDTH and picture.height > 64  # the result, padded to the legend's width


def test_thresholds_decide_the_flag(dossr, lr, tmp_path):
    strict = dossr("upscale", lr, "-o", tmp_path / "a.png", "--json", "--flag-departure-psnr", "101")
    lenient = dossr("upscale", lr, "-o", tmp_path / "b.png", "--json", "--flag-departure-psnr", "0",
                    "--flag-departure-share", "1")
    assert json.loads(strict.stdout)["trust"]["flagged"] is True
    assert json.loads(lenient.stdout)["trust"]["flagged"] is False
    said = dossr("upscale", lr, "-o", tmp_path / "c.png", "--flag-departure-psnr", "101")
    assert "c.png (64x64, " in said.stderr and "s; flagged: departure PSNR " in said.stderr
    assert "< 101 dB" in said.stderr


def test_invented_detail_is_measured_against_the_preprocessors_output(tiny_weights, lr):
    """The captured reference is exactly the RRDBNet's x4 output, run again here by hand."""
    pipe = DoSSRPipeline.from_pretrained(tiny_weights, device="cpu")
    result = run_job(pipe, lr, UpscaleParams(steps=1))
    lq = torch.from_numpy(np.asarray(decode(lr).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        reference = lanczos_resize(pipe.preprocess(lq).clamp(0, 1), (64, 64))[0].permute(1, 2, 0).numpy()
    expected = np.sqrt(np.mean((result.rgb.astype(np.float64) - reference) ** 2))
    assert result.trust is not None
    assert result.trust.invented_rms == pytest.approx(expected, rel=1e-5)


def test_batch_json_and_summary_name_the_worst_first(dossr, tmp_path):
    folder = tmp_path / "photos"
    for i, name in enumerate(["a", "b", "c", "d"]):
        save(smooth_image(16, 16 + 4 * i), folder / f"{name}.png")
    result = dossr("batch", folder, "-o", tmp_path / "out", "--json", "--flag-departure-psnr", "101")
    assert result.code == 0, result.stderr
    records = {Path(r["input"]).name: r["trust"] for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {"a.png", "b.png", "c.png", "d.png"} and all(t["flagged"] for t in records.values())
    worst = sorted(records, key=lambda name: records[name]["departure_psnr_db"])[:3]
    named = [line.split(": ")[1] for line in result.stderr.splitlines() if "check first: " in line]
    assert named == worst  # the three worst departures, worst first
    assert "... and 1 more flagged" in result.stderr
    calm = dossr("batch", folder, "-o", tmp_path / "calm", "--flag-departure-psnr", "0", "--flag-departure-share", "1")
    assert calm.code == 0 and "check first" not in calm.stderr


def test_batch_writes_a_trust_map_per_computed_image_mirroring_the_tree(dossr, tmp_path):
    folder = tmp_path / "photos"
    save(smooth_image(16, 16), folder / "a.png")
    save(smooth_image(16, 20), folder / "sub" / "b.png")
    maps = tmp_path / "maps"
    result = dossr("batch", folder, "-r", "-o", tmp_path / "out", "--trust-map", maps)
    assert result.code == 0, result.stderr
    assert sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.png")) == ["a_trust.png", "sub/b_trust.png"]
    picture = decode(maps / "sub" / "b_trust.png")
    assert picture.width == LEGEND_WIDTH and picture.height > 80  # the result, padded, and the legend below
    again = dossr("batch", folder, "-r", "-o", tmp_path / "out", "--trust-map", maps)
    assert again.code == 0 and "0 to do" in again.stderr  # the maps folder is not read back as input


def test_batch_trust_map_must_be_a_folder(dossr, tmp_path):
    folder = tmp_path / "photos"
    save(smooth_image(16, 16), folder / "a.png")
    taken = tmp_path / "map.png"
    taken.write_bytes(b"x")
    result = dossr("batch", folder, "-o", tmp_path / "out", "--trust-map", taken)
    assert result.code == 2
    assert "--trust-map" in result.stderr and "folder" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--trust-map", "--compare"])
def test_a_rerun_asking_for_pictures_makes_them_for_images_already_done(dossr, tmp_path, option):
    """Done images are skipped, but not a picture asked for now that the run which did them did not make:
    only their pixels can make it, so they run again (same seed: the same output) and get it."""
    folder, out, pictures = tmp_path / "photos", tmp_path / "out", tmp_path / "pictures"
    save(smooth_image(16, 16), folder / "a.png")
    save(smooth_image(16, 20), folder / "b.png")
    first = dossr("batch", folder, "-o", out)
    assert first.code == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert dossr("batch", folder, "-o", out, option, pictures).code == 0
    made = sorted(p.name for p in pictures.glob("*.png"))
    assert made == (["a_trust.png", "b_trust.png"] if option == "--trust-map" else ["a_compare.png", "b_compare.png"])
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before  # run again: the same bytes
    again = dossr("batch", folder, "-o", out, option, pictures)
    assert again.code == 0 and "0 to do, 2 already done" in again.stderr  # with their pictures: done

"""benchmarks/paper_table.py end to end on the tiny random model: a synthetic 2-image RealSR-like set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dossr_cli.checkpoint.bundle import save_bundle
from dossr_cli.evaluate import psnr_ssim_y
from dossr_cli.imageio import read_image
from dossr_cli.random_weights import random_networks

_spec = importlib.util.spec_from_file_location("paper_table", Path(__file__).parents[1] / "benchmarks/paper_table.py")
paper_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_table)


def test_paper_table_runs_on_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOSSR_CACHE_DIR", str(tmp_path / "cache"))
    weights = save_bundle(random_networks(seed=0), tmp_path / "tiny")
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir(), hr.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        high = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(high).save(hr / f"{name}.png")
        Image.fromarray(high).resize((16, 16), Image.BICUBIC).save(lr / f"{name}.png")
    out = tmp_path / "out"
    code = paper_table.main(["--weights", str(weights), "--realsr", str(lr), str(hr), "--out", str(out),
                             "--steps", "1", "--device", "cpu", "--dtype", "fp32"])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "paper_table.json").read_text())["RealSR"]
    # the printed means are dossr eval's numbers for the files the run wrote
    expected = [psnr_ssim_y(read_image(out / "RealSR" / f"{n}.png").rgb, read_image(hr / f"{n}.png").rgb, 4)
                for n in ("a", "b")]
    assert report["ours"]["PSNR"] == pytest.approx(np.mean([e[0] for e in expected]))
    assert report["ours"]["SSIM"] == pytest.approx(np.mean([e[1] for e in expected]))
    assert report["paper"]["PSNR"] == 24.18 and report["failed"] == []
    assert f"PSNR     {report['ours']['PSNR']:>9.4f}   24.1800" in printed
    assert "TOPIQ            -    0.6985" in printed

"""`dossr_cli.evaluate`: PSNR/SSIM against BasicSR's own functions on recorded pairs, pairing by name,
and the learned metrics' unavailable path."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dossr_cli.evaluate import LearnedMetrics, PairError, evaluate, psnr_ssim_y
from dossr_cli.imageio import read_image

DATA = Path(__file__).parent / "data" / "eval"

# BasicSR (github.com/XPixelGroup/BasicSR, commit 8d56e3a045f9fb3e1d8872f92ee4a4f07f886b0a),
# basicsr/metrics/psnr_ssim.py: calculate_psnr / calculate_ssim(img, img2, crop_border, test_y_channel=True)
# on the BGR uint8 pairs in tests/data/eval (NAME_sr.png against NAME_hr.png), run locally.
# (name, crop_border, PSNR dB, SSIM)
BASICSR = [
    ("noise", 4, 34.86138930139835, 0.9501637129220839),
    ("blur", 0, 27.00168050082052, 0.6676537832712267),
    ("recolour", 4, 39.39090144604851, 0.9972224048762142),
    ("odd", 2, 23.422452839370067, 0.5902552126200008),
    ("shift", 4, 23.971976104060055, 0.309427649605547),
]


@pytest.mark.parametrize(("name", "border", "psnr", "ssim"), BASICSR, ids=[case[0] for case in BASICSR])
def test_psnr_ssim_match_basicsr(name: str, border: int, psnr: float, ssim: float) -> None:
    ours = psnr_ssim_y(read_image(DATA / f"{name}_sr.png").rgb, read_image(DATA / f"{name}_hr.png").rgb, border)
    assert ours[0] == pytest.approx(psnr, abs=1e-4)
    assert ours[1] == pytest.approx(ssim, abs=1e-5)


def test_crop_border_changes_the_numbers() -> None:
    result, reference = read_image(DATA / "blur_sr.png").rgb, read_image(DATA / "blur_hr.png").rgb
    assert abs(psnr_ssim_y(result, reference, 4)[0] - psnr_ssim_y(result, reference, 0)[0]) > 0.1


def test_identical_images_are_inf_db_and_ssim_one() -> None:
    image = read_image(DATA / "noise_hr.png").rgb
    psnr, ssim = psnr_ssim_y(image, image, 4)
    assert math.isinf(psnr) and ssim == pytest.approx(1.0)


def test_size_mismatch_and_too_small_are_refused() -> None:
    image = read_image(DATA / "noise_hr.png").rgb
    with pytest.raises(PairError, match="40x48 but its reference is 39x48"):
        psnr_ssim_y(image, image[:, :39], 0)
    with pytest.raises(PairError, match="smaller than SSIM's 11x11 window"):
        psnr_ssim_y(image[:20], image[:20], 5)


def test_pairs_by_name_and_names_every_unmeasured_pair(tmp_path: Path) -> None:
    results, references = tmp_path / "sr", tmp_path / "hr"
    results.mkdir(), references.mkdir()
    for name in ("noise", "shift"):
        (results / f"{name}_x4.png").write_bytes((DATA / f"{name}_sr.png").read_bytes())
        (references / f"{name}.png").write_bytes((DATA / f"{name}_hr.png").read_bytes())
    (results / "lonely.png").write_bytes((DATA / "odd_sr.png").read_bytes())  # no reference
    (results / "odd.png").write_bytes((DATA / "odd_sr.png").read_bytes())
    (references / "odd.png").write_bytes((DATA / "noise_hr.png").read_bytes())  # another size
    (results / "broken.png").write_bytes((DATA / "blur_sr.png").read_bytes()[:300])  # truncated
    (references / "broken.png").write_bytes((DATA / "blur_hr.png").read_bytes())
    evaluation = evaluate(results, references, 4)
    by_name = {row.name: row for row in evaluation.rows}
    assert by_name["noise_x4.png"].reference == "noise.png"
    assert by_name["noise_x4.png"].values["PSNR"] == pytest.approx(BASICSR[0][2], abs=1e-4)
    assert "no reference" in by_name["lonely.png"].error
    assert "37x29 but its reference is 40x48" in by_name["odd.png"].error
    assert by_name["broken.png"].error and "broken.png" in by_name["broken.png"].error
    assert len(evaluation.failed) == 3
    assert evaluation.means()["PSNR"] == pytest.approx((BASICSR[0][2] + BASICSR[4][2]) / 2, abs=1e-4)


def test_without_pyiqa_every_learned_metric_is_named_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as where the extra is not installed
    learned = LearnedMetrics(with_reference=True)
    assert learned.names == []
    assert [u.metric for u in learned.unavailable] == ["LPIPS", "DISTS", "NIQE", "MUSIQ", "MANIQA", "CLIPIQA"]
    assert all("pyiqa cannot be imported" in u.reason and "dossr[eval]" in u.reason for u in learned.unavailable)
    assert [u.metric for u in LearnedMetrics(with_reference=False).unavailable] == ["NIQE", "MUSIQ", "MANIQA",
                                                                                    "CLIPIQA"]


def test_weights_that_cannot_be_fetched_name_the_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyiqa present, but offline: each metric's construction fails and says why."""
    def create_metric(name: str, device: str) -> None:
        raise OSError(f"cannot download weights for {name}: network unreachable")

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    learned = LearnedMetrics(with_reference=False)
    lines = [u.line() for u in learned.unavailable]
    assert lines[0] == ("NIQE: unavailable: pyiqa could not build 'niqe' (its weights may not be downloadable "
                        "here): OSError: cannot download weights for niqe: network unreachable")
    assert len(lines) == 4 and learned.measure(np.zeros((16, 16, 3), np.float32), None) == {}

"""trust.py against answers known by construction: a plain Lanczos enlargement departs by nothing,
a shifted or recoloured one departs and is flagged, the regression upscale itself invents nothing,
and detail painted into one corner shows there and only there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dossr_cli import trust
from dossr_cli.geometry import lanczos_resize


def lanczos(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    chw = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    return lanczos_resize(chw, size)[0].permute(1, 2, 0).numpy().clip(0, 1)


@pytest.fixture
def lr() -> np.ndarray:
    """A smooth picture with an edge: what a shift or a colour change visibly moves."""
    y, x = np.mgrid[0:24, 0:32].astype(np.float32)
    rgb = np.stack([x / 31, y / 23, ((x > 15) * 0.8 + 0.1) * np.ones_like(x)], axis=2)
    return rgb.astype(np.float32)


def test_a_lanczos_enlargement_scores_the_maximum(lr: np.ndarray) -> None:
    enlarged = lanczos(lr, (96, 128))
    report = trust.trust_report(lr, enlarged, enlarged)
    assert report.departure_psnr_db == trust.MAX_PSNR_DB
    assert report.departure_share == 0.0
    assert report.invented_rms == 0.0  # a result equal to the regression upscale invents nothing
    assert not report.invented_map.any()
    assert report.flags() == []


def test_a_recoloured_output_departs_and_is_flagged(lr: np.ndarray) -> None:
    recoloured = (lanczos(lr, (96, 128)) + np.array([0.2, 0.0, 0.0], dtype=np.float32)).clip(0, 1)
    report = trust.trust_report(lr, recoloured, lanczos(lr, (96, 128)))
    assert report.departure_psnr_db < 20  # ~0.2 on a third of the channels where red has room: ~17 dB
    assert report.departure_share > 0.5
    assert len(report.flags()) == 2
    assert report.as_json()["flagged"] is True


def test_a_shifted_output_departs_at_its_edge(lr: np.ndarray) -> None:
    enlarged = lanczos(lr, (96, 128))
    shifted = np.roll(enlarged, 12, axis=1)  # 3 input pixels to the right
    psnr, share, moved = trust.departure(lr, shifted)
    assert psnr < trust.DEFAULT_FLAG_PSNR_DB
    assert share > trust.DEFAULT_FLAG_SHARE
    assert moved[:, 16:18].min() > trust.DEFAULT_PIXEL_THRESHOLD  # the blue edge moved from column 16


def test_the_map_marks_detail_added_in_one_corner(lr: np.ndarray) -> None:
    reference = lanczos(lr, (96, 128))
    result = reference.copy()
    checker = (np.indices((32, 32)).sum(axis=0) % 2).astype(np.float32)[..., None] * 0.3 - 0.15
    result[:32, :32] = (result[:32, :32] + checker).clip(0, 1)
    rms, per_pixel = trust.invented_detail(result, reference)
    assert per_pixel[:32, :32].mean() > 0.1
    assert not per_pixel[32:, :].any() and not per_pixel[:, 32:].any()
    expected = np.sqrt(np.mean((result - reference).astype(np.float64) ** 2))
    assert rms == pytest.approx(expected, rel=1e-9)
    picture = trust.trust_map(result, trust.trust_report(lr, result, reference))
    assert picture.shape[1:] == (trust.LEGEND_WIDTH, 3) and picture.shape[0] > 96  # the legend strip below
    assert not picture[:96, 128:].any()  # a result narrower than the legend: padded with black on the right
    corner, elsewhere = picture[:32, :32], picture[40:96, 40:128]
    assert (corner[..., 2] - corner[..., 0]).mean() > 0.3  # cyan where detail was added
    assert np.allclose(elsewhere[..., 0], elsewhere[..., 2], atol=1e-6)  # grey elsewhere


def test_a_wide_map_keeps_the_results_width() -> None:
    lr = np.full((8, 100, 3), 0.5, dtype=np.float32)
    result = lanczos(lr, (32, 400))
    picture = trust.trust_map(result, trust.trust_report(lr, result, result))
    assert picture.shape[1:] == (400, 3) and picture.shape[0] > 32


def test_shapes_must_agree(lr: np.ndarray) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        trust.invented_detail(lanczos(lr, (96, 128)), lanczos(lr, (48, 64)))


@pytest.mark.parametrize("numbers", [(29.99961, 0.0099996, 0.01), (30.00049, 0.01000049, 0.2), (100.0, 0.0, 0.0)])
def test_the_json_numbers_flag_as_the_measured_ones(numbers: tuple[float, float, float]) -> None:
    """`upscale --server` flags the server's numbers as a local run flags its own: numbers a hair either
    side of a threshold must cross JSON unrounded, or the two runs would disagree on the same image."""
    import json

    measured = trust.TrustNumbers(*numbers)
    received = trust.TrustNumbers.from_json(json.loads(json.dumps(measured.as_json())))
    assert received == measured and received.flags() == measured.flags()
    assert received.flags(30.0, 0.01) == measured.flags(30.0, 0.01)

"""`dossr eval`: exit codes, one line per unmeasured pair, CSV/JSON, the no-reference mode without pyiqa."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from .helpers import run_in_process

DATA = Path(__file__).parents[1] / "data" / "eval"
NOISE_PSNR, NOISE_SSIM = 34.86138930139835, 0.9501637129220839  # BasicSR's, crop 4 (tests/test_eval.py)


@pytest.fixture(autouse=True)
def no_pyiqa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as in CI, whatever this machine has


def folders(tmp_path: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    results, references = tmp_path / "sr", tmp_path / "hr"
    results.mkdir(), references.mkdir()
    for name in names:
        (results / f"{name}_x4.png").write_bytes((DATA / f"{name}_sr.png").read_bytes())
        (references / f"{name}.png").write_bytes((DATA / f"{name}_hr.png").read_bytes())
    return results, references


def test_all_measured_exit_0_with_csv_and_json(tmp_path: Path) -> None:
    results, references = folders(tmp_path, ("noise", "shift"))
    result = run_in_process(["eval", results, "--reference", references, "--csv", tmp_path / "r.csv",
                             "--json-out", tmp_path / "r.json"])
    assert result.code == 0, result.stderr
    assert "noise_x4.png" in result.stdout.decode() and "34.86" in result.stdout.decode()
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))
    assert [r["result"] for r in rows] == ["noise_x4.png", "shift_x4.png"]
    assert float(rows[0]["PSNR"]) == pytest.approx(NOISE_PSNR, abs=1e-4)
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["failed"] == 0 and document["conventions"]["crop_border"] == 4
    assert document["rows"][0]["SSIM"] == pytest.approx(NOISE_SSIM, abs=1e-5)
    assert set(document["unavailable"]) == {"LPIPS", "DISTS", "NIQE", "MUSIQ", "MANIQA", "CLIPIQA"}


def test_bad_pairs_are_named_counted_and_exit_1(tmp_path: Path) -> None:
    results, references = folders(tmp_path, ("noise",))
    (results / "orphan.png").write_bytes((DATA / "odd_sr.png").read_bytes())
    (results / "odd.png").write_bytes((DATA / "odd_sr.png").read_bytes())
    (references / "odd.png").write_bytes((DATA / "noise_hr.png").read_bytes())
    (results / "cut.png").write_bytes((DATA / "blur_sr.png").read_bytes()[:200])
    (references / "cut.png").write_bytes((DATA / "blur_hr.png").read_bytes())
    result = run_in_process(["eval", results, "--reference", references, "--json"])
    assert result.code == 1
    errors = result.error_lines
    assert len(errors) == 3
    assert any(line.startswith("dossr: error: orphan.png: no reference named like it") for line in errors)
    assert any("odd.png: the result is 37x29 but its reference is 40x48" in line for line in errors)
    assert "dossr: 3 of 4 images could not be measured (named above)" in result.stderr
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert lines[-1] == {"mean": {"PSNR": pytest.approx(NOISE_PSNR, abs=1e-4),
                                  "SSIM": pytest.approx(NOISE_SSIM, abs=1e-5)}, "measured": 1, "failed": 3}
    assert sum("error" in line for line in lines[:-1]) == 3


def test_no_reference_mode_names_each_unavailable_metric(tmp_path: Path) -> None:
    results, _ = folders(tmp_path, ("noise", "blur"))
    result = run_in_process(["eval", results])
    assert result.code == 0
    notes = [line for line in result.stderr.splitlines() if "unavailable" in line]
    assert [line.split(":")[2].strip() for line in notes] == ["NIQE", "MUSIQ", "MANIQA", "CLIPIQA"]
    assert all("pyiqa cannot be imported" in line and "dossr[eval]" in line for line in notes)
    assert "pass --reference HR_FOLDER for PSNR and SSIM" in result.stderr
    assert "blur_x4.png" in result.stdout.decode()


@pytest.mark.parametrize(("args", "message"), [
    (["--crop-border", "-1"], "--crop-border must be 0 or more; got -1"),
    (["--reference", "missing"], "is not a folder"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    results, _ = folders(tmp_path, ("noise",))
    result = run_in_process(["eval", results, *[str(tmp_path / a) if a == "missing" else a for a in args]])
    assert result.code == 2 and message in result.error_lines[0]

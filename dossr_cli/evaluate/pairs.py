"""`dossr eval`'s library: pair results with references by name, measure each pair, keep every failure.

A pair that cannot be measured (no reference, sizes differ, a file that does not decode) becomes a row
with its reason; nothing is skipped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dossr_cli import imageio
from dossr_cli.errors import DossrError
from dossr_cli.evaluate.fullref import psnr_ssim_y
from dossr_cli.evaluate.learned import LearnedMetrics, Unavailable

IMAGE_SUFFIXES = {"." + ext for ext in ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")}
_SCALE_SUFFIX = re.compile(r"_x\d+(?:\.\d+)?$")  # what `dossr upscale/batch` append: photo_x4.png <- photo.png


@dataclass
class Row:
    name: str  # the result's file name, relative to RESULTS
    reference: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why this pair could not be measured


@dataclass
class Evaluation:
    rows: list[Row]
    metrics: list[str]  # the columns measured, in order
    unavailable: list[Unavailable]
    crop_border: int

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.error is not None]

    def means(self) -> dict[str, float]:
        """Each metric's mean over the measured pairs (PSNR's over finite values: identical pairs are inf)."""
        means = {}
        for metric in self.metrics:
            values = [row.values[metric] for row in self.rows if metric in row.values]
            finite = [v for v in values if math.isfinite(v)]
            if finite or values:
                means[metric] = sum(finite) / len(finite) if finite else math.inf
        return means


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def find_reference(result: Path, results_root: Path, references: dict[str, Path]) -> Path | None:
    """The reference with the result's relative path and stem (any extension), with or without its _x<scale>."""
    rel = result.relative_to(results_root).with_suffix("").as_posix()
    return references.get(rel) or references.get(_SCALE_SUFFIX.sub("", rel))


def evaluate(results: Path, reference: Path | None, crop_border: int, max_pixels: int | None = None,
             learned: LearnedMetrics | None = None,
             on_row: Callable[[Row], None] | None = None) -> Evaluation:
    """Measure every image under `results` (against its namesake under `reference`, when given)."""
    learned = learned if learned is not None else LearnedMetrics(with_reference=reference is not None)
    max_pixels = max_pixels if max_pixels is not None else imageio.DEFAULT_MAX_PIXELS
    references = ({p.relative_to(reference).with_suffix("").as_posix(): p for p in list_images(reference)}
                  if reference is not None else {})
    metrics = (["PSNR", "SSIM"] if reference is not None else []) + learned.names
    rows = []
    for path in list_images(results):
        row = Row(path.relative_to(results).as_posix())
        try:
            reference_path = find_reference(path, results, references) if reference is not None else None
            if reference is not None and reference_path is None:
                raise DossrError(f"no reference named like it in {reference}")
            result_rgb = imageio.read_image(path, max_pixels=max_pixels).rgb
            reference_rgb = None
            if reference_path is not None:
                row.reference = reference_path.relative_to(reference).as_posix()
                reference_rgb = imageio.read_image(reference_path, max_pixels=max_pixels).rgb
                row.values["PSNR"], row.values["SSIM"] = psnr_ssim_y(result_rgb, reference_rgb, crop_border)
            row.values.update(learned.measure(result_rgb, reference_rgb))
        except DossrError as error:
            row.error = str(error)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return Evaluation(rows, metrics, learned.unavailable, crop_border)

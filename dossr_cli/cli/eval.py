"""`dossr eval RESULTS [--reference HR]`: PSNR/SSIM (Y channel, BasicSR's conventions) and pyiqa's metrics."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dossr_cli.cli import common
from dossr_cli.cli.console import error_line, say, stderr, stdout
from dossr_cli.errors import UsageError

if TYPE_CHECKING:
    from dossr_cli.evaluate import Evaluation, Row

_DIGITS = {"PSNR": 2, "SSIM": 4, "MUSIQ": 2, "NIQE": 4}  # as the paper's tables print them; others 4


def eval_command(
    results: Annotated[Path, typer.Argument(help="Folder of results (e.g. a `dossr batch` output).",
                                            show_default=False)],
    reference: Annotated[Path | None, typer.Option("--reference", help="Folder of ground-truth images, paired "
                                                   "with results by name (photo_x4.png <- photo.png): adds PSNR, "
                                                   "SSIM, LPIPS and DISTS.", show_default=False)] = None,
    crop_border: Annotated[int, typer.Option("--crop-border", help="Pixels dropped from each edge before PSNR/"
                                             "SSIM (BasicSR's test configs use the scale).")] = 4,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Also write one row per image to this CSV file.",
                                                  show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout, then one with "
                                              "the means (the table goes to stderr).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also write everything as one JSON file.",
                                                  show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="Where pyiqa's metrics run: cpu, cuda or cuda:N.")] = "cpu",
    max_pixels: common.MaxPixels = None,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Measure results: against references by name, or with no-reference metrics alone.

    Exit codes: 0 every pair measured, 1 some pair could not be (each named on stderr), 2 usage error.
    """
    if crop_border < 0:
        raise UsageError(f"--crop-border must be 0 or more; got {crop_border}")
    if not results.is_dir():
        raise UsageError(f"{results} is not a folder")
    if reference is not None and not reference.is_dir():
        raise UsageError(f"--reference {reference} is not a folder")
    from dossr_cli.evaluate import LearnedMetrics, evaluate, list_images

    total = len(list_images(results))
    if total == 0:
        raise UsageError(f"no images in {results}")
    learned = LearnedMetrics(with_reference=reference is not None, device=device)
    for missing in learned.unavailable:
        say(f"dossr: note: {missing.line()}", quiet)
    if reference is None and not learned.names:
        say("dossr: note: no no-reference metric is available here (see above): the table lists the images only; "
            "pass --reference HR_FOLDER for PSNR and SSIM", quiet)

    def report(row: Row) -> None:
        if row.error is not None:
            stderr.print(error_line(row.name, row.error), markup=False)
        if json_output:
            stdout.print(json.dumps(_row_dict(row)), markup=False)

    with _progress(total, quiet) as advance:
        evaluation = evaluate(results, reference, crop_border, max_pixels, learned,
                              on_row=lambda row: (report(row), advance()))
    if json_output:
        stdout.print(json.dumps({"mean": _numbers(evaluation.means()), "measured": total - len(evaluation.failed),
                                 "failed": len(evaluation.failed)}), markup=False)
    if not (quiet and json_output):
        (stderr if json_output else stdout).print(_table(evaluation))
    if csv_path is not None:
        _write_csv(csv_path, evaluation)
    if json_out is not None:
        json_out.write_text(json.dumps(_document(evaluation, results, reference), indent=2) + "\n")
    if evaluation.failed:
        say(f"dossr: {len(evaluation.failed)} of {total} images could not be measured (named above)", quiet)
        sys.exit(1)


class _progress:
    """A bar on stderr while pairs are measured; nothing when quiet or piped."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar = None if quiet or not stderr.is_terminal else Progress(
            TextColumn("measuring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=stderr,
            transient=True)
        self.total = total

    def __enter__(self) -> Callable[[], None]:
        if self.bar is None:
            return lambda: None
        self.bar.start()
        task = self.bar.add_task("measuring", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _format(metric: str, value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.{_DIGITS.get(metric, 4)}f}"


def _numbers(values: dict[str, float]) -> dict[str, float | str]:
    """JSON has no infinity: an identical pair's PSNR is written as the string "inf"."""
    return {k: ("inf" if math.isinf(v) else v) for k, v in values.items()}


def _row_dict(row: Row) -> dict:
    found = {"result": row.name, "reference": row.reference, **_numbers(row.values)}
    return {**found, "error": row.error} if row.error is not None else found


def _table(evaluation: Evaluation) -> Table:
    crop = f"Y channel, crop {evaluation.crop_border}" if "PSNR" in evaluation.metrics else "no reference"
    table = Table(title=f"dossr eval ({crop})", show_edge=False)
    table.add_column("image")
    for metric in evaluation.metrics:
        table.add_column(metric, justify="right")
    for row in evaluation.rows:
        cells = [_format(m, row.values[m]) if m in row.values else "-" for m in evaluation.metrics]
        table.add_row(row.name, *cells)
    means = evaluation.means()
    table.add_section()
    table.add_row(f"mean of {len(evaluation.rows) - len(evaluation.failed)}",
                  *[_format(m, means[m]) if m in means else "-" for m in evaluation.metrics])
    return table


def _write_csv(path: Path, evaluation: Evaluation) -> None:
    with open(path, "w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["result", "reference", *evaluation.metrics, "error"])
        for row in evaluation.rows:
            writer.writerow([row.name, row.reference or "", *[row.values.get(m, "") for m in evaluation.metrics],
                             row.error or ""])


def _document(evaluation: Evaluation, results: Path, reference: Path | None) -> dict:
    return {"results": str(results), "reference": str(reference) if reference is not None else None,
            "conventions": {"psnr_ssim": "BasicSR calculate_psnr/calculate_ssim, test_y_channel=True (BT.601 Y on "
                            "[0, 255]), 8-bit, 11x11 Gaussian sigma 1.5 SSIM on the valid region; scikit-image",
                            "crop_border": evaluation.crop_border},
            "metrics": evaluation.metrics, "mean": _numbers(evaluation.means()),
            "unavailable": {u.metric: u.reason for u in evaluation.unavailable},
            "rows": [_row_dict(row) for row in evaluation.rows], "failed": len(evaluation.failed)}

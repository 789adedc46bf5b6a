"""The rows of the DoSSR paper's Table 1 that `dossr eval` computes, beside the paper's own numbers.

Upscales each test set's LR images with `dossr_cli.batch.job.run_jobs` (what `dossr batch` runs), writes
them to OUT/<set>/NAME.png, measures them against the HR folder with `dossr_cli.evaluate` (PSNR/SSIM on Y
with BasicSR's conventions; LPIPS, CLIP-IQA, MUSIQ, MANIQA through pyiqa when `dossr[eval]` is installed
and its weights can be had) and prints one table per set: ours | the paper's DoSSR column.

    python benchmarks/paper_table.py --weights default --realsr LR_DIR HR_DIR --drealsr LR_DIR HR_DIR \\
        --device cuda --out benchmarks/results/paper-table

The paper's test sets are StableSR's (huggingface.co/datasets/Iceclear/StableSR-TestSets: 128x128 LR
centre crops of RealSR and DRealSR, x4); TOPIQ is not among dossr eval's metrics and is printed as "-".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dossr_cli.batch.job import run_jobs
from dossr_cli.batch.params import UpscaleParams
from dossr_cli.errors import DossrError
from dossr_cli.evaluate import evaluate, list_images

if TYPE_CHECKING:
    from dossr_cli.pipeline import DoSSRPipeline

# DoSSR's column of Table 1 ("Quantitative comparison with state-of-the-art methods...", NFE 5), copied from
# Cui et al., "Taming Diffusion Prior for Image Super-Resolution with Domain Shift SDEs", NeurIPS 2024.
PAPER_DOSSR = {
    "RealSR": {"PSNR": 24.18, "SSIM": 0.6839, "LPIPS": 0.3374, "CLIPIQA": 0.7025, "MUSIQ": 69.42,
               "MANIQA": 0.5781, "TOPIQ": 0.6985},
    "DRealSR": {"PSNR": 26.82, "SSIM": 0.7298, "LPIPS": 0.3689, "CLIPIQA": 0.6776, "MUSIQ": 64.40,
                "MANIQA": 0.5214, "TOPIQ": 0.6618},
}
CHUNK = 8  # images handed to run_jobs at once (those of one size share a model batch)


def upscale_folder(pipe: DoSSRPipeline, lr: Path, out: Path, params: UpscaleParams) -> list[str]:
    """Every LR image -> OUT/NAME.png; returns the one-line failures (named, never dropped)."""
    out.mkdir(parents=True, exist_ok=True)
    sources, failures = list_images(lr), []
    for start in range(0, len(sources), CHUNK):
        chunk = sources[start:start + CHUNK]
        for source, result in zip(chunk, run_jobs(pipe, chunk, params, ["png"] * len(chunk))):
            if isinstance(result, DossrError):
                failures.append(f"{source.name}: {result}")
            else:
                target = out / source.relative_to(lr).with_suffix(".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(result.data)
    return failures


def rows(measured: dict[str, float], paper: dict[str, float]) -> list[tuple[str, str, str]]:
    def cell(value: float | None) -> str:
        return "-" if value is None else ("inf" if math.isinf(value) else f"{value:.4f}")

    return [(metric, cell(measured.get(metric)), cell(value)) for metric, value in paper.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="as dossr's --weights: a name, bundle folder or .ckpt")
    parser.add_argument("--realsr", nargs=2, type=Path, metavar=("LR", "HR"))
    parser.add_argument("--drealsr", nargs=2, type=Path, metavar=("LR", "HR"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the results and paper_table.json")
    parser.add_argument("--steps", type=int, default=5, help="solver steps (the paper's NFE: 5)")
    parser.add_argument("--crop-border", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    sets = {name: folders for name, folders in (("RealSR", args.realsr), ("DRealSR", args.drealsr)) if folders}
    if not sets:
        parser.error("give --realsr LR HR and/or --drealsr LR HR")
    from dossr_cli.pipeline import DoSSRPipeline

    pipe = DoSSRPipeline.from_pretrained(args.weights, device=args.device, dtype=args.dtype)
    params = UpscaleParams(steps=args.steps, format="png").validate()
    report, failed = {}, 0
    for name, (lr, hr) in sets.items():
        failures = upscale_folder(pipe, lr, args.out / name, params)
        evaluation = evaluate(args.out / name, hr, args.crop_border)
        failures += [f"{row.name}: {row.error}" for row in evaluation.failed]
        failed += len(failures)
        means = evaluation.means()
        print(f"\n{name} ({len(evaluation.rows) - len(evaluation.failed)} images, {args.steps} steps, "
              f"crop {args.crop_border})")
        print(f"{'metric':<8} {'ours':>9} {'paper':>9}")
        for metric, ours, paper in rows(means, PAPER_DOSSR[name]):
            print(f"{metric:<8} {ours:>9} {paper:>9}")
        for missing in evaluation.unavailable:
            print(f"  {missing.line()}")
        for failure in failures:
            print(f"  failed: {failure}", file=sys.stderr)
        report[name] = {"ours": {k: (None if math.isinf(v) else v) for k, v in means.items()},
                        "paper": PAPER_DOSSR[name], "failed": failures,
                        "unavailable": {u.metric: u.reason for u in evaluation.unavailable}}
    (args.out / "paper_table.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

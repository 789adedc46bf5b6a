"""Latency against input size, steps and batch: the README's table and plot.

Runs `dossr_cli.bench.run_bench` (what `dossr bench --json` prints) over a grid, appends
one JSON line per configuration to OUT.jsonl, and writes OUT.md (a Markdown table) and,
when matplotlib is installed, OUT.png (latency per image against output size, one line
per model x steps x batch).

    python benchmarks/latency_table.py --config tiny --out benchmarks/results/cpu-tiny
    python benchmarks/latency_table.py --config full --sizes 64,128 --steps 1,5 --batches 1 \\
        --out benchmarks/results/cpu-full
    python benchmarks/latency_table.py --config full --device cuda --sizes 128,256,512 \\
        --batches 1,8,32 --compile --out benchmarks/results/h200   # on a GPU

Random weights (dossr_cli.random_weights.fast_random_networks): the same compute as the
real model. `--plot-only` redraws from an existing OUT.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dossr_cli.bench import run_bench
from dossr_cli.devices import resolve_device, resolve_dtype
from dossr_cli.networks.config import ModelConfig
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import fast_random_networks, tiny_config


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def measure(args: argparse.Namespace, out: Path) -> list[dict]:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = ModelConfig() if args.config == "full" else tiny_config()
    pipe = DoSSRPipeline(fast_random_networks(config, device=device, dtype=dtype), device, dtype)
    if args.compile:
        pipe.compile()
    rows = []
    out.with_suffix(".jsonl").write_text("")
    for size in numbers(args.sizes):
        for steps in numbers(args.steps):
            for batch in numbers(args.batches):
                result = run_bench(pipe, size, steps, args.order, batch, args.warmup, args.runs,
                                   "default" if args.compile else "off").to_json()
                result["model"] = args.config
                outside = result["stages"]["other"] + result["stages"]["color_fix"]  # no network runs in these
                result["outside_networks_share"] = outside / sum(result["stages"].values())
                rows.append(result)
                with out.with_suffix(".jsonl").open("a") as log:
                    log.write(json.dumps(result) + "\n")
                print(f"{size:>4} px  {steps} steps  batch {batch:>2}: p50 {result['latency_p50_s']:.4f} s, "
                      f"{result['images_per_s']:.2f} images/s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [("| model | input -> output | steps | batch | p50 s / call | p90 s / call | images/s | TFLOP/s "
             "| outside networks | peak memory |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']}² -> {r['output_size']}² | {r['steps']} | {r['batch']} "
                     f"| {r['latency_p50_s']:.3f} | {r['latency_p90_s']:.3f} | {r['images_per_s']:.2f} "
                     f"| {r['tflops']:.3g} | {100 * r['outside_networks_share']:.1f}% "
                     f"| {r['peak_memory_bytes'] / (1 << 30):.2f} GiB |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault((r["model"], r["steps"], r["batch"]), []).append(
            (r["output_size"], r["latency_p50_s"] / r["batch"]))
    for (model, steps, batch), points in sorted(series.items()):
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                  label=f"{model}, {steps} steps, batch {batch}")
    sides = sorted({r["output_size"] for r in rows})
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(sides, [f"{side}²" for side in sides])
    axes.minorticks_off()
    axes.set_xlabel("output size (pixels)")
    axes.set_ylabel("seconds per image (p50)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title(f"dossr bench, {rows[0]['device'].split(',')[0]}, {rows[0]['dtype']}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sizes", default="32,64,128")
    parser.add_argument("--steps", default="1,5")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True, help="path without suffix")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        rows = [json.loads(line) for line in args.out.with_suffix(".jsonl").read_text().splitlines()]
    else:
        rows = measure(args, args.out)
    args.out.with_suffix(".md").write_text(table(rows))
    drawn = plot(rows, args.out.with_suffix(".png"))
    print(table(rows))
    print(f"wrote {args.out.with_suffix('.md')}" + (f" and {args.out.with_suffix('.png')}" if drawn else
                                                   " (pip install matplotlib for the plot)"))


if __name__ == "__main__":
    main()

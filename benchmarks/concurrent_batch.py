"""Several `dossr batch` processes started together on one folder: is every image computed exactly once?

For each count of processes (default 1, 2 and 4) a fresh output folder, every process started at
once on the same input folder of small images, tiny random weights (dossr_cli.random_weights).
Reports images computed (each process's `done` lines from --json, summed: must equal the number of
images), images done by another run, false failures (any `failed`: must be 0), the exit codes
(all 0), what the journal says, and wall time against one process. On a 2-core machine more
processes cannot be faster; the point is that they do not do the work twice.

    python benchmarks/concurrent_batch.py [--images 40] [--size 32] [--steps 2] [--processes 1 2 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dossr_cli.batch.journal import JOURNAL_NAME
from dossr_cli.checkpoint.bundle import save_bundle
from dossr_cli.random_weights import random_networks


def make_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(30, 226, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03}.png")


def run(count: int, source: Path, out: Path, weights: Path, steps: int, cache: Path) -> dict:
    command = [sys.executable, "-m", "dossr_cli", "batch", str(source), "-o", str(out), "--weights", str(weights),
               "--steps", str(steps), "--json", "-q"]
    env = {**os.environ, "DOSSR_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                 for _ in range(count)]
    results = [process.communicate() for process in processes]
    wall = time.perf_counter() - started
    statuses = [[json.loads(line)["status"] for line in stdout.decode().splitlines()] for stdout, _ in results]
    with contextlib.closing(sqlite3.connect(out / JOURNAL_NAME)) as db:
        journal = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    return {
        "processes": count,
        "wall_s": round(wall, 2),
        "computed": sum(s.count("done") for s in statuses),
        "computed_each": [s.count("done") for s in statuses],
        "by_another_run": sum(s.count("elsewhere") for s in statuses),
        "false_failures": sum(s.count("failed") for s in statuses),
        "exit_codes": [process.returncode for process in processes],
        "journal": journal,
        "errors": [line for _, stderr in results for line in stderr.decode().splitlines() if "error" in line][:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=32, help="input side in pixels (outputs are 4x)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dossr-concurrent-") as work:
        work_dir = Path(work)
        weights = save_bundle(random_networks(seed=0), work_dir / "tiny")
        make_images(work_dir / "in", args.images, args.size)
        rows = []
        for count in args.processes:
            row = run(count, work_dir / "in", work_dir / f"out{count}", weights, args.steps, work_dir / "cache")
            outputs = sorted(p.name for p in (work_dir / f"out{count}").iterdir() if not p.name.startswith("."))
            row["outputs"] = len(outputs)
            row["ok"] = (row["computed"] == args.images == row["outputs"] and row["false_failures"] == 0
                         and set(row["exit_codes"]) == {0} and row["journal"] == {"done": args.images})
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["wall_s"]
    print(f"\n{args.images} images {args.size}x{args.size}, {args.steps} steps, tiny random weights, "
          f"{os.cpu_count()} CPUs")
    print("| processes | images computed | done by another run | false failures | exit codes | wall s | vs 1 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['processes']} | {row['computed']} ({'+'.join(map(str, row['computed_each']))}) | "
              f"{row['by_another_run']} | {row['false_failures']} | {','.join(map(str, row['exit_codes']))} | "
              f"{row['wall_s']} | {row['wall_s'] / base:.2f}x |")
    if not all(row["ok"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

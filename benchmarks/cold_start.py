"""Command to first image: how long `dossr upscale` takes on a 128x128 input, split by phase.

Writes a random-weight bundle (the tiny test model, or the real model's shapes: 2.73 GB in
fp16) unless --bundle names one, reads its files once so the disk is warm, then runs the real
command `--runs` times, each in a fresh process. Each child is the CLI itself (`main()`), with a
clock on a few of its functions, so the phases are those of the real command:

    interpreter  process launch to the first line of Python
    imports      the modules `dossr upscale` imports (typer, torch, diffusers, ...)
    options      option checks and finding the weights
    build        the networks on the meta device (no storage)
    read+verify  every file read and hashed (parallel threads); on the new path also onto the device
    assign       names and shapes checked, tensors adopted by the networks
    to device    the pipeline's construction: `.to(device, dtype)` and layout
    image        decode, upscale, encode and write the image
    exit         interpreter shutdown after the image is written

    python benchmarks/cold_start.py [--config tiny|full] [--bundle-dtype fp16|fp32] [--device cpu]
        [--dtype fp32] [--steps 5] [--runs 3] [--workdir DIR] [--bundle PATH] [--keep] [--json-out FILE]

Output: one JSON line per run, then the median of each phase as a table row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("interpreter", "imports", "options", "build", "read+verify", "assign", "to device", "image", "exit")

# The child: the real CLI with timestamps (wall clock, shared with the parent) at the phase ends.
CHILD = r"""
import json, sys, time
marks = {"start": time.time()}
import dossr_cli.cli.app, dossr_cli.batch.job
marks["imports"] = time.time()
from dossr_cli import imageio
from dossr_cli.batch import job
from dossr_cli.checkpoint import bundle
from dossr_cli.pipeline import DoSSRPipeline

def clocked(owner, name, before=None, after=None, once=False):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if before and not (once and before in marks):
            marks[before] = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            if after and not (once and after in marks):
                marks[after] = time.time()
    setattr(owner, name, wrapper)

clocked(bundle, "_build_on_meta", "build_start", "build_end", once=True)
clocked(bundle, "_check_component", "reads_end", None, once=True)
clocked(bundle, "load_bundle", None, "load_end", once=True)
pretrained = DoSSRPipeline.from_pretrained.__func__
def from_pretrained(cls, *args, **kwargs):
    marks["options"] = time.time()
    try:
        return pretrained(cls, *args, **kwargs)
    finally:
        marks["pipeline"] = time.time()
DoSSRPipeline.from_pretrained = classmethod(from_pretrained)
clocked(job, "run_job", "image_start", None, once=True)
clocked(imageio, "write_atomic", None, "written", once=True)
try:
    dossr_cli.cli.app.main(sys.argv[2:])
except SystemExit as done:
    code = done.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, **marks}, out)
"""


def write_input(path: Path, side: int = 128) -> Path:
    """A deterministic smooth RGB image."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / (side - 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(12 * (x + y))], axis=-1)
    Image.fromarray((30 + 195 * rgb).astype(np.uint8), "RGB").save(path)
    return path


def write_bundle(folder: Path, config: str, dtype: str) -> Path:
    if config == "full":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bundle_load import write_bundle as write_full  # the full-size writer, built straight in dtype

        return write_full(folder, dtype)
    import torch

    from dossr_cli.checkpoint.bundle import save_bundle
    from dossr_cli.random_weights import random_networks

    return save_bundle(random_networks(seed=0), folder, dtype={"fp16": torch.float16, "fp32": torch.float32}[dtype])


def warm(bundle: Path) -> None:
    """Read every file once, so the runs read from the page cache (dropping it needs root)."""
    for path in bundle.iterdir():
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def split(marks: dict, launched: float, exited: float) -> dict[str, float]:
    """Seconds per phase from the child's timestamps."""
    points = [("interpreter", launched, marks["start"]), ("imports", marks["start"], marks["imports"]),
              ("options", marks["imports"], marks["options"]),
              ("build", marks["build_start"], marks["build_end"]),
              ("read+verify", marks["build_end"], marks["reads_end"]),
              ("assign", marks["reads_end"], marks["load_end"]),
              ("to device", marks["load_end"], marks["pipeline"]),
              ("image", marks["image_start"], marks["written"]), ("exit", marks["written"], exited)]
    phases = {name: round(end - begin, 3) for name, begin, end in points}
    phases["options"] = round(phases["options"] + marks["build_start"] - marks["options"], 3)  # resolve_weights
    phases["to first image"] = round(marks["written"] - launched, 3)
    phases["command"] = round(exited - launched, 3)
    return phases


def run_once(bundle: Path, image: Path, out: Path, args: argparse.Namespace, cache: Path) -> dict:
    marks_file = out.with_suffix(".marks.json")
    command = [sys.executable, "-c", CHILD, str(marks_file), "upscale", str(image), "-o", str(out), "--weights",
               str(bundle), "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps), "-q",
               "--overwrite"]
    # The child runs the dossr_cli this script imported, whatever the current folder holds (`-c` puts it first).
    import dossr_cli

    code = str(Path(dossr_cli.__file__).resolve().parent.parent)
    env = {**os.environ, "DOSSR_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))}
    launched = time.time()
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, cwd=cache.parent)
    _, status, usage = os.wait4(child.pid, 0)
    exited = time.time()
    errors = child.stderr.read()
    marks = json.loads(marks_file.read_text()) if marks_file.exists() else {}
    if os.waitstatus_to_exitcode(status) or marks.get("code") not in (0, None):
        raise SystemExit(f"dossr upscale failed ({marks.get('code')}): {errors.strip()[-800:]}")
    return {**split(marks, launched, exited), "peak_rss_bytes": usage.ru_maxrss * 1024,
            "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--bundle-dtype", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--bundle", type=Path, default=None, help="Use this bundle instead of writing one.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep the bundle written (to rerun with --bundle).")
    parser.add_argument("--json-out", type=Path, default=None, help="Also write the summary as JSON here.")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dossr-cold-", dir=args.workdir))
    try:
        bundle = args.bundle
        if bundle is None:
            started = time.perf_counter()
            bundle = write_bundle(workdir / "bundle", args.config, args.bundle_dtype)
            print(f"bundle written in {time.perf_counter() - started:.1f} s: {bundle}", file=sys.stderr, flush=True)
        size = sum(f.stat().st_size for f in bundle.glob("*.safetensors"))
        image = write_input(workdir / "in.png")
        warm(bundle)
        runs = []
        for run in range(args.runs):
            result = run_once(bundle, image, workdir / "out.png", args, workdir / "cache")
            runs.append(result)
            print(json.dumps({"run": run + 1, "load_average": load_average(), **result}), flush=True)
        keys = [*PHASES, "to first image", "command", "peak_rss_bytes"]
        median = {key: statistics.median(r[key] for r in runs) for key in keys}
        summary = {"config": args.config, "bundle_bytes": size, "device": args.device, "dtype": args.dtype,
                   "steps": args.steps, "runs": args.runs, "load_average": load_average(), "median": median}
        print("| " + " | ".join(["bundle", *keys[:-1], "peak RSS"]) + " |")
        label = args.config if args.bundle is None else args.bundle.name
        row = [f"{label} ({size / 1e9:.3g} GB)", *(f"{median[k]:.2f}" for k in keys[:-1]),
               f"{median['peak_rss_bytes'] / (1 << 30):.2f} GiB"]
        print("| " + " | ".join(row) + " |")
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(summary) + "\n")
    finally:
        if args.keep and args.bundle is None:
            shutil.rmtree(workdir / "cache", ignore_errors=True)
            print(f"kept {workdir / 'bundle'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

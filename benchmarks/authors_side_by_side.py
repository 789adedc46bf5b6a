"""CPU latency side by side: the authors' DoSSR inference path and ours, same full-size random weights.

    /work/venv/bin/python benchmarks/authors_side_by_side.py \
        --authors-repo /work/authors/DoSSR --authors-python /work/authors/venv/bin/python \
        --workdir /work/authors/work/side_by_side --runs 3 --threads 2

The paper's task: one 128x128 RGB image -> 512x512 (x4), 5 solver steps, order 3 (DoS-SDE), wavelet
colour fix, fp32, CPU. Steps, each in its own process so that no two copies of the weights are ever
in memory together (peak about 10 GB, during the import):

1. writes WORKDIR/dossr_full_random.ckpt if missing: every key and shape of the released checkpoint
   (benchmarks/data/authors_full_layout.json, 1717.6 M parameters, 6.9 GB), randn * 0.02;
2. imports it into WORKDIR/bundle if missing (`dossr weights import CKPT --out BUNDLE`);
3. theirs: benchmarks/authors_side_by_side_driver.py under --authors-python builds their model from
   their config, loads the checkpoint, and times their scripts/inference.py process() (input array ->
   RRDBNet, encoders, text encoder, sampler, decoder, colour fix -> output image), model load excluded;
4. ours: DoSSRPipeline.from_pretrained(BUNDLE, cpu, fp32) timed by dossr_cli.bench.run_bench;

then prints one JSON object: both medians (after --warmup untimed runs), ours/theirs, both stage
breakdowns, the machine, both torch versions and the load average around each side.
Needs about 14 GB of free disk in WORKDIR (checkpoint + bundle) and 10 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "authors_side_by_side_driver.py"
MARK = "RESULT_JSON "


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def child_result(command: list[str], threads: int) -> dict:
    """Run a child (its progress on our stderr) and return its RESULT_JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    before = os.getloadavg()
    done = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        raise SystemExit(f"no result from {command[:3]}: {done.stdout[-2000:]}")
    result = json.loads(lines[-1][len(MARK):])
    result["loadavg_1_5_15_before"] = [round(x, 2) for x in before]
    result["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def write_checkpoint_stage(path: Path) -> None:
    sys.path.insert(0, str(HERE))
    from import_memory import write_checkpoint  # randn * 0.02 per parameter, zero placeholder buffers

    partial = path.with_suffix(".partial")
    count = write_checkpoint(partial)
    partial.rename(path)
    print(MARK + json.dumps({"values": count, "bytes": path.stat().st_size}), flush=True)


def ours_stage(bundle: Path, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from dossr_cli.bench import run_bench
    from dossr_cli.pipeline import DoSSRPipeline

    started = time.perf_counter()
    pipe = DoSSRPipeline.from_pretrained(bundle, device="cpu", dtype="fp32")
    load_seconds = time.perf_counter() - started
    outputs = []
    upscale_tensor = pipe.upscale_tensor

    def recorded(*a, **k):
        out = upscale_tensor(*a, **k)
        outputs.append(out)
        return out

    pipe.upscale_tensor = recorded  # keeps the last output, to check it is finite

    def progress(done: int, total: int) -> None:
        print(f"ours run {done}/{total}", file=sys.stderr, flush=True)

    result = run_bench(pipe, size=args.size, steps=args.steps, order=3, batch=1, warmup=args.warmup,
                       runs=args.runs, on_run=progress).to_json()
    image = outputs[-1]
    result.update(output_shape=list(image.shape), output_float_finite=bool(torch.isfinite(image).all()),
                  output_float_min_max_mean=[float(image.min()), float(image.max()), float(image.mean())],
                  model_load_s=load_seconds, threads=torch.get_num_threads(),
                  n_params=sum(p.numel() for p in pipe.networks.parameters()))
    print(MARK + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-repo", type=Path, help="their DoSSR work tree")
    parser.add_argument("--authors-python", type=Path, help="python of a venv with their deps")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dossr-side-by-side"),
                        help="where the checkpoint and bundle live (kept between runs)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", choices=["both", "theirs", "ours", "prepare"], default="both",
                        help="prepare: only write the checkpoint and the bundle")
    parser.add_argument("--stage", choices=["write-checkpoint", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    checkpoint = args.workdir / "dossr_full_random.ckpt"
    bundle = args.workdir / "bundle"
    if args.stage == "write-checkpoint":
        return write_checkpoint_stage(checkpoint)
    if args.stage == "ours":
        return ours_stage(bundle, args)

    if args.only in ("both", "theirs") and not (args.authors_repo and args.authors_python):
        parser.error("--authors-repo and --authors-python are needed to time their side")
    args.workdir.mkdir(parents=True, exist_ok=True)
    this = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(args.workdir)]
    common = ["--runs", str(args.runs), "--warmup", str(args.warmup), "--threads", str(args.threads),
              "--size", str(args.size), "--steps", str(args.steps)]
    if not checkpoint.exists():
        print(f"writing {checkpoint}", file=sys.stderr, flush=True)
        child_result(this + ["--stage", "write-checkpoint"], args.threads)
    if not bundle.exists():
        print(f"importing into {bundle}", file=sys.stderr, flush=True)
        env = {**os.environ, "DOSSR_CACHE_DIR": str(args.workdir / "cache")}
        subprocess.run([sys.executable, "-m", "dossr_cli", "weights", "import", str(checkpoint), "--out",
                        str(bundle)], check=True, env=env, stdout=subprocess.DEVNULL)

    if args.only == "prepare":
        return print(json.dumps({"checkpoint": str(checkpoint), "bundle": str(bundle)}))
    theirs = ours = None
    if args.only in ("both", "theirs"):
        theirs = child_result([str(args.authors_python), str(DRIVER), "--authors-repo", str(args.authors_repo),
                               "--checkpoint", str(checkpoint)] + common, args.threads)
    if args.only in ("both", "ours"):
        ours = child_result(this + ["--stage", "ours"] + common, args.threads)

    report = {
        "task": f"{args.size}x{args.size} RGB -> x4, {args.steps} steps, order 3 (DoS-SDE), wavelet colour fix, "
                "fp32, CPU, batch 1",
        "latency_theirs_s": theirs and theirs["latency_p50_s"],
        "latency_ours_s": ours and ours["latency_p50_s"],
        "ratio_ours_over_theirs": (ours["latency_p50_s"] / theirs["latency_p50_s"]) if theirs and ours else None,
        "statistic": f"median of {args.runs} runs after {args.warmup} warm-up; model load excluded",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": args.threads,
                    "python_ours": platform.python_version()},
        "torch_theirs": theirs and theirs["torch"],
        "torch_ours": ours and ours["torch"],
        "checkpoint": str(checkpoint),
        "bundle": str(bundle),
        "theirs": theirs,
        "ours": ours,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

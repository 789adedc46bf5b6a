"""The one prepared GPU run: every figure issue 12 asks of a GPU, each part time-boxed.

GPU time comes in one short lease, so this spends it on measuring, not on finding bugs: each
part runs in its own process group with its own timeout, under one total deadline, and writes
its record to `OUT/records.jsonl` as soon as it ends (status ok, failed, timeout or skipped,
seconds, and its figures or the last lines of its error), so a part that fails or hangs costs
at most its budget and every record before it is already on disk. A part the deadline cannot
fit any more is recorded as skipped. Each part's full output is kept in `OUT/logs/`.

    bash benchmarks/gpu_check.sh [--cpu] [--out DIR] [--deadline SECONDS] [--only PART,...]

`--cpu` runs the same parts on the tiny model in fp32 at small sizes (seconds each), and
records the CUDA-only ones (compile, CUDA graphs, the full-size cold start) as skipped: CI runs
this mode, so the script itself is tested before any GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_DEADLINE_S, CPU_DEADLINE_S = 450, 300  # the GPU run must end within 8 minutes, start-up included
MIN_PART_S = 10  # a part given less than this (or a third of its budget) is skipped, not started
# For the test of the time-boxing: PART=SECONDS makes that part sleep first, as a hang would.
SLEEP_ENV = "DOSSR_GPU_CHECK_SLEEP"


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: float
    command: list[str]
    gpu_only: str | None = None  # why this part is skipped in --cpu mode
    result_file: str | None = None  # figures written to this file (in OUT) rather than stdout


def dossr(*args: object) -> list[str]:
    return [sys.executable, "-m", "dossr_cli", *map(str, args)]


def snippet(name: str, cpu: bool) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--run-part", name, *(["--cpu"] if cpu else [])]


def plan(cpu: bool, out: Path) -> list[Part]:
    """The parts in the order they run: the cheap, sure figures first, compilation last."""
    if cpu:  # the tiny model at 16 -> 64 pixels: seconds per part
        model, dtype, size, big_batch, timed = "tiny", "fp32", 16, 2, ["--warmup", "0", "--runs", "2"]
    else:  # the paper's task, 128 -> 512
        model, dtype, size, big_batch, timed = "full", "bf16", 128, 32, ["--warmup", "3", "--runs", "10"]

    def bench(name: str, budget: float, steps: int, batch: int, *extra: str, gpu_only: str | None = None) -> Part:
        command = dossr("bench", "--random-weights", "--random-config", model, "--json", "-q", "--dtype", dtype, "--size", size,
                        "--steps", steps, "--batch", batch, *timed, *extra)
        return Part(name, budget, command, gpu_only=gpu_only)

    compile_note = "compiling the model takes minutes on a CPU" if cpu else None
    graphs_note = "CUDA graphs need a CUDA device" if cpu else None
    cold = ["--runs", "1" if cpu else "2", "--steps", "1", "--device", "cpu" if cpu else "cuda", "--dtype", dtype]
    return [
        Part("environment", 30, snippet("environment", cpu)),
        Part("matmul", 40, snippet("matmul", cpu)),
        bench("bench-eager-s5-b1", 60, 5, 1),
        bench("bench-eager-s1-b1", 45, 1, 1),
        bench(f"bench-eager-s5-b{big_batch}", 90, 5, big_batch),
        bench("layout-contiguous", 50, 1 if cpu else 5, 1, "--memory-format", "contiguous"),
        bench("layout-channels-last", 50, 1 if cpu else 5, 1, "--memory-format", "channels-last"),
        Part("tiled-4096", 90, snippet("tiled-4096", cpu)),
        bench("bench-compile-s5-b1", 150, 5, 1, "--compile", gpu_only=compile_note),
        bench("bench-cuda-graphs-s5-b1", 120, 5, 1, "--cuda-graphs", gpu_only=graphs_note),
        Part("fp16-fallback", 45, snippet("fp16-fallback", cpu)),
        Part("cold-start-tiny", 60, [sys.executable, str(REPO / "benchmarks" / "cold_start.py"), "--config", "tiny",
                                     *cold, "--json-out", str(out / "cold_start_tiny.json")],
             result_file="cold_start_tiny.json"),
        Part("cold-start-full", 150, [sys.executable, str(REPO / "benchmarks" / "cold_start.py"), "--config", "full",
                                      *cold, "--json-out", str(out / "cold_start_full.json")],
             gpu_only="writing a 2.7 GB bundle takes minutes on a CPU" if cpu else None,
             result_file="cold_start_full.json"),
        bench("bench-compile-s1-b1", 90, 1, 1, "--compile", gpu_only=compile_note),
        bench("bench-cuda-graphs-s1-b1", 90, 1, 1, "--cuda-graphs", gpu_only=graphs_note),
        bench(f"bench-compile-s5-b{big_batch}", 120, 5, big_batch, "--compile", gpu_only=compile_note),
    ]


def run_part(part: Part, seconds: float, out: Path, cpu: bool = False) -> dict:
    """Run one part in its own process group; cut it (and everything it started) at `seconds`."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = part.command
    sleep = dict(item.split("=", 1) for item in os.environ.get(SLEEP_ENV, "").split(",") if "=" in item)
    if part.name in sleep:  # the test's stand-in for a hang
        command = ["sh", "-c", f'sleep {float(sleep[part.name])} && exec "$@"', "sh", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if cpu:  # OpenMP's spinning threads slow ~50x on oversubscribed cores (17.6 s against 0.35 s per call at
        env.setdefault("OMP_NUM_THREADS", "1")  # load 9 on 2 cores); the CPU mode tests the script, not speed
    started = time.perf_counter()
    with open(logs / f"{part.name}.out", "w") as stdout, open(logs / f"{part.name}.err", "w") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
                                 start_new_session=True)
        try:
            code = child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            code = None
            _kill_group(child)
    record = {"part": part.name, "seconds": round(time.perf_counter() - started, 2), "budget_s": round(seconds, 1),
              "command": " ".join(command)}
    if code is None:
        return {**record, "status": "timeout", "error": f"cut at its {seconds:.0f} s budget", **_tail(logs, part)}
    if code != 0:
        return {**record, "status": "failed", "exit_code": code, **_tail(logs, part)}
    try:
        result = _figures(part, logs, out)
    except (OSError, ValueError) as error:
        return {**record, "status": "failed", "error": f"no figures: {error}", **_tail(logs, part)}
    return {**record, "status": "ok", "result": result}


def _kill_group(child: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(logs: Path, part: Part, lines: int = 20) -> dict:
    text = (logs / f"{part.name}.err").read_text(errors="replace").splitlines()
    return {"stderr_tail": text[-lines:]}


def _figures(part: Part, logs: Path, out: Path) -> dict:
    """The part's figures: its result file, else the last JSON object it printed."""
    if part.result_file is not None:
        return json.loads((out / part.result_file).read_text())
    for line in reversed((logs / f"{part.name}.out").read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("it printed no JSON object")


def run_all(parts: list[Part], cpu: bool, out: Path, deadline_s: float, budgets: dict[str, float]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "records.jsonl"
    end = time.monotonic() + deadline_s
    records = []
    with open(records_path, "a") as records_file:
        for part in parts:
            budget = budgets.get(part.name, part.budget_s)
            left = end - time.monotonic()
            if cpu and part.gpu_only:
                record = {"part": part.name, "status": "skipped", "seconds": 0.0, "reason": part.gpu_only}
            elif min(budget, left) < min(MIN_PART_S, budget / 3):
                record = {"part": part.name, "status": "skipped", "seconds": 0.0,
                          "reason": f"deadline: {max(left, 0):.0f} s left of {deadline_s:.0f} s"}
            else:
                record = run_part(part, min(budget, left), out, cpu)
            record["mode"] = "cpu" if cpu else "gpu"
            records.append(record)
            records_file.write(json.dumps(record) + "\n")
            records_file.flush()
            os.fsync(records_file.fileno())
            print(f"{part.name:28} {record['status']:8} {record['seconds']:7.1f} s  {_headline(record)}",
                  file=sys.stderr, flush=True)
    return records


def _headline(record: dict) -> str:
    result = record.get("result") or {}
    if "latency_p50_s" in result:
        return f"p50 {result['latency_p50_s']:.4f} s, {result['images_per_s']:.2f} images/s"
    for key in ("tflops", "peak_allocated_gib", "device_name"):
        if key in result:
            return f"{key} {result[key]}"
    if "median" in result:
        return f"to first image {result['median'].get('to first image')} s"
    return record.get("reason") or record.get("error") or (record.get("stderr_tail") or [""])[-1][:100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="The tiny model in fp32 on the CPU (what CI runs).")
    parser.add_argument("--out", type=Path, default=None, help="Folder for records.jsonl and logs/ "
                        "(default benchmarks/results/gpu-check-TIME, or cpu-check-TIME).")
    parser.add_argument("--deadline", type=float, default=None, help="Seconds for the whole run (default "
                        f"{GPU_DEADLINE_S} on a GPU, {CPU_DEADLINE_S} with --cpu).")
    parser.add_argument("--only", default=None, help="Comma-separated part names (e.g. to rerun one).")
    parser.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                        help="Another budget for one part (repeatable).")
    parser.add_argument("--list", action="store_true", help="Print the parts and their budgets, run nothing.")
    parser.add_argument("--run-part", default=None, help=argparse.SUPPRESS)  # a snippet part, in its child
    args = parser.parse_args()
    if args.run_part is not None:
        from gpu_check_parts import SNIPPETS

        print(json.dumps(SNIPPETS[args.run_part](args.cpu)), flush=True)
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "benchmarks" / "results" / f"{'cpu' if args.cpu else 'gpu'}-check-{stamp}").resolve()
    parts = plan(args.cpu, out)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {p.name for p in parts})
        if unknown:
            parser.error(f"--only: no part named {', '.join(unknown)}; --list shows them")
        parts = [p for p in parts if p.name in wanted]
    if args.list:
        for part in parts:
            print(f"{part.name:28} {part.budget_s:5.0f} s  {' '.join(part.command)}")
        return
    budgets = _budgets(args.budget, {p.name for p in plan(args.cpu, out)}, parser)
    deadline = args.deadline if args.deadline is not None else CPU_DEADLINE_S if args.cpu else GPU_DEADLINE_S
    print(f"gpu_check: {len(parts)} parts, deadline {deadline:.0f} s, records in {out / 'records.jsonl'}",
          file=sys.stderr, flush=True)
    records = run_all(parts, args.cpu, out, deadline, budgets)
    failed = [r["part"] for r in records if r["status"] in ("failed", "timeout")]
    print(json.dumps({"out": str(out), "parts": len(records), "failed_or_timeout": failed}))


def _budgets(items: list[str], names: set[str], parser: argparse.ArgumentParser) -> dict[str, float]:
    budgets = {}
    for item in items:
        name, _, seconds = item.partition("=")
        try:
            budgets[name] = float(seconds)
        except ValueError:
            parser.error(f"--budget must look like PART=SECONDS; got {item!r}")
        if name not in names or budgets[name] <= 0:
            parser.error(f"--budget {item}: no part named {name!r} or not a positive number of seconds")
    return budgets


if __name__ == "__main__":
    main()

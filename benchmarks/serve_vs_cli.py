"""Per-image wall time of `dossr upscale` run N times in a row, locally and with --server, on one image.

Each local call is a fresh process that imports torch and loads the weights before its image;
each --server call is a fresh process that imports only the client and sends the image to one
warm `dossr serve` (started here on 127.0.0.1 after the local calls, so the two never compete
for the CPU or for memory, and sent one untimed image first). Then the service's own latency: N POST /v1/upscale calls timed by
the client and by the server (X-Dossr-Seconds), against `dossr bench`'s p50 for the same size,
steps and weights.

    python benchmarks/serve_vs_cli.py [--config tiny|full] [--runs 20] [--size 32] [--steps 5]
        [--bundle PATH] [--json-out benchmarks/results/serve_vs_cli_<config>.json]

--config full writes random full-size weights once (fp16, 2.7 GB) in a temporary folder, as
benchmarks/cold_start.py does; each process then needs about 6 GB of memory.
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

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cold_start import load_average, warm, write_bundle, write_input  # benchmarks/ is not a package
from serve_load import start_server, stop_server

REPO = HERE.parent


def child_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DOSSR_SERVER", "DOSSR_TOKEN", "DOSSR_WEIGHTS")}
    env.update(DOSSR_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def timed_calls(args: list[str], runs: int, env: dict[str, str], out: Path) -> list[dict]:
    """`dossr upscale IMAGE -o OUT ARGS --json` `runs` times: the wall time of each process and its JSON line."""
    calls = []
    for run in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "dossr_cli", "upscale", *args, "-o", str(out), "--overwrite",
                               "--json", "-q"], env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"dossr upscale {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        calls.append({"wall_seconds": round(wall, 3), "image_seconds": json.loads(done.stdout)["seconds"]})
        print(json.dumps({"run": run + 1, **calls[-1]}), file=sys.stderr, flush=True)
    return calls


def service_latency(url: str, image: Path, steps: int, runs: int) -> dict:
    """POST /v1/upscale `runs` times (one warm-up first): client wall time and the server's own seconds."""
    data = image.read_bytes()
    fields = {"steps": str(steps)}
    session = requests.Session()
    walls, servers = [], []
    for run in range(runs + 1):
        started = time.perf_counter()
        answer = session.post(url + "v1/upscale", files={"image": (image.name, data)}, data=fields,
                              timeout=(10, 3600))
        wall = time.perf_counter() - started
        answer.raise_for_status()
        if run:  # the first call is the warm-up
            walls.append(wall)
            servers.append(float(answer.headers["X-Dossr-Seconds"]))
    if not walls:
        return {}
    return {"client_p50_s": round(statistics.median(walls), 4), "server_p50_s": round(statistics.median(servers), 4)}


def bench_p50(bundle: Path, size: int, steps: int, runs: int, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-m", "dossr_cli", "bench", "--weights", str(bundle), "--size", str(size),
                           "--steps", str(steps), "--runs", str(runs), "--warmup", "1", "--json", "-q"],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"dossr bench failed ({done.returncode}): {done.stderr.strip()}")
    result = json.loads(done.stdout)
    return {"p50_s": result["latency_p50_s"], "p90_s": result["latency_p90_s"], "device": result.get("device"),
            "dtype": result.get("dtype")}


def summary(calls: list[dict]) -> dict:
    walls = [call["wall_seconds"] for call in calls]
    return {"wall_p50_s": round(statistics.median(walls), 3), "wall_mean_s": round(statistics.fmean(walls), 3),
            "wall_total_s": round(sum(walls), 2), "image_p50_s": round(statistics.median(
                call["image_seconds"] for call in calls), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=32, help="Side of the square input image.")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bundle", type=Path, default=None, help="Use this bundle instead of writing one.")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if not 1 <= args.runs <= 1000:
        raise SystemExit(f"--runs must be in 1..1000; got {args.runs}")
    workdir = Path(tempfile.mkdtemp(prefix="dossr-serve-vs-cli-"))
    server = None
    try:
        bundle = args.bundle or write_bundle(workdir / "bundle", args.config, "fp16")
        warm(bundle)
        image = write_input(workdir / "in.png", args.size)
        env = child_env(workdir / "cache")
        common = [str(image), "--steps", str(args.steps)]
        local = timed_calls([*common, "--weights", str(bundle)], args.runs, env, workdir / "local.png")
        server = start_server(bundle, workdir / "server")
        service_latency(server.url, image, args.steps, 0)  # the server's first image pays one-off set-up: not timed
        remote = timed_calls([*common, "--server", server.url], args.runs, env, workdir / "remote.png")
        identical = (workdir / "local.png").read_bytes() == (workdir / "remote.png").read_bytes()
        service = service_latency(server.url, image, args.steps, args.runs)
        stop_server(server.process)
        server = None
        bench = bench_p50(bundle, args.size, args.steps, args.runs, env)
    finally:
        if server is not None:
            stop_server(server.process)
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"config": args.config, "size": args.size, "steps": args.steps, "runs": args.runs,
              "local": summary(local), "server": summary(remote), "same_bytes": identical, "service": service,
              "bench": bench, "load_average": load_average(), "cpu_count": os.cpu_count()}
    print(f"| {args.config}, {args.size}x{args.size} -> {4 * args.size}x{4 * args.size}, {args.steps} steps, "
          f"{args.runs} calls | p50 wall per image | mean | total | in-process image p50 |")
    print("|---|---|---|---|---|")
    for name, row in (("dossr upscale", result["local"]), ("dossr upscale --server", result["server"])):
        print(f"| {name} | {row['wall_p50_s']:.2f} s | {row['wall_mean_s']:.2f} s | {row['wall_total_s']:.1f} s | "
              f"{row['image_p50_s']:.2f} s |")
    print(f"| POST /v1/upscale (client / X-Dossr-Seconds) | {service['client_p50_s']:.3f} s / "
          f"{service['server_p50_s']:.3f} s | | | |")
    print(f"| dossr bench p50 | {bench['p50_s']:.3f} s | | | |")
    print(f"same bytes local vs --server: {identical}; load average {result['load_average']}")
    out = args.json_out or HERE / "results" / f"serve_vs_cli_{args.config}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Peak memory and time against output size, tiled and untiled (issue: any image size).

Each size runs in a fresh child process, so its peak resident memory (CPU) or peak
device memory (CUDA) is its own. Random weights: the same compute as real ones.

    python benchmarks/tiling_memory.py --model tiny --sizes 64,128,256 --tile 256
    python benchmarks/tiling_memory.py --model full --device cuda --dtype bf16 --sizes 256,512,1024 --tile 1024

Prints one JSON line per (size, tiling) and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch
from dossr_cli.networks.config import ModelConfig
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks, tiny_config
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
if args["model"] == "tiny":
    networks = random_networks(tiny_config(), seed=0)
else:
    with torch.device(args["device"] if args["device"] != "cpu" else "cpu"):
        from dossr_cli.networks import DoSSRNetworks
        networks = DoSSRNetworks(ModelConfig())  # default init: random weights, the real compute
pipe = DoSSRPipeline(networks, device=args["device"], dtype=args["dtype"])
side = args["size"]
lq = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
if pipe.device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
pipe.upscale_tensor(lq, seeds=[0], steps=args["steps"], tile_size=args["tile"] or None,
                    tile_overlap=args["overlap"])
if pipe.device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - started
peak = torch.cuda.max_memory_allocated() if pipe.device.type == "cuda" else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"seconds": seconds, "device_peak_bytes": peak, "peak_rss_bytes": rss}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--sizes", default="64,128,256", help="LR sides; the output is 4x")
    parser.add_argument("--tile", type=int, default=256, help="tile side in output pixels (0: untiled run only)")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--untiled", action="store_true", help="also run each size untiled, for comparison")
    args = parser.parse_args()
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        for tile in ([args.tile] if args.tile else []) + ([0] if args.untiled or not args.tile else []):
            config = {"model": args.model, "size": side, "tile": tile, "overlap": args.overlap, "steps": args.steps,
                      "device": args.device, "dtype": args.dtype, "threads": args.threads}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], check=False, capture_output=True,
                                  text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                raise SystemExit(done.returncode)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            row = {**config, "output": f"{4 * side}x{4 * side}", "seconds": round(result["seconds"], 2),
                   "peak_rss_bytes": result["peak_rss_bytes"],
                   "device_peak_bytes": result["device_peak_bytes"],
                   "wall_seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| output | tile | seconds | peak RSS | peak device |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        rss = f"{row['peak_rss_bytes'] / 2**30:.2f} GiB"
        dev = f"{row['device_peak_bytes'] / 2**30:.2f} GiB" if row["device_peak_bytes"] else "-"
        print(f"| {row['output']} | {row['tile'] or 'none'} | {row['seconds']} | {rss} | {dev} |")


if __name__ == "__main__":
    main()

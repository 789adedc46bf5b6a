"""Time and peak memory of loading a full-size bundle, the sha256 check included.

Writes a random-weight bundle with the real model's shapes (ModelConfig()'s defaults: 1.36 G
values, as the text tower is not part of a bundle) unless --bundle names one, then loads it
`--runs` times, each in a fresh child process sharing one dossr cache folder, and reports each
load's wall time (load_bundle only, not the imports), the child's CPU time (imports included:
steadier on a busy machine) and its peak resident memory against the bundle's size.

    python benchmarks/bundle_load.py [--dtype fp16|fp32] [--workdir DIR] [--keep] [--bundle PATH]

The files are read from the page cache when memory allows (dropping it needs root). An fp16
bundle is 2.7 GB and needs about 5 GB of memory to write; fp32 twice that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from pathlib import Path
from dossr_cli.checkpoint.bundle import load_bundle
started = time.perf_counter()
networks = load_bundle(Path(sys.argv[1]))
print(json.dumps({"load_seconds": round(time.perf_counter() - started, 2)}))
"""


def write_bundle(folder: Path, dtype_name: str) -> Path:
    """Random full-size networks built straight in `dtype` (no fp32 copy first), then saved."""
    import torch

    from dossr_cli.checkpoint.bundle import save_bundle
    from dossr_cli.networks import DoSSRNetworks
    from dossr_cli.networks.config import ModelConfig
    from dossr_cli.random_weights import scale_uniform

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    with torch.device("meta"):
        networks = DoSSRNetworks(ModelConfig())
    networks = networks.to(dtype).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in [*networks.named_parameters(), *networks.named_buffers()]:
            tensor.copy_(scale_uniform(key, tuple(tensor.shape), tensor.uniform_(-1.0, 1.0, generator=generator)))
    networks.context = networks.context.float()
    return save_bundle(networks, folder)


def load_once(bundle: Path, cache: Path) -> dict:
    env = {**os.environ, "DOSSR_CACHE_DIR": str(cache)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(bundle)], env=env, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"load failed with exit code {child.returncode}")
    return {**json.loads(out), "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_bytes": usage.ru_maxrss * 1024}  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--bundle", type=Path, default=None, help="Load this bundle instead of writing one.")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="Keep the bundle written (to rerun with --bundle).")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dossr-load-", dir=args.workdir))
    try:
        bundle = args.bundle
        if bundle is None:
            started = time.perf_counter()
            bundle = write_bundle(workdir / "bundle", args.dtype)
            print(f"bundle written in {time.perf_counter() - started:.0f} s: {bundle}", flush=True)
        size = sum(f.stat().st_size for f in bundle.glob("*.safetensors"))
        for run in range(args.runs):
            result = load_once(bundle, workdir / "cache")
            print(json.dumps({"run": run + 1, "bundle_bytes": size, **result,
                              "peak_over_bundle": round(result["peak_rss_bytes"] / size, 3)}), flush=True)
    finally:
        if args.keep and args.bundle is None:
            shutil.rmtree(workdir / "cache", ignore_errors=True)
            print(f"kept {workdir / 'bundle'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

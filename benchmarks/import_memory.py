"""Peak memory of `dossr weights import` on a full-size checkpoint in the authors' layout.

Writes a random-weight checkpoint with every key and shape of the released one
(benchmarks/data/authors_full_layout.json, dumped from the authors' model built from
their configs/model/cldm_v21.yaml: 1717.6 M parameters), then imports it in a child
process and reports that process's peak resident memory against the file's size.
Target (issue 3): peak <= 1.5 x the file.

    python benchmarks/import_memory.py [--workdir DIR] [--dtype fp16]

Needs about 2.5 x 6.9 GB of free disk and 10 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LAYOUT = Path(__file__).parent / "data" / "authors_full_layout.json"


def write_checkpoint(path: Path) -> int:
    layout = json.loads(LAYOUT.read_text())
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in layout["params"]}
    state.update({key: torch.zeros(shape, dtype=getattr(torch, dtype)) for key, shape, dtype in layout["buffers"]})
    torch.save(state, path)
    return sum(t.numel() for t in state.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dossr-import-", dir=args.workdir))
    try:
        checkpoint = workdir / "dossr_default.ckpt"
        started = time.perf_counter()
        count = write_checkpoint(checkpoint)
        size = checkpoint.stat().st_size
        print(f"checkpoint: {count / 1e6:.1f} M values, {size / 1e9:.2f} GB, written in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        command = [sys.executable, "-m", "dossr_cli", "weights", "import", str(checkpoint),
                   "--out", str(workdir / "bundle")] + (["--dtype", args.dtype] if args.dtype else [])
        env = {**os.environ, "DOSSR_CACHE_DIR": str(workdir / "cache")}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        bundle = sum(f.stat().st_size for f in (workdir / "bundle").glob("*.safetensors"))
        print(json.dumps({"file_bytes": size, "peak_rss_bytes": peak, "peak_over_file": round(peak / size, 3),
                          "bundle_bytes": bundle, "dtype": args.dtype or "as stored (fp32)",
                          "import_seconds": round(seconds, 1), "torch": torch.__version__}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The parts of `gpu_check.py` that are Python snippets rather than `dossr` commands.

Each takes `cpu` (the small CPU-mode sizes) and returns a JSON-ready dict of figures; it runs
in its own child process, so whatever it allocates or breaks ends with it.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

GIB = 1 << 30


def _device(cpu: bool):
    import torch

    if not cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the CPU mode")
    return torch.device("cpu" if cpu else "cuda")


def environment(cpu: bool) -> dict:
    """What the figures were measured on."""
    from importlib.metadata import version

    import torch

    import dossr_cli

    info = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "diffusers": version("diffusers"),
        "dossr": dossr_cli.__version__, "cuda_available": torch.cuda.is_available(),
        "commit": _command(["git", "rev-parse", "--short", "HEAD"]),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, device_count=torch.cuda.device_count(),
                    capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / GIB, 1),
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version(), free_memory_gib=round(torch.cuda.mem_get_info()[0] / GIB, 1))
    else:
        info["device_name"] = "cpu"
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = _command(["nvidia-smi", ("--query-gpu=name,driver_version,memory.total,memory.used,"
                                                       "clocks.max.sm,power.limit,temperature.gpu"),
                                        "--format=csv,noheader"])
        info["nvidia_smi_topology"] = _command(["nvidia-smi", "-L"])
    return info


def _command(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def matmul(cpu: bool) -> dict:
    """The ceiling the networks' TFLOP/s are read against: a large square matmul, bf16 (fp32 on a CPU)."""
    import torch

    device = _device(cpu)
    dtype = torch.float32 if cpu else torch.bfloat16
    results = {}
    for n in ((512, 1024) if cpu else (4096, 8192, 16384)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        repeats = 3 if cpu else max(5, int(2e13 // (2 * n ** 3)))
        for _ in range(2):
            a @ b
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        seconds = (time.perf_counter() - started) / repeats
        results[f"n{n}"] = round(2 * n ** 3 / seconds / 1e12, 2)
    return {"dtype": str(dtype).removeprefix("torch."), "tflops_by_size": results, "tflops": max(results.values())}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pipeline(cpu: bool, dtype_name: str):
    import torch

    from dossr_cli.networks.config import ModelConfig
    from dossr_cli.pipeline import DoSSRPipeline
    from dossr_cli.random_weights import fast_random_networks, tiny_config

    device = _device(cpu)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    config = tiny_config() if cpu else ModelConfig()
    return DoSSRPipeline(fast_random_networks(config, seed=0, device=device, dtype=dtype), device, dtype)


def tiled_4096(cpu: bool) -> dict:
    """Peak device memory of a tiled 4096x4096 output (1024x1024 input, 1 step, bf16): the target is
    under 8 GB. Once with the tile `--max-memory 8GB` picks, once with 1024-pixel tiles."""
    import torch

    from dossr_cli.bench import bench_input

    pipe = _pipeline(cpu, "fp32" if cpu else "bf16")
    side = 64 if cpu else 1024
    lq = bench_input(1, side)
    _sync(pipe.device)
    weights = torch.cuda.memory_allocated(pipe.device) if pipe.device.type == "cuda" else 0
    runs = {}
    for label, tile, budget in (("auto-8GB", "auto", 8 * GIB if not cpu else 64 << 20),
                                ("tile-1024", 128 if cpu else 1024, None)):
        tiles: list[int] = []
        if pipe.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(pipe.device)
        started = time.perf_counter()
        out = pipe.upscale_tensor(lq, steps=1, seeds=[0], tile_size=tile, max_memory=budget,
                                  tile_callback=lambda done, total, tiles=tiles: tiles.append(total))
        seconds = time.perf_counter() - started
        run = {"seconds": round(seconds, 2), "solver_tiles": max(tiles, default=1), "output": list(out.shape[-2:]),
               "finite": bool(torch.isfinite(out).all())}
        if pipe.device.type == "cuda":
            run.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated(pipe.device) / GIB, 3),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved(pipe.device) / GIB, 3),
                       peak_over_weights_gib=round((torch.cuda.max_memory_allocated(pipe.device) - weights) / GIB, 3))
        else:
            run["peak_host_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)
        runs[label] = run
    first = runs["auto-8GB"]
    return {"input": side, "weights_gib": round(weights / GIB, 3), "runs": runs,
            "peak_allocated_gib": first.get("peak_allocated_gib", first.get("peak_host_rss_gib"))}


def fp16_fallback(cpu: bool) -> dict:
    """An fp16 run: which stages overflowed and ran again in fp32 (the messages `on_retry` hears),
    on two calls in a row, so a second call shows whether the fallback is remembered."""
    import torch

    from dossr_cli.bench import bench_input

    pipe = _pipeline(cpu, "fp16")
    lq = bench_input(1, 16 if cpu else 128)
    calls = []
    for _ in range(2):
        messages: list[str] = []
        started = time.perf_counter()
        out = pipe.upscale_tensor(lq, steps=1 if cpu else 5, seeds=[0], tile_size=None, on_retry=messages.append)
        calls.append({"seconds": round(time.perf_counter() - started, 3), "fell_back": bool(messages),
                      "messages": messages, "finite": bool(torch.isfinite(out).all())})
    return {"dtype": "fp16", "calls": calls, "fell_back": any(c["fell_back"] for c in calls)}


SNIPPETS: dict[str, Callable[[bool], dict]] = {
    "environment": environment, "matmul": matmul, "tiled-4096": tiled_4096, "fp16-fallback": fp16_fallback,
}

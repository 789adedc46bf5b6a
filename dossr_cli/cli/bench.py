"""`dossr bench`: how fast this machine runs DoSSR, by default on the paper's task (128 -> 512, 5 steps)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dossr_cli.cli import common
from dossr_cli.cli.console import say, stderr, stdout
from dossr_cli.errors import UsageError

if TYPE_CHECKING:
    from dossr_cli.bench import BenchResult

RANDOM_CONFIGS = ("full", "tiny")


def bench(
    size: Annotated[int, typer.Option("--size", help="Side of the square input, in pixels (output: 4x).")] = 128,
    steps: common.Steps = 5,
    order: common.Order = 3,
    batch: Annotated[int, typer.Option("--batch", help="Images per call.")] = 1,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls first (compilation, caches).")] = 2,
    runs: Annotated[int, typer.Option("--runs", help="Timed calls.")] = 10,
    device: common.Device = "auto",
    dtype: common.Dtype = "auto",
    compile: common.Compile = False,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="Compile with CUDA graphs "
                                              "(mode reduce-overhead; CUDA only).")] = False,
    memory_format: common.MemoryFormat = "auto",
    weights: common.Weights = None,
    download: common.Download = False,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="The model with random weights instead "
                                                 "of a download: the same compute, for anyone to measure.")] = False,
    random_config: Annotated[str, typer.Option("--random-config", help="With --random-weights: full (the real "
                                               "model's size) or tiny (the test model).")] = "full",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Latency (p50/p90), images/s, peak memory, achieved TFLOP/s and time per stage.

    Exit codes: 0 measured, 1 failed, 2 usage error, 130 interrupted.
    """
    for name, value, least in (("--size", size, 8), ("--batch", batch, 1), ("--runs", runs, 1),
                               ("--warmup", warmup, 0)):
        if value < least:
            raise UsageError(f"{name} must be at least {least}; got {value}")
    if random_config not in RANDOM_CONFIGS:
        raise UsageError(f"--random-config must be one of {', '.join(RANDOM_CONFIGS)}; got {random_config!r}")
    if random_weights and weights is not None:
        raise UsageError("--weights and --random-weights exclude each other: pick one")
    common.make_params(4.0, None, None, steps, order, 500, 0, "wavelet", None, None, "all", None)  # checks them
    common.check_memory_format(memory_format)
    common.check_device_dtype(device, dtype)
    from dossr_cli.devices import resolve_device

    if cuda_graphs and resolve_device(device).type != "cuda":
        raise UsageError(f"--cuda-graphs needs a CUDA device; this run is on {resolve_device(device).type}")
    pipe = _load(weights, download, random_weights, random_config, device, dtype, memory_format, quiet)
    mode = "cuda-graphs" if cuda_graphs else "default" if compile else "off"
    if mode != "off":
        pipe.compile(mode="reduce-overhead" if cuda_graphs else None)

    from dossr_cli.bench import run_bench

    def progress(done: int, total: int) -> None:
        if not quiet and stderr.is_terminal:
            stderr.print(f"run {done}/{total}", end="\r", markup=False)

    say(f"dossr bench: {size}x{size} -> {4 * size}x{4 * size}, {steps} steps, order {order}, batch {batch}, "
        f"{warmup} warm-up + {runs} timed runs", quiet)
    result = run_bench(pipe, size, steps, order, batch, warmup, runs, mode, on_run=progress)
    if json_output:
        stdout.print(json.dumps(result.to_json()), markup=False)
    else:
        _report(result)


def _load(weights: str | None, download: bool, random_weights: bool, random_config: str, device: str, dtype: str,
          memory_format: str, quiet: bool):
    if not random_weights:
        return common.load_pipeline(common.find_weights(weights, download, quiet), device, dtype,
                                    memory_format=memory_format)
    from dossr_cli.devices import resolve_device, resolve_dtype
    from dossr_cli.networks.config import ModelConfig
    from dossr_cli.pipeline import DoSSRPipeline
    from dossr_cli.random_weights import fast_random_networks, tiny_config

    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    config = ModelConfig() if random_config == "full" else tiny_config()
    say(f"building the {random_config}-size model with random weights on {target}", quiet)
    return DoSSRPipeline(fast_random_networks(config, seed=0, device=target, dtype=precision), target, precision,
                         memory_format=memory_format)


def _report(result: BenchResult) -> None:
    """The figures for people: a summary, then the stages."""
    gib = 1 << 30
    share = f" = {100 * result.peak_share:.1f}% of the {result.peak_tflops:g} peak" if result.peak_share else ""
    lines = [
        (f"device:   {result.device} (torch {result.torch}, {result.dtype}, {result.memory_format}, "
         f"compile {result.compile})"),
        (f"task:     {result.size}x{result.size} -> {result.output_size}x{result.output_size}, {result.steps} steps, "
        f"order {result.order}, batch {result.batch}"),
        (f"latency:  p50 {result.latency_p50_s:.4f} s, p90 {result.latency_p90_s:.4f} s per call "
        f"({result.images_per_s:.2f} images/s)"),
        (f"memory:   peak {result.peak_memory_bytes / gib:.2f} GiB on the device, "
        f"{result.peak_host_memory_bytes / gib:.2f} GiB on the host"),
        f"compute:  {result.tflop_per_image:.3g} TFLOP per image, {result.tflops:.3g} TFLOP/s{share}",
    ]
    for line in lines:
        stdout.print(line, markup=False)
    table = Table(show_edge=False)
    table.add_column("stage")
    table.add_column("ms / image", justify="right")
    table.add_column("share", justify="right")
    total = sum(result.stages.values())
    for name, seconds in result.stages.items():
        table.add_row(name, f"{1000 * seconds:.2f}", f"{100 * seconds / total:.1f}%")
    stdout.print(table)

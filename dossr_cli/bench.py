"""`dossr bench` without the printing: time a configuration, count its FLOPs, read its memory.

FLOPs come from `torch.utils.flop_counter` run over the networks on the meta device:
the count is exact for the shapes, costs no compute, and does not depend on torch.compile
(which hides the operations a counter would see in a real run).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dossr_cli.devices import dtype_name
from dossr_cli.networks import DoSSRNetworks
from dossr_cli.networks.config import ModelConfig
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.timing import StageTimer

# Dense peak TFLOP/s by device name and dtype, from the vendors' data sheets (tensor cores
# for fp16/bf16, plain FP32 for fp32): the ceiling that "share of peak" is measured against.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6},
}


@dataclass
class BenchResult:
    device: str
    torch: str
    dtype: str
    compile: str
    size: int  # the input's side
    output_size: int
    steps: int
    order: int
    batch: int
    warmup: int
    runs: int
    latency_p50_s: float  # one call of `batch` images
    latency_p90_s: float
    images_per_s: float
    peak_memory_bytes: int  # on the device (CUDA), else the process's peak RSS
    peak_host_memory_bytes: int
    tflop_per_image: float
    tflops: float  # achieved, at the p50 latency
    peak_tflops: float | None
    peak_share: float | None
    memory_format: str = ""  # the networks' layout (DoSSRPipeline.memory_format), as run_bench found it
    stages: dict[str, float] = field(default_factory=dict)  # seconds per image, `other` included
    latencies_s: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def network_flops(config: ModelConfig, batch: int, height: int, width: int, steps: int,
                  shared_encoder: bool = False, pixel_multiple: int | None = None) -> dict[str, float]:
    """FLOPs of each stage for `batch` untiled (height, width) inputs, counted on the meta device."""
    upscale = config.upscale
    multiple = pixel_multiple or config.pixel_multiple
    padded_h, padded_w = (-(-upscale * n // multiple) * multiple for n in (height, width))
    factor = config.vae.downscale
    with torch.device("meta"):
        nets = DoSSRNetworks(config)
        lq = torch.zeros(batch, 3, height, width)
        image = torch.zeros(batch, 3, padded_h, padded_w)
        z = torch.zeros(batch, config.vae.latent_channels, padded_h // factor, padded_w // factor)
        t = torch.tensor(500)
        context = nets.context.expand(batch, -1, -1)

        def step() -> None:
            down, mid = nets.controlnet(z, t, encoder_hidden_states=context, controlnet_cond=z, return_dict=False)
            nets.unet(z, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid)

        counts = {
            "preprocess": _count(lambda: nets.preprocessor(lq)),
            "vae_encoder": _count(lambda: nets.vae.quant_conv(nets.vae.encoder(image))),
            "control_encoder": 0.0 if shared_encoder else _count(lambda: nets.control_encoder(image)),
            "solver": steps * _count(step),
            "decode": _count(lambda: nets.vae.decode(z)),
        }
    return counts


def _count(run: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        model = ""
        try:
            with open("/proc/cpuinfo") as info:
                model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
        except OSError:
            pass
        return f"CPU: {model or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads " \
               f"({os.cpu_count()} cores)"
    return str(device)


def peak_tflops(name: str, dtype: torch.dtype) -> float | None:
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(dtype_name(dtype))
    return None


def host_peak_bytes() -> int:
    """The process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def bench_input(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """A smooth-ish random image batch: deterministic, so every run and machine sees the same input."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(size // 8, 1), max(size // 8, 1), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def run_bench(pipe: DoSSRPipeline, size: int = 128, steps: int = 5, order: int = 3, batch: int = 1,
              warmup: int = 2, runs: int = 10, compile_mode: str = "off",
              on_run: Callable[[int, int], None] | None = None) -> BenchResult:
    """Time `runs` calls of `batch` images of size x size -> x4 (after `warmup` untimed calls).

    Every timed call records its stages (a device sync at each stage's ends, a few
    microseconds each); `other` is each call's time outside them: noise, padding, copies.
    """
    lq = bench_input(batch, size)
    seeds = list(range(batch))

    def call(timer: StageTimer | None = None) -> None:
        pipe.upscale_tensor(lq, steps=steps, order=order, seeds=seeds, tile_size=None, timer=timer)

    for i in range(warmup):
        call()
        if on_run:
            on_run(i + 1, warmup + runs)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
        torch.cuda.reset_peak_memory_stats(pipe.device)
    latencies, stage_runs = [], []
    for i in range(runs):
        timer = StageTimer(pipe.device)
        start = time.perf_counter()
        call(timer)  # returns a CPU tensor: the device is done when it returns
        latencies.append(time.perf_counter() - start)
        stage_runs.append(dict(timer.seconds, other=latencies[-1] - sum(timer.seconds.values())))
        if on_run:
            on_run(warmup + i + 1, warmup + runs)
    names = list(stage_runs[0])
    stages = {name: statistics.fmean(run.get(name, 0.0) for run in stage_runs) / batch for name in names}
    p50, p90 = (float(q) for q in np.percentile(latencies, [50, 90]))
    flops = sum(network_flops(pipe.config, batch, size, size, steps, pipe.shared_encoder).values())
    name = device_name(pipe.device)
    peak = peak_tflops(name, pipe.dtype)
    tflops = flops / p50 / 1e12
    host = host_peak_bytes()
    device_peak = torch.cuda.max_memory_allocated(pipe.device) if pipe.device.type == "cuda" else host
    return BenchResult(
        device=name, torch=torch.__version__, dtype=dtype_name(pipe.dtype), compile=compile_mode, size=size,
        output_size=size * pipe.config.upscale, steps=steps, order=order, batch=batch, warmup=warmup, runs=runs,
        latency_p50_s=p50, latency_p90_s=p90, images_per_s=batch / p50, peak_memory_bytes=device_peak,
        peak_host_memory_bytes=host, tflop_per_image=flops / batch / 1e12, tflops=tflops, peak_tflops=peak,
        peak_share=None if peak is None else tflops / peak, memory_format=pipe.memory_format, stages=stages,
        latencies_s=latencies)


__all__ = ["PEAK_TFLOPS", "BenchResult", "bench_input", "network_flops", "peak_tflops",
           "run_bench"]

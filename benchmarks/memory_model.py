"""A memory model: the pipeline's peak device bytes per stage, run on the meta device (shapes, no data).

The real pipeline code (its stage methods, the tiled VAE, the solver) runs on meta tensors
under `LiveBytes`, a dispatch mode that books every op's new storage and lets it go when
the storage dies, and records the peak of live bytes per stage. Weights are counted
apart. Attention is booked as CUDA runs it (flash, or memory-efficient for head dims
over 256), not as the meta device's math fallback that would hold the whole score matrix.
Not booked: cuDNN workspaces, the caching allocator's rounding and fragmentation, the
CUDA context; so a GPU's peak reserved memory comes out somewhat higher.

    python benchmarks/memory_model.py --size 4096 --tile 1024 --dtype bf16
    python benchmarks/memory_model.py --size 4096 --tile fit --budget 8e9 --dtype bf16
    python benchmarks/memory_model.py --check    # the tracker on real CPU tensors against the meta prediction

Prints a table (stage x peak GiB) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dossr_cli.networks.config import ModelConfig
from dossr_cli.random_weights import tiny_config
from dossr_cli.tile_parking import HostParking

GiB = 1 << 30
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class LiveBytes(TorchDispatchMode):
    """Live bytes of the storages that ops make on `device`, and their peak per stage.

    Storages made before the mode (weights, inputs) and inside `untracked()` (host copies of a
    parked tile, when host and device are one machine) are not counted."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._untracked = 0
        self.live = self.peak = 0
        self.stage_peaks: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._untracked:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device == self.device:
                    self._book(t.untyped_storage())
        return out

    def _book(self, storage: torch.UntypedStorage) -> None:
        if storage in self._sizes:
            return
        nbytes = storage.nbytes()
        self._sizes[storage] = nbytes
        weakref.finalize(storage, self._release, nbytes)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    @contextmanager
    def untracked(self) -> Iterator[None]:
        self._untracked += 1
        try:
            yield
        finally:
            self._untracked -= 1

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        outer, self.peak = self.peak, self.live
        try:
            yield
        finally:
            self.stage_peaks[name] = max(self.stage_peaks.get(name, 0), self.peak)
            self.peak = max(outer, self.peak)


class FusedAttention(TorchFunctionMode):
    """F.scaled_dot_product_attention booked as `device_type` runs it: output and log-sum-exp only."""

    def __init__(self, device_type: str = "cuda") -> None:
        super().__init__()
        self.device_type = device_type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or len(args) != 3 or kwargs:
            return func(*args, **kwargs)
        q, k, v = args
        if self.device_type == "cpu":
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0]


def meta_pipeline(config: ModelConfig, dtype: torch.dtype, shared_encoder: bool = False):
    """A DoSSRPipeline whose networks live on the meta device. Built field by field as __init__ does,
    less its byte comparison of the two encoders (meta tensors have no bytes): `shared_encoder` says."""
    from dossr_cli.networks import DoSSRNetworks
    from dossr_cli.pipeline import DoSSRPipeline

    with torch.device("meta"):
        networks = DoSSRNetworks(config)
    pipe = DoSSRPipeline.__new__(DoSSRPipeline)
    pipe.device, pipe.dtype = torch.device("meta"), dtype
    pipe.networks = networks.eval().requires_grad_(False).to(dtype)
    pipe.shared_encoder = shared_encoder
    return pipe


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def pipeline_peaks(config: ModelConfig, size: int, tile: int | None, overlap: int = 256,
                   dtype: torch.dtype = torch.bfloat16, steps: int = 5, shared_encoder: bool = False) -> dict:
    """Peak live device bytes per stage for a size x size output (activations; weights apart)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from dossr_cli.colorfix import color_fix
    from dossr_cli.geometry import latent_tile_plan, reflect_pad_to_multiple
    from dossr_cli.schedule import DEFAULT_T1, coefficient_table
    from dossr_cli.solver import dos_sde_sample, eps_to_data_prediction

    pipe = meta_pipeline(config, dtype, shared_encoder)
    nets, scaling = pipe.networks, config.vae.scaling_factor
    tracker = LiveBytes("meta")
    parking = HostParking(pipe.device, host="meta", host_allocation=tracker.untracked)
    with tracker, FusedAttention("cuda"), torch.inference_mode():
        lq = torch.empty(1, 3, size // config.upscale, size // config.upscale, device="meta", dtype=dtype)
        with tracker.stage("preprocess"):
            pre = pipe.preprocess(lq, tile, overlap)
            torch.isfinite(pre).all()
            pre = pre.clamp(0, 1)
        height, width = pre.shape[-2:]
        padded = reflect_pad_to_multiple(pre, config.pixel_multiple) * 2 - 1
        factor = config.vae.downscale
        plan = latent_tile_plan(padded.shape[-2] // factor, padded.shape[-1] // factor, tile, overlap)
        with tracker.stage("vae_encoder"):
            moments = pipe.encode_moments(padded.to(dtype), plan, parking)
            torch.isfinite(moments).all()
            posterior = DiagonalGaussianDistribution(moments)
        if shared_encoder:
            c_latent = posterior.mean * nets.control_encoder.scaling_factor
        else:
            with tracker.stage("control_encoder"):
                c_latent = pipe.encode_control(padded.to(dtype), plan, parking)
                torch.isfinite(c_latent).all()
        table = coefficient_table(steps, DEFAULT_T1)
        noise = pipe.draw_noise([0], tuple(posterior.mean.shape[1:]), steps + 2)
        x0_hat = (posterior.mean.float() + posterior.std.float() * noise[0]) * scaling
        with tracker.stage("solver"):
            predict_eps = pipe.eps_predictor(c_latent, plan, None, table.timesteps)
            z = dos_sde_sample(eps_to_data_prediction(predict_eps, table), x0_hat, table, noise[1:], 3, None)
            torch.isfinite(z).all()
        del predict_eps, noise, x0_hat, c_latent, posterior, moments
        with tracker.stage("decode"):
            decoded = pipe.decode((z / scaling).to(dtype), plan, parking)
            torch.isfinite(decoded).all()
            decoded = ((decoded.float() + 1) / 2)[..., :height, :width]
        with tracker.stage("color_fix"):
            color_fix(decoded, pre.float(), "wavelet").clamp(0, 1)
    weights = weight_bytes(nets)
    peak = max(tracker.stage_peaks.values())
    return {"size": size, "tile": tile, "overlap": overlap, "dtype": str(dtype).removeprefix("torch."),
            "tiles": len(plan.tiles), "weights_bytes": weights, "stage_peak_bytes": tracker.stage_peaks,
            "peak_activation_bytes": peak, "peak_device_bytes": weights + peak,
            "parked_bytes_to_host": parking.bytes_to_host, "parked_bytes_to_device": parking.bytes_to_device}


def decoder_tile_peak(vae: torch.nn.Module, tile: int, tiles: int = 2, attention: str = "cuda") -> int:
    """Peak live bytes of the tiled decoder over a row of `tiles` tiles of `tile` output pixels (overlap a
    quarter tile) on the VAE's device, waiting tiles parked; weights and the input latent apart."""
    from dossr_cli.tiled_vae import run_synchronized
    from dossr_cli.tiling import TiledPlan

    param = next(vae.parameters())
    factor = 2 ** (len(vae.decoder.up_blocks) - 1)
    side = tile // factor
    overlap = side // 4
    plan = TiledPlan.make(side, side + (tiles - 1) * (side - overlap), side, overlap)
    tracker = LiveBytes(param.device)
    parking = HostParking(param.device, host=param.device, host_allocation=tracker.untracked)
    with tracker, FusedAttention(attention), torch.inference_mode():
        latent = torch.zeros(1, vae.config.latent_channels, plan.height, plan.width, device=param.device,
                             dtype=param.dtype)
        base = tracker.live
        run_synchronized(vae.decoder, "decoder", vae.post_quant_conv(latent), plan, 1, factor, parking)
    return tracker.peak - base


def _resident_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def check_against_cpu(tile: int = 512, tiles: int = 2) -> dict:
    """The same tracker on real CPU tensors (tiny model, fp32) against the meta prediction, and the
    process's peak resident memory over the real run (Linux: clear_refs resets the high-water mark)."""
    from dossr_cli.random_weights import fast_random_networks

    config = tiny_config()
    predicted = decoder_tile_peak(meta_pipeline(config, torch.float32).networks.vae, tile, tiles, "cpu")
    vae = fast_random_networks(config).vae.eval().requires_grad_(False)
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _resident_bytes("VmRSS")
    started = time.perf_counter()
    measured = decoder_tile_peak(vae, tile, tiles, "cpu")
    return {"model": "tiny", "tile": tile, "tiles": tiles, "dtype": "fp32", "meta_peak_bytes": predicted,
            "cpu_tracked_peak_bytes": measured, "cpu_peak_rss_growth_bytes": _resident_bytes("VmHWM") - rss_before,
            "cpu_seconds": round(time.perf_counter() - started, 2)}


def largest_fitting_tile(size: int, budget: float, dtype: torch.dtype, overlap: int = 256,
                         config: ModelConfig | None = None) -> tuple[int | None, dict | None]:
    """The largest tile (a multiple of 64 above the overlap, at most the image) whose modelled peak,
    weights included, fits `budget`: a bisection, the peak growing with the tile."""
    config = config if config is not None else ModelConfig()
    low, high = overlap // 64 + 1, size // 64  # in units of 64 pixels
    best: tuple[int | None, dict | None] = (None, None)
    while low <= high:
        middle = (low + high) // 2
        result = pipeline_peaks(config, size, middle * 64, overlap, dtype)
        print(f"tile {middle * 64}: {result['peak_device_bytes'] / GiB:.2f} GiB", file=sys.stderr)
        if result["peak_device_bytes"] <= budget:
            best, low = (middle * 64, result), middle + 1
        else:
            high = middle - 1
    return best


def print_table(result: dict) -> None:
    print(f"\n{result['size']}x{result['size']} {result['dtype']}, tile {result['tile']} ({result['tiles']} tiles), "
          f"overlap {result['overlap']}")
    print("| stage | peak activations GiB |\n| --- | --- |")
    for stage, nbytes in result["stage_peak_bytes"].items():
        print(f"| {stage} | {nbytes / GiB:.2f} |")
    print(f"| weights | {result['weights_bytes'] / GiB:.2f} |")
    print(f"| **peak device (weights + largest stage)** | **{result['peak_device_bytes'] / GiB:.2f}** |")
    print(f"parked tiles moved {result['parked_bytes_to_host'] / GiB:.1f} GiB to the host and "
          f"{result['parked_bytes_to_device'] / GiB:.1f} GiB back")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="output side in pixels")
    parser.add_argument("--tile", default="1024", help="tile side in output pixels, 'none', or 'fit' (see --budget)")
    parser.add_argument("--overlap", type=int, default=256)
    parser.add_argument("--budget", type=float, default=8e9, help="bytes, for --tile fit")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--model", choices=["full", "tiny"], default="full")
    parser.add_argument("--shared-encoder", action="store_true", help="the control latent from the VAE encoder")
    parser.add_argument("--check", action="store_true", help="meta prediction against real CPU tensors (tiny)")
    args = parser.parse_args()
    if args.check:
        result = check_against_cpu()
        print(json.dumps(result))
        return
    config = ModelConfig() if args.model == "full" else tiny_config()
    dtype = DTYPES[args.dtype]
    if args.tile == "fit":
        tile, result = largest_fitting_tile(args.size, args.budget, dtype, args.overlap, config)
        if result is None:
            raise SystemExit(f"no tile fits {args.budget:.3g} bytes")
    else:
        tile = None if args.tile == "none" else int(args.tile)
        result = pipeline_peaks(config, args.size, tile, args.overlap, dtype, shared_encoder=args.shared_encoder)
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

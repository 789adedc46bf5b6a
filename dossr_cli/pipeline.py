"""The DoSSR pipeline: preprocess -> control and start latents -> solver -> decode -> colour fix.

No I/O and no printing here; images come in as PIL images or tensors in [0, 1] and go
out the same way. Each image draws its noise from its own generator, seeded from the
run's seed and the image's pixels, and all of it (posterior sample, start noise, one
draw per step) for the whole padded latent before anything else: so an image's output
never depends on its batch, on tiling or on the machine that ran it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from dossr_cli.choices import MEMORY_FORMATS
from dossr_cli.colorfix import COLOR_FIXES, color_fix
from dossr_cli.compiling import compile_networks, network_entries
from dossr_cli.devices import (
    AUTO_TILE,
    MIN_TILE,
    auto_tile_size,
    channels_last_default,
    default_budget,
    dtype_name,
    images_at_once,
    is_out_of_memory,
    memory_text,
    release_cached_memory,
    reproducible_tile,
    resolve_device,
    resolve_dtype,
    smaller_tile,
)
from dossr_cli.errors import DossrError
from dossr_cli.geometry import (
    DEFAULT_TILE_OVERLAP,
    lanczos_resize,
    latent_tile_plan,
    output_size,
    reflect_pad_to_multiple,
)
from dossr_cli.networks import DoSSRNetworks
from dossr_cli.networks.config import ModelConfig
from dossr_cli.schedule import DEFAULT_T1, coefficient_table
from dossr_cli.solver import ORDERS, StepCallback, dos_sde_sample, eps_to_data_prediction
from dossr_cli.tile_parking import Parking
from dossr_cli.tiled_vae import run_synchronized
from dossr_cli.tiling import TiledPlan, run_tiled
from dossr_cli.timing import NullTimer

DEFAULT_STEPS = 5
DEFAULT_ORDER = 3
DEFAULT_SCALE = 4.0
DEFAULT_COLOR_FIX = "wavelet"


def image_seed(run_seed: int, image: torch.Tensor) -> int:
    """A per-image seed from the run's seed and the image's own pixels (float32, CHW)."""
    pixels = image.detach().to("cpu", torch.float32).contiguous().numpy()
    digest = hashlib.sha256(run_seed.to_bytes(8, "little", signed=True) + str(pixels.shape).encode()
                            + pixels.tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Byte-identical parameters and buffers, under the same names."""
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(
        left[k].shape == right[k].shape and left[k].dtype == right[k].dtype and torch.equal(left[k], right[k])
        for k in left)


def validate_options(steps: int, order: int, t1: int, color_fix_method: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(str, ORDERS))}; got {order}")
    if color_fix_method not in COLOR_FIXES:
        raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}; got {color_fix_method!r}")
    coefficient_table(steps, t1)  # raises on a bad steps or t1


def channels_last(memory_format: str, device: torch.device) -> bool:
    """Whether `memory_format` ("auto", "contiguous", "channels-last") means NHWC networks on `device`."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}; got {memory_format!r}")
    return channels_last_default(device) if memory_format == "auto" else memory_format == "channels-last"


class DoSSRPipeline:
    """DoSSR super-resolution: `DoSSRPipeline.from_pretrained(path).upscale(image)`."""

    auto_tile = AUTO_TILE  # --tile-size auto's tile (devices.reproducible_tile); tests of the tiny model shrink it

    def __init__(self, networks: DoSSRNetworks, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = "auto", memory_format: str = "auto") -> None:
        """`memory_format`: "contiguous" (NCHW), "channels-last" (NHWC weights, so the convolutions run
        NHWC) or "auto" (devices.channels_last_default: contiguous on every device until a GPU has measured
        both)."""
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.fp32_stages: set[str] = set()  # stages that overflowed in half precision (finite_or_fp32)
        self.networks = networks.eval().requires_grad_(False).to(self.device, self.dtype)
        self._layout_hooks: list = []
        self._step_hooks: list = []
        self.use_memory_format(memory_format)
        # A checkpoint whose control encoder is a byte-identical copy of the VAE's encoder gives
        # both latents from one pass: the control latent is the posterior's mean, scaled.
        self.shared_encoder = same_weights(self.networks.control_encoder.encoder, self.networks.vae.encoder) and \
            same_weights(self.networks.control_encoder.quant_conv, self.networks.vae.quant_conv)

    @classmethod
    def from_pretrained(cls, weights: str | Path = "default", device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", download: bool = False,
                        memory_format: str = "auto") -> DoSSRPipeline:
        """Load weights as `--weights` names them: a cached name, a bundle folder, a .ckpt or hf:ORG/REPO.

        The weights are read straight onto the device in the run's dtype, so no full copy of the
        model is ever made on the host or on the device (construction's `.to` then moves nothing).
        """
        from dossr_cli.checkpoint.bundle import load_bundle
        from dossr_cli.checkpoint.store import resolve_weights

        target = resolve_device(device)
        precision = resolve_dtype(dtype, target)
        layout = torch.channels_last if channels_last(memory_format, target) else None  # read in it: no second copy
        networks = load_bundle(resolve_weights(str(weights), download=download), device=target, dtype=precision,
                               memory_format=layout)
        return cls(networks, device=target, dtype=precision, memory_format=memory_format)

    def use_memory_format(self, memory_format: str = "auto") -> DoSSRPipeline:
        """Lay out the networks' weights, and every network's image-shaped inputs, as `memory_format` says
        (see __init__); before compiling. Inputs too, because a convolution follows its input's layout as
        much as its weight's: an HWC image made NHWC the whole pipeline on the CPU, and a layout that
        changed from call to call recompiled compiled blocks. Returns self."""
        nhwc = channels_last(memory_format, self.device)
        self.memory_format = "channels-last" if nhwc else "contiguous"
        layout = torch.channels_last if nhwc else torch.contiguous_format
        self.networks.to(memory_format=layout)
        for handle in self._layout_hooks:
            handle.remove()

        def inputs_in_layout(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            def laid_out(value: object) -> object:
                is_image = isinstance(value, torch.Tensor) and value.ndim == 4
                return value.contiguous(memory_format=layout) if is_image else value
            return tuple(map(laid_out, args)), {key: laid_out(value) for key, value in kwargs.items()}

        self._layout_hooks = [net.register_forward_pre_hook(inputs_in_layout, with_kwargs=True)
                              for net in network_entries(self.networks)]
        return self

    @property
    def config(self) -> ModelConfig:
        return self.networks.config

    def compile(self, mode: str | None = None, backend: str | Callable = "inductor",
                cuda_graphs: bool | None = None) -> DoSSRPipeline:
        """torch.compile the networks block by block (dossr_cli/compiling.py says how and why), with
        inductor's caches on disk. `mode="reduce-overhead"` adds CUDA graphs, a generation per network
        call; `cuda_graphs` forces those boundaries on or off whatever the mode. Returns self.
        """
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks = compile_networks(self.networks, mode, backend, cuda_graphs)
        return self

    def upscale(
        self,
        image: Image.Image,
        scale: float = DEFAULT_SCALE,
        steps: int = DEFAULT_STEPS,
        order: int = DEFAULT_ORDER,
        t1: int = DEFAULT_T1,
        seed: int | None = None,
        color_fix: str = DEFAULT_COLOR_FIX,
        size: tuple[int, int] | None = None,
        callback: StepCallback | None = None,
        tile_size: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
    ) -> Image.Image:
        """Upscale one PIL image by `scale` (or to `size` = (width, height)); returns RGB."""
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        lq = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        out_size = (size[1], size[0]) if size is not None else output_size(*lq.shape[-2:], scale)
        result = self.upscale_tensor(lq, steps=steps, order=order, t1=t1, seed=seed, color_fix=color_fix,
                                     size=out_size, callback=callback, tile_size=tile_size, tile_overlap=tile_overlap)
        array = (result[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(array, "RGB")

    @torch.inference_mode()
    def upscale_tensor(
        self,
        lq: torch.Tensor,
        scale: float = DEFAULT_SCALE,
        steps: int = DEFAULT_STEPS,
        order: int = DEFAULT_ORDER,
        t1: int = DEFAULT_T1,
        seed: int | None = None,
        color_fix: str = DEFAULT_COLOR_FIX,
        seeds: Sequence[int] | None = None,
        size: tuple[int, int] | None = None,
        callback: StepCallback | None = None,
        tile_size: int | str | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        max_memory: int | None = None,
        on_retry: Callable[[str], None] | None = None,
        tile_callback: Callable[[int, int], None] | None = None,
        timer: NullTimer | None = None,
        regression: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, H, W) float32 in [0, 1] on the CPU.

        `seeds` gives each image's own seed; otherwise each is derived from `seed` (random
        when None) and the image. `size` = (H, W) overrides `scale`. `tile_size` and
        `tile_overlap` (pixels of the x4 image) run every stage on blended tiles; "auto"
        picks the tile from the image's size alone (devices.reproducible_tile: the same tiles on
        every machine), made smaller only where one image's work would not fit `max_memory` bytes
        (default: most of the free memory), which `on_retry` hears; a batch too large for it runs
        a few images at a time. Out of memory, the images are run again
        with half the tile, and `on_retry` hears why (and of a half-precision stage run again in
        fp32); `tile_callback(done, total)` hears the solver's tiles at every step; `timer`
        (timing.StageTimer) the seconds of each stage. `regression`, a list, receives each image's
        deterministic regression upscale (the preprocessor's x4, resized as the result is; trust.py),
        at no extra network cost.
        """
        validate_options(steps, order, t1, color_fix)
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f"expected a (batch, 3, height, width) tensor, got shape {tuple(lq.shape)}")
        if seeds is None:
            run_seed = secrets.randbits(63) if seed is None else int(seed)
            seeds = [image_seed(run_seed, image) for image in lq]
        if len(seeds) != lq.shape[0]:
            raise ValueError(f"got {len(seeds)} seeds for {lq.shape[0]} images")
        out_size = size if size is not None else output_size(*lq.shape[-2:], scale)
        height, width = lq.shape[-2] * self.config.upscale, lq.shape[-1] * self.config.upscale
        at_once = lq.shape[0]
        if tile_size == "auto":  # from the padded size: what the networks work on
            multiple = self.config.pixel_multiple
            padded = -(-height // multiple) * multiple, -(-width // multiple) * multiple
            budget = max_memory if max_memory is not None else default_budget(self.device)
            tile_size = auto_tile_size(*padded, self.dtype, budget, side=self.auto_tile)
            planned = reproducible_tile(*padded, self.auto_tile)
            if tile_size != planned and on_retry is not None:
                on_retry(f"{memory_text(budget)} of memory is too little for "
                         f"{'one tile' if planned is None else f'{planned}-pixel tiles'}; using {tile_size}-pixel "
                         "tiles, so the output differs from a machine with more memory")
            at_once = images_at_once(*padded, tile_size, self.dtype, budget)
        elif isinstance(tile_size, str):
            raise ValueError(f"tile_size must be a number of pixels, 'auto' or None; got {tile_size!r}")
        lq = lq.to(self.device, self.dtype)
        results = []
        for start in range(0, lq.shape[0], at_once):
            pre: list[torch.Tensor] | None = [] if regression is not None else None
            x4, tile_size = self.x4_with_fallback(lq[start:start + at_once], list(seeds[start:start + at_once]),
                                                  steps, order, t1, color_fix, callback, tile_size, tile_overlap,
                                                  tile_callback, timer, on_retry, pre)
            results.append(lanczos_resize(x4, out_size))
            if regression is not None and pre:
                regression.extend(lanczos_resize(pre[-1], out_size).unbind(0))
        return torch.cat(results)

    def x4_with_fallback(self, lq: torch.Tensor, seeds: list[int], steps: int, order: int, t1: int,
                         color_fix_method: str, callback: StepCallback | None, tile_size: int | None,
                         tile_overlap: int, tile_callback: Callable[[int, int], None] | None,
                         timer: NullTimer | None, on_retry: Callable[[str], None] | None,
                         regression: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, int | None]:
        """`upscale_x4`, run again with half the tile while it runs out of memory; and the tile it took."""
        height, width = lq.shape[-2] * self.config.upscale, lq.shape[-1] * self.config.upscale
        while True:
            # the user's overlap, unless a tile shrunk by the fallback below can no longer hold it
            overlap = tile_overlap if tile_size is None or tile_overlap < tile_size else tile_size // 2
            try:
                return self.upscale_x4(lq, seeds, steps, order, t1, color_fix_method, callback, tile_size, overlap,
                                       tile_callback, timer, on_retry, regression), tile_size
            except RuntimeError as error:  # torch.OutOfMemoryError among them
                if not is_out_of_memory(error):
                    raise
                smaller = smaller_tile(tile_size, height, width)
                if smaller is None:
                    raise DossrError(f"out of memory even with {MIN_TILE}-pixel tiles on {self.device}: use a "
                                     "smaller image or --device cpu") from error
            # Out of the except block the error is gone, and with its traceback the frames that held the
            # failed attempt's tensors: only now can their memory go back before the retry.
            release_cached_memory(self.device)
            if on_retry is not None:
                on_retry(f"out of memory with {'no tiling' if tile_size is None else f'{tile_size}-pixel tiles'}"
                         f"; retrying with {smaller}-pixel tiles")
            tile_size = smaller

    def upscale_x4(self, lq: torch.Tensor, seeds: list[int], steps: int, order: int, t1: int,
                   color_fix_method: str, callback: StepCallback | None = None, tile_size: int | None = None,
                   tile_overlap: int = DEFAULT_TILE_OVERLAP,
                   tile_callback: Callable[[int, int], None] | None = None, timer: NullTimer | None = None,
                   notify: Callable[[str], None] | None = None,
                   regression: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The model's own x4 result, clamped to [0, 1], float32 on the CPU.

        `timer` hears each stage (bench); in half precision every stage's output is checked once
        for inf/NaN, and a stage that overflowed runs again in fp32 (`notify` hears of it).
        `regression` receives the preprocessor's clamped x4 (the colour fix's reference) on success.
        """
        timer = timer if timer is not None else NullTimer()
        nets = self.networks
        with timer.stage("preprocess"):
            pre = self.finite_or_fp32("preprocess", [nets.preprocessor], notify,
                                      lambda: self.preprocess(lq.to(self.dtype), tile_size, tile_overlap)).clamp(0, 1)
        height, width = pre.shape[-2:]
        padded = reflect_pad_to_multiple(pre, self.config.pixel_multiple) * 2 - 1
        factor = self.config.vae.downscale
        plan = latent_tile_plan(padded.shape[-2] // factor, padded.shape[-1] // factor, tile_size, tile_overlap)
        with timer.stage("vae_encoder"):
            moments = self.finite_or_fp32("VAE encoder", [nets.vae.encoder, nets.vae.quant_conv], notify,
                                          lambda: self.encode_moments(padded.to(self.dtype), plan))
            posterior = DiagonalGaussianDistribution(moments)
        if self.shared_encoder:
            c_latent = posterior.mean * nets.control_encoder.scaling_factor
        else:
            with timer.stage("control_encoder"):
                c_latent = self.finite_or_fp32("control encoder", [nets.control_encoder], notify,
                                               lambda: self.encode_control(padded.to(self.dtype), plan))
        table = coefficient_table(steps, t1)
        noise = self.draw_noise(seeds, tuple(posterior.mean.shape[1:]), steps + 2)
        scaling = self.config.vae.scaling_factor
        x0_hat = (posterior.mean.float() + posterior.std.float() * noise[0]) * scaling

        def solve() -> torch.Tensor:
            def step_done(done: int, total: int) -> None:
                timer.lap(f"step_{done}")
                if callback is not None:
                    callback(done, total)

            predict_eps = self.eps_predictor(c_latent, plan, tile_callback, table.timesteps)
            timer.mark()
            return dos_sde_sample(eps_to_data_prediction(predict_eps, table), x0_hat, table, noise[1:], order,
                                  step_done)

        z = self.finite_or_fp32("solver", [nets.unet, nets.controlnet], notify, solve)
        with timer.stage("decode"):
            decoded = self.finite_or_fp32("VAE decoder", [nets.vae.decoder, nets.vae.post_quant_conv], notify,
                                          lambda: self.decode((z / scaling).to(self.dtype), plan))
            decoded = ((decoded.float() + 1) / 2)[..., :height, :width]
        with timer.stage("color_fix"):
            fixed = color_fix(decoded, pre.float(), color_fix_method).clamp(0, 1)
        if regression is not None:
            regression.append(pre.float().cpu())
        return fixed.cpu()

    def finite_or_fp32(self, stage: str, modules: Sequence[torch.nn.Module], notify: Callable[[str], None] | None,
                       run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """run(); in fp16/bf16, once more in fp32 if its output holds inf or NaN, rather than writing a
        black image. One host-device sync per stage, none inside the solver's loop. A stage that
        overflowed once runs in fp32 straight away from then on (the same weights would overflow again)."""
        if self.dtype != torch.float32 and stage in self.fp32_stages:
            with self.full_precision(modules):
                return run()
        out = run()
        if self.dtype == torch.float32 or bool(torch.isfinite(out).all()):
            return out
        del out  # its memory, before the fp32 run needs twice as much
        if notify is not None:
            notify(f"{stage}: {dtype_name(self.dtype)} overflowed (inf or NaN); ran it again in fp32, as it "
                   "will from now on")
        self.fp32_stages.add(stage)
        with self.full_precision(modules):
            return run()

    @contextmanager
    def full_precision(self, modules: Sequence[torch.nn.Module]) -> Iterator[None]:
        """These modules and the pipeline's compute dtype in fp32 for a while (half -> fp32 -> half is exact)."""
        dtype = self.dtype
        try:
            for module in modules:
                module.float()
            self.dtype = torch.float32
            yield
        finally:
            self.dtype = dtype
            for module in modules:
                module.to(dtype)

    def encode_control(self, image: torch.Tensor, plan: TiledPlan, parking: Parking | None = None) -> torch.Tensor:
        """The control latent (the second encoder's mode), on synchronised tiles when the plan has several.
        `parking`: where waiting tiles go (tile_parking.parking_for the device by default)."""
        encoder = self.networks.control_encoder
        if plan.is_single:
            return encoder(image)
        moments = encoder.quant_conv(run_synchronized(encoder.encoder, "encoder", image, plan,
                                                      self.config.vae.downscale, 1, parking).to(self.dtype))
        return moments.chunk(2, dim=1)[0] * encoder.scaling_factor

    def encode_moments(self, image: torch.Tensor, plan: TiledPlan, parking: Parking | None = None) -> torch.Tensor:
        """The VAE encoder's Gaussian moments (mean and log-variance, stacked on channels)."""
        vae = self.networks.vae
        if plan.is_single:
            return vae.quant_conv(vae.encoder(image))
        moments = run_synchronized(vae.encoder, "encoder", image, plan, self.config.vae.downscale, 1, parking)
        return vae.quant_conv(moments.to(self.dtype))

    def decode(self, latent: torch.Tensor, plan: TiledPlan, parking: Parking | None = None) -> torch.Tensor:
        vae = self.networks.vae
        if plan.is_single:
            return vae.decode(latent).sample
        return run_synchronized(vae.decoder, "decoder", vae.post_quant_conv(latent), plan, 1,
                                self.config.vae.downscale, parking)

    def preprocess(self, lq: torch.Tensor, tile_size: int | None = None,
                   tile_overlap: int = DEFAULT_TILE_OVERLAP) -> torch.Tensor:
        """The x4 RRDBNet, on blended LR tiles of a quarter of the output tile when tiling."""
        if tile_size is None:
            return self.networks.preprocessor(lq)
        latent_tile_plan(8, 8, tile_size, tile_overlap)  # the same checks on the options
        upscale = self.config.upscale
        plan = TiledPlan.make(*lq.shape[-2:], tile_size // upscale, tile_overlap // upscale)
        return run_tiled(self.networks.preprocessor, (lq,), plan, scale_out=upscale)

    def eps_predictor(self, c_latent: torch.Tensor, plan: TiledPlan | None = None,
                      tile_callback: Callable[[int, int], None] | None = None, timesteps: Sequence[int] = ()
                      ) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """eps = UNet(z, t, context, control = ControlNet(concat(z, c_latent), t, context)).

        With a plan of several tiles, the networks run tile by tile and the predictions are
        blended into one full eps. The solver's latent stays float32; the networks run in
        the pipeline's dtype. `timesteps` and the blend weights go to the device here, before the
        solver's loop: a copy from the host inside it would make the host wait for the device.
        """
        nets = self.networks
        on_device = {int(t): torch.tensor(int(t), device=self.device) for t in timesteps}
        if plan is not None and not plan.is_single:
            plan.on(self.device)  # the blend weights, copied now rather than inside the first step

        def networks(z: torch.Tensor, timestep: int, control: torch.Tensor) -> torch.Tensor:
            z = z.to(self.dtype)
            t = on_device[timestep] if timestep in on_device else torch.tensor(timestep, device=self.device)
            context = nets.context.to(self.dtype).expand(z.shape[0], -1, -1)
            down, mid = nets.controlnet(z, t, encoder_hidden_states=context, controlnet_cond=control.to(self.dtype),
                                        return_dict=False)
            eps = nets.unet(z, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid, return_dict=False)[0]
            return eps.float()

        def predict_eps(z: torch.Tensor, timestep: int) -> torch.Tensor:
            if plan is None or plan.is_single:
                return networks(z, timestep, c_latent)
            return run_tiled(lambda zs, cs: networks(zs, timestep, cs), (z, c_latent), plan, on_tiles=tile_callback)

        return predict_eps

    def draw_noise(self, seeds: list[int], shape: tuple[int, ...], count: int) -> list[torch.Tensor]:
        """`count` standard normal draws per image, each image from its own CPU generator."""
        per_image = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            per_image.append(torch.randn((count, *shape), generator=generator))
        stacked = torch.stack(per_image, dim=1).to(self.device)  # (count, batch, *shape)
        return list(stacked.unbind(0))

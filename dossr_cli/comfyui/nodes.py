"""The DoSSR nodes for ComfyUI: a model loader and an upscaler over `dossr_cli.batch.job`.

A front end like the command line: the upscale goes through `upscale_decoded_batch`, the
per-image job `dossr upscale` runs, so the node's pixels are the command line's. ComfyUI's
modules (comfy.model_management, comfy.utils, folder_paths) are imported only when a node
runs, so this module loads, and its contract is tested, without ComfyUI.

The classic `NODE_CLASS_MAPPINGS` convention, which every ComfyUI since 2023 loads (the V3
schema wraps the same types and needs a newer ComfyUI).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dossr_cli.batch.params import DEFAULT_SEED, JobTooLargeError, UpscaleParams
from dossr_cli.choices import COLOR_FIXES, ORDERS
from dossr_cli.comfyui import layout
from dossr_cli.errors import DossrError, UsageError
from dossr_cli.schedule import DEFAULT_T1, MAX_STEPS

MODEL_TYPE = "DOSSR_MODEL"
CATEGORY = "image/upscaling"
WEIGHTS_FOLDER = "dossr"  # ComfyUI/models/dossr, beside the "upscale_models" folder also searched
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TILINGS = ("auto", "off", "fixed")
MAX_SEED = 2**63 - 1  # `dossr upscale --seed` takes a signed 64-bit seed: 0..this is the same seed there
MAX_SIDE = 65_536
PROGRESS_PER_STEP = 100  # the bar's units per solver step, so tiles within a step move it too

log = logging.getLogger("dossr.comfyui")

# Pipelines loaded by any DoSSRModel, kept until ComfyUI asks for memory back (install_release_hook).
_loaded: dict[tuple[str, str, str], Any] = {}
_loaded_lock = threading.Lock()
_hook_lock = threading.Lock()


class DoSSRModel:
    """The DOSSR_MODEL value a loader passes on: which weights, on which device, in which dtype.

    The pipeline itself is loaded on first use and kept in a cache that ComfyUI's memory
    management can empty; a later upscale loads it again.
    """

    def __init__(self, bundle: Path, device: torch.device, dtype: torch.dtype):
        self.bundle, self.device, self.dtype = bundle, device, dtype

    @property
    def key(self) -> tuple[str, str, str]:
        return str(self.bundle), str(self.device), str(self.dtype)

    def pipeline(self) -> Any:
        from dossr_cli.pipeline import DoSSRPipeline

        install_release_hook()
        with _loaded_lock:
            if self.key not in _loaded:
                log.info("DoSSR: loading %s on %s in %s", self.bundle, self.device, self.dtype)
                _loaded[self.key] = DoSSRPipeline.from_pretrained(self.bundle, device=self.device, dtype=self.dtype)
            return _loaded[self.key]

    @property
    def loaded(self) -> bool:
        return self.key in _loaded

    def __repr__(self) -> str:
        return f"DoSSRModel({self.bundle}, {self.device}, {self.dtype})"


def release_models(device: torch.device | str | None = None) -> int:
    """Drop the cached pipelines (those on `device`, or all); returns how many went."""
    with _loaded_lock:
        keys = [key for key in _loaded if device is None or key[1] == str(torch.device(device))]
        for key in keys:
            del _loaded[key]
    if keys:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("DoSSR: released %d model(s)", len(keys))
    return len(keys)


def install_release_hook() -> None:
    """Let ComfyUI's memory management free our models too.

    ComfyUI frees only the models it loaded itself (ModelPatcher objects): its "Free model and
    node cache" button and its making room before a load both end in
    `comfy.model_management.free_memory`. That function is wrapped, once: after ComfyUI has freed
    its own, our pipelines on that device go too when memory is still short or everything was asked
    for (unload_all_models asks for 1e30 bytes).
    """
    import comfy.model_management as mm

    with _hook_lock:
        if getattr(mm.free_memory, "_dossr_release", False):
            return
        original = mm.free_memory

        def free_memory(memory_required: float, device: Any, keep_loaded: Any = (), *args: Any, **kwargs: Any) -> Any:
            unloaded = original(memory_required, device, list(keep_loaded), *args, **kwargs)
            if _loaded and (memory_required >= 1e29 or mm.get_free_memory(device) < memory_required):
                release_models(device)
            return unloaded

        free_memory._dossr_release = True  # type: ignore[attr-defined]
        free_memory.__wrapped__ = original  # type: ignore[attr-defined]
        mm.free_memory = free_memory


def register_weights_folder() -> None:
    """ComfyUI/models/dossr as a model folder (extra_model_paths.yaml may add others under `dossr:`)."""
    import folder_paths

    default = str(Path(folder_paths.models_dir) / WEIGHTS_FOLDER)
    if default not in folder_paths.folder_names_and_paths.get(WEIGHTS_FOLDER, ([], set()))[0]:
        folder_paths.add_model_folder_path(WEIGHTS_FOLDER, default)


def find_weights(spec: str, download: bool = False) -> Path:
    """The bundle folder for `spec`: first as a name under ComfyUI's models/dossr and
    models/upscale_models folders (a bundle folder or a checkpoint file), then as `--weights` takes it."""
    from dossr_cli.checkpoint.bundle import CONFIG_NAME
    from dossr_cli.checkpoint.store import CHECKPOINT_SUFFIXES, resolve_weights

    spec = spec.strip() or "default"
    if not spec.startswith("hf:") and not Path(spec).expanduser().is_absolute():
        import folder_paths

        register_weights_folder()
        for kind in (WEIGHTS_FOLDER, "upscale_models"):
            for folder in folder_paths.get_folder_paths(kind):
                candidate = Path(folder) / spec
                if (candidate / CONFIG_NAME).is_file() or (
                        candidate.is_file() and candidate.suffix.lower() in CHECKPOINT_SUFFIXES):
                    return resolve_weights(str(candidate), progress=log.info)
    return resolve_weights(spec, download=download, progress=log.info)


def comfy_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto` asks ComfyUI (its --fp32-unet / --bf16-unet flags, what the device does well);
    the networks run in fp32, bf16 or fp16, so anything else ComfyUI names becomes fp32."""
    from dossr_cli.devices import DTYPES

    if precision != "auto":
        if precision not in DTYPES:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        return DTYPES[precision]
    import comfy.model_management as mm

    chosen = mm.unet_dtype(device=device, supported_dtypes=[torch.bfloat16, torch.float16, torch.float32])
    return chosen if chosen in DTYPES.values() else torch.float32


class DoSSRModelLoader:
    """Weights as `dossr upscale --weights` names them, on ComfyUI's device."""

    DESCRIPTION = "Loads DoSSR weights: a name, a bundle folder, a .ckpt or hf:ORG/REPO; models/dossr is searched first."
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("dossr_model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "weights": ("STRING", {"default": "default", "multiline": False, "tooltip":
                                   "a name (under models/dossr, or installed with `dossr weights`), a bundle "
                                   "folder, a .ckpt file or hf:ORG/REPO, as `dossr upscale --weights`"}),
            "precision": (list(PRECISIONS), {"default": "auto", "tooltip":
                                             "auto: as ComfyUI chooses for this device (fp32 on the CPU)"}),
            "download": ("BOOLEAN", {"default": False, "tooltip":
                                     "download named weights that are not on this machine (several GB)"}),
        }}

    def load(self, weights: str, precision: str, download: bool) -> tuple[DoSSRModel]:
        import comfy.model_management as mm

        if precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        device = mm.get_torch_device()
        model = DoSSRModel(find_weights(weights, download=download), device, comfy_dtype(precision, device))
        model.pipeline()  # load now: a damaged file fails here, at the loader, not at the first image
        return (model,)


class DoSSRUpscale:
    """IMAGE (and optional MASK for alpha) -> the DoSSR result, pixel for pixel `dossr upscale`'s."""

    DESCRIPTION = ("Diffusion super-resolution with DoSSR: each image of the batch with its own seed from the seed "
                   "and its pixels, as `dossr upscale` gives it.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "dossr_model": (MODEL_TYPE,),
                "image": ("IMAGE",),
                "scale": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 16.0, "step": 0.05, "tooltip":
                                    "times the input's size (ignored where width or height is set)"}),
                "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 1, "tooltip":
                                  "exact output width; 0: from scale (or from height, keeping the aspect)"}),
                "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 1, "tooltip":
                                   "exact output height; 0: from scale (or from width, keeping the aspect)"}),
                "steps": ("INT", {"default": 5, "min": 1, "max": MAX_STEPS, "tooltip": "DoS-SDE solver steps"}),
                "order": ("INT", {"default": 3, "min": min(ORDERS), "max": max(ORDERS), "tooltip":
                                  "DoS-SDE solver order"}),
                "t1": ("INT", {"default": DEFAULT_T1, "min": 2, "max": 1000, "tooltip":
                               "the timestep the domain shift starts from (above steps)"}),
                "seed": ("INT", {"default": DEFAULT_SEED, "min": 0, "max": MAX_SEED, "tooltip":
                                 "the run's seed; each image's own comes from it and its pixels"}),
                "color_fix": (list(COLOR_FIXES), {"default": "wavelet"}),
                "tiling": (list(TILINGS), {"default": "auto", "tooltip":
                                           "auto: tiles by the image's size (and memory); off: one piece; "
                                           "fixed: tile_size"}),
                "tile_size": ("INT", {"default": 1024, "min": 64, "max": MAX_SIDE, "step": 64, "tooltip":
                                      "pixels of the x4 image, for tiling fixed"}),
                "tile_overlap": ("INT", {"default": 256, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip":
                                         "pixels of the x4 image that neighbouring tiles share"}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "the image's transparency (1 - alpha), as LoadImage gives it"}),
            },
        }

    def upscale(self, dossr_model: DoSSRModel, image: torch.Tensor, scale: float, width: int, height: int,
                steps: int, order: int, t1: int, seed: int, color_fix: str, tiling: str, tile_size: int,
                tile_overlap: int, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        import comfy.model_management as mm
        import comfy.utils

        from dossr_cli.batch.job import upscale_decoded_batch

        params = node_params(scale=scale, width=width, height=height, steps=steps, order=order, t1=t1, seed=seed,
                             color_fix=color_fix, tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap)
        images = layout.decoded_images(image, mask)
        pipe = dossr_model.pipeline()
        check_size(params, *images[0].size, pipe.config.upscale, pipe.config.pixel_multiple)
        bar = comfy.utils.ProgressBar(steps * PROGRESS_PER_STEP)
        state = {"step": 0}

        def step_done(done: int, total: int) -> None:
            state["step"] = done
            bar.update_absolute(done * PROGRESS_PER_STEP, total * PROGRESS_PER_STEP)
            mm.throw_exception_if_processing_interrupted()

        def tile_done(done: int, total: int) -> None:
            bar.update_absolute(state["step"] * PROGRESS_PER_STEP + done * PROGRESS_PER_STEP // max(total, 1))
            mm.throw_exception_if_processing_interrupted()

        mm.throw_exception_if_processing_interrupted()
        with widget_names():
            results = upscale_decoded_batch(pipe, images, params, callback=step_done, notify=log.warning,
                                            tile_callback=tile_done)
        out_h, out_w = results[0][0].shape[:2]
        device = mm.intermediate_device()
        return (layout.image_tensor([rgb for rgb, _, _ in results], device),
                layout.mask_tensor([alpha for _, alpha, _ in results], out_h, out_w, device))


def node_params(*, scale: float, width: int, height: int, steps: int, order: int, t1: int, seed: int,
                color_fix: str, tiling: str, tile_size: int, tile_overlap: int) -> UpscaleParams:
    """The widgets as the command line's options (0 width/height: unset), validated as it validates them."""
    if tiling not in TILINGS:
        raise UsageError(f"tiling must be one of {', '.join(TILINGS)}; got {tiling!r}")
    tile: int | str = {"auto": "auto", "off": 0}.get(tiling, tile_size)
    with widget_names():
        return UpscaleParams(scale=float(scale), width=width or None, height=height or None, steps=steps, order=order,
                             t1=t1, seed=seed, color_fix=color_fix, tile_size=tile, tile_overlap=tile_overlap,
                             max_pixels=None).validate()


@contextlib.contextmanager
def widget_names() -> Iterator[None]:
    """Our errors name command-line options (--tile-size); in ComfyUI they name the widgets (tile_size)."""
    try:
        yield
    except DossrError as error:
        message = re.sub(r"--([a-z][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), str(error))
        if message == str(error):
            raise
        raise type(error)(message) from None


def check_size(params: UpscaleParams, height: int, width: int, upscale: int, multiple: int) -> None:
    """The command line's limits on the output; what to do said in widgets, not options."""
    try:
        params.check_cost(height, width, "png", upscale, multiple)
    except JobTooLargeError as error:
        raise JobTooLargeError(str(error).split(": pass ")[0] + ": use a smaller scale, width or height") from None


NODE_CLASS_MAPPINGS = {"DoSSRModelLoader": DoSSRModelLoader, "DoSSRUpscale": DoSSRUpscale}
NODE_DISPLAY_NAME_MAPPINGS = {"DoSSRModelLoader": "Load DoSSR Model", "DoSSRUpscale": "DoSSR Upscale"}

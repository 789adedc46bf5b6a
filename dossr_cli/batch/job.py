"""One image, start to finish: decode -> (alpha split) -> pipeline -> recombine -> encode.

Every front end (`dossr upscale`, the local batch, the Ray batch) calls `run_job`, so an
image comes out byte-identical whichever of them ran it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dossr_cli import imageio
from dossr_cli.batch.params import DEFAULT_SEED, UpscaleParams
from dossr_cli.errors import DossrError
from dossr_cli.pipeline import DoSSRPipeline, image_seed
from dossr_cli.solver import StepCallback
from dossr_cli.trust import TrustReport, trust_report

__all__ = ["DEFAULT_SEED", "JobResult", "UpscaleParams", "compare_picture", "run_job", "run_jobs"]


@dataclass(frozen=True)
class JobResult:
    data: bytes  # the encoded output image
    format: str
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    seed: int  # the image's own seed, derived from the run's seed and its pixels
    seconds: float
    has_alpha: bool
    bit_depth: int
    lr_rgb: np.ndarray  # the decoded input, for --compare
    rgb: np.ndarray  # the result before encoding, float32 (H, W, 3)
    notes: tuple[str, ...] = ()  # things the user should hear about (metadata not carried, alpha flattened)
    trust: TrustReport | None = None  # departure from the input and invented detail (trust.py)


def upscale_decoded_batch(pipe: DoSSRPipeline, images: Sequence[imageio.DecodedImage], params: UpscaleParams,
                          callback: StepCallback | None = None, notify: Callable[[str], None] | None = None,
                          tile_callback: Callable[[int, int], None] | None = None, *,
                          trust: list[TrustReport] | None = None
                          ) -> list[tuple[np.ndarray, np.ndarray | None, int]]:
    """Images of one size through the model together, each with its own seed (run seed + its pixels).

    Colour goes in premultiplied where there is alpha; alpha takes its own Lanczos path.
    Returns (rgb, alpha or None, seed) per image, in order. `trust`, a list, receives each image's
    TrustReport, measured on the premultiplied colour the model saw (transparent pixels weigh nothing).
    """
    shapes = {image.rgb.shape[:2] for image in images}
    if len(shapes) != 1:
        raise ValueError(f"a batch must hold images of one size, got {sorted(shapes)}")
    height, width = shapes.pop()
    size = params.target_size(height, width)
    colours = [imageio.premultiply(im.rgb, im.alpha) if im.alpha is not None else im.rgb for im in images]
    lq = torch.stack([torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)).permute(2, 0, 1) for c in colours])
    seeds = [image_seed(params.seed, image) for image in lq]
    regression: list[torch.Tensor] | None = [] if trust is not None else None
    out = pipe.upscale_tensor(lq, steps=params.steps, order=params.order, t1=params.t1,
                              color_fix=params.color_fix, seeds=seeds, size=size, callback=callback,
                              tile_size=params.pipeline_tile_size, tile_overlap=params.pipeline_tile_overlap,
                              max_memory=params.max_memory, on_retry=notify, tile_callback=tile_callback,
                              regression=regression)
    results = []
    for i, (image, rgb_chw, seed) in enumerate(zip(images, out, seeds)):
        rgb, alpha = rgb_chw.permute(1, 2, 0).numpy(), None
        if trust is not None and regression is not None:
            trust.append(trust_report(colours[i], rgb, regression[i].permute(1, 2, 0).numpy()))
        if image.alpha is not None:
            alpha = imageio.upscale_alpha(image.alpha, size)
            rgb = imageio.unpremultiply(rgb, alpha)
        results.append((rgb, alpha, seed))
    return results


def encode_result(image: imageio.DecodedImage, rgb: np.ndarray, alpha: np.ndarray | None, seed: int,
                  params: UpscaleParams, out_format: str | None, seconds: float,
                  trust: TrustReport | None = None) -> JobResult:
    """Encode in `out_format` (default: the input's), noting what that format cannot keep."""
    fmt = out_format or params.format or image.format
    notes = list(image.notes)  # from decoding: only the first page read, an unusable ICC profile
    if alpha is not None and fmt not in imageio.ALPHA_FORMATS:
        notes.append(f"{fmt} has no alpha channel: transparency flattened onto white (use png, webp or tiff)")
    if image.bit_depth == 16 and fmt not in imageio.SIXTEEN_BIT_FORMATS:
        notes.append(f"{fmt} holds 8 bits per channel: 16-bit input written as 8-bit (use png or tiff)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", imageio.MetadataWarning)
        data = imageio.encode_image(rgb, alpha, fmt, bit_depth=image.bit_depth, quality=params.quality,
                                    icc_profile=image.icc_profile, exif=image.exif, metadata=params.metadata)
    notes += [str(w.message) for w in caught if issubclass(w.category, imageio.MetadataWarning)]
    height, width = image.rgb.shape[:2]
    return JobResult(data, fmt, (width, height), (rgb.shape[1], rgb.shape[0]), seed, seconds,
                     alpha is not None, image.bit_depth, image.rgb, rgb, tuple(notes), trust)


def run_job(pipe: DoSSRPipeline, source: Path | bytes, params: UpscaleParams, out_format: str | None = None,
            callback: StepCallback | None = None, notify: Callable[[str], None] | None = None,
            tile_callback: Callable[[int, int], None] | None = None) -> JobResult:
    """Decode `source`, upscale it and encode the result in `out_format` (default: the input's)."""
    result = run_jobs(pipe, [source], params, [out_format], callback, notify, tile_callback)[0]
    if isinstance(result, DossrError):
        raise result
    return result


def run_jobs(pipe: DoSSRPipeline, sources: Sequence[Path | bytes], params: UpscaleParams,
             out_formats: Sequence[str | None], callback: StepCallback | None = None,
             notify: Callable[[str], None] | None = None,
             tile_callback: Callable[[int, int], None] | None = None) -> list[JobResult | DossrError]:
    """Several images; those of one size go through the model as one batch.

    A failure stays with its image: the list holds each image's result or its error. Every limit
    (output pixels, the format's largest side) is checked on the decoded size before any network runs.
    Batched and single runs agree to float precision (~1e-6), so a rare 8-bit pixel
    may round the other way; `--batch-size 1` gives exactly `dossr upscale`'s bytes.
    """
    results: list[JobResult | DossrError | None] = [None] * len(sources)
    decoded: dict[int, imageio.DecodedImage] = {}
    for i, source in enumerate(sources):
        try:
            image = imageio.read_image(source, max_pixels=params.max_pixels)
            params.check_cost(*image.rgb.shape[:2], out_formats[i] or params.format or image.format,
                              pipe.config.upscale, pipe.config.pixel_multiple)
            decoded[i] = image
        except DossrError as error:
            results[i] = error
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in decoded.items():
        groups.setdefault(image.rgb.shape[:2], []).append(i)
    for members in groups.values():
        started = time.perf_counter()
        reports: list[TrustReport] = []
        try:
            upscaled = upscale_decoded_batch(pipe, [decoded[i] for i in members], params, callback, notify,
                                             tile_callback, trust=reports)
        except DossrError as error:
            for i in members:
                results[i] = error
            continue
        share = (time.perf_counter() - started) / len(members)
        for i, (rgb, alpha, seed), report in zip(members, upscaled, reports):
            try:
                results[i] = encode_result(decoded[i], rgb, alpha, seed, params, out_formats[i], share, report)
            except DossrError as error:
                results[i] = error
    return results  # type: ignore[return-value]


def compare_picture(lr_rgb: np.ndarray, result_rgb: np.ndarray) -> np.ndarray:
    """The input enlarged with nearest neighbour beside the result, same height, for looking at."""
    height, width = result_rgb.shape[:2]
    rows = (np.arange(height) * lr_rgb.shape[0] // height).clip(0, lr_rgb.shape[0] - 1)
    cols = (np.arange(width) * lr_rgb.shape[1] // width).clip(0, lr_rgb.shape[1] - 1)
    nearest = lr_rgb[rows][:, cols]
    gap = np.ones((height, max(2, width // 64), 3), dtype=np.float32)
    return np.concatenate([nearest, gap, result_rgb], axis=1)

"""A request's upscale options: the form fields `dossr upscale` has, checked by the same rules.

The server's limits (input and output pixels) are its own and never the client's to raise.
Messages come from `UpscaleParams.validate`, which names command-line options (`--steps`):
here they name the form field (`steps`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Form

from dossr_cli import imageio
from dossr_cli.batch.params import UpscaleParams, parse_tile_size
from dossr_cli.errors import UsageError

DEFAULTS = UpscaleParams()
_OPTION = re.compile(r"--([a-z][a-z0-9-]*)")


@dataclass(frozen=True)
class Limits:
    """What the server accepts; `dossr serve` options."""

    max_upload: int = 64 << 20
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    max_output_pixels: int = DEFAULTS.max_output_pixels or 0
    max_queue: int = 32
    request_timeout: float = 600.0


def field_message(message: str) -> str:
    """'--steps must be in 1..1000' -> 'steps must be in 1..1000': the names a form uses."""
    return _OPTION.sub(lambda match: match.group(1).replace("-", "_"), message)


def make_params(limits: Limits, scale: float, width: int | None, height: int | None, steps: int, order: int,
                t1: int, seed: int, color_fix: str, format: str | None, quality: int | None, metadata: str,
                tile_size: str, tile_overlap: int | None) -> UpscaleParams:
    """The options as `UpscaleParams`, validated; a bad one raises UsageError naming its field."""
    fmt = (imageio.format_from_name(f"x.{format}") or format.lower()) if format else None  # jpeg -> jpg
    try:
        return UpscaleParams(scale, width, height, steps, order, t1, seed, color_fix, fmt, quality, metadata,
                             limits.max_pixels, parse_tile_size(tile_size, "tile_size"), tile_overlap, None,
                             limits.max_output_pixels).validate()
    except UsageError as error:
        raise UsageError(field_message(str(error))) from None


def _form(help: str) -> Form:  # type: ignore[valid-type]
    return Form(description=help)


Scale = Annotated[float, _form("Output scale (any number >= 1).")]
Width = Annotated[int | None, _form("Exact output width (aspect kept if alone).")]
Height = Annotated[int | None, _form("Exact output height (aspect kept if alone).")]
Steps = Annotated[int, _form("Solver steps (network calls).")]
Order = Annotated[int, _form("DoS-SDE solver order: 1, 2 or 3.")]
T1 = Annotated[int, _form("Start point of the domain shift (the weights were trained at 500).")]
Seed = Annotated[int, _form("Run seed; the image's noise is seeded from it and its pixels.")]
ColorFix = Annotated[str, _form("wavelet, adain or none.")]
Format = Annotated[str | None, _form("png, jpg, webp, tiff or bmp (default: the input's).")]
Quality = Annotated[int | None, _form("JPEG/WebP quality 1-100.")]
Metadata = Annotated[str, _form("Carry over all (ICC + EXIF), icc or none.")]
TileSize = Annotated[str, _form("Tile side in pixels of the x4 image (a multiple of 64), auto or 0 (never tile).")]
TileOverlap = Annotated[int | None, _form("Overlap of neighbouring tiles in pixels (a multiple of 8).")]


def defaults() -> dict[str, object]:
    """Each form field's default, for clients (the web page fills its form from these)."""
    return {"scale": DEFAULTS.scale, "width": None, "height": None, "steps": DEFAULTS.steps, "order": DEFAULTS.order,
            "t1": DEFAULTS.t1, "seed": DEFAULTS.seed, "color_fix": DEFAULTS.color_fix, "format": None,
            "quality": None, "metadata": DEFAULTS.metadata, "tile_size": str(DEFAULTS.tile_size),
            "tile_overlap": None}


__all__ = ["Limits", "defaults", "field_message", "make_params"]

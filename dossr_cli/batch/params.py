"""What the user asked an upscale to do, validated where it enters; no torch here.

The command line builds these before any model exists (and --help builds none), so this
module imports nothing heavy: the checks that need torch's modules import them lazily.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dossr_cli import imageio
from dossr_cli.choices import COLOR_FIXES, ORDERS, SEED_RANGE
from dossr_cli.errors import DossrError, UsageError
from dossr_cli.schedule import DEFAULT_T1, MAX_STEPS

DEFAULT_SEED = 42  # the authors' script seeds everything with 42
METADATA_MODES = ("all", "icc", "none")
DEFAULT_MAX_OUTPUT_PIXELS = 512_000_000  # a 32-megapixel photo at x4
# The networks work on the x4 image padded to a multiple of 64 pixels; an image under 16 pixels
# on a side pays for the padding. Past this many times its own area, and this much work, it is refused.
MAX_PADDING_FACTOR = 4
PADDING_FLOOR = 1_000_000


def parse_tile_size(text: str, option: str = "--tile-size") -> int | str:
    """'auto' or a whole number of pixels (checked further by `validate`)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{option} must be auto, 0 (no tiling) or a multiple of 64 pixels; got {text!r}") from None


class JobTooLargeError(DossrError):
    """An image whose output, or the work to make it, is past a limit: refused before any network runs."""


@dataclass(frozen=True)
class UpscaleParams:
    """What the user asked for; `pixel_params()` is the part that decides the pixels."""

    scale: float = 4.0
    width: int | None = None
    height: int | None = None
    steps: int = 5
    order: int = 3
    t1: int = DEFAULT_T1
    seed: int = DEFAULT_SEED
    color_fix: str = "wavelet"
    format: str | None = None  # None: the input's format
    quality: int | None = None
    metadata: str = "all"
    max_pixels: int | None = imageio.DEFAULT_MAX_PIXELS
    tile_size: int | str = "auto"  # pixels of the x4 image; "auto" by the image's size; 0 never tiles
    tile_overlap: int | None = None  # pixels; None: 256, or half a smaller tile
    max_memory: int | None = None  # bytes a tile may use, for "auto" (default: nine tenths of the free memory)
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS  # of the output, and of the x4 image worked on

    def validate(self) -> UpscaleParams:
        """Every option checked where it enters, the error naming the option and what is allowed."""
        if not (math.isfinite(self.scale) and self.scale >= 1):
            raise UsageError(f"--scale must be a number >= 1; got {self.scale}")
        for option, value in (("--width", self.width), ("--height", self.height)):
            if value is not None and value < 1:
                raise UsageError(f"{option} must be a positive number of pixels; got {value}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise UsageError(f"--steps must be in 1..{MAX_STEPS}; got {self.steps}")
        if self.order not in ORDERS:
            raise UsageError(f"--order must be one of {', '.join(map(str, ORDERS))}; got {self.order}")
        if not self.steps < self.t1 <= 1000:
            raise UsageError(f"--t1 must be in {self.steps + 1}..1000 for {self.steps} steps; got {self.t1}")
        if self.color_fix not in COLOR_FIXES:
            raise UsageError(f"--color-fix must be one of {', '.join(COLOR_FIXES)}; got {self.color_fix!r}")
        if self.format is not None and self.format not in imageio.FORMATS:
            raise UsageError(f"--format must be one of {', '.join(imageio.FORMATS)}; got {self.format!r}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be in 1..100; got {self.quality}")
        if self.metadata not in METADATA_MODES:
            raise UsageError(f"--metadata must be one of {', '.join(METADATA_MODES)}; got {self.metadata!r}")
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise UsageError(f"--seed must be in {SEED_RANGE[0]}..{SEED_RANGE[1]} (64 bits); got {self.seed}")
        for option, value in (("--max-pixels", self.max_pixels), ("--max-output-pixels", self.max_output_pixels)):
            if value is not None and value < 1:
                raise UsageError(f"{option} must be a positive number of pixels; got {value}")
        if self.tile_size != "auto" and (not isinstance(self.tile_size, int) or self.tile_size < 0
                                         or self.tile_size % 64):
            raise UsageError(f"--tile-size must be auto, 0 (no tiling) or a multiple of 64 pixels (the UNet halves "
                             f"a latent tile three times); got {self.tile_size!r}")
        if self.tile_overlap is not None and (self.tile_overlap < 0 or self.tile_overlap % 8 or (
                isinstance(self.tile_size, int) and self.tile_size and self.tile_overlap >= self.tile_size)):
            raise UsageError(f"--tile-overlap must be a multiple of 8 pixels below --tile-size; got {self.tile_overlap}")
        if self.max_memory is not None and self.max_memory < 1:
            raise UsageError(f"--max-memory must be positive; got {self.max_memory}")
        return self

    @property
    def pipeline_tile_overlap(self) -> int:
        from dossr_cli.geometry import DEFAULT_TILE_OVERLAP  # the pipeline halves it for tiles that cannot hold it

        return DEFAULT_TILE_OVERLAP if self.tile_overlap is None else self.tile_overlap

    @property
    def pipeline_tile_size(self) -> int | str | None:
        """What the pipeline takes: a size, "auto", or None for no tiling."""
        return None if self.tile_size == 0 else self.tile_size

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the output: exact --width/--height (aspect kept if only one), else ceil(scale x size)."""
        if self.width is not None and self.height is not None:
            return self.height, self.width
        if self.width is not None:
            return max(1, round(height * self.width / width)), self.width
        if self.height is not None:
            return self.height, max(1, round(width * self.height / height))
        from dossr_cli.geometry import output_size

        return output_size(height, width, self.scale)

    def check_cost(self, height: int, width: int, format: str, upscale: int = 4, multiple: int = 64) -> None:
        """Refuse, before any network runs, an image whose output the format cannot hold, or whose output
        or work (the x4 image padded to `multiple`, what the networks process) is past the limits."""
        out_h, out_w = self.target_size(height, width)
        side = imageio.MAX_SIDE.get(format)
        if side is not None and max(out_h, out_w) > side:
            raise JobTooLargeError(f"the output would be {out_w}x{out_h} and {format} holds at most {side} pixels a "
                                   f"side: use --format png or tiff, or a smaller --scale")
        x4_h, x4_w = height * upscale, width * upscale
        work = -(-x4_h // multiple) * multiple * (-(-x4_w // multiple) * multiple)
        limit = self.max_output_pixels
        if limit is not None and out_h * out_w > limit:
            raise JobTooLargeError(f"the output would be {out_w}x{out_h} = {_mpx(out_h * out_w)}, over the "
                                   f"{_mpx(limit)} limit: pass --max-output-pixels {out_h * out_w} (or more) if "
                                   f"you mean it, or use a smaller --scale")
        if limit is not None and x4_h * x4_w > limit:
            raise JobTooLargeError(f"the model works on the x{upscale} image, {x4_w}x{x4_h} = {_mpx(x4_h * x4_w)}, "
                                   f"over the {_mpx(limit)} limit: pass --max-output-pixels {x4_h * x4_w} (or more) "
                                   f"if you mean it")
        if work > MAX_PADDING_FACTOR * x4_h * x4_w and work > PADDING_FLOOR:
            raise JobTooLargeError(f"{width}x{height} is too thin: the networks work on the x{upscale} image padded to "
                                   f"{multiple}-pixel multiples, {_mpx(work)} for an image of {_mpx(x4_h * x4_w)} "
                                   f"({work / (x4_h * x4_w):.1f} times its area); pad it to at least "
                                   f"{multiple // upscale} pixels on its short side first")

    def name_suffix(self) -> str:
        """What an output's name adds to its input's by default: _x4, or _WxH for an exact size."""
        if self.width is not None or self.height is not None:
            return f"_{self.width or ''}x{self.height or ''}"
        return f"_x{self.scale:g}"

    def pixel_params(self) -> dict[str, Any]:
        keys = ("scale", "width", "height", "steps", "order", "t1", "seed", "color_fix", "tile_size", "tile_overlap")
        return {k: getattr(self, k) for k in keys}

    def output_params(self) -> dict[str, Any]:
        return {**self.pixel_params(), "format": self.format, "quality": self.quality, "metadata": self.metadata}

    def replace(self, **changes: Any) -> UpscaleParams:
        return dataclasses.replace(self, **changes)


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"

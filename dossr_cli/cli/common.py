"""Options and helpers that several commands share: one definition each."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dossr_cli import imageio
from dossr_cli.batch.params import DEFAULT_SEED, UpscaleParams, parse_tile_size
from dossr_cli.choices import DTYPE_NAMES, MEMORY_FORMATS
from dossr_cli.cli.console import confirm, say
from dossr_cli.errors import UsageError

if TYPE_CHECKING:
    from dossr_cli.pipeline import DoSSRPipeline

Scale = Annotated[float, typer.Option("-s", "--scale", help="Output scale (any number >= 1).")]
Width = Annotated[int | None, typer.Option("--width", help="Exact output width (aspect kept if alone).")]
Height = Annotated[int | None, typer.Option("--height", help="Exact output height (aspect kept if alone).")]
Steps = Annotated[int, typer.Option("--steps", help="Solver steps (network calls).")]
Order = Annotated[int, typer.Option("--order", help="DoS-SDE solver order: 1, 2 or 3.")]
T1 = Annotated[int, typer.Option("--t1", help="Start point of the domain shift (the weights were trained at 500).")]
Seed = Annotated[int, typer.Option("--seed", help="Run seed; each image's noise is seeded from it and its pixels.")]
ColorFix = Annotated[str, typer.Option("--color-fix", help="wavelet, adain or none.")]
Device = Annotated[str, typer.Option("--device", help="auto, cuda, cuda:N, mps or cpu.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto, fp16, bf16 or fp32.")]
Weights = Annotated[str | None, typer.Option("--weights", help="Weights: a name, a bundle folder, a .ckpt or "
                                             "hf:ORG/REPO (default: $DOSSR_WEIGHTS, else 'default').")]
Download = Annotated[bool, typer.Option("--download", help="Download the named weights if they are missing.")]
Format = Annotated[str | None, typer.Option("-f", "--format", help="png, jpg, webp, tiff or bmp (default: input's).")]
Quality = Annotated[int | None, typer.Option("--quality", help="JPEG/WebP quality 1-100.")]
Suffix = Annotated[str | None, typer.Option("--suffix", help="Output name suffix (default _x<scale>).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
Metadata = Annotated[str, typer.Option("--metadata", help="Carry over all (ICC + EXIF), icc or none.")]
MaxPixels = Annotated[int | None, typer.Option("--max-pixels", help="Refuse inputs larger than this many pixels "
                                               "(decompression-bomb guard).")]
MaxOutputPixels = Annotated[int | None, typer.Option("--max-output-pixels", help="Refuse images whose output, or the "
                                                     "x4 image the model works on, is larger than this many pixels "
                                                     "(default 512000000: a 32-megapixel photo at x4).")]
Json = Annotated[bool, typer.Option("--json", help="One JSON result per image on stdout.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or messages on stderr.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
TileSize = Annotated[str, typer.Option("--tile-size", help="Tile side in output pixels of the x4 image (a multiple "
                                       "of 64), auto (by the image's size: untiled up to 1024x1024, else 1024-pixel "
                                       "tiles; smaller only where memory is short, with a note) or 0 (never tile).")]
TileOverlap = Annotated[int | None, typer.Option("--tile-overlap", help="Overlap of neighbouring tiles, in pixels "
                                                 "(a multiple of 8; default 256, or half a smaller tile).")]
MaxMemory = Annotated[str | None, typer.Option("--max-memory", help="Memory a tile may use with --tile-size auto, "
                                               "e.g. 8GB; less than auto's tile needs makes smaller tiles (default: "
                                               "nine tenths of the free memory).")]
Compare = Annotated[Path | None, typer.Option("--compare", help="Also write a side-by-side picture (input "
                                              "enlarged with nearest neighbour | result) to this file or folder.")]
FlagDeparturePsnr = Annotated[float, typer.Option("--flag-departure-psnr", metavar="DB", help="Flag an image whose "
                                                 "output, taken back to the input's size, is below this PSNR "
                                                 "against the input (dB).")]
FlagDepartureShare = Annotated[float, typer.Option("--flag-departure-share", metavar="SHARE", help="Flag an image "
                                                   "where more than this share (0-1) of the input's pixels depart "
                                                   "by over a tenth of the range.")]
TrustMap = Annotated[Path | None, typer.Option("--trust-map", help="Also write a trust map (the result greyed, "
                                               "invented detail in cyan, departures from the input in red, a "
                                               "legend) to this file or folder.")]
TrustMaps = Annotated[Path | None, typer.Option("--trust-map", help="Also write each computed image's trust map "
                                                "(NAME_trust.png, the tree mirrored) into this folder.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the networks, block by block: the first "
                                       "image of each size waits for the compiler, the rest run faster; the "
                                       "compiled code is kept on disk for the next run.")]
Server = Annotated[str | None, typer.Option("--server", envvar="DOSSR_SERVER", show_envvar=True,
                                            help="A running `dossr serve` to do the work, e.g. http://127.0.0.1:8000 "
                                            "(no model is loaded here).", show_default=False)]
Token = Annotated[str | None, typer.Option("--token", envvar="DOSSR_TOKEN", show_envvar=True,
                                           help="With --server: the server's token, if it has one.",
                                           show_default=False)]
MemoryFormat = Annotated[str, typer.Option("--memory-format", help="The networks' layout: auto (contiguous "
                                           "until a device has measured both), contiguous or channels-last.")]

DEFAULTS = UpscaleParams()


def make_params(scale: float, width: int | None, height: int | None, steps: int, order: int, t1: int, seed: int,
                color_fix: str, format: str | None, quality: int | None, metadata: str,
                max_pixels: int | None, tile_size: str = "auto", tile_overlap: int | None = None,
                max_memory: str | None = None, max_output_pixels: int | None = None) -> UpscaleParams:
    fmt = (imageio.format_from_name(f"x.{format}") or format.lower()) if format else None  # jpeg -> jpg, tif -> tiff
    return UpscaleParams(scale, width, height, steps, order, t1, seed, color_fix, fmt, quality, metadata,
                         max_pixels if max_pixels is not None else DEFAULTS.max_pixels,
                         parse_tile_size(tile_size), tile_overlap, parse_memory(max_memory),
                         max_output_pixels if max_output_pixels is not None else DEFAULTS.max_output_pixels).validate()


def parse_memory(text: str | None, option: str = "--max-memory") -> int | None:
    """'8GB', '512MB', '6.5' (GB) -> bytes."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gb|gib|g|mb|mib|m)?\s*", text.lower())
    if match is None:
        raise UsageError(f"{option} must look like 8GB or 512MB; got {text!r}")
    unit = (match.group(2) or "gb")[0]
    return int(float(match.group(1)) * (1 << 30 if unit == "g" else 1 << 20))


def default_suffix(params: UpscaleParams) -> str:
    return params.name_suffix()


def check_device_dtype(device: str, dtype: str) -> None:
    """Checked with the other options, before any file or folder is touched; a device this machine
    lacks is named here rather than failing deep inside torch. The spelling is checked before torch is imported."""
    if dtype != "auto" and dtype not in DTYPE_NAMES:
        raise UsageError(f"--dtype must be one of auto, {', '.join(DTYPE_NAMES)}; got {dtype!r}")
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UsageError(f"--device must be auto, cuda, cuda:N, mps or cpu; got {device!r}")
    if device in ("auto", "cpu"):
        return
    import torch

    count = torch.cuda.device_count() if device.startswith("cuda") else 0
    if device.startswith("cuda") and count <= int(device.partition(":")[2] or 0):
        found = f"only cuda:0..cuda:{count - 1}" if count else "no CUDA device"
        raise UsageError(f"--device {device}: this machine's torch sees {found}; use --device auto or cpu")
    mps = getattr(torch.backends, "mps", None)
    if device == "mps" and not (mps is not None and mps.is_available()):
        raise UsageError("--device mps: Apple's Metal (MPS) is not available here; use --device auto or cpu")


def check_memory_format(memory_format: str) -> None:
    if memory_format not in MEMORY_FORMATS:
        raise UsageError(f"--memory-format must be one of {', '.join(MEMORY_FORMATS)}; got {memory_format!r}")


def find_weights(weights: str | None, download: bool, quiet: bool) -> Path:
    """The bundle folder for --weights (maybe asking to download it); nothing is loaded yet."""
    from dossr_cli.checkpoint.store import resolve_weights

    return resolve_weights(weights, download=download, confirm=confirm, progress=lambda m: say(m, quiet))


def weights_identity(bundle: Path) -> str:
    """What decides the model: its config and each file's sha256, as recorded in the bundle (nothing hashed here)."""
    from dossr_cli.checkpoint.bundle import read_bundle_config

    config = read_bundle_config(bundle)
    recorded = {"model": config.get("model"),
                "files": {name: entry.get("sha256") for name, entry in config["components"].items()}}
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]


def load_pipeline(bundle: Path, device: str, dtype: str, compile: bool = False,
                  memory_format: str = "auto") -> DoSSRPipeline:
    """Load a bundle found by `find_weights` onto the device, laid out and (with --compile) compiled."""
    from dossr_cli.pipeline import DoSSRPipeline

    check_device_dtype(device, dtype)
    check_memory_format(memory_format)
    pipe = DoSSRPipeline.from_pretrained(bundle, device=device, dtype=dtype, memory_format=memory_format)
    return pipe.compile() if compile else pipe


__all__ = ["DEFAULT_SEED", "check_device_dtype", "check_memory_format", "default_suffix", "find_weights",
           "load_pipeline", "make_params", "weights_identity"]

"""`dossr upscale INPUT... [-o OUTPUT]`: one or many images, files or stdin/stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dossr_cli import imageio
from dossr_cli.batch.job import UpscaleParams, compare_picture, run_job
from dossr_cli.cli import common
from dossr_cli.cli.console import say, stderr, stdout
from dossr_cli.cli.progress import progress_bars
from dossr_cli.errors import DossrError, UsageError

STDIO = "-"


def plan_output(source: str, output: str | None, params: UpscaleParams, suffix: str, many: bool) -> str:
    """Where one input's result goes: STDIO, a file beside it, inside -o DIR, or -o FILE."""
    if output == STDIO or (source == STDIO and output is None):
        return STDIO
    fmt = params.format or (imageio.format_from_name(source) if source != STDIO else None) or "png"
    stem = "stdin" if source == STDIO else Path(source).stem
    name = f"{stem}{suffix}{imageio.extension(fmt)}"
    if output is None:
        return str(Path(source).with_name(name))
    out = Path(output)
    if many or out.is_dir() or output.endswith(("/", "\\")):
        return str(out / name)
    return output


def upscale(
    inputs: Annotated[list[str], typer.Argument(help="Image files, or - for stdin.", show_default=False)],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Output file, folder, or - for stdout.")]
    = None,
    scale: common.Scale = 4.0,
    width: common.Width = None,
    height: common.Height = None,
    steps: common.Steps = 5,
    order: common.Order = 3,
    t1: common.T1 = 500,
    seed: common.Seed = common.DEFAULT_SEED,
    color_fix: common.ColorFix = "wavelet",
    device: common.Device = "auto",
    dtype: common.Dtype = "auto",
    weights: common.Weights = None,
    download: common.Download = False,
    format: common.Format = None,
    quality: common.Quality = None,
    suffix: common.Suffix = None,
    overwrite: common.Overwrite = False,
    metadata: common.Metadata = "all",
    max_pixels: common.MaxPixels = None,
    compare: common.Compare = None,
    json_output: common.Json = False,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Upscale images with DoSSR (defaults: the paper's x4, 5 steps, order 3, wavelet colour fix)."""
    params = common.make_params(scale, width, height, steps, order, t1, seed, color_fix, format, quality,
                                metadata, max_pixels)
    many = len(inputs) > 1
    if output == STDIO and many:
        raise UsageError("-o - (stdout) takes a single input")
    if inputs.count(STDIO) > 1:
        raise UsageError("stdin (-) can be read only once")
    if output is not None and output != STDIO and not many and not Path(output).is_dir():
        if params.format is None and imageio.format_from_name(output) is None and not output.endswith(("/", "\\")):
            raise UsageError(f"cannot tell the format of {output}: give it an extension or --format")
    plans = [(source, plan_output(source, output, params, suffix if suffix is not None
                                  else common.default_suffix(params), many)) for source in inputs]
    if json_output and any(dest == STDIO for _, dest in plans):
        raise UsageError("--json writes to stdout, so it cannot be combined with writing the image to stdout")

    failures = 0
    pending = []
    for source, dest in plans:  # refuse what would overwrite before loading any model
        if dest != STDIO and Path(dest).exists() and not overwrite:
            failures += 1
            _report_failure(source, f"{dest} already exists (pass --overwrite to replace it)", json_output)
        elif source != STDIO and not Path(source).is_file():
            failures += 1
            _report_failure(source, "no such file" if not Path(source).exists() else "not a file", json_output)
        else:
            pending.append((source, dest))
    if not pending:
        sys.exit(1)

    pipe = common.load_pipeline(weights, device, dtype, download, quiet)
    with progress_bars(len(pending), params.steps, quiet) as bars:
        for source, dest in pending:
            bars.start_image(source)
            try:
                data = sys.stdin.buffer.read() if source == STDIO else Path(source)
                out_format = params.format or (imageio.format_from_name(dest) if dest != STDIO else None)
                result = run_job(pipe, data, params, out_format, callback=bars.step)
                for note in result.notes:
                    say(f"dossr: note: {source}: {note}", quiet)
                if dest == STDIO:
                    sys.stdout.buffer.write(result.data)
                    sys.stdout.buffer.flush()
                else:
                    imageio.write_atomic(dest, result.data, overwrite=overwrite)
                if compare is not None:
                    _write_compare(compare, source, result, many, overwrite)
            except DossrError as error:
                failures += 1
                bars.done_image()
                _report_failure(source, str(error), json_output)
                continue
            bars.done_image()
            if json_output:
                stdout.print(json.dumps({
                    "input": source, "output": dest, "status": "ok", "format": result.format,
                    "input_size": result.input_size, "size": result.output_size, "seconds": round(result.seconds, 3),
                    "seed": result.seed, "parameters": params.output_params(),
                }), markup=False)
            elif dest != STDIO:
                say(f"{source} -> {dest} ({result.output_size[0]}x{result.output_size[1]}, {result.seconds:.1f}s)",
                    quiet)
    if failures:
        sys.exit(1)


def _report_failure(source: str, message: str, json_output: bool) -> None:
    stderr.print(f"dossr: error: {source}: {message}", markup=False)
    if json_output:
        stdout.print(json.dumps({"input": source, "status": "failed", "error": message}), markup=False)


def _write_compare(compare: Path, source: str, result, many: bool, overwrite: bool) -> None:  # noqa: ANN001
    picture = compare_picture(result.lr_rgb, result.rgb)
    if many or compare.is_dir():
        stem = "stdin" if source == STDIO else Path(source).stem
        target = compare / f"{stem}_compare.png"
    else:
        target = compare
    fmt = imageio.format_from_name(target) or "png"
    imageio.write_atomic(target, imageio.encode_image(picture, None, fmt, metadata="none"), overwrite=overwrite)

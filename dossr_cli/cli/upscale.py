"""`dossr upscale INPUT... [-o OUTPUT]`: one or many images, files or stdin/stdout."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dossr_cli import imageio
from dossr_cli.batch.params import UpscaleParams
from dossr_cli.cli import common
from dossr_cli.cli.console import error_line, say, stderr, stdout
from dossr_cli.cli.progress import progress_bars
from dossr_cli.errors import DossrError, UsageError
from dossr_cli.trust import DEFAULT_FLAG_PSNR_DB, DEFAULT_FLAG_SHARE

if TYPE_CHECKING:
    import numpy as np

    from dossr_cli.batch.job import JobResult
    from dossr_cli.trust import TrustReport

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
    max_output_pixels: common.MaxOutputPixels = None,
    tile_size: common.TileSize = "auto",
    tile_overlap: common.TileOverlap = None,
    max_memory: common.MaxMemory = None,
    compare: common.Compare = None,
    trust_map: common.TrustMap = None,
    flag_departure_psnr: common.FlagDeparturePsnr = DEFAULT_FLAG_PSNR_DB,
    flag_departure_share: common.FlagDepartureShare = DEFAULT_FLAG_SHARE,
    compile: common.Compile = False,
    json_output: common.Json = False,
    server: common.Server = None,
    token: common.Token = None,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Upscale images with DoSSR (defaults: the paper's x4, 5 steps, order 3, wavelet colour fix).

    Exit codes: 0 success, 1 some inputs failed, 2 usage error, 130 interrupted.
    """
    params = common.make_params(scale, width, height, steps, order, t1, seed, color_fix, format, quality,
                                metadata, max_pixels, tile_size, tile_overlap, max_memory, max_output_pixels)
    if server:
        from dossr_cli.cli import remote  # requests only: no torch, no model

        remote.refuse_server_choices({"--weights": weights is not None, "--download": download,
                                      "--device": device != "auto", "--dtype": dtype != "auto", "--compile": compile,
                                      "--max-memory": max_memory is not None, "--max-pixels": max_pixels is not None,
                                      "--max-output-pixels": max_output_pixels is not None})
    common.check_device_dtype(device, dtype)
    many = len(inputs) > 1
    if output == STDIO and many:
        raise UsageError("-o - (stdout) takes a single input")
    if inputs.count(STDIO) > 1:
        raise UsageError("stdin (-) can be read only once")
    if output is not None and output != STDIO:
        _check_destination(output, params, many)
    if compare is not None:
        _check_folder("--compare", compare if many or compare.is_dir() else compare.parent)
    if trust_map is not None:
        if server:
            raise UsageError("--trust-map needs the model here: a --server result carries the trust numbers, not the maps")
        _check_folder("--trust-map", trust_map if many or trust_map.is_dir() else trust_map.parent)
    suffix = suffix if suffix is not None else common.default_suffix(params)
    plans = [(source, plan_output(source, output, params, suffix, many), _compare_target(compare, source, many),
              _compare_target(trust_map, source, many, "_trust"))
             for source in inputs]
    if json_output and any(dest == STDIO for _, dest, _, _ in plans):
        raise UsageError("--json writes to stdout, so it cannot be combined with writing the image to stdout")

    failures = 0
    pending = []
    for source, dest, side, map_path in plans:  # refuse what would overwrite before loading any model
        existing = [str(p) for p in (dest, side, map_path) if p not in (None, STDIO) and Path(p).exists()]
        if existing and not overwrite:
            failures += 1
            _report_failure(source, f"{existing[0]} already exists (pass --overwrite to replace it)", json_output)
        elif source != STDIO and not Path(source).is_file():
            failures += 1
            _report_failure(source, "no such file" if not Path(source).exists() else "not a file", json_output)
        else:
            pending.append((source, dest, side, map_path))
    if not pending:
        sys.exit(1)

    if server:
        client = remote.connect(server, token)  # one line, before any input is read, if it cannot be used
    else:
        from dossr_cli.batch.job import run_job  # torch: only once every option has been checked

        pipe = common.load_pipeline(common.find_weights(weights, download, quiet), device, dtype, compile)
    with progress_bars(len(pending), params.steps, quiet) as bars:
        for source, dest, side, map_path in pending:
            bars.start_image(source)
            try:
                data = sys.stdin.buffer.read() if source == STDIO else Path(source)
                out_format = params.format or (imageio.format_from_name(dest) if dest != STDIO else None)
                notify = lambda message, source=source: say(f"dossr: note: {source}: {message}", quiet)
                if server:
                    result = remote.run_remote(client, data, params, out_format, bars, notify)
                else:
                    result = run_job(pipe, data, params, out_format, callback=bars.step, tile_callback=bars.tiles,
                                     notify=notify)
                for note in result.notes:
                    say(f"dossr: note: {source}: {note}", quiet)
                if dest == STDIO:
                    sys.stdout.buffer.write(result.data)
                    sys.stdout.buffer.flush()
                else:
                    imageio.write_atomic(dest, result.data, overwrite=overwrite)
                if side is not None:
                    _write_compare(side, result, overwrite)
                if map_path is not None and result.trust is not None:
                    _write_trust_map(map_path, result.rgb, result.trust, overwrite)
            except DossrError as error:
                if server and isinstance(error, remote.ServerUnavailable):
                    raise  # the server is gone or refuses us: every other image would fail the same way
                failures += 1
                bars.done_image()
                if debug:
                    traceback.print_exc()
                _report_failure(source, str(error), json_output)
                continue
            bars.done_image()
            if json_output:
                stdout.print(json.dumps({
                    "input": source, "output": dest, "status": "ok", "format": result.format,
                    "input_size": result.input_size, "size": result.output_size, "seconds": round(result.seconds, 3),
                    "seed": result.seed, "parameters": params.output_params(),
                    "trust": result.trust.as_json(flag_departure_psnr, flag_departure_share) if result.trust else None,
                }), markup=False)
            elif dest != STDIO:
                flags = result.trust.flags(flag_departure_psnr, flag_departure_share) if result.trust else []
                flagged = f"; flagged: {', '.join(flags)}" if flags else ""
                say(f"{source} -> {dest} ({result.output_size[0]}x{result.output_size[1]}, {result.seconds:.1f}s"
                    f"{flagged})", quiet)
    if failures:
        sys.exit(1)


def _check_destination(output: str, params: UpscaleParams, many: bool) -> None:
    """-o names a folder that exists, or a file whose name and --format agree on one format."""
    as_folder = many or output.endswith(("/", "\\")) or Path(output).is_dir()
    _check_folder("-o", Path(output) if as_folder else Path(output).parent)
    if as_folder:
        return
    named = imageio.format_from_name(output)
    if params.format is None and named is None:
        raise UsageError(f"cannot tell the format of {output}: give it an extension or --format")
    if params.format is not None and named is not None and named != params.format:
        raise UsageError(f"-o {output} names a {named} file but --format is {params.format}; make them agree")


def _check_folder(option: str, folder: Path) -> None:
    """Before any model work: a missing output folder would fail every image at its very end."""
    if not folder.is_dir():
        raise UsageError(f"{option}: the folder '{folder}' does not exist; create it first")


def _report_failure(source: str, message: str, json_output: bool) -> None:
    stderr.print(error_line(source, message), markup=False)
    if json_output:
        stdout.print(json.dumps({"input": source, "status": "failed", "error": message}), markup=False)


def _compare_target(compare: Path | None, source: str, many: bool, tag: str = "_compare") -> Path | None:
    """Where --compare (--trust-map) puts one input's picture: the file given, or NAME_compare.png
    (NAME_trust.png) in the folder."""
    if compare is None:
        return None
    if many or compare.is_dir():
        stem = "stdin" if source == STDIO else Path(source).stem
        return compare / f"{stem}{tag}.png"
    return compare


def _write_compare(target: Path, result: JobResult, overwrite: bool) -> None:
    from dossr_cli.batch.job import compare_picture

    picture = compare_picture(result.lr_rgb, result.rgb)
    fmt = imageio.format_from_name(target) or "png"
    imageio.write_atomic(target, imageio.encode_image(picture, None, fmt, metadata="none"), overwrite=overwrite)


def _write_trust_map(target: Path, rgb: np.ndarray, report: TrustReport, overwrite: bool) -> None:
    from dossr_cli.trust import trust_map

    picture = trust_map(rgb, report)
    fmt = imageio.format_from_name(target) or "png"
    imageio.write_atomic(target, imageio.encode_image(picture, None, fmt, metadata="none"), overwrite=overwrite)

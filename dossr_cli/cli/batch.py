"""`dossr batch DIR [-o OUTDIR]`: a folder (tree) of images, resumable through a journal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dossr_cli.batch.journal import JOURNAL_NAME, DiskFullError, Journal
from dossr_cli.cli import common
from dossr_cli.cli.console import error_line, say, stderr, stdout
from dossr_cli.cli.progress import progress_bars
from dossr_cli.errors import UsageError
from dossr_cli.trust import DEFAULT_FLAG_PSNR_DB, DEFAULT_FLAG_SHARE

if TYPE_CHECKING:
    from dossr_cli.batch.runner import Outcome

ENGINES = ("local", "ray")


def batch(
    folder: Annotated[Path, typer.Argument(help="Folder of images.", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output folder (default: FOLDER_x<scale> "
                                                "beside FOLDER); mirrors the input tree.")] = None,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Include subfolders.")] = False,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only paths matching this glob "
                                                      "(repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Skip paths matching this glob "
                                                      "(repeatable).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="Where images run: local (this process) or ray (model "
                                        "actors on a Ray cluster; pip install 'dossr\\[ray]').")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="With --engine ray: the Ray cluster to join "
                                                "(default: $RAY_ADDRESS, else a Ray runtime started on this "
                                                "machine).", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="With --engine ray: model actors (default: one "
                                                "per GPU; without GPUs, one per as many CPUs as torch has threads "
                                                "here; at most one per image).", show_default=False)] = None,
    gpus_per_worker: Annotated[float | None, typer.Option("--gpus-per-worker", help="With --engine ray: GPUs each "
                                                          "actor holds (default: 1 where the cluster has GPUs, else "
                                                          "0: CPU actors).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Run up to this many images of one size "
                                            "through the model together (0: auto, 4 on CUDA, else 1; with "
                                            "--engine ray, each actor's).")] = 0,
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
    trust_map: common.TrustMaps = None,
    flag_departure_psnr: common.FlagDeparturePsnr = DEFAULT_FLAG_PSNR_DB,
    flag_departure_share: common.FlagDepartureShare = DEFAULT_FLAG_SHARE,
    compile: common.Compile = False,
    json_output: common.Json = False,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Upscale every image in a folder; re-runs skip what is done and retry what failed.

    Several runs may share one folder (one per GPU, say): each image is computed by one of them.
    Exit codes: 0 all done, 1 some images failed or the disk is full, 2 usage error, 130 interrupted.
    """
    params = common.make_params(scale, width, height, steps, order, t1, seed, color_fix, format, quality,
                                metadata, max_pixels, tile_size, tile_overlap, max_memory, max_output_pixels)
    common.check_device_dtype(device, dtype)
    if batch_size < 0:
        raise UsageError(f"--batch-size must be 0 (auto) or a positive number; got {batch_size}")
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "ray":
        from dossr_cli.batch.ray_engine import check_options

        check_options(workers, gpus_per_worker)
    else:
        for option, value in (("--address", address), ("--workers", workers), ("--gpus-per-worker", gpus_per_worker)):
            if value is not None:
                raise UsageError(f"{option} needs --engine ray")
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    if trust_map is not None and trust_map.exists() and not trust_map.is_dir():
        raise UsageError(f"--trust-map for a batch is a folder (NAME_trust.png go into it); {trust_map} is a file")
    from dossr_cli.batch.runner import list_inputs, plan, run_local  # torch: only once the options are checked

    root = folder.resolve()
    suffix = suffix if suffix is not None else common.default_suffix(params)
    outdir = (output.resolve() if output is not None else root.with_name(root.name + suffix))
    skip = [outdir] + [extra.resolve() for extra in (compare, trust_map) if extra is not None]  # not our outputs
    sources = list_inputs(root, recursive, include or (), exclude or (), skip=skip)
    if not sources:
        raise UsageError(f"no images in {folder}" + ("" if recursive else " (use -r for subfolders)"))

    thresholds = (flag_departure_psnr, flag_departure_share)

    def report(outcome: Outcome) -> None:
        if outcome.status == "failed":
            stderr.print(error_line(outcome.rel, outcome.detail), markup=False)
        for note in outcome.notes:
            say(f"dossr: note: {outcome.rel}: {note}", quiet)
        if json_output:
            stdout.print(_json_line(root, outcome, thresholds), markup=False)

    bundle = common.find_weights(weights, download, quiet)
    model = common.weights_identity(bundle)  # other weights give other pixels: part of what makes an image done
    pipe = None
    if engine == "local" and not (outdir / JOURNAL_NAME).is_file():
        # A first run has everything to do: load the weights before the output folder and journal exist,
        # so that weights that cannot be loaded leave nothing behind.
        pipe = common.load_pipeline(bundle, device, dtype, compile)
    journal = Journal(outdir)
    outcomes: list[Outcome] = []
    stopped: DiskFullError | None = None
    try:
        compare_dir = compare.resolve() if compare is not None else None
        trust_dir = trust_map.resolve() if trust_map is not None else None
        todo, known = plan(root, outdir, sources, params, model, suffix, compare_dir, journal, trust_dir)
        say(f"{len(sources)} images: {len(todo)} to do, {len(known)} already done or unreadable -> {outdir}",
            quiet)
        for outcome in known:
            outcomes.append(outcome)
            report(outcome)
        if todo and engine == "ray":
            from dossr_cli.batch.ray_engine import run_ray

            with progress_bars(len(todo), params.steps, quiet) as bars:
                if bars.progress is not None:  # remote workers cannot stream solver steps: images only
                    bars.progress.update(bars.solver, visible=False)

                def finished_remotely(outcome: Outcome) -> None:
                    bars.done_image()
                    outcomes.append(outcome)
                    report(outcome)

                run_ray(bundle, device, dtype, todo, params, model, journal, overwrite, address, workers,
                        gpus_per_worker, compile=compile, on_start=lambda item: bars.start_image(item.rel),
                        on_outcome=finished_remotely, notify=lambda message: say(f"dossr: note: {message}", quiet),
                        batch_size=batch_size)
        elif todo:
            if pipe is None:
                pipe = common.load_pipeline(bundle, device, dtype, compile)
            with progress_bars(len(todo), params.steps, quiet) as bars:
                def finished(outcome: Outcome) -> None:
                    bars.done_image()
                    outcomes.append(outcome)
                    report(outcome)

                size = batch_size or (4 if pipe.device.type == "cuda" else 1)
                run_local(pipe, todo, params, model, journal, overwrite, size,
                          on_start=lambda item: bars.start_image(item.rel), on_outcome=finished,
                          callback=bars.step, tile_callback=bars.tiles,
                          notify=lambda message: say(f"dossr: note: {message}", quiet))
    except DiskFullError as error:  # what finished is recorded and kept; the rest waits for space
        stopped = error
    finally:
        journal.close()
    _summary(outcomes, quiet, unfinished=len(sources) - len(outcomes) if stopped else 0, thresholds=thresholds)
    if stopped is not None:
        stderr.print(f"dossr: error: {stopped}", markup=False)
        sys.exit(stopped.exit_code)
    if any(o.status == "failed" for o in outcomes):
        sys.exit(1)


def _json_line(root: Path, outcome: Outcome, thresholds: tuple[float, float]) -> str:
    result: dict[str, object] = {"input": str(root / outcome.rel), "status": outcome.status,
                                 "error" if outcome.status == "failed" else "output": outcome.detail}
    if outcome.status == "done":
        result["seconds"] = round(outcome.seconds, 3)
        result["trust"] = outcome.trust.as_json(*thresholds) if outcome.trust is not None else None
    return json.dumps(result)


WORST_SHOWN = 3  # flagged images the summary names, worst departure first

_SUMMARY_ROWS = {"done": "done", "skipped": "skipped", "elsewhere": "done by another run", "failed": "failed"}


def _summary(outcomes: list[Outcome], quiet: bool, unfinished: int = 0,
             thresholds: tuple[float, float] = (DEFAULT_FLAG_PSNR_DB, DEFAULT_FLAG_SHARE)) -> None:
    """Counts by status; the rows for other runs' work and for what a stopped run left appear when there is any.
    Then the flagged images whose departure from their input is worst, to check first."""
    counts = {label: sum(o.status == status for o in outcomes) for status, label in _SUMMARY_ROWS.items()}
    counts["not done yet"] = unfinished
    flagged = sorted((o for o in outcomes if o.trust is not None and o.trust.flags(*thresholds)),
                     key=lambda o: (o.trust.departure_psnr_db, -o.trust.departure_share))  # type: ignore[union-attr]
    counts["flagged (departs from its input)"] = len(flagged)
    if quiet:
        return
    table = Table(title="dossr batch", show_edge=False)
    table.add_column("status")
    table.add_column("images", justify="right")
    for status, count in counts.items():
        if count or status in ("done", "skipped", "failed"):
            table.add_row(status, str(count))
    stderr.print(table)
    for outcome in outcomes:
        if outcome.status == "failed":
            stderr.print("  failed: " + error_line(outcome.rel, outcome.detail).removeprefix("dossr: error: "),
                         markup=False)
    for outcome in flagged[:WORST_SHOWN]:
        reasons = "; ".join(outcome.trust.flags(*thresholds))  # type: ignore[union-attr]
        stderr.print(f"  check first: {outcome.rel}: {reasons}", markup=False)
    if len(flagged) > WORST_SHOWN:
        stderr.print(f"  ... and {len(flagged) - WORST_SHOWN} more flagged (see --json)", markup=False)

"""A folder of images: list, plan against the journal, run each item, report.

The engine only decides where `process_item` runs; planning, the journal and the
summary are the same for every engine, so a re-run behaves the same whichever ran it.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dossr_cli import imageio
from dossr_cli.batch.job import UpscaleParams, compare_picture, run_jobs
from dossr_cli.batch.journal import JOURNAL_NAME, Journal, content_sha256, params_key
from dossr_cli.errors import DossrError
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.solver import StepCallback

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class BatchItem:
    source: Path
    rel: str  # path relative to the batch root, with "/" separators: the journal's key
    output: Path
    compare: Path | None
    sha256: str


@dataclass(frozen=True)
class Outcome:
    rel: str
    status: str  # "done", "skipped" or "failed"
    detail: str = ""  # the output file, or for a failure what went wrong
    seconds: float = 0.0
    notes: tuple[str, ...] = ()  # things the user should hear about (alpha flattened, metadata dropped)


def list_inputs(root: Path, recursive: bool, include: Iterable[str] = (), exclude: Iterable[str] = (),
                skip: Iterable[Path] = ()) -> list[Path]:
    """Image files under `root` in a stable order; globs match the path relative to root."""
    include, exclude = list(include), list(exclude)
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = []
    for path in candidates:
        if not path.is_file() or path.name.startswith("."):
            continue
        if any(folder in path.parents for folder in skip):
            continue
        rel = path.relative_to(root).as_posix()
        if include and not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(path.name, g) for g in include):
            continue
        if not include and path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(path.name, g) for g in exclude):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def output_path(root: Path, outdir: Path, source: Path, suffix: str, fmt: str | None) -> Path:
    """The mirrored place of `source` under `outdir`."""
    rel = source.relative_to(root)
    out_format = fmt or imageio.format_from_name(source) or "png"
    return outdir / rel.parent / f"{source.stem}{suffix}{imageio.extension(out_format)}"


def plan(root: Path, outdir: Path, sources: list[Path], params: UpscaleParams, model: str, suffix: str,
         compare_dir: Path | None, journal: Journal) -> tuple[list[BatchItem], list[Outcome]]:
    """Items to run, and the outcomes already known (skipped as done, or unreadable).

    `model` identifies the weights (cli.common.weights_identity): other weights redo everything.
    """
    todo, known = [], []
    key = params_key(journal_params(params, model))
    for source in sources:
        rel = source.relative_to(root).as_posix()
        output = output_path(root, outdir, source, suffix, params.format)
        try:
            sha = content_sha256(source)
        except OSError as error:
            known.append(Outcome(rel, "failed", f"cannot read: {error.strerror or error}"))
            continue
        if journal.is_done(rel, sha, key, output):
            known.append(Outcome(rel, "skipped", str(output)))
            continue
        compare = None if compare_dir is None else compare_dir / Path(rel).parent / f"{source.stem}_compare.png"
        todo.append(BatchItem(source, rel, output, compare, sha))
    return todo, known


def journal_params(params: UpscaleParams, model: str) -> dict[str, Any]:
    """What the journal keys an output by: everything that decides its bytes, the weights included."""
    return {**params.output_params(), "weights": model}


def process_items(pipe: DoSSRPipeline, items: Sequence[BatchItem], params: UpscaleParams,
                  may_replace: Sequence[bool], callback: StepCallback | None = None,
                  notify: Callable[[str], None] | None = None,
                  tile_callback: Callable[[int, int], None] | None = None) -> list[Outcome]:
    """Upscale items (same-size ones as one batch) and write each output atomically.

    Failures become Outcomes, not exceptions: one bad image never stops the others.
    """
    started = time.perf_counter()
    outcomes: dict[int, Outcome] = {}
    runnable = []
    for i, (item, replace) in enumerate(zip(items, may_replace)):
        if item.output.exists() and not replace:
            outcomes[i] = Outcome(item.rel, "failed", f"{item.output} already exists and was not written by this "
                                                      "batch (pass --overwrite to replace it)")
        else:
            runnable.append(i)
    formats = [params.format or imageio.format_from_name(items[i].output) for i in runnable]
    results = run_jobs(pipe, [items[i].source for i in runnable], params, formats, callback, notify, tile_callback)
    for i, result in zip(runnable, results):
        item = items[i]
        try:
            if isinstance(result, DossrError):
                raise result
            item.output.parent.mkdir(parents=True, exist_ok=True)
            imageio.write_atomic(item.output, result.data, overwrite=may_replace[i])
            if item.compare is not None:
                item.compare.parent.mkdir(parents=True, exist_ok=True)
                picture = compare_picture(result.lr_rgb, result.rgb)
                imageio.write_atomic(item.compare, imageio.encode_image(picture, None, "png", metadata="none"),
                                     overwrite=True)
            outcomes[i] = Outcome(item.rel, "done", str(item.output), result.seconds, result.notes)
        except DossrError as error:
            outcomes[i] = Outcome(item.rel, "failed", str(error), time.perf_counter() - started)
    return [outcomes[i] for i in range(len(items))]


def process_item(pipe: DoSSRPipeline, item: BatchItem, params: UpscaleParams, may_replace: bool,
                 callback: StepCallback | None = None) -> Outcome:
    """One item: the unit a remote worker runs."""
    return process_items(pipe, [item], params, [may_replace], callback)[0]


def run_local(pipe: DoSSRPipeline, items: list[BatchItem], params: UpscaleParams, model: str, journal: Journal,
              overwrite: bool, batch_size: int = 1, on_start: Callable[[BatchItem], None] | None = None,
              on_outcome: Callable[[Outcome], None] | None = None, callback: StepCallback | None = None,
              notify: Callable[[str], None] | None = None,
              tile_callback: Callable[[int, int], None] | None = None) -> list[Outcome]:
    """Items in this process, `batch_size` at a time (same sizes batched), the journal updated around each."""
    outcomes = []
    pixel = journal_params(params, model)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        replace = []
        for item in chunk:
            if on_start:
                on_start(item)
            replace.append(overwrite or journal.owns(item.output))
            journal.running(item.rel, item.sha256, pixel, item.output)
        for item, outcome in zip(chunk, process_items(pipe, chunk, params, replace, callback, notify, tile_callback)):
            record(journal, item, pixel, outcome)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
    return outcomes


def record(journal: Journal, item: BatchItem, pixel: dict, outcome: Outcome) -> None:
    if outcome.status == "done":
        journal.done(item.rel, item.sha256, pixel, item.output, outcome.seconds)
    else:
        journal.failed(item.rel, item.sha256, pixel, item.output, outcome.detail)


__all__ = ["JOURNAL_NAME", "BatchItem", "Outcome", "journal_params", "list_inputs", "plan", "process_item", "process_items", "record",
           "run_local"]

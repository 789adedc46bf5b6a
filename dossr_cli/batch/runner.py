"""A folder of images: list, plan against the journal, run each item, report.

The engine only decides where `process_item` runs; planning, the journal and the
summary are the same for every engine, so a re-run behaves the same whichever ran it.
"""

from __future__ import annotations

import fnmatch
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dossr_cli import imageio
from dossr_cli.batch import journal as claims
from dossr_cli.batch.job import UpscaleParams, compare_picture, run_jobs
from dossr_cli.batch.journal import JOURNAL_NAME, DiskFullError, Journal, content_sha256, is_disk_full, params_key
from dossr_cli.errors import DossrError
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.solver import StepCallback
from dossr_cli.trust import TrustNumbers, trust_map

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
POLL_SECONDS = 0.5  # how often a run looks again at images other runs hold


@dataclass(frozen=True)
class BatchItem:
    source: Path
    rel: str  # path relative to the batch root, with "/" separators: the journal's key
    output: Path
    compare: Path | None
    sha256: str
    trust_map: Path | None = None  # where this image's trust map goes (--trust-map), if anywhere


@dataclass(frozen=True)
class Outcome:
    rel: str
    status: str  # "done", "skipped", "elsewhere" (done by another run while this one ran) or "failed"
    detail: str = ""  # the output file, or for a failure what went wrong
    seconds: float = 0.0
    notes: tuple[str, ...] = ()  # things the user should hear about (alpha flattened, metadata dropped)
    disk_full: bool = False  # the failure was a full disk: the run stops, the image is not failed
    trust: TrustNumbers | None = None  # departure from the input and invented detail, for what was done here


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
         compare_dir: Path | None, journal: Journal, trust_map_dir: Path | None = None
         ) -> tuple[list[BatchItem], list[Outcome]]:
    """Items to run, and the outcomes already known (skipped as done, unreadable, or failed for bringing down runs).

    `model` identifies the weights (cli.common.weights_identity): other weights redo everything.
    Images on which a run died come after everything else, so one such image cannot block a folder.
    """
    journal.reclaim_orphans()
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
        compare = None if compare_dir is None else compare_dir / Path(rel).parent / f"{source.stem}_compare.png"
        trust_map = None if trust_map_dir is None else trust_map_dir / Path(rel).parent / f"{source.stem}_trust.png"
        # done, unless this run asks for a picture that the run which did it did not make: only the pixels make it
        if journal.is_done(rel, sha, key, output) and all(p is None or p.is_file() for p in (compare, trust_map)):
            known.append(Outcome(rel, "skipped", str(output)))
            continue
        entry = journal.get(rel)
        if entry is not None and entry.crash_failed(sha, key):
            known.append(Outcome(rel, "failed", entry.error or claims.crash_reason(entry.crashes)))
            continue
        crashes = entry.crashes if entry is not None and entry.content_sha256 == sha else 0
        todo.append((crashes, BatchItem(source, rel, output, compare, sha, trust_map)))
    todo.sort(key=lambda pair: pair[0])  # stable: the sorted order within each count
    return [item for _, item in todo], known


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
            _make_folder(item.output.parent)
            imageio.write_atomic(item.output, result.data, overwrite=may_replace[i])
            if item.compare is not None:
                _make_folder(item.compare.parent)
                picture = compare_picture(result.lr_rgb, result.rgb)
                imageio.write_atomic(item.compare, imageio.encode_image(picture, None, "png", metadata="none"),
                                     overwrite=True)
            if item.trust_map is not None and result.trust is not None:
                _make_folder(item.trust_map.parent)
                picture = trust_map(result.rgb, result.trust)
                imageio.write_atomic(item.trust_map, imageio.encode_image(picture, None, "png", metadata="none"),
                                     overwrite=True)
            outcomes[i] = Outcome(item.rel, "done", str(item.output), result.seconds, result.notes,
                                  trust=result.trust.numbers() if result.trust is not None else None)
        except DossrError as error:
            outcomes[i] = Outcome(item.rel, "failed", str(error), time.perf_counter() - started,
                                  disk_full=is_disk_full(error))
    return [outcomes[i] for i in range(len(items))]


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DossrError(f"cannot create the folder '{folder}': {error.strerror or error}") from error


def process_item(pipe: DoSSRPipeline, item: BatchItem, params: UpscaleParams, may_replace: bool,
                 callback: StepCallback | None = None) -> Outcome:
    """One item: the unit a remote worker runs."""
    return process_items(pipe, [item], params, [may_replace], callback)[0]


def run_local(pipe: DoSSRPipeline, items: list[BatchItem], params: UpscaleParams, model: str, journal: Journal,
              overwrite: bool, batch_size: int = 1, on_start: Callable[[BatchItem], None] | None = None,
              on_outcome: Callable[[Outcome], None] | None = None, callback: StepCallback | None = None,
              notify: Callable[[str], None] | None = None,
              tile_callback: Callable[[int, int], None] | None = None) -> list[Outcome]:
    """Items in this process, `batch_size` at a time (same sizes batched), each claimed in the journal first.

    Images other runs hold are looked at again until they are finished (by them, or here if their run dies);
    an image whose run died during this one goes to the end. A full disk raises DiskFullError once what
    finished is recorded.
    """
    outcomes = []
    pixel = journal_params(params, model)
    queue, held = deque(items), list[BatchItem]()

    def finish(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    while queue or held:
        chunk, replace = [], []
        while queue and len(chunk) < batch_size:
            item = queue.popleft()
            claim = journal.claim(item.rel, item.sha256, pixel, item.output)
            if claim.result == claims.CLAIMED:
                if on_start:
                    on_start(item)
                chunk.append(item)
                replace.append(overwrite or claim.may_replace)
            elif claim.result == claims.HELD:
                held.append(item)
            elif claim.result == claims.ORPHANED:
                queue.append(item)  # its run died on it: after everything else
            else:
                finish(claimed_elsewhere(item, claim))
        if not chunk:
            if held and not queue:
                time.sleep(POLL_SECONDS)
                queue.extend(held)
                held.clear()
            continue
        results = process_items(pipe, chunk, params, replace, callback, notify, tile_callback)
        for item, outcome in sorted(zip(chunk, results), key=lambda pair: pair[1].disk_full):
            record(journal, item, pixel, outcome)
            finish(outcome)
    return outcomes


def claimed_elsewhere(item: BatchItem, claim: claims.Claim) -> Outcome:
    """The outcome of an image this run did not get to compute."""
    if claim.result == claims.DONE_ELSEWHERE:
        return Outcome(item.rel, "elsewhere", str(item.output))
    if claim.result == claims.FAILED_ELSEWHERE:
        return Outcome(item.rel, "failed", f"{claim.error} (in another run on this folder)")
    return Outcome(item.rel, "failed", claim.error or claims.crash_reason(claims.CRASH_LIMIT))


def record(journal: Journal, item: BatchItem, pixel: dict, outcome: Outcome) -> None:
    """The outcome into the journal; a full disk is no failure of the image: the run stops there."""
    if outcome.disk_full:
        raise DiskFullError(item.output)
    if outcome.status == "done":
        journal.done(item.rel, item.sha256, pixel, item.output, outcome.seconds)
    else:
        journal.failed(item.rel, item.sha256, pixel, item.output, outcome.detail)


__all__ = ["JOURNAL_NAME", "BatchItem", "Outcome", "claimed_elsewhere", "journal_params", "list_inputs", "plan",
           "process_item", "process_items", "record", "run_local"]

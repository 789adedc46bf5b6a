"""The Ray engine: the local engine's per-image job, run by long-lived model actors on a Ray cluster.

Only *where* `runner.process_items` runs changes. The driver plans, keeps the journal (SQLite
wants one writer on one host, so workers never open it) and reports; each actor loads the
weights once from a bundle folder on storage every node shares and writes its outputs
atomically into the shared output folder, so an image run again after a lost worker only
ever replaces a whole file with the same bytes. Ray is imported inside the functions: this
module imports without it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dossr_cli.batch import journal as claims
from dossr_cli.batch.job import UpscaleParams
from dossr_cli.batch.journal import Journal
from dossr_cli.batch.runner import (
    POLL_SECONDS,
    BatchItem,
    Outcome,
    claimed_elsewhere,
    journal_params,
    process_items,
    record,
)
from dossr_cli.errors import DossrError, UsageError

ATTEMPTS = 3  # an image whose worker dies this many times is reported failed, not retried for ever
GPU_BATCH = 4  # images a GPU actor takes at a time by default: the local engine's --batch-size auto on CUDA


def require_ray() -> None:
    """Ray is an optional extra: say how to get it, before anything is written."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'dossr[ray]'") from None


def check_options(workers: int | None, gpus_per_worker: float | None) -> None:
    require_ray()
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be a positive number; got {workers}")
    if gpus_per_worker is not None and not gpus_per_worker >= 0:
        raise UsageError(f"--gpus-per-worker must be 0 (CPU workers) or a positive number; got {gpus_per_worker}")


def actor_batch(batch_size: int, gpus: float, device: str) -> int:
    """Images an actor takes at a time: --batch-size, else (0: auto) as the local engine would on the
    actor's device: GPU_BATCH on a GPU, one on a CPU (where a batch buys nothing)."""
    if batch_size:
        return batch_size
    return GPU_BATCH if gpus and not device.startswith(("cpu", "mps")) else 1


class Upscaler:
    """One model per actor, loaded once; a few images at a time, exactly as the local engine's
    `--batch-size` runs them (same-size ones as one batch).

    torch's CPU convolutions (oneDNN and MKL) split their sums by the number of threads, so
    the last bits of a result, and now and then an 8-bit pixel, depend on it; Ray starts a
    1-CPU actor with one thread. The actor runs with the driver's thread count instead, and
    so writes the bytes the local engine writes on the same kind of machine.
    """

    def __init__(self, bundle: str, device: str, dtype: str, threads: int, compile: bool = False) -> None:
        import torch

        from dossr_cli.pipeline import DoSSRPipeline

        torch.set_num_threads(threads)
        self.error: DossrError | None = None
        try:
            self.pipe = DoSSRPipeline.from_pretrained(bundle, device=device, dtype=dtype)
            if compile:  # --compile: each actor compiles its own (inductor's cache on disk is shared)
                self.pipe.compile()
        except DossrError as error:  # handed to the driver by ready(), which stops the run with it
            self.error = error

    def ready(self) -> DossrError | None:
        return self.error

    def run(self, items: list[BatchItem], params: UpscaleParams, may_replace: list[bool]
            ) -> tuple[list[Outcome], list[str]]:
        """`process_items` on a few items, and the notes the pipeline heard meanwhile (an out-of-memory
        retry), which the driver says as the local engine does."""
        notes: list[str] = []
        return process_items(self.pipe, items, params, may_replace, notify=notes.append), notes


@dataclass(frozen=True)
class _Attempt:
    item: BatchItem
    may_replace: bool
    existed: bool  # was the output there when the item first left?
    number: int = 1


def run_ray(bundle: Path, device: str, dtype: str, items: list[BatchItem], params: UpscaleParams, model: str,
            journal: Journal, overwrite: bool, address: str | None = None, workers: int | None = None,
            gpus_per_worker: float | None = None, compile: bool = False,
            on_start: Callable[[BatchItem], None] | None = None,
            on_outcome: Callable[[Outcome], None] | None = None,
            notify: Callable[[str], None] | None = None, batch_size: int = 0) -> list[Outcome]:
    """Items on Ray actors, `actor_batch` at a time each, the journal updated around each in this
    process, as `run_local` does.

    An item whose actor dies (the process killed, the node lost) goes to a fresh actor, up
    to ATTEMPTS times; an actor lost before it has loaded the weights is replaced too. Joins
    the cluster at `address` (default $RAY_ADDRESS), else starts a local runtime; a Ray this
    call started or joined is shut down when it returns.
    """
    import ray
    import torch

    threads = torch.get_num_threads()  # each actor's too (see Upscaler); a CPU actor holds that many CPUs
    with _connected(address, (workers or 0) * threads):
        count, gpus = _size(ray.cluster_resources(), workers, gpus_per_worker, threads, len(items))
        options: dict[str, Any] = {"num_gpus": gpus} if gpus else {"num_cpus": threads}
        actor_class = ray.remote(Upscaler).options(max_restarts=0, **options)
        # a CPU actor computes on the CPU even where its node has a GPU it holds none of
        spawn_args = (str(bundle.resolve()), device if gpus or device != "auto" else "cpu", dtype, threads,
                      compile)
        per_actor = actor_batch(batch_size, gpus, spawn_args[1])
        actors: list[Any] = []
        starting: dict[Any, Any] = {}  # ready() reference -> its actor, until the weights are loaded
        running: dict[Any, tuple[Any, list[_Attempt]]] = {}  # run() reference -> (actor, its attempts)
        idle: list[Any] = []

        def spawn() -> None:
            actors.append(actor_class.remote(*spawn_args))
            starting[actors[-1].ready.remote()] = actors[-1]

        pixel = journal_params(params, model)
        queue, retries = deque(items), deque[_Attempt]()
        outcomes = []
        lost_loading = 0  # actors lost before their weights were loaded

        def finish(outcome: Outcome) -> None:
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)

        try:
            for _ in range(count):
                spawn()
            while queue or retries or running:
                while idle and (queue or retries):
                    chunk, held = _next_chunk(per_actor, queue, retries, journal, pixel, overwrite, on_start, finish)
                    if chunk:
                        actor = idle.pop()
                        ref = actor.run.remote([a.item for a in chunk], params, [a.may_replace for a in chunk])
                        running[ref] = (actor, chunk)
                    if held:  # an image another run holds went back in line
                        if running or starting:  # back after ray.wait
                            break
                        time.sleep(POLL_SECONDS)
                done, _ = ray.wait([*starting, *running], num_returns=1, timeout=1.0)  # a timeout lets Ctrl-C in
                for ref in done:
                    if ref in starting:
                        actor = starting.pop(ref)
                        if (lost := _lost_while_loading(ray, ref)) is None:
                            idle.append(actor)
                            continue
                        ray.kill(actor)
                        lost_loading += 1
                        if lost_loading > ATTEMPTS * count:  # every node kills them: stop rather than loop
                            raise DossrError(f"a Ray worker could not start: {lost_loading} were lost while "
                                             f"loading the weights (last: {_first_line(lost)})") from lost
                        if queue or retries:
                            if notify:
                                notify("a Ray worker was lost while loading the weights; starting another")
                            spawn()
                        continue
                    actor, chunk = running.pop(ref)
                    try:
                        results, notes = ray.get(ref)
                        idle.append(actor)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as died:
                        ray.kill(actor)
                        results = [_lost(attempt, died, retries, notify) for attempt in chunk]
                        notes = []
                        if queue or retries:
                            spawn()
                    except ray.exceptions.RayTaskError as error:  # a bug, not a bad image: stop as run_local would
                        raise error.cause from error
                    for note in notes:
                        if notify:
                            notify(note)
                    # a full disk last, once the others are recorded, as run_local does
                    for attempt, outcome in sorted(zip(chunk, results), key=lambda pair: bool(
                            pair[1] is not None and pair[1].disk_full)):
                        if outcome is not None:
                            record(journal, attempt.item, pixel, outcome)
                            finish(outcome)
        finally:
            for actor in actors:
                ray.kill(actor)
    return outcomes


def _lost_while_loading(ray: Any, ready: Any) -> Exception | None:
    """None once the actor has loaded its weights; Ray's error if the actor was lost first (its process
    killed, its node gone), so that another takes its place. A load that failed, or a constructor that
    raised, stops the run, as it would locally."""
    try:
        error = ray.get(ready)
    except ray.exceptions.RayActorError as died:
        if not died.actor_init_failed:
            return died
        raise DossrError(f"a Ray worker could not start: {_first_line(died)}") from died
    if error is not None:
        raise error
    return None


def _next_chunk(size: int, queue: deque[BatchItem], retries: deque[_Attempt], journal: Journal, pixel: dict,
                overwrite: bool, on_start: Callable[[BatchItem], None] | None,
                finish: Callable[[Outcome], None]) -> tuple[list[_Attempt], bool]:
    """Up to `size` attempts for one actor, retries first, each new item claimed in the journal; and
    whether an image another run holds was met (it went to the end of the queue, the chunk stops)."""
    chunk: list[_Attempt] = []
    while len(chunk) < size and (queue or retries):
        if retries:
            chunk.append(retries.popleft())
            continue
        attempt, finished = _first_attempt(queue.popleft(), journal, pixel, overwrite, on_start, queue)
        if attempt is not None:
            chunk.append(attempt)
        elif finished is not None:
            finish(finished)
        else:
            return chunk, True
    return chunk, False


def _first_attempt(item: BatchItem, journal: Journal, pixel: dict, overwrite: bool,
                   on_start: Callable[[BatchItem], None] | None,
                   queue: deque[BatchItem]) -> tuple[_Attempt | None, Outcome | None]:
    """Claimed in the journal before it leaves, and allowed to replace what run_local would allow; an image
    another run holds (or whose run died) goes back to the end of `queue`, one another run finished is its
    outcome."""
    claim = journal.claim(item.rel, item.sha256, pixel, item.output)
    if claim.result in (claims.HELD, claims.ORPHANED):
        queue.append(item)
        return None, None
    if claim.result != claims.CLAIMED:
        return None, claimed_elsewhere(item, claim)
    if on_start:
        on_start(item)
    return _Attempt(item, overwrite or claim.may_replace, item.output.exists()), None


def _lost(attempt: _Attempt, died: Exception, retries: deque[_Attempt],
          notify: Callable[[str], None] | None) -> Outcome | None:
    """The item back in line for a fresh actor, or after ATTEMPTS lost workers its failed outcome.

    The retry may replace what the lost attempt already wrote (the name was free when the item
    left); a file that was there before and is not the batch's own stays protected.
    """
    if attempt.number >= ATTEMPTS:
        return Outcome(attempt.item.rel, "failed", f"its Ray worker died {ATTEMPTS} times (last: {_first_line(died)})")
    if notify:
        notify(f"a Ray worker died while upscaling {attempt.item.rel}; running it again "
               f"(attempt {attempt.number + 1} of {ATTEMPTS})")
    retries.append(dataclasses.replace(attempt, may_replace=attempt.may_replace or not attempt.existed,
                                       number=attempt.number + 1))
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _size(resources: dict[str, float], workers: int | None, gpus_per_worker: float | None, threads: int,
          items: int) -> tuple[int, float]:
    """(actors, GPUs each): one per GPU where the cluster has GPUs, else one per `threads` CPUs (more
    threads than cores only slows every actor down); never more actors than items.

    Asking for more than the whole cluster holds is an error here rather than actors that wait for ever.
    """
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    per_worker = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if per_worker:
        fits, held = int(gpus // per_worker), f"{gpus:g} GPUs"
    else:
        fits, held = int(cpus // threads), f"{cpus:g} CPUs"
    if fits < 1 or (workers is not None and workers > fits):
        asked = [f"--workers {workers}"] if workers is not None else []
        asked.append(f"--gpus-per-worker {per_worker:g}" if per_worker else
                     f"{threads} CPUs per worker (torch's threads here)")
        raise UsageError(f"{' with '.join(asked)} needs more than the Ray cluster has ({held})")
    return min(workers or fits, items), per_worker


@contextmanager
def _connected(address: str | None, cpus_asked: int) -> Iterator[None]:
    """Ray joined at `address` (or $RAY_ADDRESS), else a quiet local runtime of this machine's CPUs
    (more if `cpus_asked` says so: there --workers is taken as asked); left again afterwards.

    A Ray that was already initialised in this process (a notebook, the tests) is used as it is
    and left running.
    """
    import ray

    if ray.is_initialized():
        with _cluster_errors_to_stderr():
            yield
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as error:  # Ray's message names the address
            raise DossrError(f"cannot join the Ray cluster: {error}") from error
    else:
        # "local": a new runtime, not a `ray start` cluster this machine may have (--address auto joins that).
        # Its workers run this interpreter: no `uv run` environment rebuilt in each one.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, cpus_asked), **quiet)
    try:
        with _cluster_errors_to_stderr():
            yield
    finally:
        ray.shutdown()


@contextmanager
def _cluster_errors_to_stderr() -> Iterator[None]:
    """Ray's driver prints cluster errors (a worker that died) on stdout, where --json lines go; while a
    batch runs they go to stderr. A private hook of Ray's: where a version lacks it, nothing changes."""
    try:
        from ray._private import worker
    except ImportError:
        worker = None
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return
    worker.print_to_stdstream = lambda data, *args, **kwargs: original({**data, "is_err": True}, *args, **kwargs)
    try:
        yield
    finally:
        worker.print_to_stdstream = original


__all__ = ["ATTEMPTS", "GPU_BATCH", "Upscaler", "actor_batch", "check_options", "require_ray", "run_ray"]

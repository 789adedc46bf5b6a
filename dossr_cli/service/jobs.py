"""The service's jobs: a queue in front of one warm model, run by one worker thread.

The model runs one batch at a time (one device, networks that are not re-entrant), so the
HTTP side only queues and watches. The worker takes the oldest job and, with it, the queued
jobs of the same size and options (up to `batch_size`): they go through `run_jobs`, the per-image
job every front end uses, which gives each image its own noise, so a result does not depend on
its companions. Each job keeps the list of its events (queued, started, progress, note, and one
of done, failed, cancelled) for anyone watching, then its result until it expires. Nothing is
written to disk: a failed or cancelled job leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dossr_cli import imageio
from dossr_cli.batch.job import JobResult, run_jobs
from dossr_cli.batch.params import UpscaleParams
from dossr_cli.errors import DossrError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
_NO_PIXELS = np.zeros((0, 0, 3), np.float32)
KEPT_PER_SLOT = 4  # finished jobs kept (for their results) per place in the queue
GATHER_SECONDS = 0.02  # how long the worker waits for companions of a job that arrived alone

log = logging.getLogger("dossr.service")


class QueueFullError(DossrError):
    """Too many jobs waiting: the client should try again later (HTTP 429)."""


class ShuttingDownError(DossrError):
    """The server is stopping and takes no new work (HTTP 503)."""


class JobStopped(DossrError):
    """Raised inside the model's step callback when nobody wants the batch any more."""


@dataclass
class Job:
    id: str
    data: bytes | None  # the upload, decoded again when it runs (a waiting job holds its file, not its pixels)
    params: UpscaleParams
    out_format: str | None
    filename: str | None
    deadline: float
    created: float = field(default_factory=time.time)
    status: str = QUEUED
    progress: dict[str, int] = field(default_factory=lambda: {"step": 0, "steps": 0, "tile": 0, "tiles": 1})
    result: JobResult | None = None
    error: str | None = None
    finished: float | None = None
    cancel_requested: bool = False
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    input_size: tuple[int, int] | None = None
    timed_out: bool = False
    batch: int = 0  # images that ran together with this one in the model (itself included)

    @property
    def key(self) -> tuple[Any, ...]:
        """Jobs with the same key may run as one batch."""
        return self.input_size, self.params

    def as_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "id": self.id, "status": self.status, "filename": self.filename, "progress": dict(self.progress),
            "input_size": list(self.input_size) if self.input_size else None,
            "output_size": list(result.output_size) if result else None,
            "format": result.format if result else None, "seed": result.seed if result else None,
            "seconds": round(result.seconds, 3) if result else None, "notes": list(result.notes) if result else [],
            "trust": result.trust.as_json() if result and result.trust else None,  # default flag thresholds
            "error": self.error, "created": self.created, "batch": self.batch,
            "result": f"/v1/jobs/{self.id}/result" if self.status == DONE and result is not None else None,
        }


class JobQueue:
    """Jobs by id; the worker thread; events handed to the HTTP side's event loop as they happen."""

    def __init__(self, pipe: Any, batch_size: int, max_queue: int, request_timeout: float,
                 result_ttl: float) -> None:
        self.pipe, self.batch_size, self.max_queue = pipe, max(batch_size, 1), max_queue
        self.request_timeout, self.result_ttl = request_timeout, result_ttl
        self.jobs: dict[str, Job] = {}
        self.closing = False
        self._lock = threading.Condition()
        self._watchers: dict[str, dict[asyncio.Event, asyncio.AbstractEventLoop]] = {}
        self._worker = threading.Thread(target=self._work, name="dossr-service-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ the HTTP side

    def counts(self) -> dict[str, int]:
        with self._lock:
            statuses = [job.status for job in self.jobs.values()]
        return {"queued": statuses.count(QUEUED), "running": statuses.count(RUNNING)}

    def submit(self, data: bytes, image: imageio.DecodedImage, params: UpscaleParams, out_format: str | None,
               filename: str | None) -> Job:
        """`data`, already decoded once into `image` to be checked; only its size is kept."""
        with self._lock:
            self._expire()
            if self.closing:
                raise ShuttingDownError("the server is shutting down; try again once it is back")
            waiting = sum(job.status in (QUEUED, RUNNING) for job in self.jobs.values())
            if waiting >= self.max_queue:
                raise QueueFullError(f"the queue is full ({waiting} jobs waiting or running); try again shortly")
            job = Job(secrets.token_hex(8), data, params, out_format, filename,
                      deadline=time.monotonic() + self.request_timeout)
            job.input_size = (image.rgb.shape[1], image.rgb.shape[0])
            self.jobs[job.id] = job
            self._emit(job, "queued", job.as_json())
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._expire()
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """A queued job ends now; a running one at the model's next step (its companions go on); a finished
        one's result is discarded."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.status == QUEUED:
                self._finish(job, CANCELLED)
            elif job.status == RUNNING:
                job.cancel_requested = True
            else:
                self.jobs.pop(job_id, None)
                job.result = None
            return job

    def forget(self, job_id: str) -> None:
        """A job whose result went back in its own response: nothing to keep."""
        with self._lock:
            self.jobs.pop(job_id, None)

    def watch(self, job: Job) -> asyncio.Event:
        """An event set (on the caller's loop) whenever the job has a new event."""
        event = asyncio.Event()
        with self._lock:
            self._watchers.setdefault(job.id, {})[event] = asyncio.get_running_loop()
        return event

    def unwatch(self, job: Job, event: asyncio.Event) -> None:
        with self._lock:
            watchers = self._watchers.get(job.id, {})
            watchers.pop(event, None)
            if not watchers:
                self._watchers.pop(job.id, None)

    def begin_shutdown(self, grace: float | None = None) -> None:
        """No new jobs; the queued ones are cancelled; the running batch goes on to its end, or for `grace`
        seconds and then stops at its next step (so that open streams end before the server closes them)."""
        with self._lock:
            if not self.closing and grace is not None:
                timer = threading.Timer(grace, self._stop_running)
                timer.daemon = True
                timer.start()
            self.closing = True
            for job in list(self.jobs.values()):
                if job.status == QUEUED:
                    self._finish(job, CANCELLED)
            self._lock.notify_all()

    def shutdown(self, grace: float) -> None:
        """Waits for the worker: the running batch ends within `grace` seconds and its next step."""
        self.begin_shutdown(grace)
        self._worker.join()

    def _stop_running(self) -> None:
        with self._lock:
            for job in self.jobs.values():
                if job.status == RUNNING:
                    job.cancel_requested = True

    # ------------------------------------------------------------------ bookkeeping (under the lock)

    def _emit(self, job: Job, name: str, data: dict[str, Any]) -> None:
        job.events.append((len(job.events) + 1, name, data))
        for event, loop in self._watchers.get(job.id, {}).items():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed: its watcher is gone
                pass

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error, job.finished, job.data = status, error, time.monotonic(), None
        if status == DONE:
            job.progress["tile"] = job.progress["tiles"]
        else:
            job.result = None
        self._emit(job, status, job.as_json())

    def _expire(self) -> None:
        """Finished jobs go after `result_ttl`, and the oldest first past KEPT_PER_SLOT x max_queue of them."""
        now = time.monotonic()
        finished = sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished or 0)
        extra = len(finished) - KEPT_PER_SLOT * self.max_queue
        for index, job in enumerate(finished):
            if index < extra or now - (job.finished or now) > self.result_ttl:
                self.jobs.pop(job.id, None)

    # ------------------------------------------------------------------ the worker

    def _next_batch(self) -> list[Job] | None:
        """The oldest queued job and its companions; None once shutting down with nothing queued."""
        with self._lock:
            while True:
                queued = [job for job in self.jobs.values() if job.status == QUEUED]
                if queued:
                    break
                if self.closing:
                    return None
                self._lock.wait()
            if len(queued) == 1 and self.batch_size > 1:
                self._lock.wait(GATHER_SECONDS)  # requests sent together arrive a moment apart
                queued = [job for job in self.jobs.values() if job.status == QUEUED] or queued
            first = queued[0]
            if first.status != QUEUED:
                return []
            batch = [job for job in queued if job.status == QUEUED and job.key == first.key][: self.batch_size]
            now = time.monotonic()
            for job in batch:
                if now > job.deadline:
                    job.timed_out = True
                    self._finish(job, FAILED, "timed out waiting in the queue; try again when the server is less busy")
            batch = [job for job in batch if job.status == QUEUED]
            for job in batch:
                job.status, job.batch = RUNNING, len(batch)
                job.progress["steps"] = job.params.steps
                self._emit(job, "started", job.as_json())
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        def wanted() -> None:
            now = time.monotonic()
            if all(job.cancel_requested or now > job.deadline for job in batch):
                raise JobStopped("stopped: cancelled or timed out")

        def step(done: int, total: int) -> None:
            self._progress(batch, step=done, steps=total)
            wanted()

        def tiles(done: int, total: int) -> None:
            self._progress(batch, tile=done, tiles=total)
            wanted()

        def note(message: str) -> None:
            with self._lock:
                for job in batch:
                    self._emit(job, "note", {"message": message})

        params = batch[0].params
        try:
            results: list[JobResult | DossrError] = run_jobs(
                self.pipe, [job.data for job in batch], params, [job.out_format for job in batch],  # type: ignore
                callback=step, notify=note, tile_callback=tiles)
        except Exception as error:
            log.exception("a batch failed")
            results = [DossrError(f"internal error: {type(error).__name__}: {error}")] * len(batch)
        with self._lock:
            now = time.monotonic()
            for job, result in zip(batch, results):
                if job.cancel_requested:
                    self._finish(job, CANCELLED)
                elif now > job.deadline:
                    job.timed_out = True
                    self._finish(job, FAILED, f"timed out after {self.request_timeout:g} s; try a smaller image or "
                                              "ask the server's operator for a longer --request-timeout")
                elif isinstance(result, DossrError):
                    self._finish(job, FAILED, str(result))
                else:  # the encoded bytes are kept; the float pixels (for --compare) would be 16 bytes a pixel
                    job.result = dataclasses.replace(result, lr_rgb=_NO_PIXELS, rgb=_NO_PIXELS)
                    self._finish(job, DONE)

    def _progress(self, batch: list[Job], **changes: int) -> None:
        with self._lock:
            for job in batch:
                job.progress.update(changes)
                self._emit(job, "progress", dict(job.progress))


__all__ = ["CANCELLED", "DONE", "FAILED", "FINISHED", "QUEUED", "RUNNING", "Job", "JobQueue", "JobStopped",
           "QueueFullError", "ShuttingDownError"]

"""The job queue on its own, in this process (the tiny pipeline): what it keeps, and for how long."""

from __future__ import annotations

import io
import time

from conftest import smooth_image
from PIL import Image

from dossr_cli import imageio
from dossr_cli.batch.params import UpscaleParams
from dossr_cli.service.jobs import DONE, FINISHED, KEPT_PER_SLOT, JobQueue


def png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    smooth_image(height, width).save(buffer, "PNG")
    return buffer.getvalue()


def run_one(queue: JobQueue, data: bytes):
    job = queue.submit(data, imageio.read_image(data), UpscaleParams(steps=1), None, "x.png")
    while job.status not in FINISHED:
        time.sleep(0.01)
    return job


def test_finished_results_are_kept_up_to_a_count_and_a_time(tiny_pipeline):
    queue = JobQueue(tiny_pipeline, batch_size=1, max_queue=1, request_timeout=60, result_ttl=600)
    try:
        jobs = [run_one(queue, png(8, 8)) for _ in range(KEPT_PER_SLOT + 2)]
        assert all(job.status == DONE for job in jobs)
        assert [queue.get(job.id) is not None for job in jobs] == [False] * 2 + [True] * KEPT_PER_SLOT
        kept = queue.get(jobs[-1].id)
        assert kept is not None and kept.result is not None and kept.result.rgb.size == 0  # bytes only
        assert Image.open(io.BytesIO(kept.result.data)).size == (32, 32) and kept.data is None
        queue.result_ttl = 0.1
        time.sleep(0.2)
        assert queue.get(jobs[-1].id) is None  # past result_ttl
    finally:
        queue.shutdown(grace=5)

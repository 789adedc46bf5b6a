"""The HTTP API against a real `dossr serve` process on 127.0.0.1 with the tiny random model."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from cli.helpers import run_in_process
from conftest import smooth_image
from PIL import Image, ImageCms

from .serving import Server, sse_events, start_server, stop_server


def png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def jpeg_with_metadata(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "dossr test camera"  # Make
    buffer = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes(), icc_profile=icc)
    return buffer.getvalue()


def sixteen_bit(height: int, width: int) -> bytes:
    """16-bit colour whose low bytes matter (written by OpenCV: Pillow writes no 16-bit RGB)."""
    rgb = np.asarray(smooth_image(height, width), dtype=np.uint16) * 257
    rgb += np.arange(height * width * 3, dtype=np.uint16).reshape(height, width, 3) % 200
    ok, encoded = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    return encoded.tobytes()


def with_alpha(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = np.linspace(0, 255, image.width * image.height).reshape(image.height, image.width).astype(np.uint8)
    rgba.putalpha(Image.fromarray(alpha))
    return png(rgba)


def local_upscale(weights: str, data: bytes, name: str, folder: Path, *args: object, out: str | None = None
                  ) -> bytes:
    """`dossr upscale` on the same bytes, in this process."""
    source = folder / name
    source.write_bytes(data)
    target = folder / f"out-{out or name}"
    result = run_in_process(["upscale", str(source), "-o", str(target), "--weights", weights, "--steps", "1",
                             "--quiet", *map(str, args)])
    assert result.code == 0, result.stderr
    return target.read_bytes()


def one_line_error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def server(service_weights: str, tmp_path_factory: pytest.TempPathFactory):
    """Small limits, so that each refusal is cheap to provoke."""
    folder = tmp_path_factory.mktemp("api-server")
    running = start_server(service_weights, folder, "--batch-size", "4", "--max-pixels", "4096",
                           "--max-output-pixels", "1000000", "--max-upload", "1MB")
    yield running
    stop_server(running.process)


CASES = {
    "rgb.png": lambda: png(smooth_image(16, 24)),
    "alpha.png": lambda: with_alpha(smooth_image(16, 24)),
    "sixteen.png": lambda: sixteen_bit(16, 24),
    "photo.jpg": lambda: jpeg_with_metadata(smooth_image(24, 16)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_bytes_equal_dossr_upscales(server: Server, tmp_path: Path, name: str):
    data = CASES[name]()
    response = server.post("/v1/upscale", data, filename=name, steps=1, seed=7)
    assert response.status_code == 200, response.text
    assert response.content == local_upscale(server.weights, data, name, tmp_path, "--seed", "7")
    decoded = Image.open(io.BytesIO(response.content))
    original = Image.open(io.BytesIO(data))
    assert decoded.size == (original.width * 4, original.height * 4)
    assert response.headers["x-dossr-size"] == f"{decoded.width}x{decoded.height}"
    assert response.headers["content-disposition"] == f'attachment; filename="{Path(name).stem}_x4{Path(name).suffix}"'
    if name == "photo.jpg":
        assert decoded.info.get("icc_profile") and decoded.getexif()[0x010F] == "dossr test camera"
    assert json.loads(response.headers["x-dossr-notes"]) == []


def test_options_reach_the_model_as_on_the_command_line(server: Server, tmp_path: Path):
    data = png(smooth_image(16, 16))
    response = server.post("/v1/upscale", data, filename="x.png", steps=2, order=2, width=40, format="webp",
                           quality=80, color_fix="adain")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    expected = local_upscale(server.weights, data, "x.png", tmp_path, "--steps", "2", "--order", "2", "--width",
                             "40", "--format", "webp", "--quality", "80", "--color-fix", "adain", out="x.webp")
    assert response.content == expected
    assert Image.open(io.BytesIO(response.content)).size == (40, 40)


def test_a_job_streams_its_events_in_order_and_keeps_its_result(server: Server):
    data = png(smooth_image(16, 24))
    created = server.post("/v1/jobs", data, filename="a.png", steps=3)
    assert created.status_code == 202
    job = created.json()
    assert created.headers["location"] == f"/v1/jobs/{job['id']}" and job["status"] in ("queued", "running")
    with server.get(f"/v1/jobs/{job['id']}/events", stream=True) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse_events(stream)
    numbers, names = [e[0] for e in events], [e[1] for e in events]
    assert numbers == list(range(1, len(events) + 1))
    assert names[:2] == ["queued", "started"] and names[-1] == "done" and set(names[2:-1]) == {"progress"}
    steps = [data["step"] for _, name, data in events if name == "progress"]
    assert steps == [1, 2, 3] and events[-1][2]["progress"] == {"step": 3, "steps": 3, "tile": 1, "tiles": 1}
    done = server.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "done" and done["output_size"] == [96, 64] and done["result"].endswith("/result")
    assert 0 < done["trust"]["departure_psnr_db"] <= 100 and done["trust"]["invented_rms"] > 0  # as --json has it
    result = server.get(done["result"])
    assert result.status_code == 200
    assert result.content == server.post("/v1/upscale", data, filename="a.png", steps=3).content
    with server.get(f"/v1/jobs/{job['id']}/events", stream=True, headers={"Last-Event-ID": str(len(events) - 1)}) as s:
        assert [e[1] for e in sse_events(s)] == ["done"]  # a reconnecting client gets only what it missed
    assert server.delete(f"/v1/jobs/{job['id']}").status_code == 200  # the result discarded
    assert server.get(f"/v1/jobs/{job['id']}/result").status_code == 404


def long_job(server: Server, steps: int = 200) -> dict:
    """A job that keeps the worker busy for a few seconds."""
    response = server.post("/v1/jobs", png(smooth_image(60, 60)), filename="long.png", steps=steps)
    assert response.status_code == 202, response.text
    return response.json()


def test_cancelling_a_running_job_ends_it_at_the_next_step(server: Server):
    job = long_job(server)
    while server.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] < 2:
        time.sleep(0.05)
    assert one_line_error(server.get(f"/v1/jobs/{job['id']}/result"), 409).startswith(f"job {job['id']} is running")
    assert server.delete(f"/v1/jobs/{job['id']}").status_code == 200
    with server.get(f"/v1/jobs/{job['id']}/events", stream=True) as stream:
        events = sse_events(stream)
    assert events[-1][1] == "cancelled" and events[-1][2]["progress"]["step"] < 200
    assert server.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    one_line_error(server.get(f"/v1/jobs/{job['id']}/result"), 409)


def test_requests_of_one_size_arriving_together_run_as_one_batch(server: Server):
    blocker = long_job(server)  # the worker is busy: the next four wait together
    while server.get(f"/v1/jobs/{blocker['id']}").json()["status"] != "running":
        time.sleep(0.02)
    images = [png(smooth_image(16, 24, key=f"k{i}")) for i in range(4)]
    jobs = [server.post("/v1/jobs", data, filename=f"{i}.png", steps=1).json() for i, data in enumerate(images)]
    server.delete(f"/v1/jobs/{blocker['id']}")
    results = []
    for job in jobs:
        with server.get(f"/v1/jobs/{job['id']}/events", stream=True) as stream:
            assert sse_events(stream)[-1][1] == "done"
        results.append(server.get(f"/v1/jobs/{job['id']}/result").content)
    assert [server.get(f"/v1/jobs/{job['id']}").json()["batch"] for job in jobs] == [4, 4, 4, 4]
    for data, together in zip(images, results):
        alone = server.post("/v1/upscale", data, filename="alone.png", steps=1).content
        difference = np.abs(np.asarray(Image.open(io.BytesIO(alone)), np.int16)
                            - np.asarray(Image.open(io.BytesIO(together)), np.int16))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.001  # float rounding only (job.py)


def test_bad_requests_get_one_line_and_the_right_status(server: Server):
    good = png(smooth_image(16, 24))
    assert "not an image" in one_line_error(server.post("/v1/upscale", b"hello, world", filename="x.png"), 400)
    assert "'broken.png'" in one_line_error(server.post("/v1/upscale", good[:200], filename="broken.png"), 400)
    assert one_line_error(server.post("/v1/upscale", good, steps=0), 400) == "steps must be in 1..200; got 0"
    assert one_line_error(server.post("/v1/upscale", good, steps="many"), 400).startswith("steps: ")
    assert one_line_error(server.post("/v1/upscale", good, color_fix="sepia"), 400).startswith("color_fix must")
    assert one_line_error(server.post("/v1/upscale", None, steps=1), 400) == "image: missing"
    assert "limit" in one_line_error(server.post("/v1/upscale", png(smooth_image(80, 80))), 413)  # 6400 px > 4096
    assert "output" in one_line_error(server.post("/v1/upscale", good, scale=100), 413)
    big = good + b"\0" * (2 << 20)
    assert "--max-upload" in one_line_error(server.post("/v1/upscale", big), 413)
    assert one_line_error(server.get("/v1/jobs/0123456789abcdef"), 404).startswith("no job")
    assert one_line_error(server.delete("/v1/jobs/0123456789abcdef"), 404).startswith("no job")
    assert one_line_error(server.get("/v1/nothing-here"), 404) == "Not Found"


def test_health_model_and_openapi(server: Server):
    assert server.get("/v1/health").json() == {"status": "ok", "queued": 0, "running": 0}
    model = server.get("/v1/model").json()
    assert model["device"] == "cpu" and model["dtype"] == "fp32" and model["upscale"] == 4
    assert model["batch_size"] == 4 and model["limits"]["max_pixels"] == 4096
    assert model["defaults"]["steps"] == 5 and model["defaults"]["color_fix"] == "wavelet"
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/v1/upscale", "/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/model"} <= set(paths)
    fields = paths["/v1/upscale"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert fields  # the form (image and options) is described


def test_a_kept_alive_connection_outlives_the_retry_after_wait(server: Server):
    """A client told to come back in Retry-After seconds comes back on the same connection: were the
    server to close it at that moment (uvicorn's default keep-alive equals our 5 s), the retry would
    race the close and the image be lost."""
    import http.client
    from urllib.parse import urlsplit

    from dossr_cli.service.app import RETRY_AFTER

    where = urlsplit(server.url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        connection.request("GET", "/v1/health", headers=server.headers)
        assert connection.getresponse().read() and connection.sock is not None
        kept = connection.sock
        time.sleep(RETRY_AFTER + 1)
        connection.request("GET", "/v1/health", headers=server.headers)  # raises if the server closed it
        answer = connection.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["status"] == "ok"
        assert connection.sock is kept  # the same connection, not a reconnect
    finally:
        connection.close()


def test_a_full_queue_answers_429_and_a_timed_out_request_504(service_weights: str, tmp_path: Path):
    spool = tmp_path / "tmp"
    spool.mkdir()
    server = start_server(service_weights, tmp_path, "--max-queue", "2", "--request-timeout", "2",
                          env={"TMPDIR": str(spool)})
    try:
        first = long_job(server, steps=200)
        second = long_job(server, steps=200)
        refused = server.post("/v1/jobs", png(smooth_image(16, 24)))
        assert "queue is full" in one_line_error(refused, 429) and refused.headers["retry-after"] == "5"
        for job in (first, second):
            with server.get(f"/v1/jobs/{job['id']}/events", stream=True) as stream:
                last = sse_events(stream)[-1]
            assert last[1] == "failed" and last[2]["error"].startswith("timed out")
        late = server.post("/v1/upscale", png(smooth_image(60, 60)), steps=200)
        assert one_line_error(late, 504).startswith("timed out")
        assert server.get("/v1/health").json() == {"status": "ok", "queued": 0, "running": 0}
        assert list(spool.iterdir()) == []  # nothing left behind by the failed jobs
    finally:
        assert stop_server(server.process) == 0
    assert "Traceback" not in server.stderr()


def test_a_token_is_required_off_loopback(service_weights: str, tmp_path: Path):
    refused = run_in_process(["serve", "--weights", service_weights, "--host", "0.0.0.0"])
    assert refused.code == 2 and refused.error_lines == [
        ("dossr: error: --host 0.0.0.0 listens beyond this machine: give a --token (or set DOSSR_TOKEN), which every "
         "request must then send")]
    server = start_server(service_weights, tmp_path, "--host", "0.0.0.0", token="s3cret")
    try:
        url = server.url
        assert "needs a token" in one_line_error(requests.get(url + "v1/health", timeout=10), 401)
        wrong = requests.get(url + "v1/model", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert "wrong token" in one_line_error(wrong, 401) and wrong.headers["www-authenticate"] == "Bearer"
        data = png(smooth_image(16, 24))
        anonymous = requests.post(url + "v1/upscale", files={"image": ("a.png", data)}, timeout=10)
        one_line_error(anonymous, 401)
        allowed = requests.post(url + "v1/upscale", files={"image": ("a.png", data)}, data={"steps": "1"},
                                headers=server.headers, timeout=60)
        assert allowed.status_code == 200 and allowed.headers["content-type"] == "image/png"
    finally:
        stop_server(server.process)


def test_sigterm_finishes_the_running_job_and_cancels_the_queued(service_weights: str, tmp_path: Path):
    server = start_server(service_weights, tmp_path)
    stopped = start_server(service_weights, tmp_path, "--shutdown-grace", "1")
    streams: dict[str, list] = {}

    def follow(job: dict) -> None:
        with server.get(f"/v1/jobs/{job['id']}/events", stream=True) as stream:
            streams[job["id"]] = sse_events(stream)

    try:
        running = long_job(server, steps=4)
        queued = server.post("/v1/jobs", png(smooth_image(16, 24)), steps=1).json()
        followers = [threading.Thread(target=follow, args=(job,)) for job in (running, queued)]
        for follower in followers:
            follower.start()
        while server.get(f"/v1/jobs/{running['id']}").json()["progress"]["step"] < 1:
            time.sleep(0.05)
        server.process.terminate()
        for follower in followers:
            follower.join(120)
        assert server.process.wait(60) == 0
    finally:
        stop_server(server.process)
    assert streams[running["id"]][-1][1] == "done"  # the running job finished...
    assert streams[running["id"]][-1][2]["progress"]["step"] == 4
    assert streams[queued["id"]][-1][1] == "cancelled"  # ...the queued one was cancelled
    assert "dossr: stopped" in server.stderr() and "Traceback" not in server.stderr()

    longer = long_job(stopped, steps=200)  # past --shutdown-grace: stopped at its next step
    with stopped.get(f"/v1/jobs/{longer['id']}/events", stream=True) as stream:
        while stopped.get(f"/v1/jobs/{longer['id']}").json()["progress"]["step"] < 1:
            time.sleep(0.05)
        stopped.process.terminate()
        events = sse_events(stream)
    assert stopped.process.wait(60) == 0
    assert events[-1][1] == "cancelled" and events[-1][2]["progress"]["step"] < 200  # stopped, not finished
    assert "Traceback" not in stopped.stderr()


def test_a_non_ascii_name_survives_in_content_disposition(server: Server):
    response = server.post("/v1/upscale", png(smooth_image(16, 16)), filename="café.png", steps=1)
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"caf__x4.png\"; filename*=UTF-8''caf%C3%A9_x4.png")


def test_progress_counts_tiles_of_a_tiled_image(server: Server):
    job = server.post("/v1/jobs", png(smooth_image(24, 24)), steps=2, tile_size=64, tile_overlap=32).json()
    with server.get(f"/v1/jobs/{job['id']}/events", stream=True) as stream:
        events = sse_events(stream)
    progress = [data for _, name, data in events if name == "progress"]
    assert {data["tiles"] for data in progress} == {9}  # a 96x96 x4 image: 3x3 64-pixel tiles, 16 apart
    assert {data["steps"] for data in progress} == {2}
    assert [data["tile"] for data in progress if data["step"] == 0] == [3, 6, 9]  # the first step, 3 tiles a call
    assert events[-1][1] == "done" and events[-1][2]["progress"] == {"step": 2, "steps": 2, "tile": 9, "tiles": 9}

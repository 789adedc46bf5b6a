"""`dossr upscale --server` and the Python client against a real `dossr serve` on 127.0.0.1 (tiny model).

The promise under test: a command line that sends its images to a running server writes the
same bytes, prints the same lines and exits with the same codes as a local run.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from cli.helpers import decode, default_sigint, dossr_command, run_in_process, save, smooth_image, subprocess_env
from PIL import Image, ImageCms

from dossr_cli.client import Client, ServerError, parse_sse
from dossr_cli.errors import UsageError

from .serving import Server, start_server, stop_server

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE = 0x010F
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def weights(service_weights: str) -> str:
    """The server's bundle, for the local runs to compare with."""
    return service_weights


@pytest.fixture(scope="module")
def token_server(weights: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(weights, tmp_path_factory.mktemp("token-server"), token=TOKEN)
    yield running
    stop_server(running.process)


@pytest.fixture(autouse=True)
def no_inherited_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOSSR_SERVER", "DOSSR_TOKEN", "DOSSR_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)


def local(weights: str, *args: object, stdin: bytes | None = None):
    return run_in_process(["upscale", *map(str, args), "--weights", weights], stdin)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def remote(url: str, *args: object, stdin: bytes | None = None):
    return run_in_process(["upscale", *map(str, args), "--server", url], stdin)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rgba_image() -> Image.Image:
    rgba = smooth_image(16, 24).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1))
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def write_input(kind: str, folder: Path) -> Path:
    if kind == "png-rgb":
        return save(smooth_image(16, 24), folder / "rgb.png")
    if kind in ("png-alpha", "alpha-to-jpg"):
        return save(rgba_image(), folder / "alpha.png")
    if kind == "png-16bit":
        rgb = np.asarray(smooth_image(16, 16), dtype=np.uint16) * 257
        rgb += np.arange(16 * 16 * 3, dtype=np.uint16).reshape(16, 16, 3) % 200
        assert cv2.imwrite(str(folder / "deep.png"), rgb[..., ::-1])
        return folder / "deep.png"
    exif = Image.Exif()
    exif[MAKE] = "DossrCam"
    return save(smooth_image(16, 16), folder / "tagged.jpg", icc_profile=SRGB, exif=exif.tobytes(), quality=90)


@pytest.mark.parametrize("kind", ["png-rgb", "png-alpha", "png-16bit", "jpeg-exif-icc", "alpha-to-jpg"])
def test_server_writes_the_bytes_lines_and_json_of_a_local_run(server, weights, tmp_path, kind):
    source = write_input(kind, tmp_path)
    ext = ".jpg" if kind == "alpha-to-jpg" else source.suffix
    options = ("--steps", "2", "--seed", "7", "--json")
    here = local(weights, source, "-o", tmp_path / f"local{ext}", *options)
    there = remote(server.url, source, "-o", tmp_path / f"remote{ext}", *options)
    assert here.code == there.code == 0, (here.stderr, there.stderr)
    assert (tmp_path / f"remote{ext}").read_bytes() == (tmp_path / f"local{ext}").read_bytes()
    mine, theirs = json.loads(here.stdout), json.loads(there.stdout)
    assert theirs["output"] == str(tmp_path / f"remote{ext}")
    for record in (mine, theirs):
        record.pop("output"), record.pop("seconds")
    assert theirs == mine
    notes = [line for line in there.stderr.splitlines() if line.startswith("dossr: note:")]
    assert notes == [line for line in here.stderr.splitlines() if line.startswith("dossr: note:")]
    if kind == "alpha-to-jpg":
        assert notes and "transparency flattened" in notes[0]
    if kind == "jpeg-exif-icc":
        out = decode(tmp_path / "remote.jpg")
        assert out.info.get("icc_profile") == SRGB and out.getexif().get(MAKE) == "DossrCam"


def test_a_bad_image_fails_on_the_server_as_it_fails_here(server, weights, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image at all")
    here = local(weights, bad, "--json")
    there = remote(server.url, bad, "--json")
    assert here.code == there.code == 1
    assert there.error_lines == here.error_lines and len(there.error_lines) == 1
    assert there.stdout == here.stdout  # the --json failure record
    assert not (tmp_path / "bad_x4.png").exists()
    piped_here = local(weights, "-", "-o", "-", stdin=bad.read_bytes())
    piped_there = remote(server.url, "-", "-o", "-", stdin=bad.read_bytes())
    assert piped_there.code == piped_here.code == 1 and piped_there.error_lines == piped_here.error_lines


def test_no_server_listening_is_one_line_and_exit_1(tmp_path):
    source = save(smooth_image(16, 16), tmp_path / "in.png")
    url = f"http://127.0.0.1:{free_port()}"
    result = remote(url, source)
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [(f"dossr: error: cannot reach the dossr server at {url}/: start it "
                                                  "with `dossr serve` or check --server")]
    assert not (tmp_path / "in_x4.png").exists()


def test_local_checks_come_first_with_a_server(tmp_path):
    """--overwrite refusal, a missing input and the server's own options are refused without any server."""
    source = save(smooth_image(16, 16), tmp_path / "in.png")
    (tmp_path / "in_x4.png").write_bytes(b"keep me")
    dead = f"http://127.0.0.1:{free_port()}"
    refused = remote(dead, source)
    assert refused.code == 1 and "already exists (pass --overwrite to replace it)" in refused.stderr
    assert "cannot reach" not in refused.stderr and (tmp_path / "in_x4.png").read_bytes() == b"keep me"
    missing = remote(dead, tmp_path / "nope.png")
    assert missing.code == 1 and missing.error_lines == [f"dossr: error: {tmp_path / 'nope.png'}: no such file"]
    for option in (("--weights", "tiny"), ("--device", "cpu"), ("--dtype", "fp32"), ("--compile",),
                   ("--max-memory", "1GB"), ("--download",), ("--max-pixels", "100")):
        usage = remote(dead, source, "--overwrite", *option)
        assert usage.code == 2, option
        assert usage.error_lines == [(f"dossr: error: {option[0]} is the server's choice, not the client's: drop it, "
                                     "or upscale locally without --server (--server '' overrides DOSSR_SERVER)")]


def test_a_server_with_a_token_wants_it(token_server, weights, tmp_path, monkeypatch):
    source = save(smooth_image(16, 16), tmp_path / "in.png")
    missing = remote(token_server.url, source, "--steps", "1")
    assert missing.code == 1
    assert missing.stderr.strip().splitlines() == [("dossr: error: the server wants a token: pass --token or set "
                                                   "DOSSR_TOKEN")]
    wrong = remote(token_server.url, source, "--steps", "1", "--token", "nope")
    assert wrong.code == 1 and wrong.error_lines == [("dossr: error: the server refused the token: check --token "
                                                     "or DOSSR_TOKEN")]
    assert not (tmp_path / "in_x4.png").exists()
    assert remote(token_server.url, source, "--steps", "1", "--token", TOKEN).code == 0
    monkeypatch.setenv("DOSSR_TOKEN", TOKEN)
    assert remote(token_server.url, source, "--steps", "1", "--overwrite").code == 0


def test_dossr_server_in_the_environment_is_used(server, weights, tmp_path, monkeypatch):
    """No --weights and no default weights here: only the server can have made this image."""
    source = save(smooth_image(16, 16), tmp_path / "in.png")
    monkeypatch.setenv("DOSSR_SERVER", server.url)
    result = run_in_process(["upscale", str(source), "-o", str(tmp_path / "env.png"), "--steps", "1"])
    assert result.code == 0, result.stderr
    assert local(weights, source, "-o", tmp_path / "local.png", "--steps", "1", "--server", "").code == 0
    assert (tmp_path / "env.png").read_bytes() == (tmp_path / "local.png").read_bytes()


def test_a_pipe_through_the_server_as_a_subprocess(server, weights, tmp_path):
    """`cat x | dossr upscale - -o - --server URL`, a real process on both ends."""
    data = save(smooth_image(16, 16), tmp_path / "in.png").read_bytes()
    done = subprocess.run(dossr_command("upscale", "-", "-o", "-", "--steps", "1", "--server", server.url),
                          input=data, capture_output=True, env=subprocess_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    reference = local(weights, "-", "-o", "-", "--steps", "1", stdin=data)
    assert reference.code == 0 and done.stdout == reference.stdout
    assert decode(done.stdout).size == (64, 64)


def test_compare_with_a_server(server, tmp_path):
    source = save(smooth_image(16, 16), tmp_path / "in.png")
    result = remote(server.url, source, "--steps", "1", "--compare", tmp_path / "side.png")
    assert result.code == 0, result.stderr
    assert decode(tmp_path / "side.png").size == (64 + 2 + 64, 64)


def test_ctrl_c_cancels_the_job_on_the_server(server, tmp_path):
    """A job of 200 steps would hold the server for minutes; Ctrl-C ends it there within seconds."""
    source = save(smooth_image(48, 48), tmp_path / "in.png")
    child = subprocess.Popen(dossr_command("upscale", source, "--steps", "200", "--t1", "1000", "-q", "--server",
                                           server.url), env=subprocess_env(), stderr=subprocess.PIPE,
                             preexec_fn=default_sigint)  # noqa: PLW1509 - only signal.signal
    try:
        running = wait_for(lambda: requests.get(server.url + "v1/health", timeout=10).json()["running"] == 1, 60)
        assert running, "the job never started"
        child.send_signal(signal.SIGINT)
        assert child.wait(60) == 130
        assert "dossr: interrupted" in child.stderr.read().decode()
    finally:
        if child.poll() is None:
            child.kill()
    idle = wait_for(lambda: requests.get(server.url + "v1/health", timeout=10).json() == {
        "status": "ok", "queued": 0, "running": 0}, 30)
    assert idle, "the cancelled job went on running on the server"
    assert not (tmp_path / "in_x4.png").exists()


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------- the Python client


def test_client_reports_progress_in_order_and_the_result(server, tmp_path):
    data = save(smooth_image(16, 16), tmp_path / "in.png").read_bytes()
    client = Client(server.url)
    steps: list[tuple[int, int, int, int]] = []
    result = client.upscale(data, "in.png", on_progress=lambda *p: steps.append(p), steps=3)
    assert result.format == "png" and result.output_size == (64, 64) and result.input_size == (16, 16)
    assert decode(result.data).size == (64, 64) and result.filename == "in_x4.png"
    assert [s[0] for s in steps if s[1]] == sorted(s[0] for s in steps if s[1]) and steps[-1][:2] == (3, 3)
    with pytest.raises(ServerError) as gone:  # the client discarded the result once it had it
        client.result(result.job["id"])
    assert gone.value.status == 404


def test_client_errors_carry_the_status_and_the_servers_line(server):
    client = Client(server.url)
    with pytest.raises(ServerError) as bad:
        client.submit(b"not an image", "x.png")
    assert bad.value.status == 400 and str(bad.value).startswith("'x.png': not an image dossr can read")
    with pytest.raises(ServerError) as option:
        client.submit(b"x", "x.png", steps=0)
    assert option.value.status == 400 and str(option.value) == "steps must be in 1..200; got 0"
    with pytest.raises(UsageError, match="unknown upscale option 'stpes'"):  # the server would ignore it
        client.submit(b"x", "x.png", stpes=3)


def test_sse_parser_follows_the_standard():
    """CRLF split across chunks, comments, multi-line data, a field without a space, an event without data."""
    chunks = [b": ping\r\n\r\nid: 1\r", b"\nevent: queued\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n",
              b"event: empty\n\n", b"id:2\nevent:progress\ndata: {}\n", b"\nid: 3\rdata: x\r\r", b"data: cut"]
    assert list(parse_sse(chunks)) == [(1, "queued", '{"a":\n1}'), (2, "progress", "{}"), (3, "message", "x")]


def test_a_full_queue_is_waited_out_not_failed(weights: str, tmp_path: Path):
    """A shell loop of clients against a busy server slows down instead of failing: a 429 is retried
    as the server's Retry-After asks (5 s), and the image is done once there is room."""
    server = start_server(weights, tmp_path, "--max-queue", "1")
    try:
        blocker = server.post("/v1/jobs", png(smooth_image(60, 60)), filename="long.png", steps=200).json()
        assert server.post("/v1/jobs", png(smooth_image(8, 8))).status_code == 429  # the queue is full
        threading.Timer(2.0, server.delete, args=(f"/v1/jobs/{blocker['id']}",)).start()
        source = save(smooth_image(16, 12), tmp_path / "in.png")
        result = remote(server.url, source, "-o", tmp_path / "out.png", "--steps", "1")
        assert result.code == 0, result.stderr
        assert (f"dossr: note: {source}: the server's queue is full: waiting for room (trying every 5 s)"
                in result.stderr.splitlines())
        assert Image.open(tmp_path / "out.png").size == (48, 64)
        gave_up = Client(server.url, queue_wait=0.5)
        busy = server.post("/v1/jobs", png(smooth_image(60, 60)), filename="long.png", steps=200).json()
        with pytest.raises(ServerError, match=r"queue is full.*; it stayed full for 0.5 s$") as error:
            gave_up.submit(png(smooth_image(8, 8)))
        assert error.value.status == 429
        server.delete(f"/v1/jobs/{busy['id']}")
    finally:
        assert stop_server(server.process) == 0


def test_the_retry_after_a_full_queue_opens_a_fresh_connection(tmp_path: Path):
    """A server may close an idle kept-alive connection just as the client's wait ends (uvicorn's
    keep-alive was 5 s, our Retry-After is 5 s: a CI run lost an image to it). This server always loses
    that race: it drops the first connection on its second request. The retry must not use it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections: list[int] = []

    class RacingServer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps connections alive, as uvicorn does

        def setup(self) -> None:
            super().setup()
            connections.append(len(connections))
            self.number, self.served = connections[-1], 0

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.served += 1
            if self.number == 0 and self.served == 2:
                self.close_connection = True  # closed as the request arrived: no answer at all
                return
            status, body = (429, b'{"error": "the queue is full"}') if self.number == 0 else (201, b'{"id": "j1"}')
            self.send_response(status)
            for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                ("Retry-After", "0.2")):
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RacingServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{httpd.server_address[1]}/", queue_wait=10)
        assert client.submit(png(smooth_image(8, 8))) == {"id": "j1"}
        assert len(connections) == 2  # the 429 on the first, the job on a second one
    finally:
        httpd.shutdown()
        httpd.server_close()

"""A real `dossr serve` on 127.0.0.1 and Debian's headless Chromium, for the page's tests and its screenshots
(benchmarks/page_screenshot.py imports this too, so both drive the page the same way)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class PageServer:
    url: str  # ends with /
    process: subprocess.Popen
    weights: str
    log: Path
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_weights(folder: Path) -> str:
    """The tiny random bundle (seed 0), as the other service tests use."""
    from dossr_cli.checkpoint.bundle import save_bundle
    from dossr_cli.random_weights import random_networks

    return str(save_bundle(random_networks(seed=0), folder / "tiny"))


def start_server(weights: str, folder: Path, *args: str, token: str | None = None, timeout: float = 90,
                 wait: bool = True) -> PageServer:
    """`dossr serve --port N ARGS` on a free port, once GET /v1/health answers 200 (at once with wait=False:
    then call wait_until_serving, so that two servers can load their models side by side)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DOSSR_TOKEN", "DOSSR_SERVER", "DOSSR_WEIGHTS")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]), PYTHONUNBUFFERED="1",
               DOSSR_CACHE_DIR=str(folder / "cache"))
    if token is not None:
        env["DOSSR_TOKEN"] = token
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "dossr_cli", "serve", "--weights", weights,
                                    "--host", "127.0.0.1", "--port", str(port), *args],
                                   stdout=subprocess.DEVNULL, stderr=sink, env=env, start_new_session=True)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    server = PageServer(f"http://127.0.0.1:{port}/", process, weights, log, token, headers)
    return wait_until_serving(server, timeout) if wait else server


def wait_until_serving(server: PageServer, timeout: float = 90) -> PageServer:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"dossr serve exited {server.process.returncode}: {server.log.read_text()}")
        try:
            if requests.get(server.url + "v1/health", headers=server.headers, timeout=5).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    stop_server(server.process)
    raise AssertionError(f"dossr serve did not answer /v1/health in {timeout} s: {server.log.read_text()}")


def stop_server(process: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, as a service manager stops it; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def png_bytes(width: int, height: int) -> bytes:
    """A small RGB gradient as PNG bytes (deterministic, so the results are too)."""
    image = Image.new("RGB", (width, height))
    image.putdata([(255 * x // max(width - 1, 1), 255 * y // max(height - 1, 1), 160)
                   for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def launch_chromium(playwright):  # -> playwright Browser
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def pick_and_upscale(page, files: list[tuple[str, bytes]], steps: int = 1) -> None:
    """Picks `files` (name, PNG bytes) in the page's file input, sets the steps and presses Upscale."""
    page.locator("#file-input").set_input_files(
        [{"name": name, "mimeType": "image/png", "buffer": data} for name, data in files])
    page.locator("#opt-steps").fill(str(steps))
    page.locator("#upscale-button").click()


def wait_until_ended(page, count: int, timeout_ms: float = 60_000) -> None:
    """Until the page shows `count` cards and each has ended (done, failed or cancelled)."""
    page.wait_for_function("""n => {
        const cards = [...document.querySelectorAll('[data-testid=card]')];
        return cards.length >= n && cards.every(card => ['done', 'failed', 'cancelled'].includes(card.dataset.status));
    }""", arg=count, timeout=timeout_ms)


__all__ = ["CHROMIUM", "PageServer", "launch_chromium", "pick_and_upscale", "png_bytes", "start_server", "stop_server",
           "tiny_weights", "wait_until_ended", "wait_until_serving"]

"""A real `dossr serve` on 127.0.0.1 and Debian's headless Chromium, for the page's tests and its screenshots
(benchmarks/page_screenshot.py imports this too, so both drive the page the same way)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from .serving import Server, start_server, stop_server, tiny_weights, wait_until_serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


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


__all__ = ["CHROMIUM", "Server", "launch_chromium", "pick_and_upscale", "png_bytes", "start_server", "stop_server",
           "tiny_weights", "wait_until_ended", "wait_until_serving"]

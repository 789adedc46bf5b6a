"""Screenshots of `dossr serve`'s web page after an upscale, at a laptop's width and a phone's, for README.

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/page_screenshot.py --out docs

Starts a real server on 127.0.0.1 the way tests/service/test_page.py does (the tiny random model unless
--weights names another bundle: its "after" pictures are that model's noise, not a real upscale), opens the
page in Debian's headless Chromium, upscales two small pictures at 1 step, puts each comparison divider at
40 %, and writes OUT/serve-page.png (1280 px wide) and OUT/serve-page-phone.png (390 px), each reduced to a
256-colour palette so that it stays small.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.browser import (
    launch_chromium,
    pick_and_upscale,
    start_server,
    stop_server,
    tiny_weights,
    wait_until_ended,
)

VIEWPORTS = {"serve-page.png": {"width": 1280, "height": 820}, "serve-page-phone.png": {"width": 390, "height": 844}}


def picture(width: int, height: int, hue: int) -> bytes:
    """A small made-up scene (sky, hills, a sun) as PNG bytes, something to look at in the comparison."""
    image = Image.new("RGB", (width, height), (90 + hue // 3, 150, 215 - hue // 2))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.65, height * 0.1, width * 0.85, height * 0.1 + width * 0.2), fill=(250, 215, 90))
    draw.polygon([(0, height), (0, height * 0.6), (width * 0.4, height * 0.45), (width, height * 0.7),
                  (width, height)], fill=(60 + hue // 4, 130, 70))
    draw.rectangle((width * 0.15, height * 0.62, width * 0.3, height * 0.85), fill=(170, 80, 60))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def shoot(server_url: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    files = [("meadow.png", picture(64, 40, 0)), ("evening.png", picture(48, 32, 120))]
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        for name, viewport in VIEWPORTS.items():
            phone = viewport["width"] < 600
            context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone)
            page = context.new_page()
            page.goto(server_url)
            page.get_by_test_id("model-line").filter(has_text="weights").wait_for()
            pick_and_upscale(page, files)
            wait_until_ended(page, len(files))
            for divider in page.get_by_test_id("divider").all():
                divider.focus()
                page.keyboard.press("Home")
                for _ in range(20):  # 20 x 2 % = 40 %: part before, part after
                    page.keyboard.press("ArrowRight")
                divider.blur()
            page.wait_for_timeout(200)
            target = out / name
            png = page.screenshot(full_page=True)
            Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(target, optimize=True)
            written.append(target)
            context.close()
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the two PNGs")
    parser.add_argument("--weights", help="a bundle folder (default: the tiny random model, made in a temp folder)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dossr-page-shot-") as scratch:
        weights = args.weights or tiny_weights(Path(scratch))
        server = start_server(weights, Path(scratch) / "server")
        try:
            for path in shoot(server.url, args.out):
                with Image.open(path) as image:
                    print(f"{path}: {image.width}x{image.height}, {path.stat().st_size} bytes")
        finally:
            stop_server(server.process)


if __name__ == "__main__":
    main()

"""The web page in a real browser: Debian's headless Chromium, driven by Playwright, on a real `dossr serve`
with the tiny random model. Upload, progress, the comparison slider, downloads, the token prompt, errors."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from .browser import (
    CHROMIUM,
    Server,
    launch_chromium,
    pick_and_upscale,
    png_bytes,
    start_server,
    stop_server,
    tiny_weights,
    wait_until_serving,
)

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package): the page's browser tests need it",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright

TOKEN = "page-test-token"
# Every text a card's status line shows, in order, so a test can see the progress it went through.
RECORD_STATUSES = """
window.statusHistory = [];
new MutationObserver((records) => {
  for (const record of records) {
    const element = record.target.nodeType === 1 ? record.target : record.target.parentElement;
    if (element && element.matches('[data-testid=status]')) window.statusHistory.push(element.textContent);
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
// object URLs made for zips, and every URL given back: a zip not given back stays in memory all session
window.zipUrls = []; window.revokedUrls = [];
const makeUrl = URL.createObjectURL, revokeUrl = URL.revokeObjectURL;
URL.createObjectURL = (blob) => {
  const url = makeUrl(blob);
  if (blob.type === "application/zip") window.zipUrls.push(url);
  return url;
};
URL.revokeObjectURL = (url) => { window.revokedUrls.push(url); revokeUrl(url); };
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_weights(tmp_path_factory.mktemp("page-weights"))


@pytest.fixture(scope="module")
def servers(weights: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two real servers, loaded side by side: an open one and one that wants a token."""
    folder = tmp_path_factory.mktemp("page-servers")
    running = [start_server(weights, folder / "open", wait=False),
               start_server(weights, folder / "guarded", token=TOKEN, wait=False)]
    try:
        yield tuple(wait_until_serving(one) for one in running)
    finally:
        for one in running:
            stop_server(one.process)


@pytest.fixture(scope="module")
def server(servers: tuple[Server, Server]) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def guarded(servers: tuple[Server, Server]) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.add_init_script(RECORD_STATUSES)
    errors: list[str] = []
    opened.on("pageerror", lambda failure: errors.append(str(failure)))
    yield opened
    context.close()
    assert errors == [], f"the page's script failed: {errors}"


def job_result(server: Server, card) -> bytes:
    job_id = card.get_attribute("data-job-id")
    response = requests.get(f"{server.url}v1/jobs/{job_id}/result", headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def test_upscale_compare_and_download(server: Server, page: Page) -> None:
    page.goto(server.url)
    expect(page.get_by_test_id("model-line")).to_have_text("dossr 0.1.0.dev0 · cpu · fp32 · weights tiny "
                                                           f"({requests.get(server.url + 'v1/model').json()['weights']})")
    expect(page.locator("#opt-steps")).to_have_value("5")  # the form's defaults come from GET /v1/model
    expect(page.locator("#opt-tile-size")).to_have_value("auto")
    pick_and_upscale(page, [("gradient.png", png_bytes(24, 16)), ("tall.png", png_bytes(12, 20))])

    cards = page.get_by_test_id("card")
    expect(cards).to_have_count(2)
    first = cards.nth(0)
    for card in (first, cards.nth(1)):
        expect(card).to_have_attribute("data-status", "done", timeout=60_000)
        expect(card.get_by_test_id("progress")).to_have_js_property("value", 1)
        expect(card.get_by_test_id("status")).to_contain_text("done in ")
        expect(card.get_by_test_id("cancel")).to_be_hidden()
    expect(first.get_by_test_id("card-name")).to_have_text("gradient.png")
    expect(first.get_by_test_id("status")).to_contain_text("96×64 png")
    # how far to trust it: the job's own numbers; random weights depart from the input, so it is flagged, saying why
    trust = requests.get(f"{server.url}v1/jobs/{first.get_attribute('data-job-id')}", timeout=30).json()["trust"]
    assert trust["flagged"] and trust["flag_reasons"]
    expect(first.get_by_test_id("trust")).to_have_text(
        f"check this one: {'; '.join(trust['flag_reasons'])} · invented detail {trust['invented_rms']:.3f} RMS")
    expect(first.get_by_test_id("trust")).to_have_class("trust flagged")
    expect(first).to_have_attribute("data-flagged", "true")
    seen = [text for text in page.evaluate("statusHistory")]
    order = ["uploading", "queued", "running", "step 1 of 1"]
    for text in order:
        assert text in seen, f"the status line never showed {text!r}: {seen}"
    positions = [seen.index(text) for text in order]
    assert positions == sorted(positions), seen
    assert any(text.startswith("done in ") for text in seen[positions[-1]:]), seen

    # the comparison: the input stretched to the output's size, a divider that follows the mouse and the keys
    compare = first.get_by_test_id("compare")
    expect(compare).to_be_visible()
    assert first.get_by_test_id("before").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [24, 16]
    assert first.get_by_test_id("after").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [96, 64]
    frame = compare.locator(".compare-frame").bounding_box()
    assert frame is not None and abs(frame["width"] / frame["height"] - 1.5) < 0.02
    divider = first.get_by_test_id("divider")
    expect(divider).to_have_attribute("aria-valuenow", "50")
    page.mouse.move(frame["x"] + frame["width"] / 2, frame["y"] + frame["height"] / 2)
    page.mouse.down()
    page.mouse.move(frame["x"] + frame["width"] / 4, frame["y"] + frame["height"] / 2, steps=5)
    page.mouse.up()
    assert abs(float(divider.get_attribute("aria-valuenow")) - 25) < 1
    moved = divider.bounding_box()
    assert moved is not None and abs(moved["x"] + moved["width"] / 2 - (frame["x"] + frame["width"] / 4)) < 3
    assert "25" in first.get_by_test_id("after").evaluate("img => getComputedStyle(img).clipPath")
    divider.focus()
    page.keyboard.press("ArrowRight")
    assert abs(float(divider.get_attribute("aria-valuenow")) - 27) < 1
    page.keyboard.press("End")
    expect(divider).to_have_attribute("aria-valuenow", "100")

    # the page's download link gives the server's bytes, named as the server names them
    with page.expect_download() as download:
        first.get_by_test_id("download").click()
    assert download.value.suggested_filename == "gradient_x4.png"
    data = download.value.path().read_bytes()
    assert Image.open(io.BytesIO(data)).size == (96, 64)
    assert data == job_result(server, first)

    # "Download all": one zip holding each result, byte for byte
    with page.expect_download() as download:
        page.get_by_test_id("download-all").click()
    assert download.value.suggested_filename == "dossr-results.zip"
    with zipfile.ZipFile(download.value.path()) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["gradient_x4.png", "tall_x4.png"]
        assert archive.read("gradient_x4.png") == data
        assert archive.read("tall_x4.png") == job_result(server, cards.nth(1))
        assert Image.open(io.BytesIO(archive.read("tall_x4.png"))).size == (48, 80)
    # each zip is made afresh and given back once its download has started
    with page.expect_download():
        page.get_by_test_id("download-all").click()
    page.wait_for_function("window.zipUrls.length === 2 && window.zipUrls.every(u => window.revokedUrls.includes(u))",
                           timeout=10_000)


def test_an_undecodable_file_shows_the_servers_error(server: Server, page: Page) -> None:
    junk = b"this is not an image, whatever its name says\n"
    expected = requests.post(server.url + "v1/jobs", files={"image": ("broken.png", junk)}, timeout=30)
    assert expected.status_code == 400
    page.goto(server.url)
    page.locator("#file-input").set_input_files([{"name": "broken.png", "mimeType": "image/png", "buffer": junk}])
    page.locator("#upscale-button").click()
    card = page.get_by_test_id("card")
    expect(card).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(card.get_by_test_id("status")).to_have_text(expected.json()["error"])
    assert "\n" not in expected.json()["error"] and "broken.png" in expected.json()["error"]
    expect(card.get_by_test_id("download")).to_be_hidden()
    expect(card.get_by_test_id("compare")).to_be_hidden()
    expect(page.get_by_test_id("download-all")).to_be_hidden()


def test_the_token_prompt_on_a_phone(guarded: Server, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    try:
        page = context.new_page()
        page.goto(guarded.url)
        dialog = page.get_by_test_id("token-dialog")
        expect(dialog).to_be_visible()
        expect(page.get_by_test_id("token-reason")).to_contain_text("this server needs a token")
        page.get_by_test_id("token-input").fill("not-the-token")
        page.get_by_test_id("token-submit").click()
        expect(page.get_by_test_id("token-reason")).to_contain_text("wrong token")
        expect(dialog).to_be_visible()
        page.get_by_test_id("token-input").fill(TOKEN)
        page.get_by_test_id("token-submit").click()
        expect(dialog).to_be_hidden()
        expect(page.get_by_test_id("model-line")).to_contain_text("weights tiny")
        assert page.evaluate("localStorage.getItem('dossr.token')") == TOKEN

        pick_and_upscale(page, [("phone.png", png_bytes(24, 16))])
        card = page.get_by_test_id("card")
        expect(card).to_have_attribute("data-status", "done", timeout=60_000)
        assert Image.open(io.BytesIO(job_result(guarded, card))).size == (96, 64)
        # 390 px wide: nothing scrolls sideways, and a tap on the picture moves the divider there
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        card.locator(".compare-frame").scroll_into_view_if_needed()
        frame = card.locator(".compare-frame").bounding_box()
        assert frame is not None and frame["x"] >= 0 and frame["x"] + frame["width"] <= 390
        page.touchscreen.tap(frame["x"] + frame["width"] * 0.8, frame["y"] + frame["height"] / 2)
        assert abs(float(card.get_by_test_id("divider").get_attribute("aria-valuenow")) - 80) < 1.5

        page.reload()  # the token is kept: no prompt the second time
        expect(page.get_by_test_id("model-line")).to_contain_text("weights tiny")
        expect(dialog).to_be_hidden()
    finally:
        context.close()


def test_cancel_a_running_job(server: Server, page: Page) -> None:
    page.goto(server.url)
    pick_and_upscale(page, [("slow.png", png_bytes(64, 64))], steps=200)  # 20 s here: only a cancel ends it soon
    card = page.get_by_test_id("card")
    expect(card.get_by_test_id("status")).to_have_text(re.compile(r"^step \d+ of 200$"), timeout=30_000)
    card.get_by_test_id("cancel").click()
    expect(card).to_have_attribute("data-status", "cancelled", timeout=30_000)
    expect(card.get_by_test_id("status")).to_have_text("cancelled")
    expect(card.get_by_test_id("cancel")).to_be_hidden()
    expect(card.get_by_test_id("download")).to_be_hidden()
    job = requests.get(f"{server.url}v1/jobs/{card.get_attribute('data-job-id')}", timeout=30).json()
    assert job["status"] == "cancelled" and job["result"] is None
    assert job["progress"]["step"] < 200


def test_the_api_docs_work_offline(guarded: Server, page: Page) -> None:
    """/docs is FastAPI's Swagger UI, whose scripts come from a CDN by default: on a machine without the
    internet it was a blank page. Any request off this machine is refused here, as no network would."""
    outside: list[str] = []

    def only_loopback(route) -> None:
        if route.request.url.startswith(guarded.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(guarded.url + "docs")  # no token needed to read the docs; the API itself still wants one
    expect(page.locator(".opblock-summary-path", has_text="/v1/upscale").first).to_be_visible(timeout=30_000)
    expect(page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}/events")).to_be_visible()
    assert outside == [], outside
    assert requests.get(guarded.url + "redoc", timeout=10).status_code == 404  # its logo is always a CDN's

"""The checking half of e2e.sh: drive a running ComfyUI through its HTTP API (and, with
--screenshot, its page in Chromium) and compare the node pack's saved image with `dossr upscale`.

Standard library, NumPy and Pillow only (ComfyUI's own requirements), Playwright for the page.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def wait_for_nodes(url: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = get(f"{url}/object_info")
            if "DoSSRUpscale" not in info:
                raise SystemExit("ComfyUI started without the DoSSR nodes: see its log for the pack's import error")
            return info
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise SystemExit(f"ComfyUI did not answer at {url} within {timeout:.0f} s") from None
            time.sleep(1)


def check_object_info(info: dict) -> None:
    loader, upscale = info["DoSSRModelLoader"], info["DoSSRUpscale"]
    assert loader["output"] == ["DOSSR_MODEL"], loader["output"]
    assert upscale["output"] == ["IMAGE", "MASK"], upscale["output"]
    assert list(upscale["input"]["required"])[:2] == ["dossr_model", "image"]
    assert "mask" in upscale["input"]["optional"]
    print(f"object_info: DoSSRModelLoader and DoSSRUpscale ({len(upscale['input']['required'])} inputs), "
          f"category {upscale['category']}")


def check_templates(url: str, pack: str = "dossr") -> None:
    """ComfyUI offers the pack's example workflow among its templates."""
    templates = get(f"{url}/workflow_templates")
    if templates.get(pack) != ["dossr_upscale"]:
        raise SystemExit(f"ComfyUI's templates list {templates.get(pack)} for the pack {pack!r}")
    workflow = get(f"{url}/api/workflow_templates/{pack}/dossr_upscale.json")
    print(f"templates: ComfyUI offers {pack}/dossr_upscale ({len(workflow['nodes'])} nodes)")


def run_prompt(url: str, prompt: dict, timeout: float = 600) -> dict:
    body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            prompt_id = json.load(response)["prompt_id"]
    except urllib.error.HTTPError as error:
        raise SystemExit(f"/prompt refused the workflow: {error.code} {error.read().decode()[:2000]}") from None
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        history = get(f"{url}/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            status = entry.get("status", {})
            if status.get("status_str") == "error":
                raise SystemExit(f"the workflow failed in ComfyUI: {json.dumps(status.get('messages'))[:2000]}")
            print(f"prompt {prompt_id}: done in {time.monotonic() - started:.1f} s")
            return entry
        time.sleep(0.5)
    raise SystemExit(f"the workflow did not finish within {timeout:.0f} s")


def free_everything(url: str, log: Path | None, timeout: float = 60) -> None:
    """POST /free as ComfyUI's "free model and node cache" does: ComfyUI must release our model too."""
    body = json.dumps({"unload_models": True, "free_memory": True}).encode()
    request = urllib.request.Request(f"{url}/free", data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()
    if log is None:
        return
    deadline = time.monotonic() + timeout
    while "DoSSR: released" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit("POST /free did not release the DoSSR model")
        time.sleep(0.5)
    print("free: POST /free released the DoSSR model")


def check_progress_and_interrupt(url: str, workflow: dict, steps: int = 40, stop_after: int = 2) -> None:
    """Run the workflow with more steps, listening on ComfyUI's websocket: the DoSSR node's progress
    must rise step by step, and POST /interrupt after step `stop_after` must stop it before the end."""
    import asyncio

    import aiohttp  # ComfyUI's own requirement

    from dossr_cli.comfyui.nodes import PROGRESS_PER_STEP

    prompt = json.loads(json.dumps(workflow))
    (node_id,) = [key for key, node in prompt.items() if node["class_type"] == "DoSSRUpscale"]
    prompt[node_id]["inputs"].update(steps=steps, seed=prompt[node_id]["inputs"]["seed"] + 1)

    async def run() -> tuple[list[int], float]:
        client_id = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws?clientId={client_id}") as socket:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as answer:
                answer.raise_for_status()
            values: list[int] = []
            interrupted_at = None
            async for message in socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # previews are binary
                event = json.loads(message.data)
                data = event.get("data", {})
                if event["type"] == "progress" and data.get("node") == node_id:
                    values.append(data["value"])
                    if interrupted_at is None and data["value"] >= stop_after * PROGRESS_PER_STEP:
                        interrupted_at = time.monotonic()
                        async with session.post(f"{url}/interrupt", json={}) as answer:
                            answer.raise_for_status()
                elif event["type"] == "execution_interrupted":
                    return values, time.monotonic() - (interrupted_at or time.monotonic())
                elif event["type"] in ("execution_success", "execution_error"):
                    raise SystemExit(f"the run ended with {event['type']} instead of stopping at the interrupt")
        raise SystemExit("ComfyUI's websocket closed before the run ended")

    values, seconds = asyncio.run(asyncio.wait_for(run(), 600))
    total = steps * PROGRESS_PER_STEP
    whole_steps = sorted({v // PROGRESS_PER_STEP for v in values if v % PROGRESS_PER_STEP == 0 and v})
    if values != sorted(values) or whole_steps[:stop_after] != list(range(1, stop_after + 1)):
        raise SystemExit(f"the progress did not rise step by step: {values}")
    if max(values) >= total:
        raise SystemExit("the run went to its end despite the interrupt")
    print(f"progress: {len(values)} updates on the DoSSR node, steps {whole_steps} of {steps} done; "
          f"POST /interrupt stopped it {seconds:.2f} s later, at {max(values) / PROGRESS_PER_STEP:.0f} steps")


def check_page(url: str, ui_workflow: Path, api_workflow: dict, weights: str, screenshot: Path) -> None:
    """Load the UI-format workflow in ComfyUI's own page: it must give the API-format one; then run it
    there and take a picture of the page."""
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", args=flags,
                                                       viewport={"width": 1360, "height": 640})
        page = browser.new_page()
        page.goto(url, wait_until="networkidle", timeout=120_000)
        page.wait_for_function("() => window.app && window.app.graph", timeout=120_000)
        prompt = page.evaluate("""async (workflow) => {
            await window.app.loadGraphData(workflow);
            const prompt = await window.app.graphToPrompt();
            return prompt.output;
        }""", json.loads(ui_workflow.read_text()))
        made = {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in prompt.items()}
        if made != api_workflow:
            raise SystemExit(f"the page made another prompt of {ui_workflow.name}:\n{json.dumps(made, indent=1)}")
        print(f"page: {ui_workflow.name} loaded, and the page's prompt equals the API workflow")
        for _ in range(3):  # a first start opens the templates dialog over the graph
            page.keyboard.press("Escape")
            page.wait_for_timeout(300)
        # run it from the page, as a user would, so that the picture shows the result
        page.evaluate("""async (weights) => {
            const loader = window.app.graph.nodes.find((node) => node.type === "DoSSRModelLoader");
            loader.widgets.find((widget) => widget.name === "weights").value = weights;
            await window.app.queuePrompt(0, 1);
        }""", weights)
        page.wait_for_function("""() => {
            const save = window.app.graph.nodes.find((node) => node.type === "SaveImage");
            return save && save.imgs && save.imgs.length > 0 && save.imgs[0].complete;
        }""", timeout=300_000)
        print("page: the workflow ran from the page and its Save Image node shows the result")
        page.evaluate("""async () => {
            try { await window.app.extensionManager.setting.set("Comfy.Minimap.Visible", false); } catch (e) {}
            window.app.canvas.ds.offset = [70, 80];
            window.app.canvas.ds.scale = 1.0;
            window.app.graph.setDirtyCanvas(true, true);
        }""")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(screenshot))
        browser.close()
    print(f"page: screenshot {screenshot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--workflow", type=Path, required=True, help="the example workflow in API form")
    parser.add_argument("--ui-workflow", type=Path, help="its UI-format twin, loaded in the page (needs --screenshot)")
    parser.add_argument("--weights", required=True, help="the name the loader is given for this run")
    parser.add_argument("--bundle", type=Path, required=True, help="the folder that name is, for dossr upscale")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--log", type=Path, help="ComfyUI's log, to see the model released")
    args = parser.parse_args()

    check_object_info(wait_for_nodes(args.url))
    check_templates(args.url)
    workflow = json.loads(args.workflow.read_text())
    if args.screenshot:
        check_page(args.url, args.ui_workflow or args.workflow.parent / "example_workflows" / "dossr_upscale.json", workflow,
                   args.weights, args.screenshot)
    if args.screenshot:  # the page ran it: free ComfyUI's cache and models, so the API run below runs anew
        free_everything(args.url, args.log)
    loaders = [node for node in workflow.values() if node["class_type"] == "DoSSRModelLoader"]
    (upscaler,) = [node for node in workflow.values() if node["class_type"] == "DoSSRUpscale"]
    loaders[0]["inputs"]["weights"] = args.weights
    entry = run_prompt(args.url, workflow)
    saved = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    if len(saved) != 1:
        raise SystemExit(f"expected one saved image, got {saved}")
    result = args.output_dir / saved[0].get("subfolder", "") / saved[0]["filename"]
    got = np.array(Image.open(result).convert("RGB"), dtype=np.int16)

    options = upscaler["inputs"]
    reference = args.output_dir / "dossr_upscale_reference.png"
    command = [sys.executable, "-m", "dossr_cli", "upscale", str(args.input), "-o", str(reference), "--overwrite",
               "--weights", str(args.bundle), "--scale", str(options["scale"]), "--steps", str(options["steps"]),
               "--order", str(options["order"]), "--t1", str(options["t1"]), "--seed", str(options["seed"]),
               "--color-fix", options["color_fix"]]
    subprocess.run(command, check=True)
    want = np.array(Image.open(reference).convert("RGB"), dtype=np.int16)
    lr = Image.open(args.input)
    if got.shape != want.shape or got.shape[:2] != (lr.height * 4, lr.width * 4):
        raise SystemExit(f"sizes differ: ComfyUI {got.shape}, dossr upscale {want.shape}, input {lr.size}")
    diff = np.abs(got - want)
    print(f"saved {result.name}: {got.shape[1]}x{got.shape[0]} from {lr.width}x{lr.height}; against dossr upscale: "
          f"max difference {diff.max()}/255, {np.count_nonzero(diff)} of {diff.size} values differ")
    if diff.max() > 1:  # SaveImage truncates where dossr rounds: one level at most
        raise SystemExit("the node's image is not dossr upscale's")
    check_progress_and_interrupt(args.url, workflow)
    print("e2e: PASS")


if __name__ == "__main__":
    main()

"""The pack's example workflow: its UI form (what ComfyUI's page loads) and its API form (what
/prompt takes, and e2e.sh posts) say the same, in the nodes' current inputs, with their defaults.

e2e.sh checks the same in a real ComfyUI page (graphToPrompt); this keeps it checked in CI."""

from __future__ import annotations

import json
from pathlib import Path

from dossr_cli.comfyui.nodes import NODE_CLASS_MAPPINGS

PACK = Path(__file__).parents[2] / "integrations" / "comfyui"
EXAMPLES = PACK / "example_workflows"  # ComfyUI offers every file here as a template: the UI form only
LINK_TYPES = {"DOSSR_MODEL", "IMAGE", "MASK"}
# ComfyUI's own nodes in the workflow: their widgets in order (None: a widget the API does not carry)
COMFYUI_WIDGETS = {"LoadImage": ["image", None], "SaveImage": ["filename_prefix"]}
SEED_CONTROL = "control_after_generate"  # the page adds this widget after an INT named seed


def widget_names(class_type: str) -> list[str | None]:
    if class_type in COMFYUI_WIDGETS:
        return COMFYUI_WIDGETS[class_type]
    spec = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    names: list[str | None] = []
    for name, (kind, *_) in {**spec["required"], **spec.get("optional", {})}.items():
        if isinstance(kind, list) or kind not in LINK_TYPES:
            names += [name, None] if name == "seed" else [name]
    return names


def as_api(ui: dict) -> dict:
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        inputs = {name: value for name, value in zip(widget_names(node["type"]), node["widgets_values"], strict=True)
                  if name is not None}
        for slot in node["inputs"]:
            if slot["link"] is not None:
                _, source, source_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(source), source_slot]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def test_the_ui_workflow_is_the_api_workflow():
    ui = json.loads((EXAMPLES / "dossr_upscale.json").read_text())
    api = json.loads((PACK / "dossr_upscale_api.json").read_text())
    assert as_api(ui) == api
    upscale = next(node for node in ui["nodes"] if node["type"] == "DoSSRUpscale")
    seed_at = widget_names("DoSSRUpscale").index("seed")
    assert upscale["widgets_values"][seed_at + 1] == "fixed"  # SEED_CONTROL: the same seed every run


def test_the_example_uses_every_input_at_its_default():
    api = json.loads((PACK / "dossr_upscale_api.json").read_text())
    for node in api.values():
        if node["class_type"] not in NODE_CLASS_MAPPINGS:
            continue
        spec = NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()
        everything = {**spec["required"], **spec.get("optional", {})}
        assert set(node["inputs"]) == set(everything)  # every input given, none unknown
        for name, (kind, *options) in everything.items():
            if isinstance(kind, list) or kind not in LINK_TYPES:
                assert node["inputs"][name] == options[0]["default"], name

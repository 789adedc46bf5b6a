"""The DoSSR nodes through a stand-in of ComfyUI's modules (standin/): their contract, the command
line's pixels, progress, interrupt, release of memory, finding weights, one-line errors."""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from cli.helpers import run_in_process
from conftest import smooth_image
from PIL import Image

from dossr_cli.batch.params import DEFAULT_SEED, UpscaleParams
from dossr_cli.checkpoint.store import WeightsNotFoundError
from dossr_cli.comfyui import nodes
from dossr_cli.comfyui.nodes import NODE_CLASS_MAPPINGS, PROGRESS_PER_STEP, DoSSRModelLoader, DoSSRUpscale
from dossr_cli.errors import DossrError
from dossr_cli.geometry import DEFAULT_TILE_OVERLAP

from .test_layout import load_image_like_comfyui, rgba_png

WIDGETS = {"scale": 4.0, "width": 0, "height": 0, "steps": 2, "order": 3, "t1": 500, "seed": DEFAULT_SEED,
           "color_fix": "wavelet", "tiling": "auto", "tile_size": 1024, "tile_overlap": 256}


def upscale(model, image, mask=None, **changes):
    return DoSSRUpscale().upscale(model, image, **{**WIDGETS, **changes}, mask=mask)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cli_upscale(tmp_path: Path, bundle: Path, data: bytes, *options: object) -> np.ndarray:
    """`dossr upscale` on the same file: its PNG as uint8 (H, W, 3 or 4)."""
    source, out = tmp_path / "cli_in.png", tmp_path / "cli_out.png"
    source.write_bytes(data)
    result = run_in_process(["upscale", source, "-o", out, "--weights", bundle, "--overwrite", *options])
    assert result.code == 0, result.stderr
    return np.array(Image.open(out))


def quantised(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.numpy() * 255).round().clip(0, 255).astype(np.int16)


def test_the_node_contract():
    assert set(NODE_CLASS_MAPPINGS) == set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == {"DoSSRModelLoader", "DoSSRUpscale"}
    for cls in NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        method = getattr(cls, cls.FUNCTION)
        names = [*inputs["required"], *inputs.get("optional", {})]
        assert list(inspect.signature(method).parameters)[1:] == names  # ComfyUI passes inputs by name
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) and cls.CATEGORY == "image/upscaling"
    loader = DoSSRModelLoader.INPUT_TYPES()["required"]
    assert loader["weights"][0] == "STRING" and loader["weights"][1]["default"] == "default"
    assert loader["precision"][0] == ["auto", "fp32", "bf16", "fp16"]
    assert DoSSRModelLoader.RETURN_TYPES == ("DOSSR_MODEL",)
    required = DoSSRUpscale.INPUT_TYPES()["required"]
    assert required["dossr_model"] == ("DOSSR_MODEL",) and required["image"] == ("IMAGE",)
    assert DoSSRUpscale.INPUT_TYPES()["optional"]["mask"][0] == "MASK"
    assert DoSSRUpscale.RETURN_TYPES == ("IMAGE", "MASK")
    cli = UpscaleParams()  # the widgets' defaults are the command line's
    defaults = {name: spec[1]["default"] for name, spec in required.items() if len(spec) > 1}
    assert (defaults["scale"], defaults["steps"], defaults["order"], defaults["t1"], defaults["seed"],
            defaults["color_fix"]) == (cli.scale, cli.steps, cli.order, cli.t1, cli.seed, cli.color_fix)
    assert defaults["tiling"] == cli.tile_size == "auto" and defaults["tile_overlap"] == DEFAULT_TILE_OVERLAP
    assert (required["steps"][1]["min"], required["steps"][1]["max"]) == (1, 200)
    assert (required["order"][1]["min"], required["order"][1]["max"]) == (1, 3)
    assert (required["seed"][1]["min"], required["seed"][1]["max"]) == (0, 2**63 - 1)
    assert required["tile_size"][1]["step"] == 64 and required["tile_overlap"][1]["step"] == 8
    assert required["color_fix"][0] == ["wavelet", "adain", "none"]


def test_the_pack_folder_hands_comfyui_the_mappings(comfy):
    import importlib.util

    init = Path(__file__).parents[2] / "integrations" / "comfyui" / "__init__.py"
    spec = importlib.util.spec_from_file_location("dossr_pack", init)
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    assert pack.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert comfy.folder_paths.get_folder_paths("dossr") == [str(comfy.models / "dossr")]


def test_rgb_equals_dossr_upscale(comfy, tiny_model, tiny_bundle, tmp_path):
    data = png(smooth_image(20, 24, "node"))
    image, mask = load_image_like_comfyui(data)
    out_image, out_mask = upscale(tiny_model, image, mask, seed=7)
    expected = cli_upscale(tmp_path, tiny_bundle, data, "--steps", 2, "--seed", 7)
    assert out_image.shape == (1, 80, 96, 3) and out_mask.shape == (1, 80, 96)
    assert np.array_equal(quantised(out_image[0]), expected)  # within 1/255 promised; equal seen
    assert not out_mask.any()


def test_exact_size_and_options_equal_dossr_upscale(comfy, tiny_model, tiny_bundle, tmp_path):
    data = png(smooth_image(16, 16, "size"))
    image, _ = load_image_like_comfyui(data)
    out, _ = upscale(tiny_model, image, width=50, steps=3, order=2, t1=300, color_fix="adain", seed=3)
    expected = cli_upscale(tmp_path, tiny_bundle, data, "--width", 50, "--steps", 3, "--order", 2, "--t1", 300,
                           "--color-fix", "adain", "--seed", 3)
    assert out.shape == (1, 50, 50, 3)
    assert np.array_equal(quantised(out[0]), expected)


def test_alpha_through_the_mask_equals_dossr_upscale(comfy, tiny_model, tiny_bundle, tmp_path):
    data = rgba_png(12, 10)
    image, mask = load_image_like_comfyui(data)
    out_image, out_mask = upscale(tiny_model, image, mask)
    expected = cli_upscale(tmp_path, tiny_bundle, data, "--steps", 2).astype(np.int16)
    assert expected.shape == (48, 40, 4)
    alpha = quantised(1 - out_mask[0])
    assert np.abs(alpha - expected[..., 3]).max() <= 1
    visible = expected[..., 3] > 0  # the colour of an invisible pixel carries nothing
    assert np.abs(quantised(out_image[0])[visible] - expected[..., :3][visible]).max() <= 1


def test_a_batch_gives_each_image_its_own_seed_as_single_runs_do(comfy, tiny_model):
    first, second = (load_image_like_comfyui(png(smooth_image(16, 20, key)))[0] for key in ("a", "b"))
    together, _ = upscale(tiny_model, torch.cat([first, second, first]))
    alone = [upscale(tiny_model, im)[0][0] for im in (first, second)]
    assert np.abs(quantised(together[0]) - quantised(alone[0])).max() <= 1
    assert np.abs(quantised(together[1]) - quantised(alone[1])).max() <= 1
    assert torch.equal(together[0], together[2])  # the same pixels and seed: the same result
    noise_a = together[0] - alone[0]
    assert float(noise_a.abs().max()) < 1e-4


def test_progress_advances_per_step_and_per_tile(comfy, tiny_model):
    image, _ = load_image_like_comfyui(png(smooth_image(32, 32, "tiles")))
    upscale(tiny_model, image, steps=3, tiling="fixed", tile_size=64, tile_overlap=16)
    updates = comfy.utils.updates
    total = 3 * PROGRESS_PER_STEP
    assert updates[-1] == (total, total)
    values = [value for value, _ in updates]
    assert values == sorted(values) and len(set(values)) > 3 + 3  # steps and tiles within them
    assert {v for v in values if v % PROGRESS_PER_STEP == 0} >= {PROGRESS_PER_STEP, 2 * PROGRESS_PER_STEP, total}


def test_interrupt_stops_between_steps(comfy, tiny_model, monkeypatch):
    image, _ = load_image_like_comfyui(png(smooth_image(16, 16, "stop")))

    def hook(value, total, preview, node_id=None):
        comfy.utils.updates.append((value, total))
        if value >= 2 * PROGRESS_PER_STEP:
            comfy.mm.interrupt_current_processing(True)  # the user pressed Cancel during step 3

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    with pytest.raises(comfy.mm.InterruptProcessingException):
        upscale(tiny_model, image, steps=5)
    assert max(value for value, _ in comfy.utils.updates) == 2 * PROGRESS_PER_STEP
    assert not comfy.mm.processing_interrupted()  # consumed, as ComfyUI's own check does


def test_comfyui_freeing_memory_releases_the_model(comfy, tiny_model):
    image, _ = load_image_like_comfyui(png(smooth_image(8, 8, "free")))
    assert tiny_model.loaded
    comfy.mm.free_memory(1 << 20, torch.device("cpu"))  # room to spare: kept
    assert tiny_model.loaded and comfy.mm.freed[-1][0] == 1 << 20  # ComfyUI's own freeing still ran
    comfy.mm.free_bytes = 1 << 20
    comfy.mm.free_memory(1 << 30, torch.device("cpu"))  # short of memory: released
    assert not tiny_model.loaded
    upscale(tiny_model, image, steps=1)  # loaded again when next needed
    assert tiny_model.loaded
    comfy.mm.free_bytes = 1 << 40
    comfy.mm.unload_all_models()  # the "free model and node cache" button
    assert not tiny_model.loaded


def test_the_loader_finds_weights_in_comfyuis_model_folders(comfy, tiny_bundle, tmp_path):
    loader = DoSSRModelLoader()
    assert loader.load("tiny", "auto", False)[0].bundle == comfy.models / "dossr" / "tiny"
    (comfy.models / "upscale_models").mkdir()
    (comfy.models / "upscale_models" / "also").symlink_to(tiny_bundle, target_is_directory=True)
    assert loader.load("also", "fp32", False)[0].bundle == comfy.models / "upscale_models" / "also"
    assert loader.load(str(tiny_bundle), "auto", False)[0].bundle == tiny_bundle  # any path --weights takes
    assert comfy.mm.dtype_asked[0]["supported_dtypes"] == [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(WeightsNotFoundError, match="unknown weights 'nonesuch'"):
        loader.load("nonesuch", "auto", False)


def test_precision_auto_follows_comfyui_and_bf16_is_honoured(comfy):
    comfy.mm.unet_choice = torch.bfloat16
    model = DoSSRModelLoader().load("tiny", "auto", False)[0]
    assert model.dtype == torch.bfloat16 and model.pipeline().dtype == torch.bfloat16
    comfy.mm.unet_choice = torch.float8_e4m3fn  # ComfyUI may name a weight dtype the networks do not run in
    assert DoSSRModelLoader().load("tiny", "auto", False)[0].dtype == torch.float32
    assert DoSSRModelLoader().load("tiny", "fp16", False)[0].dtype == torch.float16


@pytest.mark.parametrize(("changes", "message"), [
    ({"steps": 0}, "steps must be in 1..200; got 0"),
    ({"t1": 4, "steps": 5}, "t1 must be in 6..1000 for 5 steps; got 4"),
    ({"tiling": "fixed", "tile_size": 100}, "tile_size must be auto, 0 (no tiling) or a multiple of 64"),
    ({"tiling": "fixed", "tile_size": 128, "tile_overlap": 128}, "tile_overlap must be a multiple of 8 pixels below"),
    ({"color_fix": "sharp"}, "color_fix must be one of wavelet, adain, none; got 'sharp'"),
    ({"tiling": "sometimes"}, "tiling must be one of auto, off, fixed; got 'sometimes'"),
    ({"seed": -1 - 2**63}, "seed must be in"),
    ({"width": 30000, "height": 30000}, ("the output would be 30000x30000 = 900.0 Mpx, over the 512.0 Mpx limit: "
                                         "use a smaller scale, width or height")),
])
def test_a_bad_widget_value_is_one_line_naming_the_widget(comfy, tiny_model, changes, message):
    image = torch.rand(1, 8, 8, 3)
    with pytest.raises(DossrError) as err:
        upscale(tiny_model, image, **changes)
    text = str(err.value)
    assert message in text and "\n" not in text and "--" not in text

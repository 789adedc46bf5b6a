"""The authors' side of benchmarks/authors_side_by_side.py: time THEIR inference path on CPU.

Run by that script with the authors' venv (their dependencies, none of ours); it imports their
modules from --authors-repo and copies none of their code. Not meant to be run by hand, but:

    /work/authors/venv/bin/python benchmarks/authors_side_by_side_driver.py \
        --authors-repo /work/authors/DoSSR --checkpoint CKPT --runs 3 --threads 2

What it does, the same as their scripts/inference.py main() with `--device cpu --steps 5
--sr_scale 4 --color_fix_type wavelet` (their defaults otherwise):

- builds ControlLDM from their configs/model/cldm_v21.yaml and loads CKPT with their
  utils.common.load_state_dict(strict=True); the non-parameter (schedule) buffers are the
  model's own computed values, not the checkpoint's placeholders;
- prepares the input as main() does (bicubic x4 with PIL, auto_resize to 512, pad to 64) and
  times their process(): array -> tensor, RRDBNet, SpacedSampler.shift_sample_3_order (both
  encoders, the text encoder, 5 UNet+ControlNet calls, VAE decoder, wavelet colour fix) -> uint8.

Stand-ins (none changes the timed compute): torchvision/transformers modules in sys.modules
(imported, unused on this path); their text encoder asks open_clip for ViT-H-14 with pretrained=
<a path on their machine>: we register ViT-H-14's exact text tower with a 1-layer vision tower
(they `del model.visual` right after building) and pretrained=None, the checkpoint fills it;
nn.init functions are no-ops while building (every parameter is then loaded). Prints one line
`RESULT_JSON {...}`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from importlib import metadata

# Text tower of open_clip's ViT-H-14 (what their FrozenOpenCLIPEmbedder builds); the vision tower
# is built and deleted by their code, so a small one stands in.
VIT_H_14_TEXT_ONLY = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}


class _Inert(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return cls


class _Anything(metaclass=_Inert):
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, x=None, *args, **kwargs):
        return x


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything


def install_stand_ins() -> None:
    for name in ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.transforms.functional_tensor", "torchvision.ops", "torchvision.ops.misc",
                 "torchvision.utils"]:
        module = _StandInModule(name)
        module.__path__ = []
        module.__version__ = "0.0.0-standin"
        sys.modules[name] = module
    transformers = types.ModuleType("transformers")
    for name in ["T5Tokenizer", "T5EncoderModel", "CLIPTokenizer", "CLIPTextModel"]:
        setattr(transformers, name, type(name, (_Anything,), {}))
    sys.modules["transformers"] = transformers


@contextlib.contextmanager
def skipped_init(torch):
    """nn.init's random fills as no-ops: every parameter is overwritten by the checkpoint anyway."""
    names = ["uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "orthogonal_"]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def bench_image(torch, size: int):
    """The same picture as dossr_cli.bench.bench_input(1, size), as HWC uint8 (what their main() reads)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, max(size // 8, 1), max(size // 8, 1), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (image[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-repo", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--color-fix", default="wavelet")
    args = parser.parse_args()

    repo = os.path.abspath(args.authors_repo)
    sys.path.insert(0, repo)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import pytorch_lightning  # noqa: F401  (before the stand-ins, as their environment needs)

    install_stand_ins()
    import open_clip
    from PIL import Image

    open_clip.factory._MODEL_CONFIGS["dossr-bench-ViT-H-14-text"] = VIT_H_14_TEXT_ONLY
    create_model_and_transforms = open_clip.create_model_and_transforms

    def text_only_vit_h_14(model_name, *a, **k):
        assert model_name == "ViT-H-14", model_name
        k["pretrained"] = None
        return create_model_and_transforms("dossr-bench-ViT-H-14-text", **k)

    open_clip.create_model_and_transforms = text_only_vit_h_14

    from ldm.xformers_state import disable_xformers
    from model.shift_sampler import SpacedSampler
    from omegaconf import OmegaConf
    from utils.common import instantiate_from_config, load_state_dict
    from utils.image import auto_resize, pad

    spec = importlib.util.spec_from_file_location("dossr_bench_authors_inference",
                                                  os.path.join(repo, "scripts", "inference.py"))
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    disable_xformers()  # what their main() does for --device cpu

    started = time.perf_counter()
    with skipped_init(torch):
        model = instantiate_from_config(OmegaConf.load(os.path.join(repo, "configs", "model", "cldm_v21.yaml")))
    own = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    stored = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if set(stored) != set(own):
        raise SystemExit(f"checkpoint keys differ from their model: {sorted(set(stored) ^ set(own))[:5]}")
    state = {key: (stored[key] if key in params else own[key]) for key in own}
    load_state_dict(model, state, strict=True)
    del state, stored, own
    model.freeze()
    model.to("cpu")
    load_seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())

    # Stage timers: wrappers around their model's methods (the sampler looks them up on the instance).
    seconds: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    model.preprocess_model.forward = timed("preprocess", model.preprocess_model.forward)
    for method, stage in [("apply_condition_encoder", "control_encoder (x2: cond and uncond)"),
                          ("get_learned_conditioning", "text_encoder (x2: prompt and negative)"),
                          ("encode_first_stage", "vae_encoder"), ("apply_model", "solver (unet+controlnet)"),
                          ("decode_first_stage", "decode")]:
        setattr(model, method, timed(stage, getattr(model, method)))
    outputs = []
    sample = SpacedSampler.shift_sample_3_order

    def recorded_sample(self, *a, **k):
        out = sample(self, *a, **k)
        outputs.append(out)
        return out

    SpacedSampler.shift_sample_3_order = recorded_sample

    # Input as their main() prepares it (before its own timer starts).
    lq = Image.fromarray(bench_image(torch, args.size))
    original_lq = np.array(lq)
    lq = lq.resize(tuple(4 * n for n in lq.size), Image.BICUBIC)
    x = pad(np.array(auto_resize(lq, 512)), scale=64)

    latencies, stage_runs = [], []
    for i in range(args.warmup + args.runs):
        seconds.clear()
        outputs.clear()
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
                contextlib.redirect_stderr(devnull):  # tqdm's bar, the schedule's print
            start = time.perf_counter()
            preds = inference.process(model, [x], [original_lq], steps=args.steps, strength=1,
                                      color_fix_type=args.color_fix, tiled=False, tile_size=512, tile_stride=256)
            elapsed = time.perf_counter() - start
        print(f"authors run {i + 1}/{args.warmup + args.runs}: {elapsed:.2f} s", file=sys.stderr, flush=True)
        if i >= args.warmup:
            latencies.append(elapsed)
            stage_runs.append(dict(seconds, other=elapsed - sum(seconds.values())))
    image = outputs[-1]
    result = {
        "latency_p50_s": statistics.median(latencies),
        "latencies_s": latencies,
        "stages": {name: statistics.fmean(run[name] for run in stage_runs) for name in stage_runs[0]},
        "output_shape": list(preds[0].shape),
        "output_float_finite": bool(torch.isfinite(image).all()),
        "output_float_min_max_mean": [float(image.min()), float(image.max()), float(image.mean())],
        "model_load_s": load_seconds,
        "n_params": n_params,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "open_clip_torch": metadata.version("open_clip_torch"),
    }
    print("RESULT_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Checkpoints in the authors' layout, rebuilt from the committed key/shape manifests.

tests/data/authors_reference/ holds what running the authors' code produced on these
checkpoints (see its README.md); the weights themselves are not committed because
`random_state_dict` regenerates them bit for bit from (seed, key, shape).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from dossr_cli.random_weights import random_state_dict

DATA = Path(__file__).parent / "data" / "authors_reference"
INPUTS = {"tiny": "lr_16x32.png", "tinyb": "lr_16x16.png"}


def layout(name: str) -> dict:
    return json.loads((DATA / f"{name}_layout.json").read_text())


def authors_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The full checkpoint dict their strict loader accepts: random parameters + schedule buffers."""
    spec = layout(name)
    state = random_state_dict([(key, tuple(shape)) for key, shape in spec["params"]], spec["seed"])
    state.update(load_file(str(DATA / f"{name}_buffers.safetensors")))
    return state


def reference_outputs(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(DATA / f"{name}_outputs.safetensors"))


def reference_input(name: str) -> torch.Tensor:
    """The LR image as their script reads it: RGB uint8 / 255, (1, 3, h, w)."""
    array = np.array(Image.open(DATA / INPUTS[name]).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]

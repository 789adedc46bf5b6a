"""Deterministic random weights, identical on every machine and torch version.

Tests rebuild checkpoints in the authors' layout from a committed list of keys and
shapes instead of committing megabytes of random numbers, so the values must be a pure
function of (seed, key, shape). torch's and numpy's samplers promise no such stability;
an integer hash (splitmix64 over element indices, in numpy's wrapping uint64
arithmetic) does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the networks import diffusers: only the functions that build them import it
    from dossr_cli.networks import DoSSRNetworks
    from dossr_cli.networks.config import ModelConfig

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform(seed: int, key: str, numel: int) -> np.ndarray:
    """`numel` float64 values uniform in [-1, 1), a function of seed and key only."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    start = np.uint64(int.from_bytes(digest[:8], "little"))
    with np.errstate(over="ignore"):
        counters = np.arange(numel, dtype=np.uint64) * _GOLDEN + start
    bits = _splitmix64(counters) >> np.uint64(11)  # 53 random bits
    return bits.astype(np.float64) / float(1 << 52) - 1.0


def random_tensor(seed: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor for parameter `key` at a scale that keeps activations sane.

    Matrices and kernels get variance 1/fan_in (uniform, so amplitude sqrt(3/fan_in));
    1-D weights are norm scales near 1; everything else (biases, embeddings' scalars)
    is small. Zero-initialised layers (zero convs, output convs) get values too, or the
    control path would contribute nothing to the outputs the tests compare. The
    preprocessor's last bias (same name in every layout) centres its image in [0, 1].
    """
    numel = math.prod(shape)
    u = uniform(seed, key, numel)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        values = u * math.sqrt(3.0 / fan_in)
    elif key.endswith("conv_last.bias"):
        values = 0.5 + 0.05 * u  # the RRDBNet's output: centred in [0, 1], so clamping keeps texture
    elif len(shape) == 1 and key.endswith("weight"):
        values = 1.0 + 0.1 * u
    else:
        values = 0.05 * u
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def random_state_dict(
    shapes: Mapping[str, tuple[int, ...]] | Iterable[tuple[str, tuple[int, ...]]], seed: int
) -> dict[str, torch.Tensor]:
    """A state dict with `random_tensor` values for every (key, shape)."""
    items = shapes.items() if isinstance(shapes, Mapping) else shapes
    return {key: random_tensor(seed, key, tuple(shape)) for key, shape in items}


# -- random models, for tests, benchmarks and trying the machinery; never a real model --

def tiny_config() -> ModelConfig:
    """The real layouts at small widths (the same as the authors'-layout test model "tiny")."""
    from dossr_cli.networks.config import ModelConfig, RRDBConfig, UNetConfig, VAEConfig

    return ModelConfig(
        unet=UNetConfig(model_channels=64, channel_mult=(1, 1, 2, 2), num_res_blocks=2, attention_levels=(0, 1, 2),
                        context_dim=64),
        vae=VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
        rrdb=RRDBConfig(num_feat=16, num_block=2, num_grow_ch=8),
    )


def random_networks(config: ModelConfig | None = None, seed: int = 0) -> DoSSRNetworks:
    """DoSSRNetworks with `random_tensor` weights everywhere (the tiny config by default)."""
    from dossr_cli.networks import DoSSRNetworks

    networks = DoSSRNetworks(config if config is not None else tiny_config())
    parts = {
        name: random_state_dict({k: tuple(v.shape) for k, v in part.items()}, seed)
        for name, part in networks.component_state_dicts().items()
    }
    # the context is a LayerNorm output: zero mean, unit variance per token
    parts["context"]["context"] = parts["context"]["context"] * math.sqrt(3.0 / 0.0025)
    networks.load_component_state_dicts(parts)
    return networks

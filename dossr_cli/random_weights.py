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
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:  # the networks import diffusers: only the functions that build them import it
    from dossr_cli.networks import DoSSRNetworks
    from dossr_cli.networks.config import ModelConfig

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
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
    values = scale_uniform(key, shape, uniform(seed, key, math.prod(shape)))  # float64 until the end
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def scale_uniform(key: str, shape: tuple[int, ...], u: ArrayT) -> ArrayT:
    """Values `u` uniform in [-1, 1) for parameter `key`, scaled by the rules of `random_tensor`."""
    if len(shape) >= 2:
        return u * math.sqrt(3.0 / math.prod(shape[1:]))
    if key.endswith("conv_last.bias"):
        return 0.5 + 0.05 * u
    if len(shape) == 1 and key.endswith("weight"):
        return 1.0 + 0.1 * u
    return 0.05 * u


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


def fast_random_networks(config: ModelConfig, seed: int = 0, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> DoSSRNetworks:
    """DoSSRNetworks built straight on `device` and filled from torch's generator, by the same scale
    rules: seconds for the full-size model where the portable filler takes a minute and twice the
    memory. For benchmarks, which need the compute and sane activations, not portable values."""
    from dossr_cli.networks import DoSSRNetworks

    with torch.device("meta"):
        networks = DoSSRNetworks(config)
    networks = networks.to_empty(device=device).to(dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for key, tensor in [*networks.named_parameters(), *networks.named_buffers()]:
            tensor.copy_(scale_uniform(key, tuple(tensor.shape), tensor.uniform_(-1.0, 1.0, generator=generator)))
        networks.context.mul_(math.sqrt(3.0 / 0.0025))
    return networks


def random_networks(config: ModelConfig | None = None, seed: int = 0) -> DoSSRNetworks:
    """DoSSRNetworks with `random_tensor` weights everywhere (the tiny config by default)."""
    from dossr_cli.networks import DoSSRNetworks

    networks = DoSSRNetworks(config if config is not None else tiny_config())
    # keyed by component too: the control encoder shares the VAE encoder's names, not its values
    parts = {
        name: {k.removeprefix(f"{name}."): v for k, v in
               random_state_dict({f"{name}.{k}": tuple(v.shape) for k, v in part.items()}, seed).items()}
        for name, part in networks.component_state_dicts().items()
    }
    # the context is a LayerNorm output: zero mean, unit variance per token
    parts["context"]["context"] = parts["context"]["context"] * math.sqrt(3.0 / 0.0025)
    networks.load_component_state_dicts(parts)
    return networks

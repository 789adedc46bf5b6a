"""The model's architecture as one frozen, typed object, saved as JSON beside the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UNetConfig:
    """Shared by the UNet and its ControlNet (the ControlNet is the UNet's encoder half)."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)  # ldm's attention_resolutions (4, 2, 1)
    context_dim: int = 1024
    head_dim: int = 64
    transformer_depth: int = 1

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)


@dataclass(frozen=True)
class VAEConfig:
    """Stable Diffusion's AutoencoderKL (factor 8 with four levels)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    scaling_factor: float = 0.18215

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class RRDBConfig:
    """The x4 RRDBNet preprocessor (Real-ESRNet / Real-ESRGAN)."""

    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32


@dataclass(frozen=True)
class TextConfig:
    """OpenCLIP's text tower; needed only to compute the prompt context once, at import."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    vocab_size: int = 49408
    context_length: int = 77


@dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    rrdb: RRDBConfig = field(default_factory=RRDBConfig)
    context_length: int = 77

    @property
    def upscale(self) -> int:
        return 4

    @property
    def pixel_multiple(self) -> int:
        """Output sizes the VAE and the UNet take without padding (64 for SD: 8 x 2**3)."""
        return self.vae.downscale * 2 ** (len(self.unet.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Read back `to_dict`'s output; unknown or missing fields raise, nothing is guessed."""
        parts = {"unet": UNetConfig, "vae": VAEConfig, "rrdb": RRDBConfig}
        _check_fields(cls, data, "model")
        kwargs: dict[str, Any] = {"context_length": int(data["context_length"])}
        for name, part in parts.items():
            values = data[name]
            _check_fields(part, values, name)
            kwargs[name] = part(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        return cls(**kwargs)


def _check_fields(cls: type, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"model config: {where} must be an object")  # noqa: TRY004 - bad file content, not a bug
    expected = {f.name for f in dataclasses.fields(cls)}
    if set(data) != expected:
        missing, unknown = expected - set(data), set(data) - expected
        raise ValueError(f"model config: {where} has missing fields {sorted(missing)} / unknown {sorted(unknown)}")

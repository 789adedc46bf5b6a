"""The UNet, the LAControlNet and the two VAE encoders, on diffusers' modules.

DoSSR's ControlNet (DiffBIR's "LAControlNet") feeds concat(z, c_latent) to its first
conv and has no hint-embedding network. A conv over a channel concat is the sum of two
convs over the halves, so we keep diffusers' ControlNetModel: its conv_in takes z (with
the bias), and its `controlnet_cond_embedding`, which diffusers adds right after conv_in,
becomes a bias-free conv over c_latent. That is exact, not an approximation.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.models.autoencoders.vae import Encoder
from torch import nn

from dossr_cli.networks.config import UNetConfig, VAEConfig


def _unet_kwargs(config: UNetConfig) -> dict:
    levels = range(len(config.channel_mult))
    attention = set(config.attention_levels)
    channels = config.block_channels
    return {
        "in_channels": 4,
        "down_block_types": tuple("CrossAttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
        "block_out_channels": channels,
        "layers_per_block": config.num_res_blocks,
        "cross_attention_dim": config.context_dim,
        # diffusers' SD configs name the number of heads "attention_head_dim"
        "attention_head_dim": tuple(max(c // config.head_dim, 1) for c in channels),
        "use_linear_projection": True,
        "transformer_layers_per_block": config.transformer_depth,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def build_unet(config: UNetConfig) -> UNet2DConditionModel:
    """Stable Diffusion 2.1-base's UNet (eps prediction) at the given widths."""
    kwargs = _unet_kwargs(config)
    levels = range(len(config.channel_mult))
    attention = set(config.attention_levels)
    up_types = tuple("CrossAttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels))
    return UNet2DConditionModel(out_channels=4, up_block_types=up_types, **kwargs)


def build_controlnet(config: UNetConfig, latent_channels: int = 4) -> ControlNetModel:
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(16,), **_unet_kwargs(config))
    controlnet.controlnet_cond_embedding = nn.Conv2d(
        latent_channels, config.block_channels[0], 3, padding=1, bias=False
    )
    return controlnet


def _vae_kwargs(config: VAEConfig) -> dict:
    return {
        "down_block_types": ("DownEncoderBlock2D",) * len(config.ch_mult),
        "block_out_channels": config.block_channels,
        "layers_per_block": config.num_res_blocks,
        "norm_num_groups": 32,
    }


def build_vae(config: VAEConfig) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        up_block_types=("UpDecoderBlock2D",) * len(config.ch_mult),
        latent_channels=config.latent_channels,
        scaling_factor=config.scaling_factor,
        **_vae_kwargs(config),
    )


class ControlEncoder(nn.Module):
    """The second VAE encoder with its own weights: image in [-1, 1] -> control latent (mode).

    Named like AutoencoderKL's encoder half, so the same converted keys load into both.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.scaling_factor = config.scaling_factor
        self.encoder = Encoder(in_channels=3, out_channels=config.latent_channels, double_z=True,
                               act_fn="silu", **_vae_kwargs(config))
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = self.quant_conv(self.encoder(image)).chunk(2, dim=1)[0]
        return mean * self.scaling_factor

"""The networks of DoSSR, one container that the pipeline runs and the bundle stores."""

from __future__ import annotations

import torch
from torch import nn

from dossr_cli.networks.config import ModelConfig, RRDBConfig, TextConfig, UNetConfig, VAEConfig
from dossr_cli.networks.diffusion import ControlEncoder, build_controlnet, build_unet, build_vae
from dossr_cli.networks.rrdbnet import RRDBNet

# the components a weight bundle stores, one safetensors file each
COMPONENTS = ("preprocessor", "control_encoder", "vae", "controlnet", "unet", "context")


class DoSSRNetworks(nn.Module):
    """Every network of the model, plus the constant prompt context (1, 77, context_dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.preprocessor = RRDBNet(config.rrdb)
        self.control_encoder = ControlEncoder(config.vae)
        self.vae = build_vae(config.vae)
        self.controlnet = build_controlnet(config.unet, config.vae.latent_channels)
        self.unet = build_unet(config.unet)
        self.register_buffer("context", torch.zeros(1, config.context_length, config.unet.context_dim))

    def component_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        parts = {name: getattr(self, name).state_dict() for name in COMPONENTS if name != "context"}
        parts["context"] = {"context": self.context}
        return parts

    def load_component_state_dicts(self, parts: dict[str, dict[str, torch.Tensor]], assign: bool = False) -> None:
        """Load every component strictly: a missing or unexpected key raises.

        `assign=True` adopts the given tensors (for networks built on the meta device).
        """
        if set(parts) != set(COMPONENTS):
            raise ValueError(f"weights must have components {COMPONENTS}, got {sorted(parts)}")
        for name in COMPONENTS:
            if name == "context":
                context = parts["context"]["context"]
                if context.shape != self.context.shape:
                    raise ValueError(f"context has shape {tuple(context.shape)}, expected {tuple(self.context.shape)}")
                if assign:
                    self.context = context.clone()
                else:
                    self.context.copy_(context)
            else:
                getattr(self, name).load_state_dict(parts[name], strict=True, assign=assign)
        if assign:
            stray = [n for n, t in [*self.named_parameters(), *self.named_buffers()] if t.is_meta]
            if stray:
                raise ValueError(f"weights left uninitialised: {', '.join(stray[:5])}")


__all__ = [
    "COMPONENTS", "DoSSRNetworks", "ModelConfig", "RRDBConfig", "TextConfig", "UNetConfig", "VAEConfig",
]

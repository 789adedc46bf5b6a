"""Conversion of the authors' single-file checkpoint (ldm/ControlLDM layout) to our networks.

Dict to dict: diffusers' own converters for the ldm-layout UNet, ControlNet and VAE,
prefix tables of our own for the rest, one canonicalisation step (wrapper and
`module.` prefix). The architecture is read from tensor shapes; a key that no table
maps, or a shape that does not fit, raises `CheckpointLayoutError`: nothing is guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from dossr_cli.errors import WeightsError
from dossr_cli.networks import DoSSRNetworks
from dossr_cli.networks.config import ModelConfig, RRDBConfig, TextConfig, UNetConfig, VAEConfig
from dossr_cli.networks.text import OpenCLIPTextTower, prompt_context

UNET = "model.diffusion_model."
CONTROLNET = "control_model."
VAE = "first_stage_model."
CONTROL_ENCODER = "cond_encoder."
TEXT = "cond_stage_model.model."
PREPROCESSOR = "preprocess_model."
PREFIXES = (UNET, CONTROLNET, VAE, CONTROL_ENCODER, TEXT, PREPROCESSOR)
# LatentDiffusion's schedule buffers: recomputable, so read by nobody ("lambdas" holds eta)
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lambdas", "one_minus_lambdas", "logvar", "sqrt_lambdas", "sqrt_one_minus_lambdas",
})
# parts of the OpenCLIP model that the penultimate-layer context never reads
TEXT_UNUSED = ("text_projection", "logit_scale")
HEAD_DIM = 64  # SD 2.1's and OpenCLIP ViT-H's attention head width: not visible in any shape


class CheckpointLayoutError(WeightsError, ValueError):
    """The file is not a DoSSR checkpoint in the authors' layout (or is incomplete)."""


def canonical_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Unwrap a Lightning {"state_dict": ...} file and strip a `module.` prefix."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointLayoutError("the checkpoint holds no state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointLayoutError("the checkpoint's state dict holds something other than named tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _split(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix in PREFIXES}
    unknown = []
    for key, value in state_dict.items():
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            parts[prefix][key[len(prefix):]] = value
        elif key not in SCHEDULE_BUFFERS:
            unknown.append(key)
    if unknown:
        raise CheckpointLayoutError(f"unknown keys, not a DoSSR checkpoint: {', '.join(sorted(unknown)[:5])}")
    missing = [p.rstrip(".") for p, v in parts.items() if not v]
    if missing:
        raise CheckpointLayoutError(f"no weights for {', '.join(missing)}: not a complete DoSSR checkpoint")
    return parts


def _count(keys: set[str], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


def _shape(part: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Size:
    if key not in part:
        raise CheckpointLayoutError(f"{where}: missing {key}")
    return part[key].shape


def infer_unet_config(unet: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Widths, levels, res blocks, attention and context from an ldm UNet's shapes."""
    keys = set(unet)
    model_channels = _shape(unet, "time_embed.0.weight", "unet")[1]
    levels = _count(keys, r"input_blocks\.(\d+)\.0\.op\.weight") + 1
    blocks = _count(keys, r"input_blocks\.(\d+)\.")
    num_res_blocks, remainder = divmod(blocks - 1 - (levels - 1), levels)
    if remainder or num_res_blocks < 1:
        raise CheckpointLayoutError(f"unet: {blocks} input blocks do not make {levels} equal levels")
    channel_mult, attention_levels = [], []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        out = _shape(unet, f"input_blocks.{first}.0.out_layers.3.weight", "unet")[0]
        if out % model_channels:
            raise CheckpointLayoutError(f"unet: level {level} width {out} is not a multiple of {model_channels}")
        channel_mult.append(out // model_channels)
        if f"input_blocks.{first}.1.proj_in.weight" in unet:
            attention_levels.append(level)
    context_dim = _shape(unet, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "unet")[1]
    depth = _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    return UNetConfig(model_channels, tuple(channel_mult), num_res_blocks, tuple(attention_levels),
                      context_dim, HEAD_DIM, depth)


def infer_vae_config(vae: Mapping[str, torch.Tensor]) -> VAEConfig:
    keys = set(vae)
    ch = _shape(vae, "encoder.conv_in.weight", "vae")[0]
    levels = _count(keys, r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight")
    ch_mult = tuple(_shape(vae, f"encoder.down.{i}.block.0.conv2.weight", "vae")[0] // ch for i in range(levels))
    num_res_blocks = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight")
    latent = _shape(vae, "post_quant_conv.weight", "vae")[0]
    return VAEConfig(ch, ch_mult, num_res_blocks, latent)


def infer_rrdb_config(rrdb: Mapping[str, torch.Tensor]) -> RRDBConfig:
    num_feat = _shape(rrdb, "conv_first.weight", "preprocessor")[0]
    grow = _shape(rrdb, "body.0.rdb1.conv1.weight", "preprocessor")[0]
    blocks = _count(set(rrdb), r"body\.(\d+)\.rdb1\.conv1\.weight")
    return RRDBConfig(num_feat, blocks, grow)


def infer_text_config(text: Mapping[str, torch.Tensor]) -> TextConfig:
    vocab, width = _shape(text, "token_embedding.weight", "text")
    if width % HEAD_DIM:
        raise CheckpointLayoutError(f"text: width {width} is not a multiple of the head width {HEAD_DIM}")
    layers = _count(set(text), r"transformer\.resblocks\.(\d+)\.ln_1\.weight")
    context = _shape(text, "positional_embedding", "text")[0]
    return TextConfig(width, layers, width // HEAD_DIM, vocab, context)


def _load_exact(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], where: str,
                source: Mapping[str, torch.Tensor] | None = None) -> None:
    """Load strictly, and prove the conversion dropped nothing: as many numbers in as out."""
    expected = module.state_dict()
    if source is not None and sum(v.numel() for v in source.values()) != sum(v.numel() for v in weights.values()):
        raise CheckpointLayoutError(f"{where}: some weights of the checkpoint fit no known layer")
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointLayoutError(f"{where}: missing {missing[:3]} unexpected {unexpected[:3]}")
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise CheckpointLayoutError(f"{where}: {key} has shape {tuple(value.shape)}, "
                                        f"expected {tuple(expected[key].shape)}")
    module.load_state_dict(dict(weights), strict=True, assign=True)


def _convert_controlnet(control: dict[str, torch.Tensor], config: dict, latent: int) -> dict[str, torch.Tensor]:
    converted = convert_controlnet_checkpoint(control, config)
    first = converted.pop("conv_in.weight")  # over concat(z, c_latent): split into its two halves
    if first.shape[1] != 2 * latent:
        raise CheckpointLayoutError(f"controlnet: first conv takes {first.shape[1]} channels, "
                                    f"expected {2 * latent} (z and the control latent)")
    converted["conv_in.weight"] = first[:, :latent].contiguous()
    converted["controlnet_cond_embedding.weight"] = first[:, latent:].contiguous()
    # diffusers' table names the hint network's layers; LAControlNet has none
    return {k: v for k, v in converted.items() if v is not None}


def networks_from_authors_state_dict(state_dict: Mapping[str, torch.Tensor]) -> DoSSRNetworks:
    """Build our networks (and the prompt context) from the authors' checkpoint dict."""
    parts = _split(canonical_state_dict(state_dict))
    unet_config = infer_unet_config(parts[UNET])
    vae_config = infer_vae_config(parts[VAE])
    text_config = infer_text_config(parts[TEXT])
    if text_config.width != unet_config.context_dim:
        raise CheckpointLayoutError(f"text width {text_config.width} differs from the UNet's context "
                                    f"width {unet_config.context_dim}")
    config = ModelConfig(unet_config, vae_config, infer_rrdb_config(parts[PREPROCESSOR]),
                         text_config.context_length)
    with torch.device("meta"):  # no throwaway random init: the converted tensors are adopted as they are
        networks = DoSSRNetworks(config)
    float32 = {p: {k: v.float() for k, v in part.items()} for p, part in parts.items()}

    _load_exact(networks.unet, convert_ldm_unet_checkpoint(
        {UNET + k: v for k, v in float32[UNET].items()}, dict(networks.unet.config)), "unet", parts[UNET])
    _load_exact(networks.controlnet, _convert_controlnet(
        {CONTROLNET + k: v for k, v in float32[CONTROLNET].items()}, dict(networks.controlnet.config),
        vae_config.latent_channels), "controlnet", parts[CONTROLNET])
    vae_diffusers_config = dict(networks.vae.config)
    _load_exact(networks.vae, convert_ldm_vae_checkpoint(
        {VAE + k: v for k, v in float32[VAE].items()}, vae_diffusers_config), "vae", parts[VAE])
    control_encoder = convert_ldm_vae_checkpoint(
        {VAE + k: v for k, v in float32[CONTROL_ENCODER].items()}, vae_diffusers_config)
    _load_exact(networks.control_encoder, control_encoder, "control encoder", parts[CONTROL_ENCODER])
    _load_exact(networks.preprocessor, float32[PREPROCESSOR], "preprocessor", parts[PREPROCESSOR])

    with torch.device("meta"):
        tower = OpenCLIPTextTower(text_config)
    text = {k: v for k, v in float32[TEXT].items() if k not in TEXT_UNUSED}
    _load_exact(tower, text, "text")
    networks.context = prompt_context(tower)
    stray = [n for n, t in [*networks.named_parameters(), *networks.named_buffers()] if t.is_meta]
    if stray:
        raise CheckpointLayoutError(f"weights left uninitialised: {', '.join(stray[:5])}")
    return networks

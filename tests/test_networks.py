import copy

import pytest
import torch
from torch import nn

from dossr_cli.networks import DoSSRNetworks
from dossr_cli.networks.config import ModelConfig
from dossr_cli.random_weights import random_networks, tiny_config


@pytest.fixture(scope="module")
def nets() -> DoSSRNetworks:
    return random_networks(seed=3).eval()


def inputs(channels=4, height=8, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, height, width, generator=g), torch.randn(2, channels, height, width, generator=g)


class _Zero(nn.Module):
    def forward(self, x):
        return 0


@torch.no_grad()
def test_split_first_conv_equals_the_authors_concat_conv(nets):
    """LAControlNet's conv over concat(z, c) == our conv_in(z) + bias-free conv(c).

    In float64: the two sum the first conv's terms in different orders, and in float32 that alone
    differs by up to 1.4e-5 on outputs of scale 14 (oneDNN's order changes with the thread count).
    In float64 it is 3e-14; the concat in the other order is off by 8 or more, a lost bias by 0.06.
    """
    controlnet = copy.deepcopy(nets.controlnet).double()
    reference = copy.deepcopy(controlnet)
    concat = nn.Conv2d(8, controlnet.conv_in.out_channels, 3, padding=1, dtype=torch.float64)
    concat.weight.copy_(torch.cat([controlnet.conv_in.weight, controlnet.controlnet_cond_embedding.weight], dim=1))
    concat.bias.copy_(controlnet.conv_in.bias)
    reference.conv_in = concat
    reference.controlnet_cond_embedding = _Zero()
    z, c = (x.double() for x in inputs())
    context = nets.context.double().expand(2, -1, -1)
    t = torch.tensor(399)
    down, mid = controlnet(z, t, encoder_hidden_states=context, controlnet_cond=c, return_dict=False)
    ref_down, ref_mid = reference(torch.cat([z, c], 1), t, encoder_hidden_states=context, controlnet_cond=c,
                                  return_dict=False)
    assert controlnet.controlnet_cond_embedding.bias is None
    for ours, theirs in zip([*down, mid], [*ref_down, ref_mid]):
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)


@torch.no_grad()
def test_thirteen_residuals_reach_the_unets_skip_connections(nets):
    z, c = inputs()
    context = nets.context.expand(2, -1, -1)
    t = torch.tensor(200)
    down, mid = nets.controlnet(z, t, encoder_hidden_states=context, controlnet_cond=c, return_dict=False)
    assert len(down) + 1 == 13

    skips = []
    hooks = [nets.unet.conv_in.register_forward_hook(lambda m, i, o: skips.append(o.shape))]
    for block in nets.unet.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: skips.extend(s.shape for s in o[1])))
    hooks.append(nets.unet.mid_block.register_forward_hook(lambda m, i, o: skips.append(o.shape)))
    base = nets.unet(z, t, encoder_hidden_states=context, return_dict=False)[0]
    for hook in hooks:
        hook.remove()
    assert [r.shape for r in [*down, mid]] == skips  # each residual has the shape of the place it is added

    with_control = nets.unet(z, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]
    assert not torch.allclose(with_control, base)
    for k in range(13):  # every one of them changes the prediction
        residuals = [r.clone() for r in [*down, mid]]
        residuals[k].zero_()
        out = nets.unet(z, t, encoder_hidden_states=context, down_block_additional_residuals=residuals[:-1],
                        mid_block_additional_residual=residuals[-1], return_dict=False)[0]
        assert not torch.allclose(out, with_control), k


def test_full_size_config_matches_the_published_parameter_count():
    """1363.6 M parameters without the text tower; with OpenCLIP ViT-H's text tower (354.0 M) the paper's 1716.6 M."""
    with torch.device("meta"):
        nets = DoSSRNetworks(ModelConfig())
    count = sum(p.numel() for p in nets.parameters())
    assert abs(count / 1e6 - 1363.6) < 0.1
    assert len(nets.controlnet.controlnet_down_blocks) == 12


def test_model_config_round_trips_through_its_dict():
    config = tiny_config()
    assert ModelConfig.from_dict(config.to_dict()) == config
    broken = config.to_dict()
    broken["unet"]["unknown"] = 1
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict(broken)

"""The fast path keeps the model's output: half precision near fp32, the overflow guard, one encoder
pass for identical encoders, SDPA attention, no host syncs in the solver's loop, compiled = eager,
and FLOPs that match the full-size model's known counts."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import smooth_image, to_tensor
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.utils._python_dispatch import TorchDispatchMode

from dossr_cli.bench import network_flops
from dossr_cli.geometry import latent_tile_plan
from dossr_cli.networks.config import ModelConfig
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks
from dossr_cli.schedule import coefficient_table
from dossr_cli.solver import dos_sde_sample, eps_to_data_prediction

# Half precision against fp32, same seed, tiny model, 5 steps, in [0, 1] units. Measured on this
# model: bf16 mean 0.0026 / max 0.024, fp16 mean 0.0003 / max 0.003; the bounds allow about 3x.
TOLERANCE = {"bf16": (0.008, 0.075), "fp16": (0.001, 0.01)}


@pytest.fixture(scope="module")
def networks():
    return random_networks(seed=0).eval()


@pytest.fixture(scope="module")
def images():
    return torch.cat([to_tensor(smooth_image(16, 24, "a")), to_tensor(smooth_image(16, 24, "b"))])


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_is_within_the_stated_tolerance_of_fp32(networks, images, dtype):
    reference = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32").upscale_tensor(images, seed=5)
    half = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype=dtype).upscale_tensor(images, seed=5)
    difference = (half - reference).abs()
    mean_bound, max_bound = TOLERANCE[dtype]
    assert difference.mean() <= mean_bound and difference.max() <= max_bound, \
        (float(difference.mean()), float(difference.max()))
    assert difference.max() > 0  # it really ran in half precision


def test_a_stage_that_overflows_in_fp16_runs_again_in_fp32(networks, images):
    """The VAE decoder's first conv scaled up: its activations pass fp16's 65504 (the weights do not)."""
    nets = copy.deepcopy(networks)
    nets.vae.decoder.conv_in.weight.data *= 1e4
    pipe = DoSSRPipeline(nets, device="cpu", dtype="fp16")
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    with torch.no_grad():
        assert not torch.isfinite(pipe.decode(latent.half(), latent_tile_plan(4, 4, None))).all()  # the premise
    messages: list[str] = []
    out = pipe.upscale_tensor(images, seed=5, on_retry=messages.append)
    assert torch.isfinite(out).all() and out.std() > 0.01  # not a black (or NaN) image
    assert messages == ["VAE decoder: fp16 overflowed (inf or NaN); ran it again in fp32, as it will from now on"]
    assert pipe.networks.vae.decoder.conv_in.weight.dtype == torch.float16 and pipe.dtype == torch.float16
    reference = DoSSRPipeline(copy.deepcopy(nets), device="cpu", dtype="fp32").upscale_tensor(images, seed=5)
    assert (out - reference).abs().mean() <= TOLERANCE["fp16"][0]


def test_identical_encoders_take_one_pass_with_the_same_result(networks, images):
    nets = copy.deepcopy(networks)
    nets.control_encoder.encoder.load_state_dict(nets.vae.encoder.state_dict())
    nets.control_encoder.quant_conv.load_state_dict(nets.vae.quant_conv.state_dict())
    pipe = DoSSRPipeline(nets, device="cpu", dtype="fp32")
    assert pipe.shared_encoder and not DoSSRPipeline(copy.deepcopy(networks), device="cpu").shared_encoder
    calls = []
    hook = nets.control_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        one_pass = pipe.upscale_tensor(images, seed=5)
        assert calls == []
        pipe.shared_encoder = False
        two_passes = pipe.upscale_tensor(images, seed=5)
        assert len(calls) == 1
    finally:
        hook.remove()
    assert torch.equal(one_pass, two_passes)


def test_every_attention_runs_on_pytorch_sdpa(networks):
    for model in (networks.unet, networks.controlnet, networks.vae):
        processors = model.attn_processors
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values()), type(model)


class HostSyncs(TorchDispatchMode):
    """Records the operations that make the host wait for the device or copy host data onto it."""

    SYNCING = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.lift_fresh")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name.startswith(self.SYNCING):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tile_size", [None, 64])
def test_the_solver_loop_never_waits_for_the_device(tiny_pipeline, tile_size):
    """No .item(), no tensor made from host numbers, between the first and the last network call."""
    pipe = tiny_pipeline
    c_latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    plan = latent_tile_plan(16, 16, tile_size, 32)
    assert len(plan.tiles) == (1 if tile_size is None else 9)
    table = coefficient_table(3, 500)
    noise = [torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    predict_eps = pipe.eps_predictor(c_latent, plan, timesteps=table.timesteps)
    with torch.inference_mode(), HostSyncs() as syncs:
        dos_sde_sample(eps_to_data_prediction(predict_eps, table), c_latent, table, noise, order=3)
    assert syncs.seen == []


def test_a_compiled_pipeline_gives_the_eager_output(networks, images):
    """The compile wiring, block by block, through dynamo (the eager backend: no C++ build in a unit test)."""
    eager = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32")
    compiled = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32").compile(backend="eager")
    torch._dynamo.reset()
    try:
        expected = eager.upscale_tensor(images[:1], seed=5, steps=2)
        torch.testing.assert_close(compiled.upscale_tensor(images[:1], seed=5, steps=2), expected, rtol=0, atol=1e-6)
    finally:
        torch._dynamo.reset()


def test_channels_last_networks_give_the_same_output(networks, images):
    """What `memory_format="channels-last"` does (on any device), checked on the CPU: NHWC weights and
    inputs change no result beyond float rounding (measured max 3.6e-6 here; the bound allows ~30x)."""
    contiguous = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32", memory_format="contiguous")
    nhwc = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32", memory_format="channels-last")
    assert nhwc.networks.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    hook = nhwc.networks.unet.conv_in.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        result = nhwc.upscale_tensor(images, seed=5, steps=2)
    finally:
        hook.remove()
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in seen)
    torch.testing.assert_close(result, contiguous.upscale_tensor(images, seed=5, steps=2), rtol=0, atol=1e-4)


def test_flops_of_the_full_size_model_are_the_known_counts():
    """Issue 6's counts for 128 -> 512 (TFLOP): RRDBNet 0.59, VAE encoder 1.12 (x2), UNet 0.80 +
    ControlNet 0.28 per step (x5), decoder 2.52; about 10.8 in all."""
    flops = {name: value / 1e12 for name, value in network_flops(ModelConfig(), 1, 128, 128, 5).items()}
    expected = {"preprocess": 0.59, "vae_encoder": 1.12, "control_encoder": 1.12, "solver": 5 * 1.08, "decode": 2.52}
    for name, value in expected.items():
        assert flops[name] == pytest.approx(value, rel=0.01), name
    assert sum(flops.values()) == pytest.approx(10.8, rel=0.015)
    shared = network_flops(ModelConfig(), 2, 128, 128, 5, shared_encoder=True)
    assert shared["control_encoder"] == 0 and shared["solver"] == pytest.approx(2 * flops["solver"] * 1e12)


"""Compiled blocks: one compile per shape and no silent fall-back to eager; CUDA-graph generations that
never free what the pipeline still uses (checked on the CPU under torch's own generation counters, see
cudagraph_emulation.py); the layout switch; and the compile cache's folder.

dynamo runs with cheap backends here (a counter, eager): what is tested is dynamo's caching and the
pipeline's structure, not inductor's code (tests/cli/test_compile_option.py runs inductor once).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from conftest import smooth_image, to_tensor
from cudagraph_emulation import OVERWRITTEN, CudaGraphOwnership
from torch._inductor import cudagraph_trees

from dossr_cli.compiling import (
    CACHE_ENV,
    SHAPES_PER_BLOCK,
    compile_cache_dir,
    compile_networks,
    compile_regions,
    recompile_limits,
    step_boundaries,
    use_disk_cache,
)
from dossr_cli.devices import channels_last_default
from dossr_cli.geometry import latent_tile_plan
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks
from dossr_cli.schedule import coefficient_table
from dossr_cli.solver import dos_sde_sample, eps_to_data_prediction


@pytest.fixture(scope="module")
def networks():
    return random_networks(seed=0).eval()


@pytest.fixture
def fresh_dynamo(monkeypatch):
    """An empty dynamo cache, a hard error where a block would fall back to eager, torch's step counter
    as it was before the test (it is process-wide)."""
    torch._dynamo.reset()
    monkeypatch.setattr(cudagraph_trees.MarkStepBox, "mark_step_counter", 0)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


class CountingBackend:
    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list):
        self.compiles += 1
        return gm.forward


def test_every_block_class_may_hold_its_instances_times_the_shapes(networks):
    regions = compile_regions(networks)
    limits = recompile_limits(regions)
    decoders = [b for b in regions if type(b).__name__ == "UpDecoderBlock2D"]
    assert len(decoders) == 4  # the tiny decoder; each up block sees its own resolution
    assert limits[type(decoders[0])] == 4 * SHAPES_PER_BLOCK > 8  # torch's default, which 1598c4e kept
    assert limits[type(networks.preprocessor.body[0])] == len(networks.preprocessor.body) * SHAPES_PER_BLOCK


def test_batch_1_batch_2_and_a_second_tile_shape_each_compile_once(networks, fresh_dynamo):
    """On 1598c4e the decoder's four UpDecoderBlock2D shared dynamo's 8 entries: batch 1 and batch 2
    filled them, and the third shape fell back to eager (here: FailOnRecompileLimitHit)."""
    pipe = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32")
    counter = CountingBackend()
    pipe.compile(backend=counter)
    decoder = pipe.networks.vae.decoder
    blocks = len(decoder.up_blocks) + 1  # and the mid block
    shapes = [(1, 4, 8, 8), (2, 4, 8, 8), (1, 4, 8, 12)]
    with torch.inference_mode():
        for shape in shapes:
            before = counter.compiles
            pipe.decode(torch.zeros(shape), latent_tile_plan(*shape[-2:], None))
            assert counter.compiles - before == blocks, shape
        for shape in shapes:  # every entry is still there: nothing compiles again
            pipe.decode(torch.zeros(shape), latent_tile_plan(*shape[-2:], None))
    assert counter.compiles == len(shapes) * blocks


def test_without_step_boundaries_the_first_cuda_graph_call_reads_freed_outputs(networks, fresh_dynamo):
    """The emulation reproduces the issue's error for the structure of 1598c4e: one generation per block."""
    pipe = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32")
    ownership = CudaGraphOwnership()
    pipe.compile(backend=ownership.backend, cuda_graphs=False)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=OVERWRITTEN):
        pipe.networks.preprocessor(torch.rand(1, 3, 8, 8))


@pytest.fixture(scope="module")
def under_cuda_graph_rules(networks):
    """The pipeline compiled with a generation per network call, under the emulated ownership rule;
    one dynamo cache for the tests below (four 16x16 images and 8 solver tiles: both (4, 4, 8, 8))."""
    saved = cudagraph_trees.MarkStepBox.mark_step_counter
    cudagraph_trees.MarkStepBox.mark_step_counter = 0
    torch._dynamo.reset()
    ownership = CudaGraphOwnership()
    pipe = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32")
    pipe.compile(backend=ownership.backend, cuda_graphs=True)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield pipe, ownership, DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32")
    torch._dynamo.reset()
    cudagraph_trees.MarkStepBox.mark_step_counter = saved


def test_a_cuda_graph_generation_per_network_call_keeps_the_eager_output(under_cuda_graph_rules):
    """Order 3 keeps earlier predictions across steps, the UNet reads its skip connections and the
    ControlNet's residuals, the colour fix reads the preprocessor's output at the very end: all of it
    still right when every output of a past generation is NaN."""
    pipe, ownership, eager = under_cuda_graph_rules
    images = torch.cat([to_tensor(smooth_image(16, 16, key)) for key in "abcd"])
    expected = eager.upscale_tensor(images, seed=5, steps=3, order=3)
    before = ownership.generations
    result = pipe.upscale_tensor(images, seed=5, steps=3, order=3)
    assert ownership.freed  # past generations' outputs really were poisoned
    # one generation per network call: preprocessor, 2 encoders, 3 x (ControlNet, UNet), decoder
    assert ownership.generations - before == 1 + 2 + 3 * 2 + 1
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def test_tiles_blended_into_the_accumulator_survive_later_generations(under_cuda_graph_rules):
    """The solver on 8 tiles, two network calls in its step: the first group's predictions, blended into
    the accumulator, outlive the second group's generation."""
    pipe, ownership, eager = under_cuda_graph_rules
    generator = torch.Generator().manual_seed(1)
    c_latent = torch.randn(1, 4, 8, 36, generator=generator)
    table = coefficient_table(1, 500)
    noise = [torch.randn(1, 4, 8, 36, generator=generator) for _ in range(2)]
    plan = latent_tile_plan(8, 36, 64, 32)
    assert len(plan.tiles) == 8

    def sample(p: DoSSRPipeline) -> torch.Tensor:
        with torch.inference_mode():
            predict = eps_to_data_prediction(p.eps_predictor(c_latent, plan, timesteps=table.timesteps), table)
            return dos_sde_sample(predict, c_latent, table, noise, order=1)

    expected = sample(eager)
    before, freed = ownership.generations, len(ownership.freed)
    torch.testing.assert_close(sample(pipe), expected, rtol=0, atol=1e-6)
    # calls x (ControlNet, UNet), tiles going 4 to a call
    assert ownership.generations - before == 2 * 2 and len(ownership.freed) > freed


def test_step_boundaries_are_the_networks_the_pipeline_calls(networks):
    nets = networks
    assert step_boundaries(nets) == [nets.preprocessor, nets.vae.encoder, nets.control_encoder.encoder,
                                     nets.controlnet, nets.unet, nets.vae.decoder]
    marks: list[int] = []
    handles = compile_networks(copy.deepcopy(nets), backend="eager", cuda_graphs=True,
                               mark_step=lambda: marks.append(1))
    assert len(handles) == 6
    assert compile_networks(copy.deepcopy(nets), backend="eager") == []  # no CUDA graphs: no boundaries
    torch._dynamo.reset()


def test_contiguous_is_the_default_layout_until_a_device_has_measured_both():
    for device in ("cpu", "cuda", "cuda:1", "mps"):  # CUDA's group_norm is NCHW-only; the CPU's NHWC load costs a copy
        assert channels_last_default(torch.device(device)) is False


def test_the_memory_format_keyword_lays_out_the_weights_and_is_checked(networks):
    nets = copy.deepcopy(networks)
    pipe = DoSSRPipeline(nets, device="cpu", dtype="fp32", memory_format="contiguous")
    assert pipe.memory_format == "contiguous" and nets.unet.conv_in.weight.is_contiguous()
    assert DoSSRPipeline(nets, device="cpu", memory_format="channels-last").memory_format == "channels-last"
    assert nets.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nets.unet.conv_in.weight.is_contiguous()
    assert DoSSRPipeline(nets, device="cpu").memory_format == "contiguous"  # auto
    assert nets.unet.conv_in.weight.is_contiguous()
    with pytest.raises(ValueError, match="memory_format must be one of auto, contiguous, channels-last; got 'nhwc'"):
        DoSSRPipeline(nets, device="cpu", memory_format="nhwc")


def test_the_compile_cache_is_dossrs_unless_the_user_named_one(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert use_disk_cache() == Path(os.environ["DOSSR_CACHE_DIR"]) / "torch-compile" == compile_cache_dir()
    assert compile_cache_dir().is_dir() and os.environ[CACHE_ENV] == str(compile_cache_dir())
    mine = tmp_path / "mine"
    monkeypatch.setenv(CACHE_ENV, str(mine))
    assert use_disk_cache() == mine

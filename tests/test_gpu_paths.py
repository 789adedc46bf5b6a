"""The CUDA-path choices of the solver stage, forced on the CPU (or the meta device): nothing copied
from the host inside the solver's loop, one batch shape per tiled run, an out-of-memory retry that
frees the failed attempt first, tiles chosen by the image rather than the card, an fp16 overflow
remembered, and no device syncs in a normal run."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from conftest import smooth_image, to_tensor
from torch.utils._python_dispatch import TorchDispatchMode

from dossr_cli import devices
from dossr_cli.geometry import latent_tile_plan
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks
from dossr_cli.schedule import coefficient_table
from dossr_cli.solver import dos_sde_sample, eps_to_data_prediction
from dossr_cli.tiling import TiledPlan, run_tiled, tile_groups
from dossr_cli.timing import StageTimer


@pytest.fixture(scope="module")
def networks():
    return random_networks(seed=0).eval()


class HostToDevice(TorchDispatchMode):
    """Records every copy whose source is on the CPU and whose result is not: on a GPU, a host
    copy the device must wait for, and a sync when the source is pageable memory."""

    COPIES = ("aten._to_copy", "aten.copy_", "aten.to")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        if name in self.COPIES:
            sources = [a for a in args if isinstance(a, torch.Tensor) and a.device.type == "cpu"]
            results = out if isinstance(out, (tuple, list)) else [out]
            if sources and any(isinstance(r, torch.Tensor) and r.device.type != "cpu" for r in results):
                self.seen.append((name, tuple(sources[0].shape)))
        return out


def test_nothing_is_copied_from_the_host_inside_the_solver_loop(networks):
    """The pipeline on the meta device, where a host copy is visible (on the CPU it is a no-op): the
    blend weights of 9 tiles go over when the predictor is made, not at the first step."""
    pipe = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32")
    pipe.networks.to("meta")  # the same pipeline moved to a device other than the host
    pipe.device = torch.device("meta")
    plan = latent_tile_plan(16, 16, 64, 32)
    assert len(plan.tiles) == 9
    table = coefficient_table(3, 500)
    c_latent = torch.empty(1, 4, 16, 16, device="meta")
    noise = [torch.empty(1, 4, 16, 16, device="meta") for _ in range(4)]
    with torch.inference_mode():
        with HostToDevice() as before:
            predict_eps = pipe.eps_predictor(c_latent, plan, timesteps=table.timesteps)
        with HostToDevice() as inside:
            dos_sde_sample(eps_to_data_prediction(predict_eps, table), c_latent, table, noise, order=3)
    assert inside.seen == []
    assert ("aten.to", (8, 8)) in before.seen or ("aten._to_copy", (8, 8)) in before.seen  # it can see them


@pytest.mark.parametrize(("count", "per_call", "sizes"), [
    (25, 4, [4] * 7), (9, 4, [3] * 3), (5, 4, [3, 3]), (4, 4, [4]), (3, 4, [3]), (7, 1, [1] * 7)])
def test_tile_groups_are_one_size_and_run_every_tile_once(count, per_call, sizes):
    groups = tile_groups(count, per_call)
    assert [len(indices) for indices, _ in groups] == sizes
    assert [i for indices, real in groups for i in indices[:real]] == list(range(count))


def test_a_tiled_run_calls_the_network_with_one_shape_and_the_same_result():
    """25 tiles at 4 a call used to end on a call of 1 tile: one more shape to compile."""
    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(4, 4, 3, 3, generator=g) * 0.2
    shapes = []

    def fn(x):
        shapes.append(tuple(x.shape))
        return torch.tanh(torch.nn.functional.conv2d(x, kernel, padding=1))

    x = torch.randn(2, 4, 40, 40, generator=g)
    plan = TiledPlan.make(40, 40, 12, 4)
    assert len(plan.tiles) == 25
    out = run_tiled(fn, (x,), plan, tiles_per_call=4)
    assert set(shapes) == {(8, 4, 12, 12)} and len(shapes) == 7
    one_by_one = run_tiled(fn, (x,), plan, tiles_per_call=1)
    torch.testing.assert_close(out, one_by_one, rtol=0, atol=1e-6)


def test_every_unet_call_of_a_tiled_step_has_one_shape(tiny_pipeline):
    """5 tiles: 2 calls of 3 (the last with one repeat), where there were calls of 4 and 1."""
    plan = latent_tile_plan(8, 24, 64, 32)
    assert len(plan.tiles) == 5
    z = torch.randn(1, 4, 8, 24, generator=torch.Generator().manual_seed(0))
    shapes = []
    hook = tiny_pipeline.networks.unet.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        with torch.inference_mode():
            tiny_pipeline.eps_predictor(z, plan)(z, 500)
    finally:
        hook.remove()
    assert shapes == [(3, 4, 8, 8)] * 2


class Hungry(torch.nn.Module):
    """The preprocessor, but over `limit` input pixels it takes memory and runs out, as a GPU would."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.taken: list[weakref.ref] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] > self.limit:
            activations = torch.ones(1 << 20)  # what a real attempt holds when it fails
            self.taken.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_the_failed_attempt_is_freed_before_the_retry(networks):
    nets = copy.deepcopy(networks)
    hungry = nets.preprocessor = Hungry(nets.preprocessor, limit=16 * 16)
    pipe = DoSSRPipeline(nets, device="cpu", dtype="fp32")
    alive_at_retry = []
    said = []

    def on_retry(message: str) -> None:
        said.append(message)
        alive_at_retry.append([ref() is not None for ref in hungry.taken])

    out = pipe.upscale_tensor(to_tensor(smooth_image(16, 32)), seed=1, steps=1, tile_overlap=32, on_retry=on_retry)
    assert said == ["out of memory with no tiling; retrying with 64-pixel tiles"] and torch.isfinite(out).all()
    assert alive_at_retry == [[False]]


@pytest.mark.parametrize("message", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
])
def test_library_allocation_failures_are_out_of_memory(message):
    assert devices.is_out_of_memory(RuntimeError(message))


@pytest.mark.parametrize("message", ["cuDNN error: CUDNN_STATUS_BAD_PARAM", "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED"])
def test_other_library_errors_are_not(message):
    assert not devices.is_out_of_memory(RuntimeError(message))


def test_cuda_memory_counts_what_the_allocator_holds_unused():
    gib = 1 << 30
    # 2 GiB free by the driver, 10 reserved by torch of which 4 allocated: 8 GiB to be had
    assert devices.cuda_available_memory(2 * gib, 80 * gib, 10 * gib, 4 * gib) == 8 * gib
    assert devices.cuda_available_memory(2 * gib, 80 * gib, 0, 0) == 2 * gib
    assert devices.cuda_available_memory(79 * gib, 80 * gib, 6 * gib, 0) == 80 * gib  # never above the card


def test_auto_tiles_depend_on_the_image_not_the_card():
    per_pixel = devices.BYTES_PER_PIXEL[2]
    one_tile = devices.AUTO_TILE ** 2 * per_pixel
    for budget in (1 << 50, 2 * one_tile):  # an H200 and a card with room for twice a tile's work
        assert devices.auto_tile_size(4096, 4096, torch.bfloat16, budget) == devices.AUTO_TILE
        assert devices.auto_tile_size(1024, 1024, torch.bfloat16, budget) is None
        assert devices.auto_tile_size(512, 2048, torch.bfloat16, budget) is None  # a megapixel: one tile
    shrunk = devices.auto_tile_size(4096, 4096, torch.bfloat16, one_tile // 4)
    assert shrunk == devices.AUTO_TILE // 2  # too little memory: smaller tiles (and another image)
    assert devices.images_at_once(4096, 4096, devices.AUTO_TILE, torch.bfloat16, 2 * one_tile + 1) == 2


def test_a_batch_too_large_for_the_memory_runs_in_parts_on_the_same_tiles(tiny_pipeline):
    """Two images, memory for one image's work: each runs alone, untiled as it would be alone, rather
    than both on smaller tiles; the same image as the batch run together, to float32's rounding."""
    images = torch.cat([to_tensor(smooth_image(16, 32, key)) for key in ("a", "b")])  # 64 x 128 at x4
    one_image = devices.tile_work(64, 128, None, torch.float32)
    runs, said = [], []
    hook = tiny_pipeline.networks.unet.register_forward_pre_hook(lambda _, args: runs.append(args[0].shape[0]))
    try:
        parts = tiny_pipeline.upscale_tensor(images, seed=2, steps=1, tile_size="auto", max_memory=one_image + 1,
                                             on_retry=said.append)
        assert runs == [1, 1]
        together = tiny_pipeline.upscale_tensor(images, seed=2, steps=1, tile_size="auto", max_memory=1 << 50)
        assert runs == [1, 1, 2]
    finally:
        hook.remove()
    assert said == []
    torch.testing.assert_close(parts, together, rtol=0, atol=1e-5)


def test_the_same_command_gives_the_same_image_under_any_roomy_budget(networks):
    """auto's tile at 64 (the tiny model's stand-in for 1024): a huge budget and one just over a
    tile's work give bit-identical images, those of 64-pixel tiles; with auto's tile at 128 the
    image is one tile, and a budget of a 64-pixel tile's work makes 64-pixel tiles, and says so."""
    pipe = DoSSRPipeline(copy.deepcopy(networks), device="cpu", dtype="fp32")
    lq = to_tensor(smooth_image(16, 24))  # 64 x 96 at x4, padded to 64 x 128
    one_tile = 64 * 64 * devices.BYTES_PER_PIXEL[4]

    def auto(budget: int) -> tuple[torch.Tensor, list[str]]:
        said: list[str] = []
        return pipe.upscale_tensor(lq, seed=3, steps=1, tile_size="auto", tile_overlap=32, max_memory=budget,
                                   on_retry=said.append), said

    pipe.auto_tile = 64
    (huge, said_huge), (moderate, said_moderate) = auto(1 << 50), auto(one_tile + 1)
    tiled = pipe.upscale_tensor(lq, seed=3, steps=1, tile_size=64, tile_overlap=32)
    assert torch.equal(huge, moderate) and torch.equal(huge, tiled) and said_huge == said_moderate == []
    pipe.auto_tile = 128
    small, said_small = auto(one_tile)
    assert said_small == [(f"{devices.memory_text(one_tile)} of memory is too little for one tile; using 64-pixel "
                           "tiles, so the output differs from a machine with more memory")]
    assert torch.equal(small, tiled)


def test_a_stage_that_overflowed_runs_in_fp32_straight_away_next_time(networks):
    """The decoder's first conv scaled up overflows fp16 (as in test_fast_path): the first call tries
    fp16 then fp32, every later one fp32 only, and says nothing more."""
    nets = copy.deepcopy(networks)
    nets.vae.decoder.conv_in.weight.data *= 1e4
    pipe = DoSSRPipeline(nets, device="cpu", dtype="fp16")
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    plan = latent_tile_plan(4, 4, None)
    vae = nets.vae
    attempts, said = [], []
    hook = vae.decoder.conv_in.register_forward_pre_hook(lambda _, args: attempts.append(args[0].dtype))
    try:
        with torch.inference_mode():
            first, second = (pipe.finite_or_fp32("VAE decoder", [vae.decoder, vae.post_quant_conv], said.append,
                                                 lambda: pipe.decode(latent.to(pipe.dtype), plan)) for _ in range(2))
    finally:
        hook.remove()
    assert attempts == [torch.float16, torch.float32, torch.float32]
    assert len(said) == 1 and torch.isfinite(first).all() and torch.equal(first, second)
    assert vae.decoder.conv_in.weight.dtype == torch.float16 and pipe.dtype == torch.float16  # back between calls


def test_a_normal_run_never_synchronises_and_a_timed_one_does(tiny_pipeline, monkeypatch):
    """torch.cuda.synchronize counted (torch's, not ours): none without a timer, several with a CUDA one."""
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    lq = to_tensor(smooth_image(16, 16))
    tiny_pipeline.upscale_tensor(lq, seed=1, steps=2)
    assert syncs == []
    tiny_pipeline.upscale_tensor(lq, seed=1, steps=2, timer=StageTimer(torch.device("cuda")))
    assert len(syncs) >= 2 * 5  # both ends of every stage, every step

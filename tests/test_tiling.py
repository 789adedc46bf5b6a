"""Tile plans, blend weights, and tiled network calls against the untiled ones."""

import itertools

import pytest
import torch
from conftest import smooth_image, to_tensor
from hypothesis import given, settings
from hypothesis import strategies as st

from dossr_cli.geometry import latent_tile_plan
from dossr_cli.tiling import TiledPlan, axis_starts, blend_weights, plan_tiles, run_tiled


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 400), tile=st.integers(2, 128), overlap=st.integers(0, 120))
def test_axis_starts_cover_the_axis_with_at_least_the_overlap(size, tile, overlap):
    if overlap >= tile:
        with pytest.raises(ValueError):
            axis_starts(size, tile, overlap)
        return
    starts = axis_starts(size, tile, overlap)
    length = min(tile, size)
    assert starts[0] == 0 and starts[-1] + length == size
    assert all(0 <= s <= size - length for s in starts)
    for a, b in itertools.pairwise(starts):
        assert b > a and a + length - b >= overlap  # neighbours overlap by at least what was asked


def test_a_tile_at_least_as_large_as_the_image_is_one_tile():
    assert plan_tiles(30, 50, 64, 16) == plan_tiles(30, 50, 50, 16)[:1] == [plan_tiles(30, 50, 64, 16)[0]]
    assert len(plan_tiles(30, 50, 64, 16)) == 1


@settings(max_examples=50, deadline=None)
@given(height=st.integers(8, 90), width=st.integers(8, 90), tile=st.integers(8, 40), overlap=st.integers(4, 7))
def test_weights_cover_every_pixel_and_vanish_in_the_guard(height, width, tile, overlap):
    plan = TiledPlan.make(height, width, tile, overlap, guard=1)
    total = torch.zeros(height, width, dtype=torch.float64)
    for t, w in zip(plan.tiles, plan.weights):
        assert w.shape == (t.height, t.width)
        total[t.slices] += w
        if t.top > 0:
            assert torch.all(w[0] == 0)  # the guard row at an interior edge is never used
        if t.left + t.width < width:
            assert torch.all(w[:, -1] == 0)
    assert torch.all(total > 0)


def test_weights_taper_smoothly_between_neighbours():
    plan = TiledPlan.make(8, 32, 24, 16, guard=2)
    assert len(plan.tiles) == 2
    left, right = plan.weights[0][0], plan.weights[1][0]
    assert torch.all(torch.diff(left[-16:]) <= 0) and torch.all(torch.diff(right[:16]) >= 0)
    assert left[0] == 1 and right[-1] == 1  # image borders are not tapered


def conv_stand_in(radius: int, seed: int = 0):
    """`radius` 3x3 convs with zero padding: the receptive field reaches `radius` pixels."""
    g = torch.Generator().manual_seed(seed)
    kernels = [torch.randn(4, 8 if i == 0 else 4, 3, 3, generator=g) * 0.2 for i in range(radius)]

    def fn(x, cond):
        h = torch.cat([x, cond], 1)
        for kernel in kernels:
            h = torch.tanh(torch.nn.functional.conv2d(h, kernel, padding=1))
        return h

    return fn


@pytest.mark.parametrize(("height", "width"), [(40, 56), (33, 71), (16, 64)])
def test_tiles_give_the_untiled_result_when_the_guard_covers_the_receptive_field(height, width):
    fn = conv_stand_in(radius=3)
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 4, height, width, generator=g), torch.randn(2, 4, height, width, generator=g)
    whole = fn(x, cond)
    plan = TiledPlan.make(height, width, tile=20, overlap=12, guard=3)
    assert len(plan.tiles) > 2
    torch.testing.assert_close(run_tiled(fn, (x, cond), plan, tiles_per_call=3), whole, rtol=0, atol=1e-6)
    too_small = TiledPlan.make(height, width, tile=20, overlap=12, guard=1)  # the stand-in sees past the guard
    assert (run_tiled(fn, (x, cond), too_small) - whole).abs().max() > 1e-3


def test_one_tile_is_the_untiled_call_itself():
    fn = conv_stand_in(radius=2)
    x, cond = torch.randn(1, 4, 10, 12), torch.randn(1, 4, 10, 12)
    plan = TiledPlan.make(10, 12, 16, 4)
    assert plan.is_single and torch.equal(run_tiled(fn, (x, cond), plan), fn(x, cond))


def test_tile_at_least_the_image_is_bit_identical_to_no_tiling(tiny_pipeline):
    lq = to_tensor(smooth_image(16, 32))
    untiled = tiny_pipeline.upscale_tensor(lq, seed=4, steps=3)
    assert torch.equal(tiny_pipeline.upscale_tensor(lq, seed=4, steps=3, tile_size=128, tile_overlap=32), untiled)
    assert torch.equal(tiny_pipeline.upscale_tensor(lq, seed=4, steps=3, tile_size=1024), untiled)


@pytest.mark.parametrize(("height", "width"), [(16, 48), (13, 37), (5, 9)])
def test_small_tiles_run_on_odd_sizes_and_stay_close_to_untiled(tiny_pipeline, height, width):
    lq = to_tensor(smooth_image(height, width))
    untiled = tiny_pipeline.upscale_tensor(lq, seed=2, steps=2)
    tiled = tiny_pipeline.upscale_tensor(lq, seed=2, steps=2, tile_size=64, tile_overlap=32)
    assert tiled.shape == untiled.shape and torch.isfinite(tiled).all()
    assert (tiled - untiled).abs().mean() < 0.1  # random weights: tiles see less context, not another image


@pytest.mark.parametrize(("tile_size", "tile_overlap", "message"),
                         [(96, 32, "multiple of 64"), (0, 0, "multiple of 64"), (128, 12, "multiple of 8"),
                          (128, 128, "below tile_size")])
def test_bad_tile_options_are_refused(tile_size, tile_overlap, message):
    with pytest.raises(ValueError, match=message):
        latent_tile_plan(40, 40, tile_size, tile_overlap)


def test_blend_weights_of_a_lone_tile_are_all_ones():
    tile = plan_tiles(10, 10, 16, 4)[0]
    assert torch.all(blend_weights(tile, 10, 10, 4, 1) == 1)


def test_the_preprocessor_on_tiles_matches_it_whole(tiny_pipeline):
    """RRDBNet is convolutional with no image-wide statistics: blended LR tiles agree to float noise."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 56), indexing="ij")
    lq = torch.stack([x, y, 0.5 * x + 0.3])[None] * 0.8 + 0.1
    with torch.no_grad():
        whole = tiny_pipeline.preprocess(lq)
        tiled = tiny_pipeline.preprocess(lq, tile_size=128, tile_overlap=96)  # LR tiles 32, overlap 24: 4 tiles
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-4  # measured 2.3e-6
    assert torch.equal(tiny_pipeline.preprocess(lq, tile_size=256, tile_overlap=128), whole)  # one tile


def smooth_batch(height: int, width: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([x, y, 0.5 * x + 0.3])[None]


@pytest.fixture(scope="module")
def plain_vae_networks():
    """The tiny model with the VAE attention projections zeroed: what remains is convolution and GroupNorm."""
    from dossr_cli.random_weights import random_networks

    nets = random_networks(seed=0).eval()
    for module in nets.vae.modules():
        if module.__class__.__name__ == "Attention":
            module.to_out[0].weight.data.zero_()
            module.to_out[0].bias.data.zero_()
    return nets


def assert_equal_to_float32_rounding(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Within 64 float32 epsilons of the values' scale: the synchronised GroupNorm sums in another order
    (float64 partial sums) than torch's, which moves these VAE outputs by 15-17 eps x scale whatever the
    thread count. Mistakes measured against it: the GroupNorm eps 10x too large 135-763, no eps 23-104,
    the unbiased variance 1.1e4, a dropped GroupNorm bias 4e5, the downsampler padded on the wrong side
    or upsampled bilinearly 6e6, a residual scaled by 1.0001 1.9e3."""
    bound = 64 * torch.finfo(torch.float32).eps * theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=bound)


def test_a_single_synchronised_tile_is_the_modules_own_forward(plain_vae_networks):
    from dossr_cli.tiled_vae import run_synchronized

    nets = plain_vae_networks
    image = smooth_batch(96, 160) * 2 - 1
    latent = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(0))
    whole = TiledPlan.make(12, 20, 64, 4)
    with torch.no_grad():
        assert_equal_to_float32_rounding(run_synchronized(nets.vae.encoder, "encoder", image, whole, 8, 1),
                                         nets.vae.encoder(image))
        assert_equal_to_float32_rounding(run_synchronized(nets.vae.decoder, "decoder", latent, whole, 1, 8),
                                         nets.vae.decoder(latent))


def tile_mean_error(out: torch.Tensor, whole: torch.Tensor, plan: TiledPlan) -> float:
    return max((out[(..., *t.slices)].mean((-2, -1)) - whole[(..., *t.slices)].mean((-2, -1))).abs().max().item()
               for t in plan.tiles)


def test_tiled_vae_leaves_no_tone_step_between_tiles(plain_vae_networks):
    """Per-tile means of tiled decode and encode equal the untiled ones within 0.01 (values' std ~0.65).

    Measured: decode 0.0033, encode 0.0058 with shared GroupNorm statistics; tiles with their
    own statistics are off by 0.2-0.7, which is the tone step this avoids.
    """
    from dossr_cli.tiled_vae import run_synchronized

    nets = plain_vae_networks
    image = smooth_batch(192, 256) * 2 - 1
    plan = TiledPlan.make(24, 32, 16, 12, guard=3)
    assert len(plan.tiles) == 15
    with torch.no_grad():
        moments = nets.vae.encoder(image)
        latent = moments[:, :4]
        decoded = nets.vae.decoder(latent)
        tiled_decode = run_synchronized(nets.vae.decoder, "decoder", latent, plan, 1, 8)
        tiled_encode = run_synchronized(nets.vae.encoder, "encoder", image, plan, 8, 1)
        own_statistics = run_tiled(nets.vae.decoder, (latent,), plan, scale_out=8)
    assert tile_mean_error(tiled_decode, decoded, plan.scaled(8)) < 0.01
    assert tile_mean_error(tiled_encode, moments, plan) < 0.01
    assert tile_mean_error(own_statistics, decoded, plan.scaled(8)) > 0.05


HALF_LEVEL = 0.5 / 255


def test_no_seam_across_tile_borders_of_the_whole_pipeline(plain_vae_networks):
    """UNet output conv zeroed too, zero noise, smooth input: at every interior tile border the
    gradient across it departs from the untiled image's there by under 10% of the gradient
    beside it, give or take half an 8-bit level (where the image is nearly flat).

    Random decoder weights draw their own texture even from a smooth latent, so the gradient
    beside a border varies by itself; the untiled image at the same place is the reference.
    Per-tile GroupNorm statistics fail this (checked by hand: 0.084 across against 0.009 untiled).
    """
    from dossr_cli.pipeline import DoSSRPipeline

    class ZeroNoise(DoSSRPipeline):
        def draw_noise(self, seeds, shape, count):
            return [torch.zeros(len(seeds), *shape) for _ in range(count)]

    nets = plain_vae_networks
    saved = nets.unet.conv_out.weight.data.clone()
    nets.unet.conv_out.weight.data.zero_()
    try:
        pipe = ZeroNoise(nets, device="cpu", dtype="fp32")
        lq = smooth_batch(48, 64) * 0.8 + 0.1
        outs = [pipe.upscale_tensor(lq, steps=2, seeds=[0], color_fix="none", tile_size=tile, tile_overlap=96)
                for tile in (128, None)]
    finally:
        nets.unet.conv_out.weight.data.copy_(saved)
    plan = latent_tile_plan(24, 32, 128, 96).scaled(8)
    assert len(plan.tiles) == 15
    (dx, dy), (dx_whole, dy_whole) = [((out[..., :, 1:] - out[..., :, :-1]).abs().mean((0, 1, 2)),  # per column
                                       (out[..., 1:, :] - out[..., :-1, :]).abs().mean((0, 1, 3)))  # per row
                                      for out in outs]
    checked = 0
    for tile in plan.tiles:
        for edge, gradient, whole in ((tile.left, dx, dx_whole), (tile.top, dy, dy_whole)):
            if edge > 0:
                across = gradient[edge - 1]
                beside = torch.cat([gradient[edge - 5:edge - 1], gradient[edge:edge + 4]]).mean()  # 4 each side
                assert abs(across - whole[edge - 1]) <= 0.1 * beside + HALF_LEVEL, \
                    (edge, float(across), float(whole[edge - 1]), float(beside))
                checked += 1
    assert checked > 0


def test_out_of_memory_retries_the_image_with_smaller_tiles(tiny_pipeline, monkeypatch):
    """A simulated out-of-memory on the first attempt ends in the output of the smaller tiles, said once."""
    lq = to_tensor(smooth_image(40, 40))  # 160 x 160 at x4: untiled, then 64-pixel tiles
    expected = tiny_pipeline.upscale_tensor(lq, seed=3, steps=2, tile_size=64, tile_overlap=32)
    original = type(tiny_pipeline).upscale_x4
    attempts = []

    def first_attempt_fails(self, lq, seeds, steps, order, t1, color_fix, callback=None, tile_size=None,
                            *rest):
        attempts.append(tile_size)
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, lq, seeds, steps, order, t1, color_fix, callback, tile_size, *rest)

    monkeypatch.setattr(type(tiny_pipeline), "upscale_x4", first_attempt_fails)
    said = []
    out = tiny_pipeline.upscale_tensor(lq, seed=3, steps=2, tile_overlap=32, on_retry=said.append)
    assert attempts == [None, 64]
    assert said == ["out of memory with no tiling; retrying with 64-pixel tiles"]
    assert torch.equal(out, expected)


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error(tiny_pipeline, monkeypatch):
    from dossr_cli.errors import DossrError

    def always_fails(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(type(tiny_pipeline), "upscale_x4", always_fails)
    with pytest.raises(DossrError, match="even with 64-pixel tiles"):
        tiny_pipeline.upscale_tensor(to_tensor(smooth_image(16, 16)), seed=1, tile_size=64, tile_overlap=32)


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory(tiny_pipeline, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(type(tiny_pipeline), "upscale_x4", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiny_pipeline.upscale_tensor(to_tensor(smooth_image(16, 16)), seed=1)


def test_auto_tile_size_fits_the_budget():
    from dossr_cli.devices import BYTES_PER_PIXEL, auto_tile_size

    assert auto_tile_size(512, 512, torch.float16, 1 << 30) is None  # 0.4 GB of work: no tiling
    tile = auto_tile_size(4096, 4096, torch.float16, 1 << 30)
    assert tile % 64 == 0 and 64 <= tile < 1024 and tile * tile * BYTES_PER_PIXEL[2] <= 1 << 30
    assert auto_tile_size(4096, 4096, torch.float32, 1) == 64  # never below the smallest tile


def test_auto_tiling_under_a_small_budget_still_makes_the_image(tiny_pipeline):
    lq = to_tensor(smooth_image(24, 40))
    roomy = tiny_pipeline.upscale_tensor(lq, seed=5, steps=2, tile_size="auto", max_memory=1 << 40)
    assert torch.equal(roomy, tiny_pipeline.upscale_tensor(lq, seed=5, steps=2))  # it fits: one tile, untiled
    tight = tiny_pipeline.upscale_tensor(lq, seed=5, steps=2, tile_size="auto", tile_overlap=32,
                                         max_memory=64 * 64 * 3072)
    assert tight.shape == roomy.shape and torch.isfinite(tight).all()
    assert (tight - roomy).abs().mean() < 0.1


def test_the_tile_callback_hears_every_tile_at_every_step(tiny_pipeline):
    heard = []
    tiny_pipeline.upscale_tensor(to_tensor(smooth_image(16, 48)), seed=1, steps=2, tile_size=64, tile_overlap=32,
                                 tile_callback=lambda done, total: heard.append((done, total)))
    total = len(latent_tile_plan(8, 24, 64, 32).tiles)
    assert total == 5
    assert heard == [(3, 5), (5, 5)] * 2  # two calls of three (tiling.tile_groups), at each step


def test_the_progress_shows_tiles_only_when_there_are_several():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from dossr_cli.cli.progress import Bars

    with Progress(console=Console(file=io.StringIO(), force_terminal=True)) as progress:
        bars = Bars(progress, images=1, steps=5)
        task = progress.tasks[bars.tile_task]
        bars.tiles(1, 1)
        assert not task.visible
        bars.tiles(3, 8)
        assert task.visible and task.completed == 3 and task.total == 8

"""The whole pipeline on the tiny random model, on the CPU."""

import math

import numpy as np
import pytest
import torch
from conftest import smooth_image, to_tensor
from PIL import Image

from dossr_cli.colorfix import wavelet_low_frequency
from dossr_cli.geometry import output_size, reflect_pad_to_multiple
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks


@pytest.mark.parametrize("scale", [1, 2, 3.5, 4])
@pytest.mark.parametrize(("height", "width"), [(16, 16), (13, 21), (7, 30)])
def test_output_size_is_ceil_of_scale_times_input(tiny_pipeline, scale, height, width):
    out = tiny_pipeline.upscale(smooth_image(height, width), scale=scale, steps=2, seed=1)
    assert out.size == (math.ceil(scale * width), math.ceil(scale * height))
    assert out.mode == "RGB"


def test_exact_size_overrides_scale(tiny_pipeline):
    out = tiny_pipeline.upscale(smooth_image(12, 12), size=(50, 30), steps=1, seed=1)
    assert out.size == (50, 30)


def test_same_seed_same_output_and_different_seed_different(tiny_pipeline):
    image = smooth_image(16, 24)
    a = np.asarray(tiny_pipeline.upscale(image, seed=5))
    b = np.asarray(tiny_pipeline.upscale(image, seed=5))
    c = np.asarray(tiny_pipeline.upscale(image, seed=6))
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.5


def test_an_image_gives_the_same_output_alone_and_in_a_batch():
    """The same noise and no cross-talk, shown in float64: float32 kernels sum in a batch-size- and
    thread-dependent order, which alone moves the float32 image by 2-3e-6 (4x under the bound once
    used). In float64 the two images are equal to the float32 output's rounding; another image's
    noise (seed 10) moves pixels by up to 1."""
    pipe = DoSSRPipeline(random_networks(seed=0), device="cpu", dtype=torch.float64)
    images = torch.cat([to_tensor(smooth_image(16, 16, key)) for key in ("a", "b", "c")])
    batch = pipe.upscale_tensor(images, seed=9)
    alone = pipe.upscale_tensor(images[1:2], seed=9)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_wavelet_output_keeps_the_preprocessed_images_low_frequencies(tiny_pipeline):
    lq = to_tensor(smooth_image(16, 32))
    with torch.no_grad():
        pre = tiny_pipeline.networks.preprocessor(lq).clamp(0, 1)
    fixed = tiny_pipeline.upscale_tensor(lq, seed=2, color_fix="wavelet")
    unfixed = tiny_pipeline.upscale_tensor(lq, seed=2, color_fix="none")
    error_fixed = (wavelet_low_frequency(fixed, 7) - wavelet_low_frequency(pre, 7)).abs().mean()
    error_unfixed = (wavelet_low_frequency(unfixed, 7) - wavelet_low_frequency(pre, 7)).abs().mean()
    assert error_fixed < 0.03
    assert error_fixed < error_unfixed / 3


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("color_fix", ["wavelet", "adain", "none"])
def test_no_nan_and_values_in_range(tiny_pipeline, order, color_fix):
    out = tiny_pipeline.upscale_tensor(to_tensor(smooth_image(16, 16)), steps=3, order=order, seed=0,
                                       color_fix=color_fix)
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.01


def test_steps_make_that_many_network_calls(tiny_pipeline):
    calls = []
    tiny_pipeline.upscale(smooth_image(16, 16), steps=4, seed=0, callback=lambda done, total: calls.append(done))
    assert calls == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"steps": 0}, "steps"), ({"order": 4}, "order"), ({"t1": 0}, "t1"), ({"color_fix": "x"}, "color_fix"),
     ({"scale": 0.5}, "scale"), ({"scale": float("nan")}, "scale")],
)
def test_bad_options_are_refused_with_their_name(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.upscale(smooth_image(8, 8), **kwargs)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 70), (64, 64), (65, 2)])
def test_reflect_padding_reaches_the_multiple_and_keeps_the_image(height, width):
    image = torch.rand(1, 3, height, width)
    padded = reflect_pad_to_multiple(image, 64)
    assert padded.shape[-2] % 64 == 0 and padded.shape[-1] % 64 == 0
    assert torch.equal(padded[..., :height, :width], image)


def test_output_size_rounds_up():
    assert output_size(32, 32, 2.5) == (80, 80)
    assert output_size(33, 10, 1.5) == (50, 15)


def test_lanczos_downscale_keeps_a_flat_image_flat(tiny_pipeline):
    from dossr_cli.geometry import lanczos_resize

    flat = torch.full((1, 3, 64, 64), 0.25)
    assert torch.allclose(lanczos_resize(flat, (20, 20)), torch.tensor(0.25), atol=1e-5)


def test_pil_modes_are_accepted(tiny_pipeline):
    grey = smooth_image(8, 8).convert("L")
    out = tiny_pipeline.upscale(grey, steps=1, seed=0)
    assert out.size == (32, 32) and isinstance(out, Image.Image)

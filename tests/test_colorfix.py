import pytest
import torch

from dossr_cli.colorfix import adain_color_fix, color_fix, wavelet_color_fix, wavelet_low_frequency


def images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 40, 56, generator=g), torch.rand(2, 3, 40, 56, generator=g) * 0.5 + 0.2


def authors_wavelet(content, style, levels=5):
    """The authors' level-by-level accumulation of the high band (DOSSR_SPEC section 5)."""
    def decompose(image):
        high = torch.zeros_like(image)
        for i in range(levels):
            radius = 2**i
            kernel = torch.tensor([[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]],
                                  dtype=image.dtype)
            padded = torch.nn.functional.pad(image, (radius,) * 4, mode="replicate")
            low = torch.nn.functional.conv2d(padded, kernel[None, None].repeat(3, 1, 1, 1), groups=3, dilation=radius)
            high += image - low
            image = low
        return high, low

    return decompose(content)[0] + decompose(style)[1]


def test_wavelet_equals_the_level_by_level_form():
    """In float64, where the two orders of summation agree exactly here (float32: one ulp, 1.2e-7); a
    level too few, reflect instead of replicate padding or halved dilations are off by 0.04 or more."""
    content, style = (image.double() for image in images())
    torch.testing.assert_close(wavelet_color_fix(content, style), authors_wavelet(content, style), rtol=0, atol=1e-12)


def test_wavelet_takes_low_frequencies_from_the_reference():
    content, style = images()
    fixed = wavelet_color_fix(content, style)
    torch.testing.assert_close(fixed - wavelet_low_frequency(style), content - wavelet_low_frequency(content))
    assert (fixed.mean((2, 3)) - style.mean((2, 3))).abs().max() < 0.02


def test_adain_matches_mean_and_std():
    content, style = images(1)
    fixed = adain_color_fix(content, style)
    torch.testing.assert_close(fixed.mean((2, 3)), style.mean((2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(fixed.flatten(2).std(-1), style.flatten(2).std(-1), rtol=1e-3, atol=1e-4)


def test_none_is_identity_and_unknown_is_refused():
    content, style = images()
    assert color_fix(content, style, "none") is content
    with pytest.raises(ValueError, match="wavelet, adain, none"):
        color_fix(content, style, "histogram")

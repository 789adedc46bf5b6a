"""ComfyUI's IMAGE / MASK tensors to and from the job's DecodedImage (dossr_cli/comfyui/layout.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dossr_cli import imageio
from dossr_cli.comfyui import layout
from dossr_cli.errors import UsageError


def load_image_like_comfyui(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """What ComfyUI 3cd7b32f's LoadImage node does with an 8-bit file (nodes.py, LoadImage.load_image)."""
    image = Image.open(io.BytesIO(data))
    rgb = torch.from_numpy(np.array(image.convert("RGB")).astype(np.float32) / 255.0)[None]
    if "A" in image.getbands():
        mask = 1.0 - torch.from_numpy(np.array(image.getchannel("A")).astype(np.float32) / 255.0)
    else:
        mask = torch.zeros((64, 64), dtype=torch.float32)
    return rgb, mask[None]


def rgba_png(height: int = 12, width: int = 10) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[0, :, 3] = 0
    pixels[1, :, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def test_loadimage_rgba_gives_the_command_lines_pixels_to_the_bit():
    """Colour and alpha as dossr_cli.imageio decodes the same file: the same seed follows."""
    data = rgba_png()
    rgb, mask = load_image_like_comfyui(data)
    (decoded,) = layout.decoded_images(rgb, mask)
    reference = imageio.read_image(data)
    assert np.array_equal(decoded.rgb, reference.rgb)
    assert decoded.alpha is not None and np.array_equal(decoded.alpha, reference.alpha)
    # without the snap to the 8-bit grid, 1 - (1 - a/255) is not a/255 for every a
    assert not np.array_equal(np.float32(1) - mask[0].numpy(), reference.alpha)


def test_the_opaque_placeholder_mask_means_no_alpha():
    rgb = torch.rand(1, 30, 20, 3)
    (decoded,) = layout.decoded_images(rgb, torch.zeros(1, 64, 64))
    assert decoded.alpha is None and decoded.rgb.shape == (30, 20, 3)


def test_a_mask_of_another_size_is_refused_in_one_line():
    with pytest.raises(UsageError, match=r"^the mask is 8x9 and the image 20x30: give the mask of this image") as err:
        layout.decoded_images(torch.rand(1, 30, 20, 3), torch.rand(1, 9, 8))
    assert "\n" not in str(err.value)


def test_one_mask_serves_a_batch_and_a_wrong_count_is_refused():
    images = layout.decoded_images(torch.rand(3, 6, 5, 3), torch.full((1, 6, 5), 0.25))
    assert [float(im.alpha.mean()) for im in images] == [0.75] * 3
    with pytest.raises(UsageError, match="2 masks for 3 images"):
        layout.decoded_images(torch.rand(3, 6, 5, 3), torch.zeros(2, 6, 5))


def test_grey_rgba_and_out_of_range_inputs():
    grey = layout.decoded_images(torch.full((1, 4, 4, 1), 0.5))[0]
    assert grey.rgb.shape == (4, 4, 3) and np.all(grey.rgb == 0.5)
    four = torch.rand(1, 4, 4, 4)
    rgba = layout.decoded_images(four)[0]
    assert np.array_equal(rgba.alpha, four[0, ..., 3].numpy()) and np.array_equal(rgba.rgb, four[0, ..., :3].numpy())
    wild = layout.decoded_images(torch.tensor([[[[2.0, -1.0, float("nan")]]]]))[0]
    assert wild.rgb.tolist() == [[[1.0, 0.0, 0.0]]]
    with pytest.raises(UsageError, match=r"IMAGE tensor \[batch, height, width"):
        layout.decoded_images(torch.rand(1, 4, 4, 2))


def test_results_go_back_as_image_and_mask_tensors():
    rgbs = [np.full((3, 2, 3), 0.25, np.float32), np.full((3, 2, 3), 1.5, np.float32)]
    image = layout.image_tensor(rgbs)
    assert image.shape == (2, 3, 2, 3) and image.dtype == torch.float32
    assert image[0].unique().tolist() == [0.25] and image[1].unique().tolist() == [1.0]
    mask = layout.mask_tensor([None, np.full((3, 2), 0.25, np.float32)], 3, 2)
    assert mask.shape == (2, 3, 2) and mask[0].unique().tolist() == [0.0] and mask[1].unique().tolist() == [0.75]

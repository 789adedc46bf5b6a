import numpy as np
import pytest
import torch
from PIL import Image

from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks, uniform

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_pipeline() -> DoSSRPipeline:
    return DoSSRPipeline(random_networks(seed=0), device="cpu", dtype="fp32")


def smooth_image(height: int, width: int, key: str = "img") -> Image.Image:
    """A deterministic RGB test image: gradients plus mild texture, inside 30..225."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 3)], axis=-1)
    noise = uniform(3, key, height * width * 3).reshape(height, width, 3)
    return Image.fromarray((30 + 195 * np.clip(0.85 * base + 0.075 * (noise + 1), 0, 1)).astype(np.uint8), "RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own dossr cache; nothing touches the user's real one."""
    monkeypatch.setenv("DOSSR_CACHE_DIR", str(tmp_path_factory.mktemp("dossr-cache")))

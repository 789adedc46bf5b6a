"""dossr: diffusion super-resolution with DoSSR (NeurIPS 2024).

    from dossr_cli import DoSSRPipeline
    pipe = DoSSRPipeline.from_pretrained("path/to/bundle")
    pipe.upscale(image, scale=4, steps=5).save("out.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"
__all__ = ["DoSSRPipeline", "__version__"]

if TYPE_CHECKING:
    from dossr_cli.pipeline import DoSSRPipeline


def __getattr__(name: str):
    if name == "DoSSRPipeline":
        from dossr_cli.pipeline import DoSSRPipeline

        return DoSSRPipeline
    raise AttributeError(name)

"""torch.compile for the pipeline: which blocks, how many shapes each may compile, where the CUDA-graph
generations begin, and the compile cache on disk.

Blocks, not whole networks: every down, mid and up block of the UNet, ControlNet and VAE coders, and each
RRDB block, is compiled on its own, so repeated blocks share their code and compiling takes seconds instead
of minutes, with most of the speed of a whole-graph compile. Each network's first and last layers stay
eager, and that matters for CUDA graphs (below).

Recompiles. dynamo keeps one cache per code object: every instance of a block class (all UNet
`CrossAttnDownBlock2D`s, the ControlNet's too) shares it, and its default limit of 8 entries was full after
batch 1 and batch 2 on the tiny model; the next shape ran eagerly, silently. Each compile call here gets its
own limit (torch.compile's `recompile_limit`, scoped to these calls) sized to its class: instances x
SHAPES_PER_BLOCK; dynamo's global safety cap per code object (`accumulated_recompile_limit`, which has no
per-call form) is raised to the largest of them if it is lower, never lowered.

CUDA graphs (`mode="reduce-overhead"`). torch's CUDA-graph trees (torch/_inductor/cudagraph_trees.py) free
every output of the previous *generation* when a graph runs in a new one. In inference mode a new
generation begins whenever `get_curr_generation()` changed, and without `cudagraph_mark_step_begin()` that
is dynamo's GenerationTracker, which every entry into a compiled function bumps: with block-by-block
compilation, each block freed the outputs of the block before it, its own input (the issue's "accessing
tensor output of CUDAGraphs that has been overwritten"). Once `cudagraph_mark_step_begin()` has been called
the generation is its counter alone (`get_curr_generation`, `user_invoked_mark_step`). So a generation
begins here at the entry of every network call (`step_boundaries`): within one call all blocks share a
generation and the UNet's skip connections stay valid; what a call returns comes from its eager last layer
(conv_out, the ControlNet's zero convolutions, the RRDBNet's conv_last), outside the graphs' memory pool, so
the solver's stored predictions, the control residuals and the tiles blended into an accumulator outlive the
next generation without a copy. tests/test_compiling.py checks all of this on the CPU by running the
pipeline under torch's own generation counters with a backend that poisons outputs of past generations. What
only a GPU shows: that inductor really records the graphs (no "skipping cudagraphs" reasons), replay speed,
and the pool's memory.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from dossr_cli.networks import DoSSRNetworks

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes in which inductor records CUDA graphs
# Input shapes each block may compile in one process: batch sizes x tile shapes x fp32 reruns, and one
# more for every new image size a folder brings. Past it dynamo runs the block eagerly (a warning).
SHAPES_PER_BLOCK = 16
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_regions(networks: DoSSRNetworks) -> list[torch.nn.Module]:
    """The blocks compiled one by one: every down, mid and up block of the UNet, ControlNet and VAE
    coders, and the RRDBNet's trunk blocks."""
    regions: list[torch.nn.Module] = []
    for net in (networks.unet, networks.controlnet):
        regions += [*net.down_blocks, net.mid_block, *getattr(net, "up_blocks", [])]
    for coder in (networks.vae.encoder, networks.control_encoder.encoder):
        regions += [*coder.down_blocks, coder.mid_block]
    regions += [*networks.vae.decoder.up_blocks, networks.vae.decoder.mid_block]
    regions += list(networks.preprocessor.body)
    return regions


def network_entries(networks: DoSSRNetworks) -> list[torch.nn.Module]:
    """Each network the pipeline calls, as it calls it: where a CUDA-graph generation begins (nothing a
    network call needs comes from an earlier call's graphs, see above) and where inputs take the
    pipeline's memory format."""
    return [networks.preprocessor, networks.vae.encoder, networks.control_encoder.encoder, networks.controlnet,
            networks.unet, networks.vae.decoder]


step_boundaries = network_entries  # the name for what it is to CUDA graphs


def recompile_limits(regions: Iterable[torch.nn.Module], shapes_per_block: int = SHAPES_PER_BLOCK
                     ) -> dict[type, int]:
    """Cache entries each block class may hold: its instances times the shapes each may see. Instances
    alike share an entry for a shape, but alike weights are not enough to share: the decoder's up blocks
    see other resolutions (so the bound counts instances, not distinct layouts)."""
    counts: dict[type, int] = {}
    for block in regions:
        counts[type(block)] = counts.get(type(block), 0) + 1
    return {cls: count * shapes_per_block for cls, count in counts.items()}


def compile_cache_dir() -> Path:
    """Where inductor's caches go unless $TORCHINDUCTOR_CACHE_DIR says: dossr's user cache folder."""
    from dossr_cli.checkpoint.paths import cache_root

    return cache_root() / "torch-compile"


def use_disk_cache() -> Path:
    """Point inductor's FX-graph, AOTAutograd and kernel caches at a folder that outlives the process (torch's
    default is under /tmp), so `--compile` pays its code generation once per machine. A folder the user set
    in $TORCHINDUCTOR_CACHE_DIR is kept; torch's own default is not a choice (torch writes it into the
    variable itself when first asked). Must run before the first compile."""
    if _user_cache_dir() is None:
        folder = compile_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        if os.environ.get(CACHE_ENV) != str(folder):
            os.environ[CACHE_ENV] = str(folder)
            from torch._inductor.utils import clear_caches

            clear_caches()  # what torch's own temporary_cache_dir does after changing the variable
    return Path(os.environ[CACHE_ENV])


def _user_cache_dir() -> str | None:
    value = os.environ.get(CACHE_ENV)
    if not value:
        return None
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # an older torch: whatever is there was not written by this torch's default
        return value
    return None if os.path.abspath(value) == os.path.abspath(default_cache_dir()) else value


def uses_cuda_graphs(mode: str | None) -> bool:
    return mode in CUDA_GRAPH_MODES


def compile_networks(networks: DoSSRNetworks, mode: str | None = None, backend: str | Callable = "inductor",
                     cuda_graphs: bool | None = None,
                     mark_step: Callable[[], None] | None = None) -> list[Any]:
    """Compile every region (static shapes, a recompile limit sized per class) and, with CUDA graphs, begin
    a generation at each network call. `cuda_graphs` defaults to what `mode` implies; `mark_step` to
    torch.compiler.cudagraph_mark_step_begin. Returns the hook handles (remove them to undo the boundaries).
    """
    if backend == "inductor":
        use_disk_cache()
    regions = compile_regions(networks)
    limits = recompile_limits(regions)
    per_call = "recompile_limit" in inspect.signature(torch.compile).parameters  # torch >= 2.13
    if not per_call:  # older torch: one global limit, raised to what the largest class needs
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, *limits.values())
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           *limits.values())
    for block in regions:
        options: dict[str, Any] = {"recompile_limit": limits[type(block)]} if per_call else {}
        block.compile(mode=mode, backend=backend, dynamic=False, **options)
    if not (uses_cuda_graphs(mode) if cuda_graphs is None else cuda_graphs):
        return []
    mark = mark_step if mark_step is not None else torch.compiler.cudagraph_mark_step_begin
    return [module.register_forward_pre_hook(lambda *_: mark()) for module in step_boundaries(networks)]


__all__ = ["CUDA_GRAPH_MODES", "SHAPES_PER_BLOCK", "compile_cache_dir", "compile_networks", "compile_regions",
           "network_entries", "recompile_limits", "step_boundaries", "use_disk_cache", "uses_cuda_graphs"]

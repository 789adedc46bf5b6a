"""torch's CUDA-graph output ownership, on the CPU: a dynamo backend that keeps the rule of
torch/_inductor/cudagraph_trees.py in inference mode and nothing else.

Each compiled graph's outputs belong to the generation it ran in, as torch counts it
(`CUDAGraphTreeManager.get_curr_generation`: the `cudagraph_mark_step_begin` counter once it has been
called, else dynamo's GenerationTracker, which every entry into a compiled function bumps). When a graph
runs in a newer generation, torch frees every output of the earlier one (`dealloc_current_path_weakrefs`):
here they are filled with NaN, and a graph handed one as an input raises torch's own message. So the
pipeline's result is unchanged under this backend only if nothing it uses outlives its generation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

OVERWRITTEN = "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"


class CudaGraphOwnership:
    def __init__(self) -> None:
        self.generation: int | None = None
        self.live: list[torch.Tensor] = []  # outputs of the current generation
        self.freed: list[torch.Tensor] = []  # kept, so that no new tensor reuses their memory during a test
        self.freed_storages: set[int] = set()
        self.generations = 0
        self.calls = 0

    def backend(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        def run(*args: object) -> object:
            now = CUDAGraphTreeManager.get_curr_generation()
            if now != self.generation:  # a new generation: the previous one's outputs are gone
                for tensor in self.live:
                    tensor.fill_(float("nan"))
                    self.freed_storages.add(tensor.untyped_storage().data_ptr())
                self.freed += self.live
                self.live, self.generation = [], now
                self.generations += 1
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            if inputs & self.freed_storages:
                raise RuntimeError(f"Error: {OVERWRITTEN}.")
            self.calls += 1
            out = gm.forward(*args)
            for tensor in torch.utils._pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                    self.live.append(tensor)
            return out

        return run

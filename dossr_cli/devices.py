"""Device choices: which device and dtype, how much memory a run may use, how big a tile that buys.

Everything here that depends on the kind of device is a small named function, so tests can
ask for the CUDA answer on a CPU and the pipeline stays free of `if device.type == ...`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

MIN_TILE = 64
# Device bytes per pixel of the x4 image that the largest stage (the VAE decoder at full
# resolution: 128-256 channels, a few live tensors) needs, by bytes per value. An estimate
# that errs large; the out-of-memory fallback below covers what it gets wrong.
BYTES_PER_PIXEL = {2: 1536, 4: 3072}


def available_memory(device: torch.device) -> int:
    """Free device memory (CUDA), else the RAM this process can have: what a tile may use."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_available_memory()


def host_available_memory(meminfo: str | Path = "/proc/meminfo", cgroup: str | Path = "/sys/fs/cgroup") -> int:
    """The kernel's MemAvailable (free plus reclaimable cache: what it can give without swapping), capped
    by a container's cgroup limit. Not SC_AVPHYS_PAGES: that counts cache as used, so it swings with every
    file read and the same command would tile one moment and not the next."""
    available = None
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:  # not Linux: what the C library says
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 << 30
    left = _cgroup_memory_left(Path(cgroup))
    return min(available, left) if left is not None else available


def _cgroup_memory_left(root: Path) -> int | None:
    """limit - usage of this process's memory cgroup (v2, else v1); None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit, usage = (root / limit_file).read_text().strip(), (root / usage_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
                return None
            return max(int(limit) - int(usage), 0)
        except (OSError, ValueError):
            continue
    return None


def auto_tile_size(height: int, width: int, dtype: torch.dtype, budget: int) -> int | None:
    """The largest tile (multiple of 64, pixels of the x4 image) whose work fits `budget` bytes; None: no tiling."""
    per_pixel = BYTES_PER_PIXEL[torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4]
    if height * width * per_pixel <= budget:
        return None
    side = int(math.sqrt(max(budget, 0) / per_pixel)) // MIN_TILE * MIN_TILE
    return max(side, MIN_TILE)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def smaller_tile(tile_size: int | None, height: int, width: int) -> int | None:
    """Half the tile (or of the image when untiled), a multiple of 64; None below the smallest."""
    current = tile_size if tile_size is not None else max(height, width)
    half = current // 2 // MIN_TILE * MIN_TILE
    return half if half >= MIN_TILE else None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA where supported (else fp16), fp32 on CPU and MPS."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def channels_last_default(device: torch.device) -> bool:
    """What `memory_format="auto"` means: channels-last (NHWC) on the CPU, contiguous (NCHW) elsewhere.

    CPU, measured: oneDNN's NHWC convolutions and torch's NHWC GroupNorm ran the tiny model 10-17% faster
    (`dossr bench --random-weights --random-config tiny --size 64 --memory-format ...`: 0.74-0.90 s
    against 0.89-1.00 s), and an HWC image already made the command line's runs NHWC before this choice.
    CUDA, not measured: NHWC would suit cuDNN's half-precision convolutions, but aten's `group_norm` makes
    a CUDA input contiguous before its kernel (`input.device().is_cpu() ? input.contiguous(memory_format)
    : input.contiguous()` in aten/src/ATen/native/group_norm.cpp) and returns NCHW, so each of the ~88
    GroupNorms of a UNet step (22-30 per VAE coder) would add a copy there and another into the next
    convolution. `benchmarks/gpu_check` times both (`dossr bench --memory-format`); follow its figures.
    MPS: not measured either; contiguous.
    """
    return device.type == "cpu"


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))



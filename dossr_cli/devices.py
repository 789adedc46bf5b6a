"""Device choices: which device and dtype, how much memory a run may use, how big a tile that buys.

Everything here that depends on the kind of device is a small named function, so tests can
ask for the CUDA answer on a CPU and the pipeline stays free of `if device.type == ...`.
"""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path

import torch

MIN_TILE = 64
# What --tile-size auto chooses, from the image's size alone, so that every machine runs the same
# tiles: up to one tile's area (a megapixel of the x4 image) untiled, else tiles of this side (pixels
# of the x4 image, 128 latent pixels). Twice the 512-pixel crops the model was trained on; large
# enough that the 256-pixel overlap costs 1.6x the untiled work on a 4096x4096 output (25 tiles;
# 512-pixel tiles would cost 3.5x), small enough that self-attention stays cheap (16,384 tokens at
# the UNet's first level, against 262,144 for a whole 4096x4096 latent: 16x the attention FLOPs),
# and the tile the tiled VAE's memory model keeps a 4096x4096 output under 8 GB with.
AUTO_TILE = 1024
# Peak device bytes of the largest stage per pixel of one tile of the x4 image (or of the
# untiled image), by bytes per value, weights apart. From the memory model, the full-size
# model on the meta device (benchmarks/memory_model.py; tests/test_tiled_vae_memory.py checks
# the constant against it): bf16 1,567 at 512-pixel tiles of 896x896 and 1,948 at 1024-pixel
# tiles of 4096x4096 (the x4 preprocessor, 4 tiles per call, and the image-wide buffers),
# 1,549 untiled (the VAE decoder); fp32 3,106, 3,490 and 3,099. Rounded up; the out-of-memory
# fallback covers what it misses (cuDNN workspaces, the allocator's rounding).
BYTES_PER_PIXEL = {2: 2048, 4: 4096}


def available_memory(device: torch.device) -> int:
    """Memory a tile may use: on CUDA the driver's free memory plus what torch's allocator holds
    unused; elsewhere the RAM this process can have."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return cuda_available_memory(free, total, torch.cuda.memory_reserved(device),
                                     torch.cuda.memory_allocated(device))
    return host_available_memory()


def default_budget(device: torch.device) -> int:
    """Memory --tile-size auto may plan for without --max-memory: nine tenths of what is available
    (the rest for cuDNN's workspaces and the allocator's fragments; the OOM fallback covers worse)."""
    return available_memory(device) * 9 // 10


def cuda_available_memory(free: int, total: int, reserved: int, allocated: int) -> int:
    """mem_get_info's free bytes count the allocator's cached blocks (reserved, not allocated) as used,
    though torch hands them out first; so after one image the next would see less room than it has."""
    return min(free + max(reserved - allocated, 0), total)


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


def reproducible_tile(height: int, width: int, side: int = AUTO_TILE) -> int | None:
    """--tile-size auto by the image alone (pixels of the x4 image): None (untiled) up to `side`
    squared pixels, else `side`. The same on every machine, so the same command makes the same tiles."""
    return None if height * width <= side * side else side


def tile_work(height: int, width: int, tile: int | None, dtype: torch.dtype) -> int:
    """Estimated device bytes one image's largest stage needs on tiles of `tile` (None: untiled)."""
    per_pixel = BYTES_PER_PIXEL[torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4]
    tile_h, tile_w = (height, width) if tile is None else (min(tile, height), min(tile, width))
    return tile_h * tile_w * per_pixel


def auto_tile_size(height: int, width: int, dtype: torch.dtype, budget: int, side: int = AUTO_TILE) -> int | None:
    """`reproducible_tile`, unless one image's work on it would not fit `budget` bytes: then the largest
    multiple of 64 that fits (never below MIN_TILE). Memory only ever shrinks the tile."""
    tile = reproducible_tile(height, width, side)
    if tile_work(height, width, tile, dtype) <= budget:
        return tile
    fits = int(math.sqrt(max(budget, 0) / tile_work(1, 1, None, dtype))) // MIN_TILE * MIN_TILE
    return max(fits, MIN_TILE)


def images_at_once(height: int, width: int, tile: int | None, dtype: torch.dtype, budget: int) -> int:
    """How many images of a batch may run together on `tile` within `budget` (at least one): where
    memory is short, a batch runs in parts rather than on smaller tiles, so that no image's output
    depends on the batch it came in."""
    return max(budget // tile_work(height, width, tile, dtype), 1)


# The allocation failures of CUDA's libraries, which torch raises as a RuntimeError rather than
# torch.OutOfMemoryError: "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
# (TORCH_CUDABLAS_CHECK), "cuDNN error: CUDNN_STATUS_ALLOC_FAILED" (AT_CUDNN_CHECK).
ALLOC_FAILED = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return (isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower()
            or any(name in text for name in ALLOC_FAILED))


def release_cached_memory(device: torch.device) -> None:
    """After an out-of-memory, once nothing refers to the failed attempt any more: collect the
    reference cycles that may still hold its tensors, then give the allocator's cache back to
    the driver (cuBLAS and cuDNN allocate outside torch's allocator and need that room)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def smaller_tile(tile_size: int | None, height: int, width: int) -> int | None:
    """Half the tile (or of the image when untiled), a multiple of 64; None below the smallest."""
    current = tile_size if tile_size is not None else max(height, width)
    half = current // 2 // MIN_TILE * MIN_TILE
    return half if half >= MIN_TILE else None


def memory_text(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


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
    """What `memory_format="auto"` means: contiguous (NCHW) on every device until a measurement says otherwise.

    CPU: oneDNN's NHWC convolutions ran the tiny model 10-17% faster (`dossr bench --random-weights
    --random-config tiny --size 64 --memory-format ...`: 0.74-0.90 s against 0.89-1.00 s, a noisy VM), but
    the full-size model is unmeasured and reading the weights into NHWC costs a copy of each conv weight at
    load (peak 1.23x the fp32 weights against 1.04x, tests/test_cold_start.py): opt in with
    `--memory-format channels-last` where it pays.
    CUDA, not measured: NHWC would suit cuDNN's half-precision convolutions, but aten's `group_norm` makes
    a CUDA input contiguous before its kernel (`input.device().is_cpu() ? input.contiguous(memory_format)
    : input.contiguous()` in aten/src/ATen/native/group_norm.cpp) and returns NCHW, so each of the ~88
    GroupNorms of a UNet step (22-30 per VAE coder) would add a copy there and another into the next
    convolution. `benchmarks/gpu_check.sh` times both (`dossr bench --memory-format`); follow its figures.
    """
    return False


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))



"""Read a safetensors file and check its sha256 in the same pass over the disk.

Each tensor's bytes are read straight into its own freshly allocated storage and fed to the
hash as they arrive, so the weights are never used unverified (a stamp of size and mtime
would let bit rot through), never read twice, and never held twice in memory. The header
is checked here by safetensors' own rules (known dtype, sizes that match the shapes,
contiguous offsets that cover the file), because we parse it ourselves.

The tensors land where the pipeline will run them: on the CPU in the file's dtype with no
copy at all; in another dtype one tensor at a time (cast as it is read, so the whole file is
never held in both dtypes); on a GPU through a small ring of (pinned, on CUDA) host chunks,
each copied to the device while the next is read, and cast there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch

# Our bundles hold float weights only (fp32, fp16, bf16); anything else is not a dossr bundle.
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_DIMS, MAX_DIM = 8, 1 << 40
CHUNK = 1 << 24


class DamagedFileError(ValueError):
    """What is wrong with one file (the caller adds which file and what to do)."""


def read_verified(path: Path, expected_bytes: int, expected_sha256: str, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, staged: bool | None = None,
                  memory_format: torch.memory_format | None = None) -> dict[str, torch.Tensor]:
    """The tensors of `path` on `device`, in `dtype` (None: the file's), 4-D ones in `memory_format`
    (None: as stored; a layout given here costs one tensor's copy at a time, not the model's), raising DamagedFileError
    unless its size and sha256 are the expected ones. `staged` forces the host-chunk path (default:
    `reads_through_host(device)`), so a CPU test can run the code a GPU load runs."""
    device = torch.device(device)
    through_host = reads_through_host(device) if staged is None else staged
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != expected_bytes:
            raise DamagedFileError(f"has {size} bytes where the bundle's record says {expected_bytes} (truncated?)")
        if size < 8:
            raise DamagedFileError("is too short to be a safetensors file")
        header_length = int.from_bytes(_read_exact(handle, 8, digest), "little")
        if header_length > min(MAX_HEADER_BYTES, size - 8):
            raise DamagedFileError(f"is not a valid safetensors file (its header claims {header_length} bytes)")
        entries = parse_header(_read_exact(handle, header_length, digest), size - 8 - header_length)
        staging = HostStaging(device, pins_host_chunks(device), min(CHUNK, max(size - 8 - header_length, 1))) \
            if through_host else None
        tensors = {}
        for name, file_dtype, shape, _ in entries:
            if staging is not None:
                tensor = staging.read(handle, shape, file_dtype, digest)
            else:
                tensor = torch.empty(shape, dtype=file_dtype)
                _read_into(handle, tensor, digest)
            # cast where it lies (on the device after staging); no copy at all when nothing changes
            layout = memory_format if memory_format is not None and tensor.ndim == 4 else torch.preserve_format
            tensors[name] = tensor.to(device=device, dtype=dtype or file_dtype, memory_format=layout)
    if digest.hexdigest() != expected_sha256:
        raise DamagedFileError("is corrupt: its sha256 differs from the bundle's record")
    return tensors


def reads_through_host(device: torch.device) -> bool:
    """Only the CPU can read a file straight into a tensor's storage; other devices get host chunks."""
    return device.type != "cpu"


def pins_host_chunks(device: torch.device) -> bool:
    """Page-locked chunks let CUDA copy asynchronously (and faster); elsewhere pinning buys nothing."""
    return device.type == "cuda"


class HostStaging:
    """A ring of host chunks through which tensors reach `device`: while one chunk is copied to the
    device (asynchronously when pinned), the next is read from the file and hashed. A chunk is
    refilled only after its copy finished (a CUDA event), so no byte changes under a running copy."""

    def __init__(self, device: torch.device, pinned: bool, chunk: int = CHUNK, depth: int = 2) -> None:
        self.device, self.pinned = device, pinned
        self.chunks = [torch.empty(chunk, dtype=torch.uint8, pin_memory=pinned) for _ in range(depth)]
        self.copies: list[object | None] = [None] * depth
        self.turn = 0

    def read(self, handle, shape: tuple[int, ...], dtype: torch.dtype, digest) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        target = tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor
        size = self.chunks[0].numel()
        for start in range(0, tensor.numel() * dtype.itemsize, size):
            slot = self.turn % len(self.chunks)
            self.turn += 1
            if self.copies[slot] is not None:
                self.copies[slot].synchronize()
            piece = self.chunks[slot][:min(size, target.numel() - start)]
            view = memoryview(piece.numpy())
            _fill(handle, view)
            digest.update(view)
            target[start:start + piece.numel()].copy_(piece, non_blocking=self.pinned)
            self.copies[slot] = _copy_done(self.device) if self.pinned else None
        return tensor


def _copy_done(device: torch.device) -> object:
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def parse_header(raw: bytes, data_bytes: int) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
    """(name, dtype, shape, offset) per tensor, in file order; raise DamagedFileError on any inconsistency."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:
        raise DamagedFileError(f"has a damaged safetensors header ({_first_line(error)})") from None
    if not isinstance(header, dict):
        raise DamagedFileError("has a damaged safetensors header (not a JSON object)")
    entries = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = _check_entry(name, entry)
        if (end - begin) != math.prod(shape) * dtype.itemsize:
            raise DamagedFileError(f"has a damaged safetensors header ({name!r}: {end - begin} bytes for shape "
                                   f"{list(shape)} of {dtype})")
        entries.append((name, dtype, shape, begin, end))
    entries.sort(key=lambda e: (e[3], e[4]))
    position = 0
    for name, _, _, begin, end in entries:
        if begin != position:
            raise DamagedFileError(f"has a damaged safetensors header ({name!r} does not follow the tensor before it)")
        position = end
    if position != data_bytes:
        raise DamagedFileError(f"has a damaged safetensors header (tensors cover {position} of {data_bytes} bytes)")
    return [(name, dtype, shape, begin) for name, dtype, shape, begin, _ in entries]


def _check_entry(name: str, entry: object) -> tuple[torch.dtype, tuple[int, ...], tuple[int, int]]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise DamagedFileError(f"has a damaged safetensors header ({name!r} lacks dtype, shape or data_offsets)")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        raise DamagedFileError(f"holds {name!r} as {str(dtype)[:16]!r} where float weights (F32, F16, BF16) are "
                               "expected")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_int(d, MAX_DIM) for d in shape)):
        raise DamagedFileError(f"has a damaged safetensors header ({name!r} has no valid shape)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o, 1 << 62) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise DamagedFileError(f"has a damaged safetensors header ({name!r} has no valid data_offsets)")
    return FLOAT_DTYPES[dtype], tuple(shape), (offsets[0], offsets[1])


def _is_int(value: object, bound: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bound


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a name appears twice")
    return result


def _read_exact(handle, count: int, digest) -> bytes:
    buffer = bytearray(count)
    _fill(handle, memoryview(buffer))
    digest.update(buffer)
    return bytes(buffer)


def _fill(handle, piece: memoryview) -> None:
    """Fill `piece` from the file: a raw read may return less than asked."""
    got = 0
    while got < len(piece):
        more = handle.readinto(piece[got:])
        if not more:
            raise DamagedFileError("ended early while it was read (truncated?)")
        got += more


def _read_into(handle, tensor: torch.Tensor, digest) -> None:
    """safetensors stores little-endian, as the machines torch runs on are (checked below)."""
    if tensor.numel() == 0:
        return
    view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
    for start in range(0, len(view), CHUNK):
        piece = view[start:start + CHUNK]
        _fill(handle, piece)
        digest.update(piece)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:120]


if sys.byteorder != "little":  # pragma: no cover - no big-endian machine runs torch's wheels
    raise ImportError("dossr reads safetensors files on little-endian machines only")

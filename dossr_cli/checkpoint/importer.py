"""Import of the authors' pickled checkpoint into our bundle, without ever running its code.

The pickle is read only with `torch.load(weights_only=True, mmap=True)`: tensors stay in
the page cache instead of being copied, and a pickle that needs code is refused. Before
that, every zip record's CRC-32 is checked (torch's reader does not check it), and after
it every weight must be a finite float of plausible size: nothing is written otherwise.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from dossr_cli.checkpoint.authors import (
    SCHEDULE_BUFFERS,
    TEXT_UNUSED,
    CheckpointLayoutError,
    canonical_state_dict,
    networks_from_authors_state_dict,
)
from dossr_cli.checkpoint.bundle import save_bundle, sha256_file
from dossr_cli.errors import WeightsError

BUNDLE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class UnsafeCheckpointError(WeightsError):
    """A pickle that would need to run code to load: refused, nothing of it executed."""


# Trained SD 2.1 / ControlNet / Real-ESRNet weights are small (they ship in fp16, and norm gains and
# kernels sit orders of magnitude below this); 1e4 is far above them and still below fp16's 65504,
# where an fp16 bundle would turn the weight into inf. Larger means a damaged or fabricated file.
MAX_ABS_WEIGHT = 1e4
REDOWNLOAD = "download it again (or get a good copy of the authors' file)"
NOT_DOSSR = "use the authors' DoSSR checkpoint (dossr weights download), or download it again if it is damaged"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # a legacy torch.save file (or a bare pickle) opens with a protocol marker


def load_checkpoint_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a .ckpt/.pth file, read safely; raise WeightsError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file (download it with: dossr weights download)")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise WeightsError(f"{path} is empty: download it again")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise WeightsError(f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle); "
                           f"{NOT_DOSSR}")
    if head.startswith(ZIP_MAGIC):
        check_zip_records(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols would break the one-line error
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(ZIP_MAGIC))
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
        if blocked:
            raise UnsafeCheckpointError(
                f"{path} refused: it holds Python objects that would run code when loaded ({blocked.group(1)[:80]}), "
                "and dossr only loads plain tensors; use the authors' original file (dossr weights download)") from None
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?); {REDOWNLOAD}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError,
            AttributeError, MemoryError, OverflowError, RecursionError, UnicodeDecodeError) as error:
        # torch's unpickler reports damaged records with whatever Python raised deep inside it
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?): {_first_line(error)}; "
                           f"{REDOWNLOAD}") from None
    try:
        state = canonical_state_dict(obj)
    except CheckpointLayoutError as error:
        raise CheckpointLayoutError(f"{path}: {error}; {NOT_DOSSR}") from None
    return state


def check_zip_records(path: Path) -> None:
    """Every record's CRC-32 against the zip directory. torch's reader (miniz in PyTorchStreamReader)
    never checks them, so a flipped bit in a stored tensor would import silently; `zipfile` checks
    each record as it reads it to the end (one extra read of the file, once per import)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, KeyError,
            IndexError, OverflowError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?): its zip archive is "
                           f"damaged ({_first_line(error)}); {REDOWNLOAD}") from None
    if bad is not None:
        raise WeightsError(f"{path} is corrupt: its record {bad[:80]} does not match its CRC-32 (a damaged download "
                           f"or disk); {REDOWNLOAD}")


def check_float_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Every weight a float: bool, integer or complex tensors are no trained model's (and converting
    them would be silent, or warn on stderr)."""
    for key, value in state.items():
        if not value.is_floating_point() and key not in SCHEDULE_BUFFERS:
            raise WeightsError(f"{path}: {key[:100]} holds {str(value.dtype).removeprefix('torch.')} values where "
                               f"float weights are expected: the file is damaged or not real weights; {REDOWNLOAD}")


def check_plausible_values(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse values no trained model has: NaN or inf, absurdly large, or an all-zero matrix or
    kernel (a trained layer is never exactly zero). Schedule buffers are read by nobody."""
    for key, value in state.items():
        if key in SCHEDULE_BUFFERS or value.numel() == 0:
            continue
        low, high = (float(v) for v in torch.aminmax(value.detach()))
        largest = max(-low, high)
        if not math.isfinite(largest):  # NaN propagates through aminmax
            problem = "holds NaN or infinite values"
        elif largest > MAX_ABS_WEIGHT:
            problem = f"holds values up to {largest:.3g}, far beyond any trained weight (limit {MAX_ABS_WEIGHT:g})"
        elif largest == 0 and value.dim() >= 2 and not key.endswith(TEXT_UNUSED):
            problem = "is all zeros, which no trained layer is"
        else:
            continue
        raise WeightsError(f"{path}: {key[:100]} {problem}: the file is damaged or not real weights; {REDOWNLOAD}")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:120]


def import_checkpoint(path: Path, dest: Path, dtype: str | None = None, name: str | None = None) -> Path:
    """Convert the authors' checkpoint at `path` into a bundle at `dest` (written atomically)."""
    if dtype is not None and dtype not in BUNDLE_DTYPES:
        raise WeightsError(f"--dtype must be one of {', '.join(BUNDLE_DTYPES)}; got {dtype!r}")
    path = Path(path)
    state = load_checkpoint_file(path)
    check_float_weights(state, path)
    try:
        networks = networks_from_authors_state_dict(state)
    except CheckpointLayoutError as error:
        raise CheckpointLayoutError(f"{path}: {error}; {NOT_DOSSR}") from None
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, RuntimeError, AttributeError) as error:
        # diffusers' converters index keys and shapes without checking them: a damaged layout lands here
        raise CheckpointLayoutError(f"{path}: not in the authors' layout ({type(error).__name__}: "
                                    f"{_first_line(error)}); {NOT_DOSSR}") from None
    check_plausible_values(state, path)  # after the layout, whose errors say more about a wrong file
    metadata = {
        "name": name or dest.name,
        "dtype": dtype or "fp32",
        "source": {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)},
    }
    return save_bundle(networks, dest, dtype=BUNDLE_DTYPES[dtype] if dtype else None, metadata=metadata)

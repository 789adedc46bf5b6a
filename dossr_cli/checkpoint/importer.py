"""Import of the authors' pickled checkpoint into our bundle, without ever running its code.

The pickle is read only with `torch.load(weights_only=True, mmap=True)`: tensors stay in
the page cache instead of being copied, and a pickle that needs code is refused.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from dossr_cli.checkpoint.authors import CheckpointLayoutError, networks_from_authors_state_dict
from dossr_cli.checkpoint.bundle import save_bundle, sha256_file
from dossr_cli.errors import WeightsError

BUNDLE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class UnsafeCheckpointError(WeightsError):
    """A pickle that would need to run code to load: refused, nothing of it executed."""


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # a legacy torch.save file (or a bare pickle) opens with a protocol marker


def load_checkpoint_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a .ckpt/.pth file, read safely; raise WeightsError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise WeightsError(f"{path} is empty: download it again")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise WeightsError(f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle)")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols would break the one-line error
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(ZIP_MAGIC))
    except pickle.UnpicklingError as error:
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported global" in line]
        if blocked:
            raise UnsafeCheckpointError(
                f"{path} refused: it holds Python objects that would run code when loaded, and dossr only "
                f"loads plain tensors ({blocked[0][:120]})") from None
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise WeightsError(f"{path} is not a readable checkpoint (corrupt or truncated?): {reason}") from None
    from dossr_cli.checkpoint.authors import canonical_state_dict

    return canonical_state_dict(obj)


def import_checkpoint(path: Path, dest: Path, dtype: str | None = None, name: str | None = None) -> Path:
    """Convert the authors' checkpoint at `path` into a bundle at `dest` (written atomically)."""
    if dtype is not None and dtype not in BUNDLE_DTYPES:
        raise WeightsError(f"--dtype must be one of {', '.join(BUNDLE_DTYPES)}; got {dtype!r}")
    path = Path(path)
    state = load_checkpoint_file(path)
    try:
        networks = networks_from_authors_state_dict(state)
    except CheckpointLayoutError as error:
        raise CheckpointLayoutError(f"{path}: {error}") from None
    metadata = {
        "name": name or dest.name,
        "dtype": dtype or "fp32",
        "source": {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)},
    }
    return save_bundle(networks, dest, dtype=BUNDLE_DTYPES[dtype] if dtype else None, metadata=metadata)

"""Our weight bundle: one safetensors file per component and a small JSON config.

A bundle is a folder. It is written into a temporary sibling and renamed into place
only when complete, so a half-written bundle never sits under the final name; each
file's sha256 is recorded in the config and can be checked before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dossr_cli.checkpoint.paths import cache_root
from dossr_cli.errors import WeightsError
from dossr_cli.networks import COMPONENTS, DoSSRNetworks
from dossr_cli.networks.config import ModelConfig

BUNDLE_FORMAT = "dossr-bundle"
BUNDLE_VERSION = 1
CONFIG_NAME = "dossr.json"


class BundleError(WeightsError, ValueError):
    """A folder that is not a complete, intact dossr weight bundle."""


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(networks: DoSSRNetworks, folder: Path, dtype: torch.dtype | None = None,
                metadata: dict[str, Any] | None = None) -> Path:
    """Write `networks` as a bundle at `folder` (which must not exist yet)."""
    folder = Path(folder)
    if folder.exists():
        raise BundleError(f"{folder} already exists")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        files = {}
        for name, state in networks.component_state_dicts().items():
            tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() and name != "context" else v)
                       .detach().cpu().contiguous() for k, v in state.items()}
            path = staging / f"{name}.safetensors"
            save_file(tensors, str(path))
            files[name] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        config = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "model": networks.config.to_dict(),
            "components": files,
            **(metadata or {}),
        }
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_bundle_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not a dossr weight bundle (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{path} is unreadable: {error}") from error
    if config.get("format") != BUNDLE_FORMAT or config.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path} is not a dossr bundle of format version {BUNDLE_VERSION}")
    if set(config.get("components", {})) != set(COMPONENTS):
        raise BundleError(f"{path} does not list the components {', '.join(COMPONENTS)}")
    return config


def _stamp_path(folder: Path) -> Path:
    """Kept in our cache, not in the bundle: bundles may be read-only or in another tool's cache."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:24]
    return cache_root() / "verified" / f"{key}.json"


def _file_states(folder: Path, config: dict[str, Any]) -> dict[str, list[int]]:
    states = {}
    for entry in config["components"].values():
        stat = (Path(folder) / entry["file"]).stat()
        states[entry["file"]] = [stat.st_size, stat.st_mtime_ns]
    return states


def verify_bundle(folder: Path, trust_stamp: bool = False) -> None:
    """Check every file's size and sha256 against the config; raise on the first mismatch.

    With `trust_stamp`, the hashing is skipped when no file's size or mtime changed since
    the last full check passed (recorded in our cache): hashing gigabytes on every run
    would cost seconds, while a truncated or rewritten file still changes its stat.
    """
    config = read_bundle_config(folder)
    stamp = _stamp_path(folder)
    if trust_stamp and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == _file_states(folder, config):
                return
        except (OSError, ValueError):
            pass
    for entry in config["components"].values():
        path = Path(folder) / entry["file"]
        if not path.is_file():
            raise BundleError(f"{path} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise BundleError(f"{path} has {path.stat().st_size} bytes, expected {entry['bytes']}")
        if sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{path} is corrupt: its sha256 differs from the bundle's record")
    try:  # without a writable cache the bundle simply gets hashed again next time
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(_file_states(folder, config)))
    except OSError:
        pass


def load_bundle(folder: Path, verify: bool = True) -> DoSSRNetworks:
    """Build the networks from a bundle without a throwaway random initialisation.

    `verify` checks sha256s unless the files are unchanged since the last check passed.
    """
    folder = Path(folder)
    config = read_bundle_config(folder)
    if verify:
        verify_bundle(folder, trust_stamp=True)
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{folder / CONFIG_NAME}: bad model config: {error}") from error
    parts = {}
    for name, entry in config["components"].items():
        path = folder / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            raise BundleError(f"{path} is missing or truncated; run `dossr weights verify` or import again")
        parts[name] = load_file(str(path))
    with torch.device("meta"):
        networks = DoSSRNetworks(model_config)
    networks.load_component_state_dicts(parts, assign=True)
    return networks

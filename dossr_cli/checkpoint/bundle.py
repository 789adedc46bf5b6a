"""Our weight bundle: one safetensors file per component and a small JSON config.

A bundle is a folder. It is written into a temporary sibling and renamed into place
only when complete, so a half-written bundle never sits under the final name; each
file's sha256 is recorded in the config and can be checked before use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dossr_cli.checkpoint.hashed_read import DamagedFileError, read_verified
from dossr_cli.checkpoint.paths import cache_root
from dossr_cli.errors import WeightsError
from dossr_cli.networks import COMPONENTS, DoSSRNetworks
from dossr_cli.networks.config import ModelConfig

BUNDLE_FORMAT = "dossr-bundle"
BUNDLE_VERSION = 1
CONFIG_NAME = "dossr.json"
MAX_CONFIG_BYTES = 1 << 20
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
MAX_LEVELS, MAX_SIZE = 16, 1 << 16  # bounds no real architecture comes near, so a damaged value cannot build a giant


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
    """The bundle's dossr.json, checked field by field: a damaged one is refused in one line, never half-read."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not a dossr weight bundle (no {CONFIG_NAME}): point --weights at a bundle "
                          "folder, a .ckpt file or a name, or download or import the weights again")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes is far more than a {CONFIG_NAME} holds")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise BundleError(f"{path} is unreadable ({_first_line(error)}); {repair_advice(folder)}") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT \
            or config.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path} is not a dossr bundle of format version {BUNDLE_VERSION}; {repair_advice(folder)}")
    components = config.get("components")
    if not isinstance(components, dict) or set(components) != set(COMPONENTS):
        raise BundleError(f"{path} does not list the components {', '.join(COMPONENTS)}; {repair_advice(folder)}")
    for name, entry in components.items():
        problem = _component_problem(entry)
        if problem:
            raise BundleError(f"{path}: the record of {name} {problem}; {repair_advice(folder)}")
    return config


def _component_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return "is not an object"
    file, size, sha256 = entry.get("file"), entry.get("bytes"), entry.get("sha256")
    if not (isinstance(file, str) and file.endswith(".safetensors") and Path(file).name == file
            and "\\" not in file and not file.startswith(".")):
        return "names no safetensors file inside the bundle"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "has no valid byte count"
    if not (isinstance(sha256, str) and SHA256_PATTERN.fullmatch(sha256)):
        return "has no valid sha256"
    return None


def repair_advice(folder: Path) -> str:
    """What to do about damaged weights, for the end of a one-line error."""
    folder = Path(folder)
    check = f"`dossr weights verify {folder}` checks every file"
    if folder.parent.resolve() == (cache_root() / "weights").resolve():
        return f"remove them (dossr weights rm {folder.name}) and download or import them again ({check})"
    return f"download or import these weights again ({check})"


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


def _record_stamp(folder: Path, config: dict[str, Any] | None) -> None:
    """Record (or, with None, forget) that every file of `folder` matched its sha256 as it is now."""
    stamp = _stamp_path(folder)
    try:  # without a writable cache the bundle is simply checked in full next time
        if config is None:
            stamp.unlink(missing_ok=True)
        else:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps(_file_states(folder, config)))
    except OSError:
        pass


def verify_bundle(folder: Path, trust_stamp: bool = False) -> None:
    """Check every file's size and sha256 against the config; raise on the first mismatch.

    `trust_stamp` is only for a caller that is about to load the bundle anyway (deciding whether a
    cached download must be fetched again): it skips this pass when no file's size or mtime changed
    since the last full check passed. Loading never trusts the stamp: `load_bundle` hashes every
    byte as it reads it, so bit rot with its size and mtime put back is still refused.
    """
    config = read_bundle_config(folder)
    if trust_stamp:
        try:
            if json.loads(_stamp_path(folder).read_text()) == _file_states(folder, config):
                return
        except (OSError, ValueError):
            pass
    for entry in config["components"].values():
        path = Path(folder) / entry["file"]
        problem = None
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != entry["bytes"]:
            problem = f"has {path.stat().st_size} bytes, expected {entry['bytes']}"
        elif sha256_file(path) != entry["sha256"]:
            problem = "is corrupt: its sha256 differs from the bundle's record"
        if problem:
            _record_stamp(folder, None)
            raise BundleError(f"{path} {problem}; {repair_advice(folder)}")
    _record_stamp(folder, config)


def model_config_of(config: dict[str, Any], folder: Path) -> ModelConfig:
    """The architecture in dossr.json, with every value of the type and range a model can have."""
    where = Path(folder) / CONFIG_NAME
    try:
        model_config = ModelConfig.from_dict(config["model"])
        _check_values(dataclasses.asdict(model_config), dataclasses.asdict(ModelConfig()), "model")
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{where}: bad model config ({_first_line(error)}); {repair_advice(folder)}") from None
    return model_config


def _check_values(values: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    for key, default in defaults.items():
        value = values[key]
        if isinstance(default, dict):
            _check_values(value, default, f"{where}.{key}")
        elif isinstance(default, tuple):
            if not (isinstance(value, tuple) and len(value) <= MAX_LEVELS and all(_is_size(v) for v in value)):
                raise ValueError(f"{where}.{key} must be a list of at most {MAX_LEVELS} whole numbers")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{where}.{key} must be a number")
        elif not _is_size(value):
            raise ValueError(f"{where}.{key} must be a whole number from 0 to {MAX_SIZE}")


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE


def _build_on_meta(model_config: ModelConfig, folder: Path) -> DoSSRNetworks:
    """The networks without storage. A config that passes the type checks can still describe no
    network (a width GroupNorm cannot split, zero levels): whatever diffusers raises then is the
    file's fault, so it becomes the bundle's one-line error rather than a traceback."""
    try:
        with torch.device("meta"):
            return DoSSRNetworks(model_config)
    except Exception as error:  # noqa: BLE001 - untrusted file content reaching third-party constructors
        raise BundleError(f"{Path(folder) / CONFIG_NAME}: the model config describes no network dossr can build "
                          f"({type(error).__name__}: {_first_line(error)}); {repair_advice(folder)}") from None


def load_bundle(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                memory_format: torch.memory_format | None = None) -> DoSSRNetworks:
    """Build the networks from a bundle on `device` in `dtype` (None: the files' own), every byte
    checked against its sha256 as it is read.

    One pass over the disk per file (files in parallel threads: hashlib and file reads release
    the GIL), one copy in memory, no throwaway random initialisation; each tensor lands on the
    device and in the dtype the pipeline runs, so its own `.to(device, dtype)` then copies nothing.
    Anything wrong is refused before the networks exist, so before any output can be written.
    """
    folder = Path(folder)
    config = read_bundle_config(folder)
    networks = _build_on_meta(model_config_of(config, folder), folder)
    expected = networks.component_state_dicts()
    entries = config["components"]
    with ThreadPoolExecutor(max_workers=max(1, min(len(entries), os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(_read_component, folder, entry, device, dtype, memory_format)
                   for name, entry in entries.items()}
        parts = {name: future.result() for name, future in futures.items()}  # the first failure, in order
    for name, tensors in parts.items():
        _check_component(folder / entries[name]["file"], tensors, expected[name], folder)
    try:
        networks.load_component_state_dicts(parts, assign=True)
    except (RuntimeError, ValueError) as error:
        raise BundleError(f"{folder}: the weights do not fit the model ({_first_line(error)}); "
                          f"{repair_advice(folder)}") from None
    _record_stamp(folder, config)
    return networks


def _read_component(folder: Path, entry: dict[str, Any], device: str | torch.device,
                    dtype: torch.dtype | None, memory_format: torch.memory_format | None = None
                    ) -> dict[str, torch.Tensor]:
    path = folder / entry["file"]
    try:
        return read_verified(path, entry["bytes"], entry["sha256"], device, dtype, memory_format=memory_format)
    except FileNotFoundError:
        problem = "is missing"
    except OSError as error:
        problem = f"cannot be read ({_first_line(error)})"
    except DamagedFileError as error:
        problem = str(error)
    _record_stamp(folder, None)
    raise BundleError(f"{path} {problem}; {repair_advice(folder)}")


def _check_component(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     folder: Path) -> None:
    """Names and shapes against the networks dossr.json describes, as one line instead of torch's list."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problem = None
    if missing:
        problem = f"lacks {len(missing)} tensor(s) the model config needs, e.g. {missing[0]}"
    elif unexpected:
        problem = f"holds {len(unexpected)} tensor(s) the model config has no place for, e.g. {unexpected[0]}"
    else:
        wrong = next((k for k, v in tensors.items() if v.shape != expected[k].shape), None)
        if wrong is not None:
            problem = (f"holds {wrong} with shape {list(tensors[wrong].shape)} where the model config needs "
                       f"{list(expected[wrong].shape)}")
    if problem:
        raise BundleError(f"{path} {problem}; {repair_advice(folder)}")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:160]

"""Loading our bundle: every byte checked as it is read, and every damaged file refused in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from dossr_cli.checkpoint.bundle import BundleError, load_bundle, save_bundle, verify_bundle
from dossr_cli.random_weights import random_networks

ADVICE = ("download or import", "dossr weights verify")


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(random_networks(seed=0), tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def bundle(good_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOSSR_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(good_bundle, tmp_path / "b"))


def flip_with_stat_put_back(path: Path, offset: int) -> None:
    """Bit rot: one byte changes, the size and the mtime stay what they were."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def one_line_about(error: pytest.ExceptionInfo, file: str) -> str:
    message = str(error.value)
    assert "\n" not in message and file in message and all(a in message for a in ADVICE), message
    return message


@pytest.mark.parametrize("file", ["unet.safetensors", "context.safetensors"])
def test_bit_rot_after_a_good_run_is_refused_although_size_and_mtime_were_put_back(bundle, file):
    load_bundle(bundle)  # a good run: a stamp of sizes and mtimes used to be trusted after it
    target = bundle / file
    flip_with_stat_put_back(target, target.stat().st_size - 5)
    with pytest.raises(BundleError, match="sha256") as error:
        load_bundle(bundle)
    one_line_about(error, str(target))
    with pytest.raises(BundleError, match="sha256"):  # `dossr weights verify` finds it too
        verify_bundle(bundle)


def test_verified_stamp_is_forgotten_once_loading_finds_rot(bundle):
    """A stamp only spares a cached download's pre-check; after rot is found, that check runs in full."""
    verify_bundle(bundle)
    flip_with_stat_put_back(bundle / "vae.safetensors", 100)
    with pytest.raises(BundleError):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(bundle, trust_stamp=True)


def _resign(bundle: Path, file: str, data: bytes) -> None:
    """Replace a file and record its new size and sha256: a consistent bundle whose content is wrong."""
    (bundle / file).write_bytes(data)
    config = json.loads((bundle / "dossr.json").read_text())
    for entry in config["components"].values():
        if entry["file"] == file:
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (bundle / "dossr.json").write_text(json.dumps(config))


def _header(data: bytes) -> tuple[int, dict]:
    length = int.from_bytes(data[:8], "little")
    return length, json.loads(data[8:8 + length])


def _with_header(data: bytes, header: dict) -> bytes:
    length, _ = _header(data)
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[8 + length:]


def _edit_header(bundle: Path, edit) -> None:
    data = (bundle / "preprocessor.safetensors").read_bytes()
    _, header = _header(data)
    edit(header)
    _resign(bundle, "preprocessor.safetensors", _with_header(data, header))


def _edit_config(bundle: Path, edit) -> None:
    config = json.loads((bundle / "dossr.json").read_text())
    config = edit(config) or config
    (bundle / "dossr.json").write_text(json.dumps(config))


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _swap_first_two_dims(header: dict) -> None:
    """Same bytes, other shape: e.g. a conv kernel of 8 x 3 x 3 x 3 read as 3 x 8 x 3 x 3."""
    name = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) >= 2
                and v["shape"][0] != v["shape"][1])
    shape = header[name]["shape"]
    header[name]["shape"] = [shape[1], shape[0], *shape[2:]]


# Each of these gave a generic message (TypeError, AttributeError, SafetensorsError, a page of torch's
# load_state_dict report) or loaded wrong weights without a word.
DAMAGES = {
    "config is a list": (lambda b: (b / "dossr.json").write_text("[1, 2]"), "dossr.json"),
    "config not utf-8": (lambda b: (b / "dossr.json").write_bytes(b'{"format": "\xff"}'), "dossr.json"),
    "component record not an object": (lambda b: _edit_config(b, lambda c: c["components"].update(unet=3)),
                                       "dossr.json"),
    "byte count a string": (lambda b: _edit_config(b, lambda c: c["components"]["vae"].update(bytes="12")),
                            "dossr.json"),
    "file outside the bundle": (lambda b: _edit_config(
        b, lambda c: c["components"]["vae"].update(file="../vae.safetensors")), "dossr.json"),
    "model width a string": (lambda b: _edit_config(b, lambda c: c["model"]["unet"].update(model_channels="64")),
                             "dossr.json"),
    "model levels zero": (lambda b: _edit_config(b, lambda c: c["model"]["unet"].update(channel_mult=[])),
                          "dossr.json"),
    "model not an object": (lambda b: _edit_config(b, lambda c: c.update(model=None)), "dossr.json"),
    "header length garbage": (lambda b: _resign(b, "preprocessor.safetensors", (2**40).to_bytes(8, "little")
                                                + (b / "preprocessor.safetensors").read_bytes()[8:]),
                              "preprocessor.safetensors"),
    "integer tensor": (lambda b: _edit_header(b, lambda h: h[_first_tensor(h)].update(dtype="I32")),
                       "preprocessor.safetensors"),
    "shape for other weights": (lambda b: _edit_header(b, _swap_first_two_dims), "preprocessor.safetensors"),
    "tensor renamed": (lambda b: _edit_header(b, lambda h: h.update({"x": h.pop(_first_tensor(h))})),
                       "preprocessor.safetensors"),
    "tensor dropped": (lambda b: _edit_header(b, lambda h: h.pop(_first_tensor(h))), "preprocessor.safetensors"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_every_damaged_bundle_is_one_line_naming_the_file_and_what_to_do(bundle, damage):
    make, file = DAMAGES[damage]
    make(bundle)
    with pytest.raises(BundleError) as error:
        load_bundle(bundle)
    one_line_about(error, file)

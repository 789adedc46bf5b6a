"""Loading straight to the device and dtype: the same weights as loading then converting, no full
second copy of the model in memory, and the host-chunk path a GPU load takes, run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dossr_cli.checkpoint import hashed_read
from dossr_cli.checkpoint.bundle import load_bundle, save_bundle, sha256_file
from dossr_cli.checkpoint.hashed_read import DamagedFileError, read_verified
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    networks = random_networks(seed=0)
    root = tmp_path_factory.mktemp("bundles")
    return {"fp32": save_bundle(networks, root / "fp32"), "fp16": save_bundle(networks, root / "fp16", torch.float16)}


def state(networks: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**networks.state_dict()}


@pytest.mark.parametrize(("bundle", "dtype"), [("fp32", torch.float16), ("fp32", torch.bfloat16),
                                               ("fp16", torch.float32), ("fp16", torch.float16)])
def test_loading_in_a_dtype_gives_the_weights_loading_then_converting_gives(tiny_bundles, bundle, dtype):
    direct = state(load_bundle(tiny_bundles[bundle], device="cpu", dtype=dtype))
    converted = state(load_bundle(tiny_bundles[bundle]).to(dtype))
    assert direct.keys() == converted.keys()
    for key, tensor in converted.items():
        assert direct[key].dtype == dtype and direct[key].device.type == "cpu", key
        assert torch.equal(direct[key], tensor), key


def test_from_pretrained_loads_in_the_run_dtype_so_construction_moves_nothing(tiny_bundles):
    pipe = DoSSRPipeline.from_pretrained(tiny_bundles["fp32"], device="cpu", dtype="bf16")
    expected = state(load_bundle(tiny_bundles["fp32"]).to(torch.bfloat16))
    assert all(torch.equal(t, expected[k]) and t.dtype == torch.bfloat16 for k, t in state(pipe.networks).items())
    networks = load_bundle(tiny_bundles["fp16"], device="cpu", dtype=torch.float16)
    before = {k: t.data_ptr() for k, t in state(networks).items()}
    rebuilt = DoSSRPipeline(networks, device="cpu", dtype="fp16")  # its .to(device, dtype): nothing to do
    assert {k: t.data_ptr() for k, t in state(rebuilt.networks).items()} == before
    # channels-last asked for: read in that layout, so construction moves nothing either
    nhwc = DoSSRPipeline.from_pretrained(tiny_bundles["fp16"], device="cpu", dtype="fp16", memory_format="channels-last")
    conv = nhwc.networks.vae.decoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    networks = load_bundle(tiny_bundles["fp16"], device="cpu", dtype=torch.float16, memory_format=torch.channels_last)
    before = {k: t.data_ptr() for k, t in state(networks).items()}
    rebuilt = DoSSRPipeline(networks, device="cpu", dtype="fp16", memory_format="channels-last")
    assert {k: t.data_ptr() for k, t in state(rebuilt.networks).items()} == before


def write_file(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[int, str]:
    save_file(tensors, str(path))
    return path.stat().st_size, sha256_file(path)


@pytest.fixture
def odd_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Sizes that straddle the chunks: larger than several, exactly one, none at all, a scalar."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"big": torch.randn(37, 101, generator=generator), "half": torch.randn(250, generator=generator).half(),
               "one_chunk": torch.randn(250, generator=generator), "empty": torch.zeros(0, 4),
               "scalar": torch.tensor(3.5, dtype=torch.bfloat16)}
    path = tmp_path / "odd.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.bfloat16])
def test_the_host_chunk_path_reads_what_the_direct_path_reads(odd_file, monkeypatch, dtype):
    path, tensors = odd_file
    monkeypatch.setattr(hashed_read, "CHUNK", 1000)  # many chunks per tensor, and the ring wraps around
    size, sha = path.stat().st_size, sha256_file(path)
    staged = read_verified(path, size, sha, "cpu", dtype, staged=True)
    direct = read_verified(path, size, sha, "cpu", dtype, staged=False)
    assert staged.keys() == tensors.keys()
    for name, tensor in tensors.items():
        want = tensor if dtype is None else tensor.to(dtype)
        assert staged[name].dtype == want.dtype and torch.equal(staged[name], want), name
        assert torch.equal(direct[name], want), name


def test_the_host_chunk_path_still_refuses_a_corrupt_file(odd_file, monkeypatch):
    path, _ = odd_file
    size, sha = path.stat().st_size, sha256_file(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    monkeypatch.setattr(hashed_read, "CHUNK", 1000)
    with pytest.raises(DamagedFileError, match="sha256"):
        read_verified(path, size, sha, "cpu", torch.float32, staged=True)
    with pytest.raises(DamagedFileError, match="sha256"):  # hashed on the host even when the tensors are not there
        read_verified(path, size, sha, "meta", torch.bfloat16)


def test_a_device_load_lands_on_that_device_in_that_dtype(odd_file):
    """On the meta device (a stand-in for a GPU: not the CPU, so the host-chunk path runs)."""
    path, tensors = odd_file
    assert hashed_read.reads_through_host(torch.device("meta")) and hashed_read.reads_through_host(torch.device("cuda"))
    assert not hashed_read.reads_through_host(torch.device("cpu"))
    assert hashed_read.pins_host_chunks(torch.device("cuda")) and not hashed_read.pins_host_chunks(torch.device("meta"))
    loaded = read_verified(path, path.stat().st_size, sha256_file(path), "meta", torch.bfloat16)
    assert {k: (t.device.type, t.dtype, t.shape) for k, t in loaded.items()} == \
        {k: ("meta", torch.bfloat16, t.shape) for k, t in tensors.items()}


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (pytest, holding
# its own bundles), so a child would report the parent's size as its own peak.
MEASURE = """
import json, sys
from dossr_cli.pipeline import DoSSRPipeline
def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))
before = status("VmRSS")
pipe = DoSSRPipeline.from_pretrained(sys.argv[1], device="cpu", dtype="fp32")
weights = sum(t.numel() * t.element_size() for t in pipe.networks.state_dict().values())
print(json.dumps({"weights": weights, "peak_over_weights": (status("VmHWM") - before) / weights}))
"""


@pytest.fixture(scope="module")
def mid_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """82 M values (329 MB in fp32): large against the few hundred MB the imports take."""
    from dossr_cli.networks.config import ModelConfig, RRDBConfig, UNetConfig, VAEConfig
    from dossr_cli.random_weights import fast_random_networks

    config = ModelConfig(unet=UNetConfig(model_channels=64, context_dim=256), vae=VAEConfig(ch=64),
                         rrdb=RRDBConfig(num_block=4))
    root = tmp_path_factory.mktemp("mid")
    networks = fast_random_networks(config, seed=0)
    return {"fp32": save_bundle(networks, root / "fp32"), "fp16": save_bundle(networks, root / "fp16", torch.float16)}


def peak_over_weights(bundle: Path) -> float:
    """Peak RSS of `from_pretrained` in fp32 in a fresh process, over the weights' bytes (imports excluded)."""
    if sys.platform != "linux":
        pytest.skip("reads /proc/self/status")
    done = subprocess.run([sys.executable, "-c", MEASURE, str(bundle)], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout)["peak_over_weights"]


def test_loading_fp32_weights_in_fp32_holds_them_once(mid_bundles):
    """Already true before (1.04 at 1598c4e, and now): a guard. The bound leaves room for the allocator."""
    assert peak_over_weights(mid_bundles["fp32"]) < 1.15


def test_loading_fp16_weights_in_fp32_never_holds_the_model_in_both_dtypes(mid_bundles):
    """Reading all in fp16, then converting, held both: 1.50x the fp32 weights at 1598c4e. Casting each
    tensor as it is read holds one tensor in fp16 per reading thread on top: 1.16x."""
    assert peak_over_weights(mid_bundles["fp16"]) < 1.3

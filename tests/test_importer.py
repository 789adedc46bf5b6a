"""Importing the authors' checkpoint file: round trips, shape inference, and refusals."""

import os
import pickle

import numpy as np
import pytest
import torch
from authors_reference import authors_state_dict, layout, reference_input
from PIL import Image

from dossr_cli.checkpoint.authors import CheckpointLayoutError, infer_unet_config, networks_from_authors_state_dict
from dossr_cli.checkpoint.bundle import BundleError, load_bundle, verify_bundle
from dossr_cli.checkpoint.importer import UnsafeCheckpointError, import_checkpoint, load_checkpoint_file
from dossr_cli.errors import WeightsError
from dossr_cli.pipeline import DoSSRPipeline


@pytest.fixture(scope="module")
def tinyb_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "dossr_tinyb.ckpt"
    torch.save(authors_state_dict("tinyb"), path)
    return path


@pytest.mark.parametrize("name", ["tiny", "tinyb"])
def test_architecture_is_inferred_from_shapes(name):
    spec = layout(name)["model"]
    nets = networks_from_authors_state_dict(authors_state_dict(name))
    config = nets.config
    assert config.unet.model_channels == spec["unet"]["model_channels"]
    assert list(config.unet.channel_mult) == spec["unet"]["channel_mult"]
    assert config.unet.num_res_blocks == spec["unet"]["num_res_blocks"]
    assert config.unet.attention_levels == (0, 1, 2)  # ldm attention_resolutions (4, 2, 1)
    assert config.unet.context_dim == spec["unet"]["context_dim"] == spec["text"]["width"]
    assert config.vae.ch == spec["vae"]["ch"] and list(config.vae.ch_mult) == spec["vae"]["ch_mult"]
    assert config.vae.num_res_blocks == spec["vae"]["num_res_blocks"]
    assert (config.rrdb.num_feat, config.rrdb.num_block, config.rrdb.num_grow_ch) == (
        spec["rrdb"]["num_feat"], spec["rrdb"]["num_block"], spec["rrdb"]["num_grow_ch"])


def test_import_round_trip_gives_the_same_output_as_the_model_it_came_from(tinyb_ckpt, tmp_path):
    bundle = import_checkpoint(tinyb_ckpt, tmp_path / "bundle")
    verify_bundle(bundle)
    direct = DoSSRPipeline(networks_from_authors_state_dict(authors_state_dict("tinyb")), device="cpu")
    imported = DoSSRPipeline.from_pretrained(bundle, device="cpu")
    lq = reference_input("tinyb")
    torch.testing.assert_close(imported.upscale_tensor(lq, seed=3), direct.upscale_tensor(lq, seed=3), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_bundles_store_half_and_stay_close(tinyb_ckpt, tmp_path, dtype):
    bundle = import_checkpoint(tinyb_ckpt, tmp_path / "b", dtype=dtype)
    fp32_size = os.path.getsize(tinyb_ckpt)
    assert sum(f.stat().st_size for f in bundle.glob("*.safetensors")) < 0.6 * fp32_size
    nets = load_bundle(bundle)
    assert nets.unet.conv_in.weight.dtype == (torch.float16 if dtype == "fp16" else torch.bfloat16)


def test_lightning_and_module_prefixed_files_import(tmp_path):
    state = authors_state_dict("tinyb")
    for i, obj in enumerate(({"state_dict": state, "epoch": 3}, {"module." + k: v for k, v in state.items()})):
        path = tmp_path / f"c{i}.ckpt"
        torch.save(obj, path)
        assert load_checkpoint_file(path).keys() == state.keys()


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_a_code_carrying_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="run code"):
        import_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "pwned_by_pickle").exists()
    assert not (tmp_path / "out").exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(WeightsError):
        import_checkpoint(plain, tmp_path / "out")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_empty_truncated_and_altered_files_are_refused(tinyb_ckpt, tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        import_checkpoint(empty, tmp_path / "o1")
    data = tinyb_ckpt.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        import_checkpoint(truncated, tmp_path / "o2")
    not_a_ckpt = tmp_path / "photo.ckpt"
    not_a_ckpt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(WeightsError):
        import_checkpoint(not_a_ckpt, tmp_path / "o3")
    assert not any(p.name.startswith(("o1", "o2", "o3")) for p in tmp_path.iterdir())
    assert not any(".partial" in p.name for p in tmp_path.iterdir())


def test_wrong_layouts_raise_and_are_never_guessed(tmp_path):
    state = authors_state_dict("tinyb")
    cases = {
        "unknown": {**state, "some_other_model.weight": torch.zeros(3)},
        "missing part": {k: v for k, v in state.items() if not k.startswith("preprocess_model.")},
        "missing key": {k: v for k, v in state.items() if k != "control_model.zero_convs.3.0.bias"},
        "sd only": {k: v for k, v in state.items() if k.startswith(("model.", "first_stage_model."))},
        "bad shape": {**state, "control_model.input_blocks.0.0.weight": torch.zeros(64, 4, 3, 3)},
    }
    for name, broken in cases.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(broken, path)
        with pytest.raises(CheckpointLayoutError):
            import_checkpoint(path, tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists(), name


def test_a_tampered_bundle_fails_verification(tinyb_ckpt, tmp_path):
    bundle = import_checkpoint(tinyb_ckpt, tmp_path / "b")
    target = bundle / "unet.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(bundle)
    target.write_bytes(bytes(data[:-100]))
    with pytest.raises(BundleError):
        load_bundle(bundle)


def test_unet_inference_refuses_uneven_levels():
    state = {k[len("model.diffusion_model."):]: v for k, v in authors_state_dict("tinyb").items()
             if k.startswith("model.diffusion_model.")}
    state = {k: v for k, v in state.items() if not k.startswith("input_blocks.2.")}
    with pytest.raises(CheckpointLayoutError):
        infer_unet_config(state)


def test_outputs_are_finite_after_import(tinyb_ckpt, tmp_path):
    pipe = DoSSRPipeline.from_pretrained(import_checkpoint(tinyb_ckpt, tmp_path / "b"), device="cpu")
    out = np.asarray(pipe.upscale(Image.new("RGB", (9, 5), (120, 30, 200)), seed=1))
    assert out.shape == (20, 36, 3)


def test_loading_rehashes_a_bundle_whose_file_changed_since_it_was_verified(tinyb_ckpt, tmp_path):
    bundle = import_checkpoint(tinyb_ckpt, tmp_path / "b")
    load_bundle(bundle)  # verified once: later loads trust the stamp while nothing changes
    target = bundle / "controlnet.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x01  # same size, one bit: only the sha256 can tell
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle)


def _record_data_range(path, name_part):
    """Where the bytes of the first zip record whose name contains `name_part` lie in the file."""
    import struct
    import zipfile

    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if name_part in i.filename)
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    return start, start + info.compress_size


def _refused_before_anything_is_written(path, tmp_path, match):
    out = tmp_path / "out"
    with pytest.raises(WeightsError, match=match) as error:
        import_checkpoint(path, out)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "again" in message, message
    assert not out.exists() and not any(".partial" in p.name for p in tmp_path.iterdir())
    return message


def test_a_zip_record_whose_crc32_does_not_match_is_refused(tinyb_ckpt, tmp_path):
    """torch's zip reader never checks CRC-32: one flipped bit in a tensor record used to import silently."""
    start, end = _record_data_range(tinyb_ckpt, "/data/")
    data = bytearray(tinyb_ckpt.read_bytes())
    data[(start + end) // 2] ^= 0x04  # a different, finite weight: only the CRC-32 tells
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    _refused_before_anything_is_written(damaged, tmp_path, "CRC-32")


KEY = "control_model.input_blocks.1.0.in_layers.2.weight"  # a conv kernel of the ControlNet
IMPLAUSIBLE = {
    "all NaN": (lambda v: torch.full_like(v, float("nan")), "NaN or infinite"),
    "one inf": (lambda v: v.clone().index_fill_(0, torch.tensor([0]), float("inf")), "NaN or infinite"),
    "1e38": (lambda v: v * 1e38, "far beyond"),
    "all zeros": (lambda v: torch.zeros_like(v), "all zeros"),
    "int": (lambda v: (v * 100).to(torch.int32), "int32 values where float"),
    "bool": (lambda v: v > 0, "bool values where float"),
    "complex": (lambda v: v.to(torch.complex64), "complex64 values where float"),
}


@pytest.mark.parametrize("case", IMPLAUSIBLE, ids=list(IMPLAUSIBLE))
def test_implausible_weights_are_refused_in_one_line_before_anything_is_written(tmp_path, case):
    make, phrase = IMPLAUSIBLE[case]
    state = authors_state_dict("tinyb")
    assert state[KEY].dim() == 4
    state[KEY] = make(state[KEY])
    path = tmp_path / f"{case.replace(' ', '_')}.ckpt"
    torch.save(state, path)
    assert KEY in _refused_before_anything_is_written(path, tmp_path, phrase)


def test_the_magnitude_bound_lies_between_large_weights_and_absurd_ones(tmp_path):
    """A kernel scaled to 1e3 is unusual but imports; 1e5 (beyond the 1e4 bound) is refused."""
    state = authors_state_dict("tinyb")
    unit = state[KEY] / state[KEY].abs().max()
    state[KEY] = unit * 1e5
    torch.save(state, tmp_path / "absurd.ckpt")
    _refused_before_anything_is_written(tmp_path / "absurd.ckpt", tmp_path, "up to 1e\\+05")
    state[KEY] = unit * 1e3
    torch.save(state, tmp_path / "large.ckpt")
    assert (import_checkpoint(tmp_path / "large.ckpt", tmp_path / "out") / "dossr.json").is_file()

"""Damaged weight files for fuzz_weights.py: bundles (dossr.json and safetensors) and checkpoints.

Every maker writes one case and says what a correct reader must do with it: "refuse" (the file
is damaged, or carries code), or "either" (a consistent change, e.g. a weight value with its
sha256 or CRC-32 recomputed, that no reader can tell from a real file; it must not crash).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import torch

REFUSE, EITHER = "refuse", "either"
# dossr.json fields that no tensor shape and no sha256 cross-checks: a plausible new value is undetectable
UNCHECKED_FIELDS = ("name", "dtype", "source", "scaling_factor", "head_dim")


# -- bundles ------------------------------------------------------------------------------------------

def copy_bundle(good: Path, dest: Path) -> Path:
    """A writable copy: dossr.json copied, the safetensors files hard-linked until a maker rewrites one."""
    dest.mkdir(parents=True)
    for item in good.iterdir():
        (shutil.copyfile if item.name == "dossr.json" else os.link)(item, dest / item.name)
    return dest


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # break the hard link first
    path.write_bytes(data)


def _resign(bundle: Path, file: str) -> None:
    """Record the file's new size and sha256 in dossr.json, as a consistent (re-published) bundle would."""
    config = json.loads((bundle / "dossr.json").read_text())
    data = (bundle / file).read_bytes()
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


def _random_value(rng: random.Random) -> object:
    return rng.choice([None, True, -1, 0, 3, 2**70, 1.5, float("nan"), "x", "", [], [1, "a"], {}, {"a": 1},
                       [[0]], 10**6, "../../etc/passwd", "F64", "I32", "BOOL"])


def _leaves(node: object, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [path] + [p for k, v in node.items() for p in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [path] + [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


def _set(node: object, path: tuple, value: object, delete: bool = False) -> object:
    if not path:
        return value
    parent = node
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return node


def mutate_bundle(good: Path, dest: Path, rng: random.Random) -> tuple[str, str]:
    """One damaged copy of `good` at `dest`; returns (what was done, expectation)."""
    bundle = copy_bundle(good, dest)
    files = sorted(p.name for p in bundle.glob("*.safetensors"))
    target = bundle / rng.choice(files)
    data = target.read_bytes()
    kind = rng.choice(["flip", "flip", "flip-header", "truncate", "extend", "header", "header", "header-resigned",
                       "header-resigned", "data-resigned", "json-field", "json-field", "json-bytes", "files"])
    if kind in ("flip", "flip-header"):
        length, _ = _header(data)
        buffer = bytearray(data)
        span = (0, 8 + length) if kind == "flip-header" else (0, len(data))
        for _ in range(rng.randint(1, 8)):
            buffer[rng.randrange(*span)] ^= 1 << rng.randrange(8)
        _rewrite(target, bytes(buffer))
        return f"{kind} {target.name}", REFUSE if bytes(buffer) != data else EITHER
    if kind == "truncate":
        _rewrite(target, data[:rng.randrange(len(data))])
        return f"truncate {target.name}", REFUSE
    if kind == "extend":
        _rewrite(target, data + os.urandom(rng.randint(1, 64)))
        return f"extend {target.name}", REFUSE
    if kind.startswith("header"):
        _rewrite(target, _damaged_header(data, rng))
        if kind == "header-resigned":
            _resign(bundle, target.name)
        return f"{kind} {target.name}", REFUSE
    if kind == "data-resigned":  # a different weight value, published with its new sha256: a valid bundle
        length, _ = _header(data)
        buffer = bytearray(data)
        buffer[rng.randrange(8 + length, len(data))] ^= 1 << rng.randrange(8)
        _rewrite(target, bytes(buffer))
        _resign(bundle, target.name)
        return f"data-resigned {target.name}", EITHER
    if kind == "files":
        return _damage_files(bundle, target, rng), REFUSE
    return _damage_config(bundle, rng, bytes_level=kind == "json-bytes")


def _damaged_header(data: bytes, rng: random.Random) -> bytes:
    length, header = _header(data)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    how = rng.choice(["dtype", "shape", "offsets", "drop", "add", "rename", "value", "length", "garbage", "type"])
    if how == "dtype":
        header[name]["dtype"] = rng.choice(["F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "C64", "F8_E4M3", "x"])
    elif how == "shape":
        shape = header[name]["shape"]
        header[name]["shape"] = rng.choice([shape[::-1] + [1], [], [0], [-1], [2**62, 2**62], shape + [2], [1.5]])
    elif how == "offsets":
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice([[end, begin], [begin, end + 4], [begin + 2, end + 2], [0, 0],
                                                   [-4, end], [begin], "x", [begin, 2**70]])
    elif how == "drop":
        del header[name]
    elif how == "add":
        header["extra.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    elif how == "rename":
        header[name + ".x"] = header.pop(name)
    elif how == "value":
        header[name][rng.choice(["dtype", "shape", "data_offsets"])] = _random_value(rng)
    elif how == "type":
        header[name] = _random_value(rng)
    if how == "length":
        fake = rng.choice([0, 1, length - 1, length + 1, len(data), 2**63, 2**40])
        return fake.to_bytes(8, "little") + data[8:]
    if how == "garbage":
        raw = bytearray(data[8:8 + length])
        for _ in range(rng.randint(1, 12)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return data[:8] + bytes(raw) + data[8 + length:]
    return _with_header(data, header)


def _damage_files(bundle: Path, target: Path, rng: random.Random) -> str:
    how = rng.choice(["missing", "empty", "directory", "config-missing", "config-empty", "same-file", "traversal"])
    config_path = bundle / "dossr.json"
    if how == "missing":
        target.unlink()
    elif how == "empty":
        _rewrite(target, b"")
    elif how == "directory":
        target.unlink()
        target.mkdir()
    elif how == "config-missing":
        config_path.unlink()
    elif how == "config-empty":
        config_path.write_bytes(b"")
    else:
        config = json.loads(config_path.read_text())
        entries = list(config["components"].values())
        if how == "same-file":
            entries[0]["file"] = entries[1]["file"]
        else:
            shutil.copyfile(target, bundle.parent / f"{bundle.name}-outside.safetensors")
            entries[0]["file"] = f"../{bundle.name}-outside.safetensors"
        config_path.write_text(json.dumps(config))
    return f"files {how}"


def _damage_config(bundle: Path, rng: random.Random, bytes_level: bool) -> tuple[str, str]:
    path = bundle / "dossr.json"
    text = path.read_text()
    original = json.loads(text)
    if bytes_level:
        raw = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.choice([rng.randrange(256), ord(rng.choice('0123456789{}[]",:-ae'))])
        path.write_bytes(bytes(raw))
        try:
            changed = json.loads(bytes(raw).decode())
        except ValueError:
            return "json-bytes (unparsable)", REFUSE
        return "json-bytes", _config_expectation(original, changed)
    config = json.loads(text)
    leaf = rng.choice([p for p in _leaves(config) if p])
    delete = rng.random() < 0.3 and not isinstance(leaf[-1], int)
    config = _set(config, leaf, _random_value(rng), delete=delete)
    path.write_text(json.dumps(config))
    what = f"json-field {'delete' if delete else 'set'} {'.'.join(map(str, leaf))}"
    return what, _config_expectation(original, config)


def _config_expectation(original: object, changed: object) -> str:
    """REFUSE unless every difference lies in a field nothing cross-checks (then EITHER)."""
    differences = _differences(original, changed)
    if not differences:
        return EITHER
    return EITHER if all(any(str(k) in UNCHECKED_FIELDS for k in path) for path in differences) else REFUSE


def _differences(a: object, b: object, path: tuple = ()) -> list[tuple]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in (_differences(a[k], b[k], (*path, k)) if k in a and k in b else [(*path, k)])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, (*path, i))]
    same = type(a) is type(b) and a == b
    return [] if same else [path]


# -- checkpoints --------------------------------------------------------------------------------------

def zip_records(path: Path) -> list[tuple[str, int, int, int, int]]:
    """(name, data start, data end, local header offset, central directory entry offset) per record."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        infos, directory = archive.infolist(), archive.start_dir
    records, position = [], directory
    for info in infos:
        name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_length + extra_length
        records.append((info.filename, start, start + info.compress_size, info.header_offset, position))
        n, m, k = struct.unpack_from("<HHH", data, position + 28)
        position += 46 + n + m + k
    return records


def _fix_crc(buffer: bytearray, record: tuple[str, int, int, int, int]) -> None:
    _, start, end, local, central = record
    crc = zlib.crc32(bytes(buffer[start:end]))
    struct.pack_into("<I", buffer, local + 14, crc)
    struct.pack_into("<I", buffer, central + 16, crc)


class Payload:
    """Pickled as a call of `function(*args)`: loading it would run the call."""

    def __init__(self, function: object, args: tuple) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def payload(marker: Path, rng: random.Random) -> Payload:
    import builtins
    import subprocess

    quoted = str(marker)
    return rng.choice([
        Payload(os.system, (f"touch '{quoted}'",)),
        Payload(builtins.exec, (f"open({quoted!r}, 'w').close()",)),
        Payload(builtins.eval, (f"open({quoted!r}, 'w')",)),
        Payload(subprocess.call, (["touch", quoted],)),
        Payload(Path.touch, (marker,)),
        Payload(shutil.copyfile, (__file__, quoted)),
    ])


def mutate_checkpoint(good_state: dict[str, torch.Tensor], good: Path, dest: Path, marker: Path,
                      rng: random.Random) -> tuple[str, str]:
    """One damaged checkpoint at `dest` (built from the good file or its state dict)."""
    kind = rng.choice(["flip", "flip", "flip-data", "flip-data", "crc-fixed", "crc-fixed-pickle", "truncate",
                       "values", "values", "payload", "payload", "payload-raw", "legacy", "header", "layout",
                       "layout"])
    data = good.read_bytes()
    records = zip_records(good)
    if kind in ("flip", "flip-data"):
        buffer = bytearray(data)
        record = rng.choice(records)
        positions = [rng.randrange(record[1], record[2]) if kind == "flip-data" else rng.randrange(len(data))
                     for _ in range(rng.randint(1, 4))]
        for position in positions:
            buffer[position] ^= 1 << rng.randrange(8)
        dest.write_bytes(bytes(buffer))
        inside = any(r[1] <= p < r[2] for p in positions for r in records) and bytes(buffer) != data
        return kind, REFUSE if inside else EITHER
    if kind.startswith("crc-fixed"):  # a consistent archive whose record changed: must not crash
        buffer = bytearray(data)
        pickles = [r for r in records if r[0].endswith("data.pkl")]
        record = pickles[0] if kind == "crc-fixed-pickle" else rng.choice(records)
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(record[1], record[2])] = rng.randrange(256)
        _fix_crc(buffer, record)
        dest.write_bytes(bytes(buffer))
        return f"{kind} {record[0].rsplit('/', 1)[-1]}", EITHER
    if kind == "truncate":
        dest.write_bytes(data[:rng.randrange(len(data))])
        return kind, REFUSE
    if kind == "header":  # a zip directory field damaged (sizes, offsets, counts), CRC-32s untouched
        buffer = bytearray(data)
        record = rng.choice(records)
        field = rng.choice([(record[3] + 18, "<I"), (record[3] + 22, "<I"), (record[3] + 26, "<H"),
                            (record[4] + 20, "<I"), (record[4] + 42, "<I"), (len(data) - 12, "<I"),
                            (len(data) - 16, "<I"), (len(data) - 12, "<I")])
        limit = 2**16 - 1 if field[1] == "<H" else 2**32 - 1
        struct.pack_into(field[1], buffer, field[0], rng.choice([0, 1, 7, 2**16 - 1, limit]))
        dest.write_bytes(bytes(buffer))
        return f"zip-field@{field[0]}", EITHER  # some fields (e.g. a local header's sizes) are ignored by readers
    if kind == "values":
        return _implausible(good_state, dest, rng), REFUSE
    if kind == "layout":
        return _wrong_layout(good_state, dest, rng)
    if kind == "payload":
        state = dict(good_state)
        where = rng.choice(["top", "in-dict", "as-tensor", "lightning"])
        evil = payload(marker, rng)
        if where == "top":
            obj: object = {"state_dict": state, "hook": evil}
        elif where == "in-dict":
            obj = {**state, "callbacks": {"a": [evil]}}
        elif where == "as-tensor":
            obj = {**state, rng.choice(list(state)): evil}
        else:
            obj = {"state_dict": state, "epoch": 3, "optimizer_states": [evil]}
        torch.save(obj, dest, pickle_protocol=rng.choice([2, 3, 4, 5]))
        return f"payload {where} {evil.function.__name__}", REFUSE
    if kind == "payload-raw":
        dest.write_bytes(pickle.dumps(payload(marker, rng), protocol=rng.choice([2, 3, 4, 5])))
        return "payload-raw", REFUSE
    obj = {k: v for k, v in list(good_state.items())[: rng.randrange(1, 6)]} if rng.random() < 0.3 else dict(good_state)
    if rng.random() < 0.5:
        obj["hook"] = payload(marker, rng)
    torch.save(obj, dest, _use_new_zipfile_serialization=False)
    return "legacy" + (" payload" if "hook" in obj else ""), REFUSE if "hook" in obj or len(obj) < 6 else EITHER


def _wrong_layout(good_state: dict[str, torch.Tensor], dest: Path, rng: random.Random) -> tuple[str, str]:
    """A key dropped or renamed, or a tensor of another shape: a checkpoint of some other model.
    (The text tower's projection and logit scale are read by nobody: changing them is no damage.)"""
    state = dict(good_state)
    key = rng.choice([k for k in state if "." in k])
    how = rng.choice(["drop", "rename", "reshape", "slice", "drop-block"])
    if how == "drop":
        del state[key]
    elif how == "rename":
        state[key.replace(".", "_", 1) if rng.random() < 0.5 else key + "_x"] = state.pop(key)
    elif how == "reshape":
        state[key] = state[key].reshape(-1)[: max(1, state[key].numel() // 2)].clone()
    elif how == "slice":
        state[key] = state[key][..., :1].clone() if state[key].dim() else state[key].reshape(1, 1)
    else:
        prefix = key.rsplit(".", 2)[0] + "."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    torch.save(state, dest)
    unchanged = key in state and how in ("reshape", "slice") and state[key].shape == good_state[key].shape
    unused = key.endswith(("text_projection", "logit_scale")) and how != "drop-block"
    return f"layout {how} {key}", EITHER if unchanged or unused else REFUSE


def _implausible(good_state: dict[str, torch.Tensor], dest: Path, rng: random.Random) -> str:
    state = dict(good_state)
    key = rng.choice([k for k, v in state.items() if v.dim() >= 2 and "." in k])
    value = state[key]
    how = rng.choice(["nan", "inf", "huge", "zero", "int", "bool", "complex", "all-nan", "one-nan"])
    if how == "nan":
        state[key] = value.clone().fill_(float("nan"))
    elif how == "one-nan":
        state[key] = value.clone()
        state[key].view(-1)[rng.randrange(value.numel())] = float("nan")
    elif how == "inf":
        state[key] = value.clone()
        state[key].view(-1)[rng.randrange(value.numel())] = rng.choice([float("inf"), float("-inf")])
    elif how == "huge":
        state[key] = value * rng.choice([1e38, 1e20, -1e6, 1e5])
    elif how == "zero":
        state[key] = torch.zeros_like(value)
    elif how == "int":
        state[key] = (value * 100).to(rng.choice([torch.int64, torch.int32, torch.int8, torch.uint8]))
    elif how == "bool":
        state[key] = value > 0
    elif how == "complex":
        state[key] = value.to(torch.complex64)
    else:
        state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    torch.save(state, dest)
    return f"values {how} {key}"

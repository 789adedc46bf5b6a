"""Fuzz the image reader, in process and through `dossr batch`, with mutated PNG/JPEG/WebP/TIFF/BMP files.

    python benchmarks/fuzz/fuzz_images.py --count 10000 --cli 300 [--seed 0] [--workers 2] [--timeout 10]

Run by hand, not in CI. Seeds (8- and 16-bit, grey, palette, alpha, CMYK, progressive, ICC, EXIF,
multi-page) are made here; each file is one seed with one mutation: bit flips, byte overwrites,
truncation (with or without an end marker put back), IHDR/SOF/BMP size patches, PNG chunk
duplication, removal and splicing. Each goes through the real `read_image` in a worker process
(a 3 GiB address-space limit, killed after --timeout seconds); a sample goes through the real
`dossr batch` on tiny random weights.

Printed counts (target: all zero except files):
- crashes: an exception other than ImageReadError, or a worker that died;
- hangs: no answer within --timeout;
- multi-line messages: an ImageReadError whose message is not one line;
- corrupt inputs accepted: files KNOWN to be damaged that decoded. Known damaged means the file alone
  proves it: cut short; any PNG byte after the signature changed without fixing the CRC; an IHDR
  or SOF size changed (CRC fixed) so the data no longer fits; a BMP made larger than its pixels; a
  PNG's IDAT duplicated, removed or taken from another image, or its IHDR/IEND removed. A bit flip
  inside JPEG, WebP, TIFF or BMP data may give other valid pixels, so it is not counted either way;
- decode-size bombs accepted: a decoded image over 1 Mpx and over 1000 pixels per byte of file;
- CLI: tracebacks in stderr, exit codes other than 0/1, error lines that are not one line, a run past
  its time limit, known-damaged files written as outputs.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms

EXTENSIONS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff", "bmp": ".bmp"}
BOMB_PIXELS, BOMB_PIXELS_PER_BYTE = 1_000_000, 1000


# ------------------------------------------------------------------------------------------------ seeds


def seeds() -> list[tuple[str, str, bytes]]:
    """(name, format, bytes): every kind of input the reader promises to handle."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:48] / 48
    smooth = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x + 3 * y)], -1)
    rgb8 = np.clip(smooth * 255 + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    rgb16 = (rgb8.astype(np.uint16) * 257 + rng.integers(0, 256, rgb8.shape)).astype(np.uint16)
    alpha = (x * 255).astype(np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "FuzzCam", 6
    meta = {"icc_profile": srgb, "exif": exif.tobytes()}
    image, rgba = Image.fromarray(rgb8), Image.fromarray(np.dstack([rgb8, alpha]))

    def pil(img: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, fmt, **options)
        return buffer.getvalue()

    def ocv(ext: str, array: np.ndarray) -> bytes:
        return cv2.imencode(ext, array)[1].tobytes()

    pages = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return [
        ("png-rgb", "png", pil(image, "PNG")),
        ("png-rgba-meta", "png", pil(rgba, "PNG", **meta)),
        ("png-rgb16", "png", ocv(".png", rgb16[..., ::-1])),
        ("png-grey16", "png", pil(Image.fromarray(rgb16[..., 0]), "PNG")),
        ("png-palette", "png", pil(image.quantize(16), "PNG", transparency=0)),
        ("png-grey-alpha", "png", pil(rgba.convert("LA"), "PNG")),
        ("png-animated", "png", pil(image, "PNG", save_all=True, append_images=pages[1:])),
        ("jpg-baseline-meta", "jpg", pil(image, "JPEG", quality=90, **meta)),
        ("jpg-progressive", "jpg", pil(image, "JPEG", quality=80, progressive=True)),
        ("jpg-grey", "jpg", pil(image.convert("L"), "JPEG")),
        ("jpg-cmyk", "jpg", pil(image.convert("CMYK"), "JPEG")),
        ("jpg-444", "jpg", pil(image, "JPEG", subsampling=0, quality=95)),
        ("webp-lossy-meta", "webp", pil(image, "WEBP", quality=80, **meta)),
        ("webp-lossless-alpha", "webp", pil(rgba, "WEBP", lossless=True)),
        ("tiff-rgb8", "tiff", pil(image, "TIFF")),
        ("tiff-lzw-alpha-meta", "tiff", pil(rgba, "TIFF", compression="tiff_lzw", **meta)),
        ("tiff-rgb16", "tiff", ocv(".tiff", rgb16[..., ::-1])),
        ("tiff-multipage", "tiff", pil(image, "TIFF", save_all=True, append_images=pages[1:])),
        ("bmp-rgb", "bmp", pil(image, "BMP")),
        ("bmp-rgba", "bmp", pil(rgba, "BMP")),
    ]


# ------------------------------------------------------------------------------------------------ mutations


def png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, kind) of each chunk of an intact PNG."""
    chunks, position = [], 8
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks.append((position, position + 12 + length, kind))
        position += 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def mutate(rng: random.Random, fmt: str, data: bytes, others: list[bytes]) -> tuple[bytes, str, bool]:
    """(mutated bytes, mutation name, known damaged)."""
    kinds = ["bitflip", "overwrite", "truncate", "truncate+end", "size"]
    if fmt == "png":
        kinds += ["chunk-duplicate", "chunk-remove", "chunk-splice"]
    kind = rng.choice(kinds)
    buffer = bytearray(data)
    if kind in ("bitflip", "overwrite"):
        positions = []
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(buffer))
            positions.append(position)
            if kind == "bitflip":
                buffer[position] ^= 1 << rng.randrange(8)
            else:
                buffer[position] = rng.randrange(256)
        changed = bytes(buffer) != data
        return bytes(buffer), kind, changed and fmt == "png" and min(positions) >= 8
    if kind == "truncate":
        return data[:rng.randrange(1, len(data))], kind, True
    if kind == "truncate+end":
        cut = data[:rng.randrange(len(data) // 4, len(data) - 16)]
        end = {"jpg": b"\xff\xd9", "png": png_chunk(b"IEND", b"")}.get(fmt, b"")
        return cut + end, kind, True
    if kind == "size":
        return patch_size(rng, fmt, buffer)
    chunks = png_chunks(data)
    start, end, chunk_kind = rng.choice(chunks[:-1])
    if kind == "chunk-duplicate":
        return data[:end] + data[start:end] + data[end:], f"{kind}-{chunk_kind.decode()}", chunk_kind == b"IDAT"
    if kind == "chunk-remove":
        start, end, chunk_kind = rng.choice(chunks)
        damaged = chunk_kind in (b"IHDR", b"IDAT", b"IEND") or (chunk_kind == b"PLTE")
        return data[:start] + data[end:], f"{kind}-{chunk_kind.decode()}", damaged
    foreign = rng.choice(others)
    idat = [data_ for data_ in (foreign[s:e] for s, e, k in png_chunks(foreign) if k == b"IDAT")]
    idat_at = [(s, e) for s, e, k in chunks if k == b"IDAT"]
    (first, _), (_, last) = idat_at[0], idat_at[-1]
    spliced = data[:first] + b"".join(idat) + data[last:]
    # damaged when the rows no longer fit the header (the same byte count may be a valid other picture)
    return spliced, kind, len(inflated(b"".join(idat))) != len(inflated(data[first:last]))


def inflated(chunks: bytes) -> bytes:
    """The zlib stream in concatenated IDAT chunks (lengths, types and CRCs skipped)."""
    stream, position = b"", 0
    while position < len(chunks):
        (length,) = struct.unpack_from(">I", chunks, position)
        stream += chunks[position + 8:position + 8 + length]
        position += 12 + length
    return zlib.decompress(stream)


def patch_size(rng: random.Random, fmt: str, buffer: bytearray) -> tuple[bytes, str, bool]:
    factor = rng.choice([2, 3, 10, 100, 1000, 20000, 0.5])
    def scaled(value: int, limit: int) -> int:
        return max(1, min(limit, int(value * factor)))
    if fmt == "png":
        width, height = struct.unpack_from(">II", buffer, 16)
        field = rng.randrange(2)
        new = scaled((width, height)[field], 2**31 - 1)
        struct.pack_into(">I", buffer, 16 + 4 * field, new)
        struct.pack_into(">I", buffer, 29, zlib.crc32(bytes(buffer[12:29])))
        return bytes(buffer), "size-ihdr", new != (width, height)[field]
    if fmt == "jpg":
        frame = max(buffer.find(marker) for marker in (b"\xff\xc0", b"\xff\xc2"))
        height, width = struct.unpack_from(">HH", buffer, frame + 5)
        field = rng.randrange(2)
        old = (height, width)[field]
        new = scaled(old, 65535)
        struct.pack_into(">H", buffer, frame + 5 + 2 * field, new)
        # ≥ twice or ≤ half changes the 8x8-block grid, so the data cannot fit the frame any more
        return bytes(buffer), "size-sof", new >= 2 * old or 2 * new <= old
    if fmt == "bmp":
        field = rng.randrange(2)
        old = struct.unpack_from("<i", buffer, 18 + 4 * field)[0]
        new = scaled(old, 2**31 - 1)
        struct.pack_into("<i", buffer, 18 + 4 * field, new)
        return bytes(buffer), "size-bmp", new > old
    position = rng.randrange(8, min(len(buffer), 200))  # webp/tiff: somewhere in the headers
    buffer[position] = rng.randrange(256)
    return bytes(buffer), "size-header-byte", False


# ------------------------------------------------------------------------------------------------ in process


def worker(connection: Connection, source: str) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    sys.path.insert(0, source)
    from dossr_cli.imageio import ImageReadError, read_image

    while (job := connection.recv()) is not None:
        index, data = job
        try:
            decoded = read_image(data)
            connection.send((index, "accepted", decoded.rgb.shape[0] * decoded.rgb.shape[1], ""))
        except ImageReadError as error:
            connection.send((index, "refused", 0, str(error)))
        except BaseException:  # noqa: BLE001 - what we are looking for
            connection.send((index, "crash", 0, traceback.format_exc(limit=6)))


def read_all(files: list[tuple[str, str, bytes, bool]], workers: int, timeout: float) -> list[tuple]:
    """(status, pixels, message, seconds) per file, from `workers` processes killed and replaced on a hang."""
    context = multiprocessing.get_context("spawn")
    source = str(Path(__file__).resolve().parents[2])
    results: list[tuple | None] = [None] * len(files)
    pending = list(range(len(files)))[::-1]
    pool: dict[Connection, list] = {}

    def start() -> None:
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(child, source), daemon=True)
        process.start()
        pool[parent] = [process, None, 0.0]

    for _ in range(workers):
        start()
    while pending or any(state[1] is not None for state in pool.values()):
        for connection, state in pool.items():
            if state[1] is None and pending:
                state[1], state[2] = pending.pop(), time.monotonic()
                connection.send((state[1], files[state[1]][2]))
        for connection in wait(list(pool), timeout=0.2):
            state = pool[connection]
            try:
                index, status, pixels, message = connection.recv()
                results[index] = (status, pixels, message, time.monotonic() - state[2])
                state[1] = None
            except (EOFError, OSError):
                results[state[1]] = ("crash", 0, f"worker died (exit code {state[0].exitcode})", 0.0)
                del pool[connection]
                start()
                break
        for connection, state in list(pool.items()):
            if state[1] is not None and time.monotonic() - state[2] > timeout:
                state[0].kill()
                results[state[1]] = ("hang", 0, f"no answer in {timeout:g} s", timeout)
                del pool[connection]
                start()
    for connection, state in pool.items():
        connection.send(None)
        state[0].join(5)
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(files: list[tuple[str, str, bytes, bool]], sample: list[int], timeout: float) -> Counter:
    from dossr_cli.checkpoint.bundle import save_bundle
    from dossr_cli.random_weights import random_networks

    counts: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="dossr-fuzz-") as work:
        work_path = Path(work)
        weights = save_bundle(random_networks(seed=0), work_path / "tiny")
        inputs, outputs = work_path / "in", work_path / "out"
        inputs.mkdir()
        names = {}
        for index in sample:
            name = f"{index:06d}{EXTENSIONS[files[index][1]]}"
            (inputs / name).write_bytes(files[index][2])
            names[name] = index
        env = {**os.environ, "DOSSR_CACHE_DIR": str(work_path / "cache"),
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        command = [sys.executable, "-m", "dossr_cli", "batch", str(inputs), "-o", str(outputs), "--weights", str(weights),
                   "--steps", "1", "--json", "--quiet"]
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            counts["cli runs past the time limit"] += 1
            return counts
        counts["cli files"] = len(sample)
        counts["cli tracebacks"] = done.stderr.count("Traceback")
        counts["cli unexpected exit codes"] = int(done.returncode not in (0, 1))
        if done.returncode not in (0, 1):
            print(f"  dossr batch exited {done.returncode}: {done.stderr[-2000:]}")
        for line in done.stderr.splitlines():
            if line.strip() and not line.startswith("dossr: ") and counts["cli stray stderr lines"] < 5:
                print(f"  stray stderr line: {line[:200]}")
            counts["cli stray stderr lines"] += bool(line.strip()) and not line.startswith("dossr: ")
        for line in done.stdout.splitlines():
            outcome = json.loads(line)
            index = names[Path(outcome["input"]).name]
            counts[f"cli {outcome['status']}"] += 1
            if outcome["status"] == "done" and files[index][3]:
                counts["cli corrupt inputs written"] += 1
                print(f"  CLI wrote a known-damaged input: {files[index][0]}")
            if outcome["status"] == "failed" and "\n" in outcome["error"]:
                counts["cli multi-line errors"] += 1
        stray = [line for line in done.stderr.splitlines() if line.startswith("dossr: error:") and "\n" in line]
        counts["cli multi-line errors"] += len(stray)
    return counts


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutated files read in process")
    parser.add_argument("--cli", type=int, default=300, help="of those, how many go through `dossr batch`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per file before it counts as a hang")
    parser.add_argument("--show", type=int, default=5, help="examples to print per finding")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    seed_files = seeds()
    png_seeds = [data for _, fmt, data in seed_files if fmt == "png"]
    files = []
    for number in range(args.count):
        name, fmt, data = seed_files[number % len(seed_files)]
        mutated, kind, damaged = mutate(rng, fmt, data, png_seeds)
        files.append((f"{name}/{kind}#{number}", fmt, mutated, damaged))

    started = time.monotonic()
    results = read_all(files, args.workers, args.timeout)
    seconds = time.monotonic() - started
    counts: Counter = Counter(files=len(files))
    examples: dict[str, list[str]] = {}

    def finding(what: str, detail: str) -> None:
        counts[what] += 1
        examples.setdefault(what, []).append(detail)

    for (name, fmt, data, damaged), (status, pixels, message, _) in zip(files, results):
        counts[status] += 1
        counts[f"known damaged {'accepted' if status == 'accepted' else 'refused'}"] += damaged
        if status in ("crash", "hang"):
            finding(status + "es" if status == "crash" else "hangs", f"{name}: {message.strip()}")
        if status == "refused" and "\n" in message:
            finding("multi-line messages", f"{name}: {message!r}")
        if status == "accepted" and damaged:
            finding("corrupt inputs accepted", f"{name} ({len(data)} bytes)")
        if status == "accepted" and pixels > BOMB_PIXELS and pixels > BOMB_PIXELS_PER_BYTE * len(data):
            finding("decode-size bombs accepted", f"{name}: {pixels} px from {len(data)} bytes")
    slowest = max((result[3], files[i][0]) for i, result in enumerate(results))

    print(f"in process: {len(files)} files in {seconds:.0f} s with {args.workers} workers "
          f"(slowest {slowest[0]:.2f} s: {slowest[1]})")
    for key in ("files", "accepted", "refused", "known damaged refused", "known damaged accepted"):
        print(f"  {key}: {counts[key]}")
    for key in ("crashes", "hangs", "multi-line messages", "corrupt inputs accepted", "decode-size bombs accepted"):
        print(f"  {key}: {counts[key]}")
        for example in examples.get(key, [])[: args.show]:
            print(f"      {example[:300]}")

    if args.cli:
        sample = random.Random(args.seed + 1).sample(range(len(files)), min(args.cli, len(files)))
        started = time.monotonic()
        cli = run_cli(files, sample, timeout=max(600.0, 5.0 * len(sample)))
        print(f"through `dossr batch`: {cli['cli files']} files in {time.monotonic() - started:.0f} s")
        for key in ("cli done", "cli failed", "cli tracebacks", "cli unexpected exit codes", "cli multi-line errors",
                    "cli runs past the time limit", "cli corrupt inputs written", "cli stray stderr lines"):
            print(f"  {key.removeprefix('cli ')}: {cli[key]}")


if __name__ == "__main__":
    main()

"""`--compile` on upscale and batch, `--memory-format` on bench, and the compile cache on disk.

The command-line runs compile through dynamo with torch's own bisecting switch TORCH_BISECT_BACKEND=eager:
every block is traced and run as a compiled graph, but inductor's C++ build (minutes for the tiny model on
this CPU) is skipped. Inductor itself runs in one test, the cache's, on the RRDB blocks alone.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image
from torch._inductor import compiler_bisector

from .helpers import batch_summary, subprocess_env


@pytest.fixture
def compiling(tmp_path, monkeypatch):
    """dynamo with the eager backend, inductor's cache in this test's folder, a fresh dynamo cache (torch
    reads the switch once per process: its cache is cleared on the way in and out)."""
    monkeypatch.setenv("TORCH_BISECT_BACKEND", "eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    compiler_bisector.get_env_val.cache_clear()
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    monkeypatch.undo()
    compiler_bisector.get_env_val.cache_clear()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_upscale_with_compile_writes_the_eager_image(dossr, tmp_path, compiling):
    source = tmp_path / "in.png"
    smooth_image(16, 24, "a").save(source)
    eager = dossr("upscale", source, "-o", tmp_path / "eager.png", "-q")
    compiled = dossr("upscale", source, "-o", tmp_path / "compiled.png", "--compile", "-q")
    assert eager.code == 0 and compiled.code == 0, compiled.stderr
    difference = np.abs(pixels((tmp_path / "compiled.png").read_bytes())
                        - pixels((tmp_path / "eager.png").read_bytes()))
    assert difference.shape == (64, 96, 3) and difference.max() <= 1  # float rounding may flip an 8-bit level
    assert not (tmp_path / "inductor" / "fxgraph").exists()  # the setup held: dynamo ran, inductor did not


def test_batch_with_compile_writes_the_eager_images_and_keys_the_journal_without_it(dossr, tmp_path, compiling):
    """--compile changes how fast, not what: a run without it finds every image done."""
    folder = tmp_path / "in"
    folder.mkdir()
    for key in "ab":
        smooth_image(16, 24, key).save(folder / f"{key}.png")
    compiled = dossr("batch", folder, "-o", tmp_path / "out", "--compile", "--batch-size", 2)
    assert compiled.code == 0, compiled.stderr
    assert batch_summary(compiled.stderr)["done"] == 2
    again = dossr("batch", folder, "-o", tmp_path / "out")
    assert again.code == 0 and batch_summary(again.stderr)["skipped"] == 2, again.stderr
    for key in "ab":
        assert dossr("upscale", folder / f"{key}.png", "-o", tmp_path / f"{key}.png", "-q").code == 0
        difference = np.abs(pixels((tmp_path / "out" / f"{key}_x4.png").read_bytes())
                            - pixels((tmp_path / f"{key}.png").read_bytes()))
        assert difference.max() <= 1


CACHE_PROBE = """
import json, sys, time, torch
from torch._dynamo.utils import counters
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.random_weights import random_networks
torch.set_num_threads(1)
pipe = DoSSRPipeline(random_networks(seed=0), device="cpu").compile()
start = time.perf_counter()
with torch.inference_mode():
    pipe.networks.preprocessor.body(torch.zeros(1, 16, 8, 8))  # the RRDB blocks: one graph
print(json.dumps({"seconds": time.perf_counter() - start, **counters["inductor"]}))
"""


def test_a_second_process_finds_the_compiled_code_the_first_left(tmp_path):
    env = {k: v for k, v in subprocess_env().items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TORCH_BISECT_BACKEND")}
    env["DOSSR_CACHE_DIR"] = str(tmp_path)

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()
    cache = tmp_path / "torch-compile"
    assert first.get("fxgraph_cache_miss", 0) >= 1 and first.get("fxgraph_cache_hit", 0) == 0, first
    assert any((cache / "fxgraph").rglob("*")), "no FX-graph entry under the dossr cache"
    second = run()
    assert second.get("fxgraph_cache_hit", 0) >= 1 and second.get("fxgraph_cache_miss", 0) == 0, second
    print(f"compile: first process {first['seconds']:.1f} s, second {second['seconds']:.1f} s")


def test_bench_records_the_memory_format_and_checks_it(dossr):
    result = dossr("bench", "--size", 16, "--warmup", 0, "--runs", 1, "-q", "--json", "--memory-format",
                   "channels-last")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["memory_format"] == "channels-last"
    default = dossr("bench", "--size", 16, "--warmup", 0, "--runs", 1, "-q", "--json")
    assert json.loads(default.stdout)["memory_format"] == "contiguous"  # auto
    bad = dossr("bench", "--memory-format", "nhwc")
    assert bad.code == 2 and bad.error_lines == [
        "dossr: error: --memory-format must be one of auto, contiguous, channels-last; got 'nhwc'"], bad.stderr

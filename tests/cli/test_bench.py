"""`dossr bench`: its JSON, its report and its option errors (tiny model, CPU)."""

from __future__ import annotations

import json

import pytest

from .helpers import run_in_process

REQUIRED = ("latency_p50_s", "latency_p90_s", "images_per_s", "peak_memory_bytes", "stages", "tflops", "device",
            "torch", "dtype")


def bench(dossr, *args):
    return dossr("bench", "--size", 16, "--warmup", 0, "--runs", 2, "-q", *args)


def test_json_has_every_figure_and_the_stages_add_up(dossr):
    result = bench(dossr, "--steps", 3, "--batch", 2, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(REQUIRED) <= set(report)
    assert report["device"].startswith("CPU") and report["dtype"] == "fp32" and report["compile"] == "off"
    assert (report["size"], report["output_size"], report["steps"], report["batch"]) == (16, 64, 3, 2)
    stages = report["stages"]
    assert list(stages) == ["preprocess", "vae_encoder", "control_encoder", "step_1", "step_2", "step_3", "decode",
                            "color_fix", "other"]
    mean_per_image = sum(report["latencies_s"]) / len(report["latencies_s"]) / 2
    assert sum(stages.values()) == pytest.approx(mean_per_image, rel=1e-6)
    assert all(seconds > 0 for name, seconds in stages.items() if name != "other")
    assert report["latency_p50_s"] <= report["latency_p90_s"]
    assert report["images_per_s"] == pytest.approx(2 / report["latency_p50_s"])
    assert report["tflops"] == pytest.approx(2 * report["tflop_per_image"] / report["latency_p50_s"])
    assert report["peak_share"] is None  # no known peak for a CPU
    assert report["peak_memory_bytes"] > 100 << 20


def test_report_for_people(dossr):
    result = bench(dossr, "--steps", 1)
    assert result.code == 0, result.stderr
    text = result.stdout.decode()
    for label in ("device:", "latency:", "memory:", "compute:", "step_1", "decode", "other"):
        assert label in text


def test_random_weights_need_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DOSSR_CACHE_DIR", str(tmp_path))  # an empty cache: nothing to load from
    result = run_in_process(["bench", "--random-weights", "--random-config", "tiny", "--size", "16", "--steps", "1",
                             "--warmup", "0", "--runs", "1", "--json", "-q"])
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (("--runs", "0"), "--runs must be at least 1; got 0"),
    (("--size", "4"), "--size must be at least 8; got 4"),
    (("--order", "4"), "order must be one of 1, 2, 3"),
    (("--random-weights",), "--weights and --random-weights exclude each other: pick one"),
    (("--random-weights", "--random-config", "huge"), "--random-config must be one of full, tiny; got 'huge'"),
    (("--cuda-graphs",), "--cuda-graphs needs a CUDA device; this run is on cpu"),
])
def test_bad_options_are_one_line_usage_errors(dossr, args, message):
    result = bench(dossr, "--device", "cpu", *args)
    assert result.code == 2 and len(result.error_lines) == 1, result.stderr
    assert message in result.error_lines[0]
    assert "Traceback" not in result.stderr

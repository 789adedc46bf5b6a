"""The cost of a job is checked before any network runs: output pixels, the work the networks do,
the output format's largest side; and the memory that decides tiling is read the way the kernel means it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dossr_cli import imageio
from dossr_cli.batch.job import run_jobs
from dossr_cli.batch.params import JobTooLargeError, UpscaleParams
from dossr_cli.devices import host_available_memory


def png_bytes(height: int, width: int) -> bytes:
    return imageio.encode_image(np.full((height, width, 3), 0.5, np.float32), None, "png")


def test_output_pixels_past_the_limit_are_refused_naming_the_option():
    params = UpscaleParams(max_output_pixels=1_000_000)
    params.check_cost(250, 250, "png")  # 1000x1000 out: exactly the limit
    with pytest.raises(JobTooLargeError, match=r"1004x1000 = 1\.0 Mpx.*--max-output-pixels 1004000"):
        params.check_cost(250, 251, "png")


def test_the_default_output_limit_takes_a_32_megapixel_photo_at_x4_but_not_the_8000x8000_bomb():
    UpscaleParams().check_cost(4000, 8000, "png")  # 32 Mpx in, 512 Mpx out
    with pytest.raises(JobTooLargeError, match="32000x32000"):
        UpscaleParams().check_cost(8000, 8000, "png")


def test_the_work_at_x4_counts_even_when_the_output_is_small():
    """--scale 1 still runs the model at x4: 1000x1000 out, 4000x4000 of work."""
    with pytest.raises(JobTooLargeError, match=r"works on the x4 image, 4000x4000 = 16\.0 Mpx"):
        UpscaleParams(scale=1, max_output_pixels=10_000_000).check_cost(1000, 1000, "png")


@pytest.mark.parametrize("fmt, side", [("webp", 16383), ("jpg", 65535)])
def test_an_output_the_format_cannot_hold_is_refused(fmt, side):
    params = UpscaleParams()
    params.check_cost(16, side // 4, fmt)
    with pytest.raises(JobTooLargeError, match=f"{fmt} holds at most {side} pixels a side"):
        params.check_cost(16, side // 4 + 1, fmt)
    params.check_cost(16, side // 4 + 1, "png")


def test_thin_images_are_refused_when_padding_would_multiply_their_cost():
    """3x100000: the networks would work on 64x400000 for a 12x400000 image (5.3 times its area)."""
    with pytest.raises(JobTooLargeError, match=r"3x100000 is too thin.*5\.3 times its area"):
        UpscaleParams().check_cost(100000, 3, "png")
    UpscaleParams().check_cost(3, 2000, "png")  # as thin, but small: it costs seconds
    UpscaleParams().check_cost(16, 100000, "png")  # 64 pixels high at x4: no padding


def test_limits_are_checked_before_any_network_runs(tiny_pipeline, monkeypatch):
    """A WebP output 16,388 pixels wide used to fail at encoding, after the whole compute."""
    calls = []
    real = tiny_pipeline.upscale_tensor
    monkeypatch.setattr(tiny_pipeline, "upscale_tensor", lambda *a, **k: calls.append(1) or real(*a, **k))
    wide, small = png_bytes(16, 4097), png_bytes(8, 8)
    results = run_jobs(tiny_pipeline, [wide, small], UpscaleParams(steps=1), ["webp", "webp"])
    assert isinstance(results[0], JobTooLargeError) and "webp holds at most 16383" in str(results[0])
    assert calls == [1]  # the small image only
    assert results[1].output_size == (32, 32)


def test_auto_tiling_counts_the_padded_work(tiny_pipeline):
    """3x40 is 12x160 at x4 but the networks see 64x192: a budget that holds the first and not the
    second must tile."""
    tiles = []
    lq = torch.rand(1, 3, 3, 40)
    tiny_pipeline.upscale_tensor(lq, steps=1, seed=0, tile_size="auto", max_memory=10 << 20,
                                 tile_callback=lambda done, total: tiles.append(total))
    assert tiles and max(tiles) > 1


def test_available_memory_is_memavailable_capped_by_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    no_cgroup = tmp_path / "none"
    assert host_available_memory(meminfo, no_cgroup) == 20000000 * 1024  # cache counts as available
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{8 << 30}\n")
    (v2 / "memory.current").write_text(f"{3 << 30}\n")
    assert host_available_memory(meminfo, v2) == 5 << 30
    (v2 / "memory.max").write_text("max\n")
    assert host_available_memory(meminfo, v2) == 20000000 * 1024


def test_available_memory_on_this_machine_is_the_kernels_figure():
    def mem_available() -> int:
        with open("/proc/meminfo") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:"))

    before, measured, after = mem_available(), host_available_memory(), mem_available()
    assert min(before, after) - (64 << 20) <= measured <= max(before, after) + (64 << 20)

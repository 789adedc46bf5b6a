"""Device memory of the tiled VAE: waiting tiles hold nothing, one tile's peak fits the auto-size constant.

Bytes are counted by benchmarks/memory_model.py's LiveBytes (every op's new storage, freed when it
dies), on real CPU tensors and on the meta device; parking to a second CPU copy booked as host
memory stands in for a GPU's host parking.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from dossr_cli.devices import BYTES_PER_PIXEL
from dossr_cli.networks.config import ModelConfig
from dossr_cli.random_weights import fast_random_networks, tiny_config
from dossr_cli.tile_parking import HostParking, Resident, parking_for
from dossr_cli.tiled_vae import run_synchronized
from dossr_cli.tiling import TiledPlan

_spec = importlib.util.spec_from_file_location("memory_model", Path(__file__).parents[1] / "benchmarks/memory_model.py")
memory_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory_model)
LiveBytes = memory_model.LiveBytes


@pytest.fixture(scope="module")
def tiny_vae():
    return fast_random_networks(tiny_config(), seed=0).vae.eval().requires_grad_(False)


NINE_TILES = TiledPlan.make(16, 16, 8, 4)  # latent units: 3 x 3 tiles of 8, output tiles of 64 pixels
FOUR_TILES = TiledPlan.make(12, 12, 8, 4)


def test_the_tracker_books_allocations_and_frees():
    with LiveBytes("cpu") as tracker:
        kept = torch.ones(1 << 18)  # 1 MiB
        view = kept[10:]
        assert tracker.live == 1 << 20
        with tracker.untracked():
            host = torch.ones(1 << 18)
        assert tracker.live == 1 << 20
        del kept
        assert tracker.live == 1 << 20  # the view keeps its storage
        del view
        assert tracker.live == 0 and tracker.peak == 1 << 20
    assert host.sum() == 1 << 18


def test_waiting_tiles_hold_nothing_on_the_device(tiny_vae):
    """9 tiles: whenever a tile has been parked, the device holds only what the caller gave and the
    image-wide sums, nothing of any tile; the run's peak is one tile's, not nine."""
    assert len(NINE_TILES.tiles) == 9
    tracker = LiveBytes("cpu")
    after_park: list[int] = []

    class Watched(HostParking):
        def park(self, state):
            parked = super().park(state)
            after_park.append(tracker.live)
            return parked

    parking = Watched(torch.device("cpu"), host="cpu", host_allocation=tracker.untracked)
    with tracker, torch.inference_mode():
        latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        base = tracker.live
        run_synchronized(tiny_vae.decoder, "decoder", latent, NINE_TILES, 1, 8, parking)
    assert len(after_park) == 9 * 22  # 22 GroupNorms in the tiny decoder
    assert max(after_park) - base < 4096  # the float64 sums and statistics: under 1 KiB each
    one_tile_state = 64 * 64 * 64 * 4  # the widest tensor of one tile at full resolution (64 channels)
    assert tracker.peak - base < 4 * one_tile_state  # resident tiles would hold 9 tiles' states


def test_parked_tiles_give_the_resident_result(tiny_vae):
    """Parking is a copy there and back: bit for bit the same output, encoder and decoder."""
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latent = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    assert len(FOUR_TILES.tiles) == 4
    with torch.inference_mode():
        for kind, x, scale_in, scale_out in (("encoder", image, 8, 1), ("decoder", latent, 1, 8)):
            coder = getattr(tiny_vae, kind)
            resident = run_synchronized(coder, kind, x, FOUR_TILES, scale_in, scale_out, Resident())
            parked = run_synchronized(coder, kind, x, FOUR_TILES, scale_in, scale_out,
                                      HostParking(torch.device("cpu"), host="cpu"))
            assert torch.equal(resident, parked), kind


def test_the_parking_policy_per_device():
    assert isinstance(parking_for(torch.device("cpu")), Resident)
    cuda = parking_for(torch.device("cuda"))  # builds no CUDA state
    assert isinstance(cuda, HostParking) and cuda.pinned and cuda.non_blocking and cuda.host.type == "cpu"
    mps = parking_for(torch.device("mps"))
    assert isinstance(mps, HostParking) and not mps.pinned and not mps.non_blocking


def test_the_meta_model_books_what_the_cpu_run_allocates(tiny_vae):
    """The same tracker over the same code: the meta device's prediction is the CPU's count, to the byte."""
    meta_vae = memory_model.meta_pipeline(tiny_config(), torch.float32).networks.vae
    predicted = memory_model.decoder_tile_peak(meta_vae, 128, tiles=2, attention="cpu")
    measured = memory_model.decoder_tile_peak(tiny_vae, 128, tiles=2, attention="cpu")
    assert predicted == measured > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(("size", "tile", "overlap"), [(896, 512, 128), (512, None, 256)], ids=["tiled", "untiled"])
def test_one_tiles_peak_per_pixel_is_within_the_auto_size_constant(dtype, size, tile, overlap):
    """The full-size model on the meta device: every stage's peak activations per pixel of one tile
    (4 tiles per solver and preprocessor call) or of the untiled image stay below BYTES_PER_PIXEL,
    which auto_tile_size divides the budget by."""
    result = memory_model.pipeline_peaks(ModelConfig(), size, tile, overlap, dtype, steps=1)
    pixels = (tile or size) ** 2
    per_pixel = {stage: peak / pixels for stage, peak in result["stage_peak_bytes"].items()}
    constant = BYTES_PER_PIXEL[torch.finfo(dtype).bits // 8]
    assert max(per_pixel.values()) <= constant, per_pixel
    assert max(per_pixel.values()) > constant / 2, per_pixel  # and not so loose that tiles come out small


def test_one_decoder_tiles_peak_per_pixel_on_real_tensors():
    """One 128-pixel tile through the tiled decoder of a quarter-width VAE of the full structure (32
    channels at the top, not 128), on the CPU in fp32, times 4: a full-width tile's peak per output pixel.
    Measured 2,117 (1,024 in bf16); 4,198 before the chunked GroupNorm (6,072 in bf16)."""
    from dossr_cli.networks.config import VAEConfig
    from dossr_cli.networks.diffusion import build_vae

    vae = build_vae(VAEConfig(ch=32)).eval().requires_grad_(False)  # diffusers' own init: only bytes count
    one_tile = TiledPlan.make(16, 16, 17, 8)
    assert one_tile.is_single
    with LiveBytes("cpu") as tracker, torch.inference_mode():
        latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        base = tracker.live
        run_synchronized(vae.decoder, "decoder", latent, one_tile, 1, 8)
    per_pixel = 4 * (tracker.peak - base) / 128 ** 2
    assert per_pixel <= BYTES_PER_PIXEL[4], per_pixel


def test_parking_falls_back_to_pageable_memory_when_pinning_is_refused(tiny_vae):
    """A CPU-only torch refuses every pinned allocation, as a driver does once page-locked memory runs out:
    the tiles then park in pageable memory, synchronously, with the same output instead of a failed image."""
    with pytest.raises(RuntimeError):
        torch.empty(4, pin_memory=True)  # what makes this CPU a stand-in for a GPU out of pinned memory
    latent = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    parking = HostParking(torch.device("cpu"), host="cpu", pinned=True, non_blocking=True)
    with torch.inference_mode():
        resident = run_synchronized(tiny_vae.decoder, "decoder", latent, FOUR_TILES, 1, 8, Resident())
        parked = run_synchronized(tiny_vae.decoder, "decoder", latent, FOUR_TILES, 1, 8, parking)
    assert torch.equal(resident, parked)
    assert not parking.pinned and not parking.non_blocking and parking.bytes_to_host > 0

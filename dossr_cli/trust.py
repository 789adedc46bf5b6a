"""How far to trust one output: its departure from the input, and the detail the diffusion invented.

Departure: the output taken back to the input's size with the pipeline's own antialiased resize
(`geometry.lanczos_resize`: PIL's Lanczos, per channel, in float) and compared with the input taken
through the same round trip (enlarged to the output's size, then back). Comparing against the round
trip rather than the input itself removes the filter's own loss, so a plain Lanczos enlargement departs
by exactly nothing, and every decibel lost is the model's. PSNR is in the input's domain ([0, 1] RGB,
all channels), capped at MAX_PSNR_DB so that "no departure" is a number JSON can hold.

Invented detail: the result minus the deterministic regression upscale (the RRDBNet preprocessor's
output, resized to the output size as the pipeline resizes its result). Energy = RMS of that
difference over all pixels and channels, in [0, 1] units; the map is the per-pixel RMS over channels.

Neither number is proof of truth: an output can agree with its input at the input's size and still
invent a plausible wrong face; they say where to look, not what is right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
from PIL import Image, ImageDraw

MAX_PSNR_DB = 100.0  # MSE 1e-10: below float32 rounding of [0, 1] values, so "identical" in practice
DEFAULT_PIXEL_THRESHOLD = 0.1  # a pixel departs when a channel moved by more than 10% of the range (~26/255)
DEFAULT_FLAG_PSNR_DB = 30.0  # an image whose departure PSNR is below this is flagged
DEFAULT_FLAG_SHARE = 0.01  # ... or whose share of departing pixels is above this (1%)
LEGEND_WIDTH = 260  # pixels the legend's longest line needs: a narrower map is padded on the right with black
INVENTED_FULL_SCALE = 0.2  # invented-detail magnitude drawn at full colour in the trust map
DEPARTURE_COLOUR = np.array([1.0, 0.15, 0.1], dtype=np.float32)  # red
INVENTED_COLOUR = np.array([0.1, 0.9, 1.0], dtype=np.float32)  # cyan


@dataclass(frozen=True)
class TrustNumbers:
    """The three numbers alone: small enough for JSON, a batch's outcomes and a Ray worker's reply."""

    departure_psnr_db: float  # capped at MAX_PSNR_DB
    departure_share: float  # share of input pixels beyond the pixel threshold, in [0, 1]
    invented_rms: float  # RMS of (result - regression upscale), in [0, 1] units

    def flags(self, min_psnr_db: float = DEFAULT_FLAG_PSNR_DB, max_share: float = DEFAULT_FLAG_SHARE) -> list[str]:
        """Why this image needs a look, one short reason per threshold crossed (empty: none)."""
        reasons = []
        if self.departure_psnr_db < min_psnr_db:
            reasons.append(f"departure PSNR {self.departure_psnr_db:.1f} dB < {min_psnr_db:g} dB")
        if self.departure_share > max_share:
            reasons.append(f"{self.departure_share:.1%} of pixels depart > {max_share:.1%}")
        return reasons

    def as_json(self, min_psnr_db: float = DEFAULT_FLAG_PSNR_DB, max_share: float = DEFAULT_FLAG_SHARE) -> dict:
        reasons = self.flags(min_psnr_db, max_share)
        # Unrounded: a client flagging these numbers (`upscale --server`) must see what the server measured.
        numbers = {number.name: getattr(self, number.name) for number in fields(TrustNumbers)}
        return {**numbers, "flagged": bool(reasons), "flag_reasons": reasons}

    @staticmethod
    def from_json(measured: dict) -> TrustNumbers:
        """The numbers of `as_json`'s dictionary, as a server's job sends them."""
        return TrustNumbers(*(float(measured[number.name]) for number in fields(TrustNumbers)))


@dataclass(frozen=True)
class TrustReport(TrustNumbers):
    pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD
    # (h, w): the largest channel departure per input pixel; (H, W): per-pixel RMS over channels of invented detail
    departure_map: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    invented_map: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def numbers(self) -> TrustNumbers:
        return TrustNumbers(self.departure_psnr_db, self.departure_share, self.invented_rms)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two [0, 1] arrays, capped at MAX_PSNR_DB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return MAX_PSNR_DB if mse <= 10 ** (-MAX_PSNR_DB / 10) else min(MAX_PSNR_DB, -10 * math.log10(mse))


def _resize_hwc(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch  # here, not above: the command line reads this module's defaults before it may load torch

    from dossr_cli.geometry import lanczos_resize

    chw = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    return lanczos_resize(chw, size)[0].permute(1, 2, 0).numpy().clip(0, 1)


def departure(lr_rgb: np.ndarray, result_rgb: np.ndarray,
              pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD) -> tuple[float, float, np.ndarray]:
    """(PSNR dB, share of departing pixels, per-pixel map) of the result taken back to the input's size."""
    small = lr_rgb.shape[:2]
    back = _resize_hwc(result_rgb, small)
    round_trip = _resize_hwc(_resize_hwc(lr_rgb, result_rgb.shape[:2]), small)
    moved = np.abs(back - round_trip).max(axis=2)
    return psnr_db(back, round_trip), float(np.mean(moved > pixel_threshold)), moved.astype(np.float32)


def invented_detail(result_rgb: np.ndarray, reference_rgb: np.ndarray) -> tuple[float, np.ndarray]:
    """(RMS energy, per-pixel map) of the result minus the regression upscale, both at the output size."""
    if result_rgb.shape != reference_rgb.shape:
        raise ValueError(f"result {result_rgb.shape} and reference {reference_rgb.shape} differ in shape")
    difference = result_rgb.astype(np.float32) - reference_rgb.astype(np.float32)
    per_pixel = np.sqrt(np.mean(difference ** 2, axis=2))
    return float(np.sqrt(np.mean(difference.astype(np.float64) ** 2))), per_pixel


def trust_report(lr_rgb: np.ndarray, result_rgb: np.ndarray, reference_rgb: np.ndarray,
                 pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD) -> TrustReport:
    """Both measures for one image: input (h, w, 3), result and regression upscale (H, W, 3), all [0, 1]."""
    psnr, share, moved = departure(lr_rgb, result_rgb, pixel_threshold)
    rms, invented = invented_detail(result_rgb, reference_rgb)
    return TrustReport(psnr, share, rms, pixel_threshold, moved, invented)


def trust_map(result_rgb: np.ndarray, report: TrustReport) -> np.ndarray:
    """The result, greyed and dimmed, with invented detail in cyan (stronger = more) and departing input
    pixels in red; a legend strip underneath. Float32 (H + legend, max(W, LEGEND_WIDTH), 3) in [0, 1]."""
    height, width = result_rgb.shape[:2]
    grey = (result_rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None] * 0.6 + 0.2
    picture = np.repeat(grey, 3, axis=2).astype(np.float32)
    strength = np.clip(report.invented_map / INVENTED_FULL_SCALE, 0, 1)[..., None]
    picture = picture * (1 - strength) + INVENTED_COLOUR * strength
    rows = np.arange(height) * report.departure_map.shape[0] // height
    cols = np.arange(width) * report.departure_map.shape[1] // width
    departed = (report.departure_map[rows][:, cols] > report.pixel_threshold)[..., None]
    picture = np.where(departed, picture * 0.3 + DEPARTURE_COLOUR * 0.7, picture)
    if width < LEGEND_WIDTH:  # a small result: room for the legend to be read whole
        picture = np.pad(picture, ((0, 0), (0, LEGEND_WIDTH - width), (0, 0)))
    legend = _legend(max(width, LEGEND_WIDTH), report)
    return np.concatenate([picture, legend], axis=0).clip(0, 1).astype(np.float32)


def _legend(width: int, report: TrustReport) -> np.ndarray:
    """A strip naming the two colours and the image's numbers (PIL's built-in bitmap font)."""
    numbers = (f"PSNR {report.departure_psnr_db:.1f} dB  depart {report.departure_share:.1%}  "
               f"invented {report.invented_rms:.3f}")
    lines = [("cyan: invented (vs regression upscale)", INVENTED_COLOUR),
             (f"red: departs from input by > {report.pixel_threshold:g}", DEPARTURE_COLOUR),
             (numbers, np.ones(3, dtype=np.float32))]
    strip = Image.new("RGB", (max(width, 1), 14 * len(lines) + 4), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, (text, colour) in enumerate(lines):
        fill = tuple(int(v * 255) for v in colour)
        draw.rectangle((2, 3 + 14 * i, 11, 12 + 14 * i), fill=fill)
        draw.text((16, 2 + 14 * i), text, fill=fill)
    return np.asarray(strip, dtype=np.float32)[:, :width] / 255.0

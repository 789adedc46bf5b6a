"""Learned metrics through pyiqa (the `eval` extra): each one measured, or named unavailable with why.

pyiqa downloads each metric's weights on first use; without them (offline, no pyiqa, no torchvision)
the metric is reported unavailable in one line and the rest of `dossr eval` runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# our column name -> (pyiqa's metric name, needs a reference, higher is better)
FULL_REFERENCE = {"LPIPS": ("lpips", True, False), "DISTS": ("dists", True, False)}
NO_REFERENCE = {"NIQE": ("niqe", False, False), "MUSIQ": ("musiq", False, True),
                "MANIQA": ("maniqa", False, True), "CLIPIQA": ("clipiqa", False, True)}
INSTALL_HINT = "pip install 'dossr[eval]'"


@dataclass(frozen=True)
class Unavailable:
    metric: str
    reason: str

    def line(self) -> str:
        return f"{self.metric}: unavailable: {self.reason}"


class LearnedMetrics:
    """The pyiqa metrics that could be built here; `unavailable` says why each other one could not."""

    def __init__(self, with_reference: bool, device: str = "cpu") -> None:
        wanted = {**(FULL_REFERENCE if with_reference else {}), **NO_REFERENCE}
        self.metrics: dict[str, Any] = {}
        self.unavailable: list[Unavailable] = []
        self._torch: Any = None
        try:
            import pyiqa  # the optional extra; it imports torchvision
            import torch
        except Exception as error:  # noqa: BLE001 - any import failure makes every learned metric unavailable
            reason = f"pyiqa cannot be imported ({type(error).__name__}: {_first_line(error)}); {INSTALL_HINT}"
            self.unavailable = [Unavailable(name, reason) for name in wanted]
            return
        self._torch = torch
        for name, (pyiqa_name, _, _) in wanted.items():
            try:
                self.metrics[name] = pyiqa.create_metric(pyiqa_name, device=device)
            except Exception as error:  # noqa: BLE001 - weights that cannot be fetched, a name this pyiqa lacks
                self.unavailable.append(Unavailable(name, f"pyiqa could not build '{pyiqa_name}' (its weights "
                                                    f"may not be downloadable here): {type(error).__name__}: "
                                                    f"{_first_line(error)}"))

    @property
    def names(self) -> list[str]:
        return list(self.metrics)

    def measure(self, result_rgb: np.ndarray, reference_rgb: np.ndarray | None) -> dict[str, float]:
        """Each built metric of one image (RGB floats in [0, 1]); pyiqa takes (1, 3, H, W) tensors in [0, 1]."""
        torch = self._torch
        values: dict[str, float] = {}
        if not self.metrics:
            return values
        result = torch.from_numpy(np.ascontiguousarray(result_rgb.transpose(2, 0, 1)))[None].float()
        reference = (None if reference_rgb is None else
                     torch.from_numpy(np.ascontiguousarray(reference_rgb.transpose(2, 0, 1)))[None].float())
        with torch.no_grad():
            for name, metric in self.metrics.items():
                needs_reference = name in FULL_REFERENCE
                score = metric(result, reference) if needs_reference else metric(result)
                values[name] = float(score.item())
        return values


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else "no message"

"""The DoSSR noise schedule, shift sequence eta and respacing, as one float64 table.

Everything here follows DOSSR_SPEC.md section 3 (the authors' code where it differs
from the paper's Eq. 4) and is pure: the same arguments always give the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
DEFAULT_T1 = 500  # the shift's end point the released weights were trained with
MAX_STEPS = 200


def alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Stable Diffusion's "scaled linear" schedule: betas linear in sqrt."""
    betas = np.linspace(math.sqrt(BETA_START), math.sqrt(BETA_END), num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def eta_schedule(t1: int = DEFAULT_T1, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The domain shift eta_t: a half cosine from ~0 to ~1 over [0, t1), then 1.

    The code's u = linspace(0.001, 0.999, t1) replaces the paper's t/t1 (Eq. 4), so
    eta[0] = 2.4674e-6 rather than 0.
    """
    if not 1 <= t1 <= num_train_timesteps:
        raise ValueError(f"t1 must be in 1..{num_train_timesteps}, got {t1}")
    eta = np.ones(num_train_timesteps, dtype=np.float64)
    u = np.linspace(0.001, 0.999, t1, dtype=np.float64)
    eta[:t1] = (1.0 - np.cos(u * math.pi)) / 2.0
    return eta


def respaced_timesteps(steps: int, t1: int = DEFAULT_T1) -> list[int]:
    """The steps+1 timesteps in [0, t1-1] of guided-diffusion's space_timesteps(t1, str(steps+1)).

    Positions accumulate by repeated float addition and are taken with Python's round(),
    exactly as there, so the lists match bit for bit (t1=500, steps=5 ->
    [0, 100, 200, 299, 399, 499]).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps + 1 > t1:
        raise ValueError(f"steps must be below t1={t1}, got {steps}")
    stride = (t1 - 1) / steps
    position = 0.0
    taken = []
    for _ in range(steps + 1):
        taken.append(round(position))
        position += stride
    return taken


@dataclass(frozen=True)
class CoefficientTable:
    """Per-timestep quantities of the DoS-SDE, ascending in time (index 0 is tau_0 = 0).

    `a` is sqrt(abar) * (1 - eta) and `lambda_` is sigma / a (DOSSR_SPEC section 3).
    All arrays are float64 and read-only.
    """

    timesteps: np.ndarray  # int64, the original timesteps tau_k given to the network
    alphas_cumprod: np.ndarray
    eta: np.ndarray
    sigma: np.ndarray
    a: np.ndarray
    lambda_: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.timesteps) - 1


def coefficient_table(steps: int, t1: int = DEFAULT_T1) -> CoefficientTable:
    """The table the solver runs over for `steps` network calls starting at t1."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
    if not 2 <= t1 <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"t1 must be in 2..{NUM_TRAIN_TIMESTEPS}, got {t1}")
    taus = np.array(respaced_timesteps(steps, t1), dtype=np.int64)
    abar = alphas_cumprod()[taus]
    eta = eta_schedule(t1)[taus]
    sigma = np.sqrt(1.0 - abar)
    a = np.sqrt(abar) * (1.0 - eta)
    lambda_ = sigma / a
    arrays = [taus, abar, eta, sigma, a, lambda_]
    for array in arrays:
        array.setflags(write=False)
    return CoefficientTable(*arrays)

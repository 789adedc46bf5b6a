"""The DoS-SDE solver of orders 1-3 (paper Eq. 42/44/47, Algorithms 1-3).

A pure function over a `CoefficientTable`: the network reaches it only as a data
prediction callable, and randomness only as noise tensors passed in, so the same
inputs always give the same output and the maths is testable without any network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from dossr_cli.choices import ORDERS
from dossr_cli.schedule import CoefficientTable

# data_prediction(z, k) -> x0 estimate at schedule index k (timestep table.timesteps[k])
DataPrediction = Callable[[torch.Tensor, int], torch.Tensor]
# called once per network call, with the number of calls done so far and the total
StepCallback = Callable[[int, int], None]


def dos_sde_sample(
    data_prediction: DataPrediction,
    x0_hat: torch.Tensor,
    table: CoefficientTable,
    noise: Sequence[torch.Tensor],
    order: int = 3,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Sample from t1 down to tau_0 = 0 in `table.steps` calls of `data_prediction`.

    `x0_hat` is the start latent (the shifted domain's mean); `noise` holds
    steps + 1 standard normal tensors shaped like it: the first starts the chain at t1,
    one more enters at every call (DOSSR_SPEC section 4). The coefficients are float64
    Python numbers until they multiply tensors.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order}")
    steps = table.steps
    if len(noise) != steps + 1:
        raise ValueError(f"need {steps + 1} noise tensors for {steps} steps, got {len(noise)}")
    a, lam, eta = table.a, table.lambda_, table.eta
    abar_top = float(table.alphas_cumprod[steps])

    z = math.sqrt(abar_top) * x0_hat + float(table.sigma[steps]) * noise[0]
    x0_prev: torch.Tensor | None = None
    d1_prev: torch.Tensor | None = None
    for call, j in enumerate(range(steps, 0, -1)):
        x0 = data_prediction(z, j)
        r = float(lam[j - 1] / lam[j])
        shift_j = float(eta[j] / (1.0 - eta[j]))
        shift_prev = float(eta[j - 1] / (1.0 - eta[j - 1]))
        a_prev = float(a[j - 1])

        update = (
            (a_prev / float(a[j])) * r**2 * z
            + a_prev * (shift_prev - shift_j * r**2) * x0_hat
            + a_prev * (1.0 - r**2) * x0
        )
        d1 = None
        if order >= 2 and x0_prev is not None:
            d1 = (x0 - x0_prev) / float(lam[j] - lam[j + 1])
            update = update - a_prev * float((lam[j - 1] - lam[j]) ** 2 / lam[j]) * d1
            if order == 3 and d1_prev is not None:
                d2 = 2.0 * (d1 - d1_prev) / float(lam[j] - lam[j + 2])
                d2_coef = (lam[j] - 3.0 * lam[j - 1]) * (lam[j] - lam[j - 1]) / 2.0 - lam[j - 1] ** 2 * math.log(r)
                update = update + a_prev * float(d2_coef) * d2
        z = update + a_prev * float(lam[j - 1]) * math.sqrt(1.0 - r**2) * noise[call + 1]
        x0_prev, d1_prev = x0, d1
        if callback is not None:
            callback(call + 1, steps)
    return z


def eps_to_data_prediction(
    predict_eps: Callable[[torch.Tensor, int], torch.Tensor], table: CoefficientTable
) -> DataPrediction:
    """Adapt an eps-prediction network to the solver's x0 contract: x0 = (z - sigma eps) / sqrt(abar)."""

    def data_prediction(z: torch.Tensor, k: int) -> torch.Tensor:
        eps = predict_eps(z, int(table.timesteps[k]))
        return (z - float(table.sigma[k]) * eps) / math.sqrt(float(table.alphas_cumprod[k]))

    return data_prediction

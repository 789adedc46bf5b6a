import math

import numpy as np
import pytest

from dossr_cli.schedule import alphas_cumprod, coefficient_table, eta_schedule, respaced_timesteps


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (1, [0, 499]),
        (2, [0, 250, 499]),
        (5, [0, 100, 200, 299, 399, 499]),
        (10, [0, 50, 100, 150, 200, 250, 299, 349, 399, 449, 499]),
    ],
)
def test_respaced_timesteps_match_the_spec(steps, expected):
    assert respaced_timesteps(steps, t1=500) == expected


def test_eta_matches_the_authors_code():
    eta = eta_schedule(500)
    assert eta[0] == pytest.approx((1 - math.cos(0.001 * math.pi)) / 2, rel=1e-12)
    assert eta[0] == pytest.approx(2.4674e-6, rel=1e-4)
    assert np.all(eta[500:] == 1.0)
    assert eta[499] == pytest.approx((1 - math.cos(0.999 * math.pi)) / 2, rel=1e-12)


def test_alphas_cumprod_is_stable_diffusions_scaled_linear():
    abar = alphas_cumprod()
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(abar, np.cumprod(1 - betas), rtol=0, atol=0)
    assert abar[0] == pytest.approx(0.99915, abs=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7, 10, 20, 50])
@pytest.mark.parametrize("t1", [100, 500, 999])
def test_table_is_float64_finite_and_monotone(steps, t1):
    if steps + 1 > t1:
        pytest.skip("more steps than timesteps")
    table = coefficient_table(steps, t1)
    assert table.steps == steps
    assert len(table.timesteps) == steps + 1
    for name in ("alphas_cumprod", "eta", "sigma", "a", "lambda_"):
        values = getattr(table, name)
        assert values.dtype == np.float64, name
        assert np.all(np.isfinite(values)), name
    assert np.all(np.diff(table.timesteps) > 0)
    assert np.all(np.diff(table.eta) > 0)
    assert np.all(np.diff(table.sigma) > 0)
    assert np.all(np.diff(table.lambda_) > 0)
    assert np.all(np.diff(table.a) < 0)
    assert table.timesteps[0] == 0 and table.timesteps[-1] == t1 - 1


def test_top_of_the_shift_is_large_but_finite():
    table = coefficient_table(5)
    assert table.eta[-1] == pytest.approx(0.9999975, abs=1e-7)
    assert 1e5 < table.lambda_[-1] < 1e7


def test_table_is_read_only():
    table = coefficient_table(5)
    with pytest.raises(ValueError):
        table.eta[0] = 0.5


@pytest.mark.parametrize(("steps", "t1"), [(0, 500), (-1, 500), (500, 500), (5, 0), (5, 1001)])
def test_bad_arguments_are_refused(steps, t1):
    with pytest.raises(ValueError):
        coefficient_table(steps, t1)

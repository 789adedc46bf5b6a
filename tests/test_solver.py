"""The DoS-SDE solver against cases whose answer is known in closed form."""

import math

import pytest
import torch

from dossr_cli.schedule import coefficient_table
from dossr_cli.solver import dos_sde_sample, eps_to_data_prediction


def shift_coefficient(table, k):
    """c_k in z_k = a_k x0 + c_k x0_hat + sigma_k noise, the DoS-SDE marginal."""
    return math.sqrt(table.alphas_cumprod[k]) * table.eta[k]


def standard_noise(steps, shape, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) for _ in range(steps + 1)]


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 25])
def test_point_mass_target_is_reached_exactly_without_noise(order, steps):
    """With x0 known exactly, every order lands on the marginal mean a_0 x* + c_0 x0_hat."""
    table = coefficient_table(steps)
    target = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    x0_hat = torch.tensor([1.0, 0.5, -0.7], dtype=torch.float64)
    zeros = [torch.zeros(3, dtype=torch.float64)] * (steps + 1)
    z = dos_sde_sample(lambda z, k: target, x0_hat, table, zeros, order)
    expected = table.a[0] * target + shift_coefficient(table, 0) * x0_hat
    torch.testing.assert_close(z, expected, rtol=1e-9, atol=1e-9)
    # "up to the final noise level": the target itself is within sigma_0 and eta_0 of z
    assert torch.all((z - target).abs() < 0.03)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_point_mass_target_with_noise_has_the_exact_final_marginal(order):
    steps, n = 5, 200_000
    table = coefficient_table(steps)
    target, x0_hat = 0.8, -0.5
    noise = standard_noise(steps, (n,))
    z = dos_sde_sample(lambda z, k: torch.full_like(z, target), torch.full((n,), x0_hat, dtype=torch.float64),
                       table, noise, order)
    mean = table.a[0] * target + shift_coefficient(table, 0) * x0_hat
    assert z.mean().item() == pytest.approx(mean, abs=4 * table.sigma[0] / math.sqrt(n))
    assert z.std().item() == pytest.approx(table.sigma[0], rel=0.01)


def gaussian_posterior_mean(table, mu, s, x0_hat):
    """E[x0 | z_k] for x0 ~ N(mu, s^2): the exact data prediction for a Gaussian target."""

    def predict(z, k):
        a, sigma = table.a[k], table.sigma[k]
        gain = a * s * s / (a * a * s * s + sigma * sigma)
        return mu + gain * (z - shift_coefficient(table, k) * x0_hat - a * mu)

    return predict


def gaussian_errors(steps, order, n=100_000, mu=0.7, s=0.3, x0_hat=-0.4):
    table = coefficient_table(steps)
    noise = standard_noise(steps, (n,))
    z = dos_sde_sample(gaussian_posterior_mean(table, mu, s, x0_hat),
                       torch.full((n,), x0_hat, dtype=torch.float64), table, noise, order)
    mean = table.a[0] * mu + shift_coefficient(table, 0) * x0_hat
    std = math.sqrt(table.a[0] ** 2 * s * s + table.sigma[0] ** 2)
    return abs(z.mean().item() - mean), abs(z.std().item() - std)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 5, 10])
def test_gaussian_target_mean_is_matched(order, steps):
    mean_error, _ = gaussian_errors(steps, order)
    assert mean_error < 3e-3  # sampling error alone is ~1e-3 at 100k samples


def test_gaussian_target_std_at_five_steps_and_order_three_beats_order_one():
    """Few steps lose variance; at the paper's 5 steps order 3 must lose less than order 1.

    Measured (100k samples, target std 0.300): order 1 off by ~0.136, order 3 by ~0.046.
    """
    _, std_error_1 = gaussian_errors(5, 1)
    _, std_error_3 = gaussian_errors(5, 3)
    assert std_error_3 <= std_error_1
    assert std_error_3 < 0.06
    assert std_error_1 < 0.16


def test_order_one_converges_as_steps_grow():
    """Measured std errors for order 1: 0.136 (5 steps), 0.032 (50), 0.019 (100)."""
    errors = [gaussian_errors(steps, 1)[1] for steps in (5, 50, 100)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.025


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 5, 13])
def test_n_steps_make_exactly_n_network_calls_at_descending_timesteps(order, steps):
    table = coefficient_table(steps)
    seen = []

    def predict_eps(z, timestep):
        seen.append(timestep)
        return torch.zeros_like(z)

    x0_hat = torch.zeros(4)
    dos_sde_sample(eps_to_data_prediction(predict_eps, table), x0_hat, table,
                   standard_noise(steps, (4,), dtype=torch.float32), order)
    assert seen == [int(t) for t in reversed(table.timesteps[1:])]


def test_orders_agree_where_higher_terms_have_not_started():
    """Order 2 adds its term from the 2nd call, order 3 from the 3rd (DOSSR_SPEC section 4)."""
    def varying(z, k):
        return torch.sin(3 * z) + 0.1 * k

    x0_hat = torch.linspace(-1, 1, 7, dtype=torch.float64)
    for steps, equal_orders in ((1, (1, 2, 3)), (2, (2, 3))):
        table = coefficient_table(steps)
        noise = standard_noise(steps, (7,))
        outs = [dos_sde_sample(varying, x0_hat, table, noise, order) for order in equal_orders]
        for out in outs[1:]:
            torch.testing.assert_close(out, outs[0], rtol=0, atol=0)
    table = coefficient_table(5)
    noise = standard_noise(5, (7,))
    outs = [dos_sde_sample(varying, x0_hat, table, noise, order) for order in (1, 2, 3)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_is_preserved(dtype):
    table = coefficient_table(5)
    x0_hat = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
    noise = [n.to(dtype) for n in standard_noise(5, (2, 4, 3, 3))]
    z = dos_sde_sample(lambda z, k: z * 0.5, x0_hat, table, noise, 3)
    assert z.dtype == dtype
    assert torch.isfinite(z.float()).all()


def test_bad_order_and_noise_count_are_refused():
    table = coefficient_table(5)
    x0_hat = torch.zeros(2)
    with pytest.raises(ValueError, match="order"):
        dos_sde_sample(lambda z, k: z, x0_hat, table, [x0_hat] * 6, order=4)
    with pytest.raises(ValueError, match="noise"):
        dos_sde_sample(lambda z, k: z, x0_hat, table, [x0_hat] * 5, order=3)


def test_callback_sees_every_call():
    table = coefficient_table(4)
    calls = []
    dos_sde_sample(lambda z, k: z, torch.zeros(2), table, [torch.zeros(2)] * 5, 3,
                   callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

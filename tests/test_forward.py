import torch
from diffusers import DDPMScheduler

from ddpm_lib import NoiseSchedule, q_sample, q_step


def test_q_sample_equals_diffusers_add_noise(linear):
    ref = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 2, 100, 499, 500, 998, 999])
    err = (q_sample(x0, t, linear, noise) - ref.add_noise(x0, noise, t)).abs().max().item()
    # diffusers forms 1 - abar in float32: at t = 0 (1 - abar = 1e-4) that cancellation costs
    # ~1e-6 in sqrt(1 - abar); ddpm_lib computes it in float64. |noise| <= ~5, hence 1e-5.
    assert err < 1e-5, err
    exact = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert (linear.sqrt_one_minus_alphas_cumprod.double() - (1 - exact).sqrt()).abs().max() < 1e-7


def test_q_sample_accepts_int_t_and_draws_noise(linear):
    x0 = torch.zeros(64, 1, 32, 32)
    xt = q_sample(x0, 999, linear)
    # from x0 = 0, x_t = sqrt(1 - abar) eps: its std is sqrt(1 - abar_999) ~ 1
    assert abs(xt.std().item() - (1 - linear.alphas_cumprod[999]).sqrt().item()) < 0.02


def test_iterated_q_step_matches_closed_form_mean_and_variance():
    # Monte Carlo: 200k scalar chains, x_0 = 0.8; t steps of q(x_t | x_{t-1}) vs q(x_t | x_0)
    s = NoiseSchedule.linear()
    n, x0 = 200_000, 0.8
    for t in (0, 9, 99, 499):
        x = torch.full((n, 1), x0, dtype=torch.float64)
        for k in range(t + 1):
            x = q_step(x, k, s)
        ab = s.alphas_cumprod[t].double().item()
        mean, var = ab ** 0.5 * x0, 1 - ab
        # standard error of the mean is sqrt(var / n) <= 0.0023; of the variance ~ var * sqrt(2/n)
        assert abs(x.mean().item() - mean) < 5 * (var / n) ** 0.5 + 1e-6, (t, x.mean().item(), mean)
        assert abs(x.var().item() - var) < 5 * var * (2 / n) ** 0.5 + 1e-6, (t, x.var().item(), var)


def test_q_step_then_q_sample_is_consistent_exactly_for_one_step(linear):
    x0 = torch.randn(3, 1, 4, 4)
    noise = torch.randn_like(x0)
    assert torch.allclose(q_step(x0, 0, linear, noise), q_sample(x0, 0, linear, noise), atol=1e-6)

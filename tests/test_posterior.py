import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_lib import NoiseSchedule, p_mean, predict_x0, q_posterior, q_sample


def brute_force_posterior(s, t, x0, xt):
    """Condition the joint Gaussian of (x_{t-1}, x_t) given x_0 on x_t, by linear algebra."""
    b = s.betas.double().numpy()  # everything else in float64 from the betas alone
    a = 1 - b
    ab = np.cumprod(a)
    ab_prev = ab[t - 1] if t > 0 else 1.0
    # [x_{t-1}, x_t] = m + A [e1, e2]
    m = np.array([np.sqrt(ab_prev) * x0, np.sqrt(a[t] * ab_prev) * x0])
    A = np.array([[np.sqrt(1 - ab_prev), 0.0],
                  [np.sqrt(a[t]) * np.sqrt(1 - ab_prev), np.sqrt(b[t])]])
    S = A @ A.T
    mean = m[0] + S[0, 1] / S[1, 1] * (xt - m[1])
    var = S[0, 0] - S[0, 1] ** 2 / S[1, 1]
    return mean, var


@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_q_posterior_matches_bayes(linear, t):
    x0 = torch.tensor([[0.3], [-0.9], [1.0]], dtype=torch.float64)
    xt = torch.tensor([[1.2], [0.1], [-2.0]], dtype=torch.float64)
    mean, var = q_posterior(x0, xt, t, linear)
    for i in range(3):
        m_ref, v_ref = brute_force_posterior(linear, t, x0[i].item(), xt[i].item())
        assert mean[i].item() == pytest.approx(m_ref, abs=1e-6)
        assert var[i].item() == pytest.approx(v_ref, abs=1e-8)


def test_q_posterior_matches_bayes_for_cosine():
    s = NoiseSchedule.cosine()
    for t in (0, 1, 700, 999):
        mean, var = q_posterior(torch.tensor([[0.5]]), torch.tensor([[-0.4]]), t, s)
        m_ref, v_ref = brute_force_posterior(s, t, 0.5, -0.4)
        assert mean.item() == pytest.approx(m_ref, abs=1e-5)
        assert var.item() == pytest.approx(v_ref, abs=1e-6)


def diffusers_float64(clip_sample=False):
    """DDPMScheduler whose alphas_cumprod are exact float64 (stock ones are float32)."""
    ref = DDPMScheduler(num_train_timesteps=1000, clip_sample=clip_sample)
    ref.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ref


@pytest.mark.parametrize("stock", [True, False])
@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_p_mean_and_posterior_match_diffusers_step(linear, t, stock):
    # stock diffusers forms 1 - abar_t from float32 abar: near t = 0 that cancellation costs
    # ~2e-4 in the mean; with float64 abar the two agree to float32 rounding.
    ref = DDPMScheduler(num_train_timesteps=1000, clip_sample=False) if stock else diffusers_float64()
    tol = 5e-4 if stock else 1e-5
    ref.set_timesteps(1000)
    xt = torch.randn(4, 1, 8, 8)
    eps = torch.randn_like(xt)
    # no noise is added at t = 0; elsewhere subtract the same z * sigma to get the mean
    g = torch.Generator().manual_seed(1)
    out = ref.step(eps, t, xt, generator=g)
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(1)) if t > 0 else torch.zeros_like(xt)
    ref_mean = out.prev_sample - linear.posterior_variance[t].sqrt() * z
    mean = p_mean(xt, t, eps, linear)
    assert (mean - ref_mean).abs().max().item() < tol
    x0_pred = predict_x0(xt, t, eps, linear)
    assert (x0_pred - out.pred_original_sample).abs().max().item() < 2e-4 * max(1.0, out.pred_original_sample.abs().max().item())
    mean2, var = q_posterior(x0_pred, xt, t, linear)
    assert (mean2 - ref_mean).abs().max().item() < tol
    assert var.flatten()[0].item() == pytest.approx(ref._get_variance(t).item(), rel=1e-3 if stock else 1e-6, abs=1e-20)
    if t == 0:
        assert torch.equal(out.prev_sample, out.pred_original_sample)


def test_oracle_eps_recovers_x0(linear):
    x0 = torch.rand(5, 1, 6, 6) * 2 - 1
    eps = torch.randn_like(x0)
    for t in (0, 250, 999):
        xt = q_sample(x0, t, linear, eps)
        assert torch.allclose(predict_x0(xt, t, eps, linear), x0, atol=2e-3 if t == 999 else 1e-4)

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_lib import NoiseSchedule


@pytest.mark.parametrize("ours,theirs", [
    (lambda: NoiseSchedule.linear(), "linear"),
    (lambda: NoiseSchedule.cosine(), "squaredcos_cap_v2"),
])
def test_alphas_cumprod_matches_diffusers(ours, theirs):
    s = ours()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs)
    assert torch.allclose(s.betas, ref.betas, atol=1e-6, rtol=0)
    err = (s.alphas_cumprod - ref.alphas_cumprod).abs().max().item()
    assert err < 1e-6, err


def test_schedule_dtypes_and_identities(linear):
    for name in ("betas", "alphas", "alphas_cumprod", "posterior_variance"):
        a = getattr(linear, name)
        assert a.dtype == torch.float32 and a.shape == (1000,)
    assert linear.num_timesteps == 1000
    assert torch.allclose(linear.alphas, 1 - linear.betas)
    assert torch.allclose(linear.alphas_cumprod, torch.cumprod(linear.alphas.double(), 0).float(), atol=1e-7)
    # abar_0 = alpha_0 (index 0 is the paper's t = 1) and abar decreases strictly
    assert linear.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, abs=1e-7)
    assert (linear.alphas_cumprod.diff() < 0).all()
    # beta-tilde at index 0 is 0: q(x_0 | x_1, x_0) is a point mass
    assert linear.posterior_variance[0].item() == 0.0


def test_cosine_schedule_is_gentler_at_the_start():
    lin, cos = NoiseSchedule.linear(), NoiseSchedule.cosine()
    # Nichol & Dhariwal's point: linear destroys signal sooner; compare log-SNR halfway
    assert cos.snr()[500] > 10 * lin.snr()[500]
    assert cos.betas.max().item() == pytest.approx(0.999, abs=1e-6)

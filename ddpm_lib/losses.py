"""The training objective L_simple (chapter 优化目标)."""
import torch
import torch.nn.functional as F

from .forward import q_sample
from .models import as_denoiser
from .validation import check_images, check_tensor, check_timesteps


def ddpm_loss(model, x0, schedule, t=None, noise=None, generator=None):
    """L_simple = E ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2
    (优化目标, eq. L-simple).

    Args: model, any denoiser (``models.as_denoiser``); x0 (B, C, H, W); t: (B,) 0-based,
    drawn uniformly if None; noise: eps like x0, drawn if None; generator draws the missing
    t and noise on the CPU. t and noise may be on any device: they are moved to x0's.
    Returns the mean over all elements (a 0-d tensor).
    """
    check_images(x0, model, "x0")
    B, T = x0.shape[0], schedule.num_timesteps
    t = torch.randint(0, T, (B,), generator=generator) if t is None else t
    t = check_timesteps(t, x0, T)  # checked where t is (the CPU, when drawn there), then moved
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    noise = check_tensor(noise, "noise", x0, "x0").to(x0.device)
    xt = q_sample(x0, t, schedule, noise)
    return F.mse_loss(as_denoiser(model)(xt, t), noise)

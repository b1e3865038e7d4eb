"""The training objective L_simple (chapter 优化目标)."""
import torch
import torch.nn.functional as F

from .forward import _q_sample
from .models import as_denoiser, model_in_channels
from .schedule import check_tensor, check_timesteps


def check_images(x, model=None, name="x0"):
    """Raise ValueError unless x is a (B, C, H, W) float tensor whose C matches the model's."""
    check_tensor(x, name)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    c = model_in_channels(model) if model is not None else None
    if c is not None and x.shape[1] != c:
        raise ValueError(f"{name} has {x.shape[1]} channels but the model expects {c}")


def ddpm_loss(model, x0, schedule, t=None, noise=None, generator=None):
    """L_simple = E ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 (优化目标, eq. L-simple).

    model: any denoiser (see ``models.as_denoiser``); x0: (B, C, H, W); t: (B,) 0-based, drawn
    uniformly if None; noise: like x0, drawn if None. Returns the mean over all elements.
    """
    check_images(x0, model)
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (B,), generator=generator).to(x0.device)
    t = check_timesteps(t, B, schedule)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    check_tensor(noise, "noise")
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    return l_simple(as_denoiser(model), x0, t, noise, schedule)


def l_simple(eps_fn, x0, t, noise, schedule):
    """Unchecked core of ddpm_loss for training loops: mean ||noise - eps_fn(x_t, t)||^2."""
    return F.mse_loss(eps_fn(_q_sample(x0, t, schedule, noise), t), noise)

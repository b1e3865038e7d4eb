"""The forward (noising) process (chapter 前向过程)."""
import torch

from .schedule import extract
from .validation import check_tensor, check_timesteps


def q_sample(x0, t, schedule, noise=None):
    """Sample x_t ~ q(x_t | x_0) in closed form (前向过程, eq. closed-form).

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. x0: (B, ...); t: (B,) 0-based or an int;
    noise: eps like x0 (drawn if None). Raises ValueError on a bad t or a mismatched noise.
    """
    check_tensor(x0, "x0")
    t = check_timesteps(t, x0, schedule.num_timesteps)
    noise = torch.randn_like(x0) if noise is None else check_tensor(noise, "noise", x0, "x0")
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def q_step(x_prev, t, schedule, noise=None):
    """Take one forward step x_t ~ q(x_t | x_{t-1}) (前向过程, eq. forward-step).

    x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps. x_prev: (B, ...), the sample at index
    t - 1 (x_0 when t = 0); t and noise as for :func:`q_sample`."""
    check_tensor(x_prev, "x_prev")
    t = check_timesteps(t, x_prev, schedule.num_timesteps)
    noise = torch.randn_like(x_prev) if noise is None else check_tensor(noise, "noise", x_prev, "x_prev")
    return (extract(schedule.alphas, t, x_prev.shape).sqrt() * x_prev
            + extract(schedule.betas, t, x_prev.shape).sqrt() * noise)

"""The forward (noising) process (chapter 前向过程)."""
import torch

from .schedule import check_tensor, check_timesteps, extract


def _noise_like(x, noise, name="noise"):
    if noise is None:
        return torch.randn_like(x)
    check_tensor(noise, name)
    if noise.shape != x.shape:
        raise ValueError(f"{name} must have the shape of the input {tuple(x.shape)}, got {tuple(noise.shape)}")
    return noise


def q_sample(x0, t, schedule, noise=None):
    """Sample x_t ~ q(x_t | x_0) in closed form (前向过程, eq. closed-form).

    x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps.
    x0: (B, ...); t: (B,) 0-based or int; noise: like x0 (drawn if None).
    Raises ValueError on out-of-range t, NaN or mismatched noise.
    """
    check_tensor(x0, "x0")
    t = check_timesteps(t, x0.shape[0], schedule)
    return _q_sample(x0, t, schedule, _noise_like(x0, noise))


def _q_sample(x0, t, schedule, noise):
    # unchecked core of q_sample, for internal loops (no GPU-syncing validation)
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def q_step(x_prev, t, schedule, noise=None):
    """Take one forward step x_t ~ q(x_t | x_{t-1}) (前向过程, eq. forward-step).

    x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps.
    x_prev: (B, ...) the sample at index t-1 (x_0 when t = 0); t: (B,) 0-based or int.
    Raises ValueError like :func:`q_sample`.
    """
    check_tensor(x_prev, "x_prev")
    t = check_timesteps(t, x_prev.shape[0], schedule)
    noise = _noise_like(x_prev, noise)
    return (extract(schedule.alphas, t, x_prev.shape).sqrt() * x_prev
            + extract(schedule.betas, t, x_prev.shape).sqrt() * noise)

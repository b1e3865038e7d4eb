"""The noise schedule: beta_t, alpha_t and alpha-bar_t (chapter 前向过程, eq. schedule).
Timesteps are 0-based indices like diffusers: code index ``t`` is the paper's ``t + 1``. Each
derived quantity is computed once in float64, stored as float32 and read with :func:`extract`.
"""
import copy
import math

import torch

from .validation import check_betas, check_int


class NoiseSchedule:
    """Fixed variance schedule beta_1..beta_T and everything derived from it.

    betas: 1-D tensor (or sequence) of T values in (0, 1). Attributes (each (T,) float32, indexed by the 0-based t): betas, alphas, alphas_cumprod,
    alphas_cumprod_prev and the coefficients of the book's equations named below.
    """

    def __init__(self, betas):
        betas = check_betas(betas)
        self.num_timesteps = betas.numel()
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        # alpha-bar_{t-1}, with alpha-bar before the first step defined as 1 (x_0 is clean)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        f32 = lambda a: a.to(torch.float32)  # noqa: E731
        self.betas = f32(betas)
        self.alphas = f32(alphas)
        self.alphas_cumprod = f32(alphas_cumprod)
        self.alphas_cumprod_prev = f32(alphas_cumprod_prev)
        # q(x_t | x_0), eq. closed-form
        self.sqrt_alphas_cumprod = f32(alphas_cumprod.sqrt())
        self.sqrt_one_minus_alphas_cumprod = f32((1 - alphas_cumprod).sqrt())
        # x_0 from (x_t, eps), eq. x0-from-eps
        self.sqrt_recip_alphas_cumprod = f32((1 / alphas_cumprod).sqrt())
        self.sqrt_recipm1_alphas_cumprod = f32((1 / alphas_cumprod - 1).sqrt())
        # q(x_{t-1} | x_t, x_0), eqs. mu-tilde and beta-tilde
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        self.posterior_variance = f32(posterior_variance)
        self.posterior_mean_coef1 = f32(betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod))
        self.posterior_mean_coef2 = f32((1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod))
        # mu_theta from eps, eq. mu-eps
        self.sqrt_recip_alphas = f32((1 / alphas).sqrt())
        self.eps_coef = f32(betas / (1 - alphas_cumprod).sqrt())

    @classmethod
    def linear(cls, num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        """Linear betas of Ho et al. 2020 (diffusers' ``beta_schedule="linear"``)."""
        check_int(num_timesteps, "num_timesteps", 1)
        return cls(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_timesteps=1000, s=0.008, max_beta=0.999):
        """Cosine schedule of Nichol & Dhariwal 2021 (diffusers' ``"squaredcos_cap_v2"``).

        alpha-bar(t) = cos((t/T + s) / (1 + s) * pi/2)^2; beta_t = min(1 - abar(t)/abar(t-1), max_beta).
        """
        check_int(num_timesteps, "num_timesteps", 1)
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        T = num_timesteps
        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    def snr(self):
        """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t), shape (T,)."""
        a = self.alphas_cumprod.double()
        return (a / (1 - a)).float()

    def to(self, device):
        """A copy of the schedule with every tensor on ``device`` (like ``Tensor.to``)."""
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(new, name, value.to(device))
        return new

    def __repr__(self):
        b = self.betas
        return f"NoiseSchedule(num_timesteps={self.num_timesteps}, beta_1={b[0].item():.4g}, beta_T={b[-1].item():.4g})"


def extract(a, t, shape):
    """Gather a[t] for a batch and reshape to (B, 1, ..., 1) so it broadcasts against ``shape``.

    a: (T,) schedule tensor; t: (B,) long; shape: the shape of x, (B, ...).
    """
    out = a.to(t.device).gather(0, t)
    return out.reshape(t.shape[0], *([1] * (len(shape) - 1)))

"""Class labels and classifier-free guidance (chapter 条件生成; Ho & Salimans 2022).

A conditional network eps_theta(x_t, t, c) sees labels c in {0, …, K-1}; training replaces each
by the null label K with probability p_uncond (``drop_labels``), so the same network is also the
unconditional eps_theta(x_t, t, ∅). A sampler with guidance scale s uses (eq. cfg)

    eps~ = eps_theta(x_t, t, ∅) + s (eps_theta(x_t, t, c) - eps_theta(x_t, t, ∅)),

diffusers' ``guidance_scale``. The paper writes (1 + w) eps(c) - w eps(∅): s = 1 + w, so s = 1
(w = 0) is the conditional model alone and s = 0 (w = -1) the unconditional one.
"""
import torch

from .models import as_denoiser, model_in_channels, num_classes

DEFAULT_GUIDANCE_SCALE = 1.5  # s = 1 + w, the CLI's default: chapter 9's smallest w meeting its bars


def check_labels(labels, batch_size, model, allow_null=False):
    """labels for a batch: an integer tensor (B,) in [0, K-1] for a model with K classes (in
    [0, K] with allow_null: K is the null label). Returns them as a LongTensor."""
    K = num_classes(model)
    if K is None:
        raise ValueError("labels were given but the model is not class-conditional")
    if labels is None:
        raise ValueError(f"the model is class-conditional ({K} classes): pass labels, a (B,) integer tensor")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point \
            or labels.dtype.is_complex or labels.dtype == torch.bool:
        what = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor, got {what}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
    top = K if allow_null else K - 1
    if batch_size and (labels.min() < 0 or labels.max() > top):
        raise ValueError(f"labels must lie in [0, {top}]" + (f" ({K} is the null label)" if allow_null
                         else "") + f", got min {labels.min().item()}, max {labels.max().item()}")
    return labels.long()


def drop_labels(labels, p_uncond, null_label, generator=None):
    """Each label replaced by null_label with probability p_uncond (one uniform draw per label,
    from ``generator`` on the CPU), as classifier-free guidance trains."""
    if not 0 <= p_uncond < 1:
        raise ValueError(f"p_uncond must lie in [0, 1), got {p_uncond!r}")
    drop = torch.rand(labels.shape, generator=generator) < p_uncond
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def cfg_combine(out_uncond, out_cond, guidance_scale):
    """Eq. cfg: out(∅) + s (out(c) - out(∅))."""
    return out_uncond + guidance_scale * (out_cond - out_uncond)


# Three known fixes for the saturation of large guidance (chapter 9 measures each):

def rescale_cfg(out_guided, out_cond, phi):
    """CFG rescale (Lin et al. 2024, Sec. 3.4; diffusers' ``guidance_rescale``): the guided output
    scaled to the per-sample standard deviation of the conditional one, mixed with weight phi:
    phi * out_guided * std(out_cond) / std(out_guided) + (1 - phi) * out_guided."""
    dims = tuple(range(1, out_guided.ndim))
    ratio = out_cond.std(dims, keepdim=True) / out_guided.std(dims, keepdim=True)
    return phi * out_guided * ratio + (1 - phi) * out_guided


CLIP_X0 = (False, True, "dynamic")


def clip_prediction(x0, clip_x0):
    """The predicted x_0 as a sampler uses it: as it is (False), clamped to [-1, 1] (True), or
    Imagen's dynamic thresholding ("dynamic"; Saharia et al. 2022, Sec. 2.3): per sample,
    s = max(1, the 99.5th percentile of |x_0|), x_0 clamped to [-s, s] and divided by s."""
    if clip_x0 == "dynamic":
        s = x0.abs().flatten(1).quantile(0.995, dim=1).clamp_min(1).view(-1, *[1] * (x0.ndim - 1))
        return x0.clamp(-s, s) / s
    return x0.clamp(-1, 1) if clip_x0 else x0


class GuidedModel(torch.nn.Module):
    """A conditional denoiser turned into ``out = f(x_t, t)`` for fixed labels and scale s: one
    network call on the labels (s = 1), on the null label (s = 0), or on both in one batch.
    It combines the network's outputs, which is eq. cfg for every prediction_type: eps is an
    affine function of the output at fixed x_t and t (``targets.eps_from_prediction``), and the
    weights (1 - s, s) sum to 1."""

    def __init__(self, model, labels, guidance_scale, rescale=0.0, interval=None):
        super().__init__()
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        if not 0 <= rescale <= 1:
            raise ValueError(f"rescale (phi) must lie in [0, 1], got {rescale!r}")
        self.model, self.labels, self.guidance_scale = model, labels, float(guidance_scale)
        # rescale: phi of rescale_cfg; interval: (t_lo, t_hi), 0-based timesteps where the scale
        # applies (Kynkäänniemi et al. 2024); outside it the conditional model alone (s = 1)
        self.rescale, self.interval = rescale, interval
        self.in_channels, self.null_label = model_in_channels(model), num_classes(model)
        self.num_classes = None  # it takes no labels: they are fixed

    def forward(self, xt, t):
        f, s = as_denoiser(self.model), self.guidance_scale
        cond = self.labels.to(xt.device)
        null = torch.full_like(cond, self.null_label)
        lo, hi = self.interval or (0, float("inf"))
        inside = (t >= lo) & (t <= hi)
        if s == 1 or not inside.any():
            return f(xt, t, class_labels=cond)
        if s == 0 and inside.all():
            return f(xt, t, class_labels=null)
        out_cond, out_uncond = f(torch.cat([xt, xt]), torch.cat([t, t]),
                                 class_labels=torch.cat([cond, null])).chunk(2)
        out = cfg_combine(out_uncond, out_cond, s)
        out = rescale_cfg(out, out_cond, self.rescale) if self.rescale else out
        return torch.where(inside.view(-1, *[1] * (out.ndim - 1)), out, out_cond)


def conditioned(model, shape, labels=None, guidance_scale=1.0, rescale=0.0, interval=None):
    """What a sampler calls: the model itself (unconditional; labels must be None), or a
    ``GuidedModel`` for labels (B,) in [0, K-1], scale s >= 0, rescale and interval."""
    if labels is None:
        if guidance_scale != 1 or rescale or interval is not None:
            raise ValueError(f"guidance_scale {guidance_scale!r} (and any rescale or interval) needs labels "
                             "(a class-conditional model)")
        if num_classes(model) is not None:
            raise ValueError(f"the model is class-conditional ({num_classes(model)} classes): pass "
                             "labels, a (B,) integer tensor (guidance_scale=0 ignores them)")
        return model
    return GuidedModel(model, check_labels(labels, shape[0], model), guidance_scale, rescale, interval)


class MixtureDenoiser(torch.nn.Module):
    """The exact eps of a Gaussian mixture, for checking guidance where every score is known:
    class k is N(mu_k, std^2 I) with weight 1/K, points are (B, D, 1, 1) tensors. At step t class
    k is N(sqrt(abar_t) mu_k, (abar_t std^2 + 1 - abar_t) I), so eps(x_t, t, k) =
    -sqrt(1 - abar_t) grad log q_t(x_t | k) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu_k) / var_t;
    the null label K gives the mixture's eps, the classes' eps weighted by q_t(k | x_t)."""

    def __init__(self, means, std, schedule):
        super().__init__()
        self.means, self.std, self.schedule = torch.as_tensor(means, dtype=torch.float64), std, schedule
        self.num_classes, self.in_channels = self.means.shape[0], self.means.shape[1]

    def forward(self, xt, t, class_labels=None):
        x, abar = xt.flatten(1).double(), self.schedule.alphas_cumprod.double()[t][:, None, None]
        var = abar * self.std ** 2 + 1 - abar                                   # (B, 1, 1)
        diff = x[:, None, :] - abar.sqrt() * self.means[None]                   # (B, K, D)
        eps_k = (1 - abar).sqrt() * diff / var                                  # each class's eps
        log_lik = -0.5 * (diff ** 2).sum(-1) / var[:, :, 0]                     # + const, (B, K)
        weights = log_lik.softmax(-1)                                           # q_t(k | x_t)
        eps_null = (weights[:, :, None] * eps_k).sum(1)
        labels = torch.full((x.shape[0],), self.num_classes) if class_labels is None else class_labels
        labels = labels.to(x.device)
        eps_c = eps_k[torch.arange(x.shape[0]), labels.clamp(max=self.num_classes - 1)]
        eps = torch.where((labels == self.num_classes)[:, None], eps_null, eps_c)
        return eps.to(xt.dtype).reshape(xt.shape)

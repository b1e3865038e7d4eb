"""Fast sampling on a subsequence of the timesteps: respaced DDPM and DDIM (chapter 加速采样).

A few-step sampler visits tau_0 < … < tau_{S-1}, S of the T training timesteps. ``respace`` turns
them into a NoiseSchedule of S steps with the same alpha-bar at every visited step (eq.
respace), so the book's formulas (``predict_x0``, ``q_posterior``, ``p_mean``) and ``sample``
run on it unchanged; ``SpacedModel`` hands the network the training timestep tau_i when a
sampler asks about step i. DDIM (Song et al. 2021) then changes one line of the update.
"""
import torch
from tqdm import tqdm

from .guidance import CLIP_X0, clip_prediction, conditioned
from .models import as_denoiser, model_device, model_in_channels, num_classes
from .posterior import predict_x0
from .sampling import BAR_FORMAT, PRECISIONS, draw_normal, sample
from .schedule import NoiseSchedule
from .targets import eps_from_prediction
from .validation import check_choice, check_generator, check_images, check_int, check_tensor

SPACINGS = ("leading", "trailing")


def spaced_timesteps(num_steps, num_timesteps=1000, spacing="leading"):
    """The 0-based timesteps tau_0 < … < tau_{S-1} a num_steps sampler visits, as diffusers'
    schedulers choose them: "leading" is 0, k, 2k, … with k = T // num_steps (below T steps it
    never visits T - 1), "trailing" is round(T - j T / num_steps) - 1, j = num_steps - 1 … 0 (from
    T - 1; Lin et al. 2024)."""
    T = check_int(num_timesteps, "num_timesteps", 1)
    if check_int(num_steps, "num_steps", 1) > T:
        raise ValueError(f"num_steps must lie in [1, {T}] (the training timesteps), got {num_steps}")
    check_choice(spacing, "spacing", SPACINGS)
    if spacing == "leading":
        return [i * (T // num_steps) for i in range(num_steps)]
    return sorted(round(T - j * (T / num_steps)) - 1 for j in range(num_steps))


def respace(schedule, timesteps):
    """The schedule of the chain that visits only ``timesteps`` (ascending, 0-based) (加速采样,
    eq. respace; Nichol & Dhariwal 2021): beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}} with
    abar before tau_0 equal to 1, so that abar'_i = abar_{tau_i}."""
    tau = torch.as_tensor(timesteps)
    if tau.ndim != 1 or not len(tau) or not (tau.diff() > 0).all() or tau[0] < 0 \
            or tau[-1] >= schedule.num_timesteps:
        raise ValueError(f"timesteps must be ascending 0-based indices in [0, "
                         f"{schedule.num_timesteps - 1}], got {timesteps!r}")
    abar = schedule.alphas_cumprod.double()[tau]
    return NoiseSchedule(1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]]))


class SpacedModel(torch.nn.Module):
    """The denoiser of a respaced chain: step i of it is the network at training timestep tau_i."""

    def __init__(self, model, timesteps):
        super().__init__()
        self.model, self.timesteps = model, torch.as_tensor(timesteps)
        self.in_channels, self.num_classes = model_in_channels(model), num_classes(model)

    def forward(self, xt, i, class_labels=None):
        return as_denoiser(self.model)(xt, self.timesteps.to(i.device)[i], class_labels)


def respaced_sample(model, schedule, shape, num_steps=50, spacing="leading", **kwargs):
    """DDPM's ancestral sampler (``sample``, same kwargs) on num_steps respaced timesteps."""
    tau = spaced_timesteps(num_steps, schedule.num_timesteps, spacing)
    if kwargs.get("guidance_interval") is not None:  # in the T timesteps: as indices into tau
        lo, hi = kwargs["guidance_interval"]
        inside = [i for i, t in enumerate(tau) if lo <= t <= hi] or [1, 0]  # [1, 0]: none
        kwargs["guidance_interval"] = (inside[0], inside[-1])
    return sample(SpacedModel(model, tau), respace(schedule, tau), shape, **kwargs)


def ddim_step(x0_pred, eps, abar_prev, sigma):
    """The DDIM update without its noise (加速采样, eq. ddim-step; Song et al. 2021, eq. 12):
    sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps. A sampler adds sigma z."""
    return abar_prev.sqrt() * x0_pred + (1 - abar_prev - sigma ** 2).sqrt() * eps


@torch.inference_mode()
def ddim_sample(model, schedule, shape, num_steps=50, eta=0.0, generator=None, spacing="leading",
                clip_x0=False, x_T=None, precision="fp32", prediction_type="epsilon", labels=None,
                guidance_scale=1.0, guidance_rescale=0.0, guidance_interval=None, progress=True):
    """Draw x_0 with DDIM on num_steps of the T timesteps (加速采样; Song et al. 2021).

    The same trained eps_theta as ``sample``; sigma_i = eta sqrt(beta-tilde'_i) (eq. ddim-sigma):
    eta = 0 is deterministic given x_T, eta = 1 with num_steps = T is ``sample`` itself. Args as
    for ``sample``, and: num_steps in [1, T]; eta in [0, 1]; spacing "leading" or "trailing"
    (``spaced_timesteps``); x_T: start from this (B, C, H, W) tensor instead of drawing it (e.g.
    from ``ddim_invert``); clip_x0, prediction_type, labels and the guidance_* as for ``sample``. The
    generator draws x_T (unless given), then z at each step with sigma_i > 0. Returns x_0
    (B, C, H, W) on the model's device.
    """
    shape = check_images(shape if x_T is None else x_T, model, "x_T" if x_T is not None else "shape")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    check_choice(precision, "precision", PRECISIONS)
    check_choice(clip_x0, "clip_x0", CLIP_X0)
    check_generator(generator)
    tau = spaced_timesteps(num_steps, schedule.num_timesteps, spacing)
    guided = conditioned(model, shape, labels, guidance_scale, guidance_rescale, guidance_interval)
    eps_model = SpacedModel(guided, tau)
    device = model_device(model)
    spaced = respace(schedule, tau).to(device)
    sigmas = eta * spaced.posterior_variance.sqrt()
    # 1. x_T ~ N(0, I), or the caller's x_T
    x = draw_normal(shape, generator, device) if x_T is None else x_T.to(device)
    for i in tqdm(range(num_steps - 1, -1, -1), desc="ddim", disable=not progress,
                  bar_format=BAR_FORMAT):
        # 2. eps_theta(x_{tau_i}, tau_i)
        i_batch = torch.full((shape[0],), i, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = eps_model(x, i_batch).to(x.dtype)
        eps = eps_from_prediction(x, i_batch, out, spaced, prediction_type)
        # 3. the predicted x_0 (eq. x0-from-eps), clamped to [-1, 1] or thresholded if asked
        x0_pred = clip_prediction(predict_x0(x, i, eps, spaced), clip_x0)
        # 4. x_{tau_{i-1}} (eq. ddim-step), plus sigma_i z; abar before tau_0 is 1
        x = ddim_step(x0_pred, eps, spaced.alphas_cumprod_prev[i], sigmas[i])
        if eta > 0 and i > 0:
            x = x + sigmas[i] * draw_normal(shape, generator, device)
    return x


@torch.inference_mode()
def ddim_invert(model, schedule, x0, num_steps=50, spacing="leading", prediction_type="epsilon",
                progress=True):
    """Encode x_0 into the x_T from which eta = 0 DDIM returns to it (加速采样, DDIM inversion):
    eq. ddim-step run upwards, tau_0 → tau_{S-1}, with eps_theta of the point one step below
    (eps_theta(x_{tau_{i-1}}, tau_i) stands in for eps_theta(x_{tau_i}, tau_i): the one
    approximation). x0: (B, C, H, W) in [-1, 1]. Returns x_T like x0."""
    check_images(check_tensor(x0, "x0"), model, "x0")
    tau = spaced_timesteps(num_steps, schedule.num_timesteps, spacing)
    eps_model, device = SpacedModel(model, tau), model_device(model)
    spaced, x = respace(schedule, tau).to(device), x0.to(device)
    zero = torch.zeros((), device=device)
    for i in tqdm(range(num_steps), desc="invert", disable=not progress, bar_format=BAR_FORMAT):
        out = eps_model(x, torch.full((x.shape[0],), i, device=device))
        # the point below stands in for x_{tau_i}, at tau_i's alpha-bar, for every target
        eps = eps_from_prediction(x, i, out, spaced, prediction_type)
        x0_pred = predict_x0(x, i - 1, eps, spaced) if i > 0 else x  # x is x_0 at the start
        x = ddim_step(x0_pred, eps, spaced.alphas_cumprod[i], zero)
    return x

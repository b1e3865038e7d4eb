"""Ancestral sampling, DDPM Algorithm 2 (chapter 反向过程)."""
import torch
from tqdm import tqdm

from .guidance import CLIP_X0, clip_prediction, conditioned
from .models import as_denoiser, model_device
from .posterior import p_mean, predict_x0, q_posterior
from .targets import eps_from_prediction
from .validation import check_choice, check_generator, check_images

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt}"  # no rate/ETA: stable text
VARIANCE_TYPES = ("fixed_small", "fixed_large")
PRECISIONS = ("fp32", "bf16")


def draw_normal(shape, generator, device):
    """N(0, I) of ``shape`` drawn on the generator's device (so a CPU generator gives the same
    numbers on any device), moved to ``device``."""
    g_device = device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=g_device).to(device)


@torch.inference_mode()
def sample(model, schedule, shape, generator=None, clip_x0=False, variance_type="fixed_small",
           precision="fp32", prediction_type="epsilon", labels=None, guidance_scale=1.0,
           guidance_rescale=0.0, guidance_interval=None, return_trajectory=False, progress=True):
    """Draw x_0 ~ p_theta by ancestral sampling (反向过程, Algorithm 2).

    x_T ~ N(0, I); for t = T-1 … 0 (0-based): x_{t-1} = mu_theta(x_t, t) + sigma_t z with
    z ~ N(0, I), and no noise at t = 0. Args:
        model: a denoiser ``eps = model(x_t, t)`` (``models.as_denoiser``), used as it is on
            the device of its parameters: ``.eval()``, ``torch.compile`` or channels_last
            are the caller's choices.
        schedule: the NoiseSchedule it was trained with; shape: (B, C, H, W) of the samples.
        generator: a torch.Generator; its device draws the noise (x_T first, then z for
            t = T-1 … 1), so a CPU generator gives the same samples on any device.
        clip_x0: clamp the predicted x_0 to [-1, 1] and take the posterior mean at it
            (diffusers' ``clip_sample=True``, Ho et al.'s code); False is Algorithm 2's text;
            "dynamic": Imagen's dynamic thresholding instead (``guidance.clip_prediction``).
        variance_type: sigma_t^2 = beta-tilde_t ("fixed_small", diffusers' default) or
            beta_t ("fixed_large").
        precision: "fp32", or "bf16" to run the model under ``torch.autocast``.
        prediction_type: what the model predicts, "epsilon", "sample" or "v_prediction"; the
            prediction is turned into eps (``targets.eps_from_prediction``) and used as below.
        labels: for a class-conditional model, the (B,) integer classes to draw (条件生成);
            guidance_scale: s of classifier-free guidance (``guidance.GuidedModel``; 1: the
            conditional model alone, 0: the unconditional one); guidance_rescale (phi) and
            guidance_interval (t_lo, t_hi): two fixes for large s, as ``GuidedModel`` takes them.
        return_trajectory: also return [x_T, …, x_0] as a (T+1, B, C, H, W) CPU tensor.
    Returns x_0 (B, C, H, W) on the model's device, or (x_0, trajectory).
    """
    shape = check_images(shape, model, "shape")
    check_choice(variance_type, "variance_type", VARIANCE_TYPES)
    check_choice(precision, "precision", PRECISIONS)
    check_choice(clip_x0, "clip_x0", CLIP_X0)
    check_generator(generator)
    eps_model = as_denoiser(conditioned(model, shape, labels, guidance_scale, guidance_rescale,
                                        guidance_interval))
    device = model_device(model)
    schedule = schedule.to(device)
    variances = schedule.posterior_variance if variance_type == "fixed_small" else schedule.betas

    # 1. x_T ~ N(0, I)
    x = draw_normal(shape, generator, device)
    trajectory = [x.cpu()] if return_trajectory else None
    for t in tqdm(range(schedule.num_timesteps - 1, -1, -1), desc="sample", disable=not progress,
                  bar_format=BAR_FORMAT):
        t_batch = torch.full((shape[0],), t, device=device)
        # 2. eps_theta(x_t, t), the network's estimate of the noise in x_t
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = eps_model(x, t_batch).to(x.dtype)
        eps = eps_from_prediction(x, t_batch, out, schedule, prediction_type)
        # 3. the mean of p_theta(x_{t-1} | x_t): eq. mu-eps, or eq. mu-tilde at a clipped x_0
        if clip_x0:
            x0_pred = clip_prediction(predict_x0(x, t, eps, schedule), clip_x0)
            mean, _ = q_posterior(x0_pred, x, t, schedule)
        else:
            mean = p_mean(x, t, eps, schedule)
        # 4. x_{t-1} = mean + sigma_t z; the last step (t = 0) returns the mean itself
        x = mean + variances[t].sqrt() * draw_normal(shape, generator, device) if t > 0 else mean
        if return_trajectory:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if return_trajectory else x

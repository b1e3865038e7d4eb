"""The training objective L_simple (chapter 优化目标), for any prediction target and with
min-SNR weighting (chapter 在自己的电脑上训练)."""
import torch
import torch.nn.functional as F

from .forward import q_sample
from .guidance import check_labels
from .models import as_denoiser, num_classes
from .targets import min_snr_weight, prediction_target
from .validation import check_images, check_tensor, check_timesteps


def ddpm_loss(model, x0, schedule, t=None, noise=None, generator=None,
              prediction_type="epsilon", snr_gamma=None, labels=None):
    """L_simple = E ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2
    (优化目标, eq. L-simple).

    Args: model, any denoiser (``models.as_denoiser``); x0 (B, C, H, W); t: (B,) 0-based,
    drawn uniformly if None; noise: eps like x0, drawn if None; generator draws the missing
    t and noise on the CPU. t and noise may be on any device: they are moved to x0's.
    prediction_type: what the network predicts, "epsilon" (L_simple), "sample" (x_0) or
    "v_prediction" (``targets.prediction_target``); snr_gamma: None for the plain mean squared
    error, or gamma of the min-SNR-gamma weight of each sample (``targets.min_snr_weight``);
    labels: for a class-conditional model, (B,) integer classes, K the null label (条件生成).
    Returns the mean over all elements (a 0-d tensor).
    """
    check_images(x0, model, "x0")
    if labels is not None or num_classes(model) is not None:
        labels = check_labels(labels, x0.shape[0], model, allow_null=True).to(x0.device)
    if snr_gamma is not None and (isinstance(snr_gamma, bool) or not snr_gamma > 0):
        raise ValueError(f"snr_gamma must be None or a positive number, got {snr_gamma!r}")
    B, T = x0.shape[0], schedule.num_timesteps
    t = torch.randint(0, T, (B,), generator=generator) if t is None else t
    t = check_timesteps(t, x0, T)  # checked where t is (the CPU, when drawn there), then moved
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    noise = check_tensor(noise, "noise", x0, "x0").to(x0.device)
    xt = q_sample(x0, t, schedule, noise)
    target = prediction_target(x0, noise, t, schedule, prediction_type)
    prediction = as_denoiser(model)(xt, t, class_labels=labels)
    if snr_gamma is None:  # the plain mean squared error of the target
        return F.mse_loss(prediction, target)
    per_sample = F.mse_loss(prediction, target, reduction="none").flatten(1).mean(1)
    return (min_snr_weight(t, schedule, prediction_type, snr_gamma) * per_sample).mean()

"""What the network predicts and how the loss weighs each t (chapter 在自己的电脑上训练).

Given x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a network may predict eps, x_0, or
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022), with diffusers' names
``prediction_type`` = "epsilon" | "sample" | "v_prediction". Any one of them and x_t give the
others (eqs. v-target, eps-from-v); the samplers turn every prediction into eps and run unchanged.
"""
from .schedule import extract
from .validation import check_choice, check_timesteps

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def prediction_target(x0, eps, t, schedule, prediction_type="epsilon"):
    """The regression target for x_t = q_sample(x0, t, eps) (eq. v-target): eps, x0 or v."""
    check_choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    t = check_timesteps(t, x0, schedule.num_timesteps)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * eps
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)


def eps_from_prediction(xt, t, prediction, schedule, prediction_type="epsilon"):
    """The eps implied by a network's prediction at x_t (eq. eps-from-v):
    eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t), or sqrt(1 - abar_t) x_t + sqrt(abar_t) v_hat."""
    check_choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    t = check_timesteps(t, xt, schedule.num_timesteps)
    if prediction_type == "epsilon":
        return prediction
    a = extract(schedule.sqrt_alphas_cumprod, t, xt.shape)
    s = extract(schedule.sqrt_one_minus_alphas_cumprod, t, xt.shape)
    return (xt - a * prediction) / s if prediction_type == "sample" else s * xt + a * prediction


def min_snr_weight(t, schedule, prediction_type="epsilon", gamma=5.0):
    """Min-SNR-gamma (Hang et al. 2023; eq. min-snr): the x_0-error weight min(SNR_t, gamma),
    expressed for the target trained on. Since ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2
    and ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2, it is min(SNR, gamma) / SNR for eps,
    min(SNR, gamma) for x_0 and min(SNR, gamma) / (SNR + 1) for v. Returns (B,)."""
    check_choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    snr = schedule.snr().to(t.device)[t]
    weight = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return weight / snr
    return weight if prediction_type == "sample" else weight / (snr + 1)

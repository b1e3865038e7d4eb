"""The reverse process: the true posterior and the eps-parameterised mean (chapter 反向过程)."""
from .schedule import extract
from .validation import check_tensor, check_timesteps


def q_posterior(x0, xt, t, schedule):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (反向过程, eqs. mu-tilde, beta-tilde).

    mu-tilde = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0
               + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
    beta-tilde = (1 - abar_{t-1}) / (1 - abar_t) beta_t, with abar before the first step = 1
    (so at t = 0 the mean is x_0 and the variance 0).
    x0, xt: (B, ...) of one shape; t: (B,) 0-based or an int. Returns (mean, variance (B, 1, ...)).
    """
    check_tensor(xt, "xt", check_tensor(x0, "x0"), "x0")
    t = check_timesteps(t, xt, schedule.num_timesteps)
    mean = (extract(schedule.posterior_mean_coef1, t, xt.shape) * x0
            + extract(schedule.posterior_mean_coef2, t, xt.shape) * xt)
    return mean, extract(schedule.posterior_variance, t, xt.shape)


def predict_x0(xt, t, eps, schedule):
    """Invert the closed form for x_0 given the noise (反向过程, eq. x0-from-eps).

    x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); xt, eps: (B, ...); t: (B,) or an int."""
    check_tensor(eps, "eps", check_tensor(xt, "xt"), "xt")
    t = check_timesteps(t, xt, schedule.num_timesteps)
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, xt.shape) * xt
            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, xt.shape) * eps)


def p_mean(xt, t, eps, schedule):
    """Mean of p_theta(x_{t-1} | x_t) from a noise prediction (反向过程, eq. mu-eps).

    mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t); it equals
    q_posterior(predict_x0(xt, t, eps), xt, t)[0] (the book checks this); xt, eps: (B, ...)."""
    check_tensor(eps, "eps", check_tensor(xt, "xt"), "xt")
    t = check_timesteps(t, xt, schedule.num_timesteps)
    return extract(schedule.sqrt_recip_alphas, t, xt.shape) * (
        xt - extract(schedule.eps_coef, t, xt.shape) * eps)

"""Chapter 8: the three prediction targets and min-SNR weighting, against diffusers and against
each other."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import ddpm_lib as dl
from ddpm_lib import NoiseSchedule
from ddpm_lib.fast_sampling import ddim_sample, respaced_sample
from ddpm_lib.targets import PREDICTION_TYPES, eps_from_prediction, min_snr_weight, prediction_target

TYPES = list(PREDICTION_TYPES)


def wiggly(x, t):  # a made-up network output, non-linear in x and t, read as any target
    return 0.3 * x + 0.1 * torch.sin(3 * x + t.reshape(-1, 1, 1, 1) / 100)


def draws(schedule, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, schedule.num_timesteps, (n,), generator=g)
    return x0, eps, t, dl.q_sample(x0, t, schedule, eps)


@pytest.mark.parametrize("prediction_type", TYPES)
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_each_target_gives_back_the_noise(prediction_type, schedule_name):
    s = getattr(NoiseSchedule, schedule_name)()
    x0, eps, t, xt = draws(s)
    target = prediction_target(x0, eps, t, s, prediction_type)
    err = (eps_from_prediction(xt, t, target, s, prediction_type) - eps).abs().max().item()
    assert err < 2e-3, err  # float32 alpha-bar: x0 -> eps divides by sqrt(1 - abar) (0.01 at t=0)


def test_v_is_diffusers_velocity(linear):
    x0, eps, t, _ = draws(linear)
    ref = DDPMScheduler(prediction_type="v_prediction").get_velocity(x0, eps, t)
    assert torch.allclose(prediction_target(x0, eps, t, linear, "v_prediction"), ref, atol=1e-6)
    assert not torch.allclose(prediction_target(x0, eps, t, linear, "epsilon"), ref, atol=0.1)


@pytest.mark.parametrize("prediction_type", TYPES)
def test_ancestral_sampler_equals_ddpm_scheduler(linear, prediction_type):
    shape, seed = (3, 1, 6, 6), 3
    ours = dl.sample(wiggly, linear, shape, generator=torch.Generator().manual_seed(seed),
                     prediction_type=prediction_type, progress=False)
    ref = DDPMScheduler(clip_sample=False, prediction_type=prediction_type)
    ref.set_timesteps(1000)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    for t in ref.timesteps:
        x = ref.step(wiggly(x, t.repeat(shape[0])), t, x, generator=g).prev_sample
    err = (ours - x).abs().max().item()
    assert err < 1e-3, err
    other = dl.sample(wiggly, linear, shape, generator=torch.Generator().manual_seed(seed),
                      prediction_type=TYPES[TYPES.index(prediction_type) - 1], progress=False)
    assert (other - x).abs().max().item() > 0.1  # reading the output as another target differs


@pytest.mark.parametrize("prediction_type", TYPES)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_and_respaced_ddpm_equal_diffusers(linear, prediction_type, eta):
    shape, seed, steps = (3, 1, 6, 6), 4, 20
    for scheduler, ours in (
            (DDIMScheduler(clip_sample=False, set_alpha_to_one=True, prediction_type=prediction_type),
             lambda g: ddim_sample(wiggly, linear, shape, num_steps=steps, eta=eta, generator=g,
                                   prediction_type=prediction_type, progress=False)),
            (DDPMScheduler(clip_sample=False, prediction_type=prediction_type),
             lambda g: respaced_sample(wiggly, linear, shape, num_steps=steps, generator=g,
                                       prediction_type=prediction_type, progress=False))):
        scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g)
        kw = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
        for t in scheduler.timesteps:
            x = scheduler.step(wiggly(x, t.repeat(shape[0])), t, x, generator=g, **kw).prev_sample
        err = (ours(torch.Generator().manual_seed(seed)) - x).abs().max().item()
        assert err < 1e-3, (type(scheduler).__name__, err)


def test_min_snr_weights_the_same_x0_error_for_every_target(linear):
    """One network, three targets: an x0 estimate x0_hat implies eps_hat and v_hat; min-SNR-gamma
    must weigh the three squared errors to the same number, min(SNR, gamma) ||x0 - x0_hat||^2."""
    x0, eps, t, xt = draws(linear, n=256)
    x0_hat = x0 + 0.2 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    eps_hat = eps_from_prediction(xt, t, x0_hat, linear, "sample")
    a = linear.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    s = linear.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    estimates = {"epsilon": eps_hat, "sample": x0_hat, "v_prediction": a * eps_hat - s * x0_hat}
    per = {k: ((prediction_target(x0, eps, t, linear, k).double() - v.double()) ** 2).flatten(1).mean(1)
           for k, v in estimates.items()}
    weighted = {k: min_snr_weight(t, linear, k, gamma=5.0).double() * per[k] for k in per}
    reference = linear.snr()[t].double().clamp(max=5.0) * per["sample"]
    for k in TYPES:
        assert torch.allclose(weighted[k], reference, rtol=2e-3), k
    snr = linear.snr()[t].double()
    # two wrong v-weights do not weigh the same error: the eps weight reused for v, and
    # min(SNR + 1, gamma) / (SNR + 1) (diffusers #5654, fixed by PR #6307; the Min-SNR
    # repository's issue #5 asks whether the numerator needs the + 1)
    for wrong in (snr.clamp(max=5.0) / snr, (snr + 1).clamp(max=5.0) / (snr + 1)):
        assert not torch.allclose(wrong * per["v_prediction"], reference, rtol=0.05)


@pytest.mark.parametrize("prediction_type", TYPES)
def test_ddpm_loss_regresses_the_target_and_weights_it(linear, prediction_type):
    x0, eps, t, xt = draws(linear, n=16)
    target = prediction_target(x0, eps, t, linear, prediction_type)
    out = wiggly(xt, t)
    plain = dl.ddpm_loss(wiggly, x0, linear, t=t, noise=eps, prediction_type=prediction_type)
    assert torch.allclose(plain, ((out - target) ** 2).mean())
    weighted = dl.ddpm_loss(wiggly, x0, linear, t=t, noise=eps, prediction_type=prediction_type,
                            snr_gamma=5.0)
    w = min_snr_weight(t, linear, prediction_type, 5.0)
    assert torch.allclose(weighted, (w * ((out - target) ** 2).flatten(1).mean(1)).mean())


@pytest.mark.parametrize("kwargs,message", [
    ({"prediction_type": "v"}, "prediction_type must be one of"),
    ({"snr_gamma": 0}, "snr_gamma must be None or a positive number"),
    ({"snr_gamma": True}, "snr_gamma must be None or a positive number"),
])
def test_bad_target_arguments_are_rejected(linear, kwargs, message):
    x0, eps, t, _ = draws(linear, n=2)
    with pytest.raises(ValueError, match=message):
        dl.ddpm_loss(wiggly, x0, linear, t=t, noise=eps, **kwargs)

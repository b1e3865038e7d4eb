"""Chapter 加速采样: respacing and DDIM against diffusers' schedulers and the book's identities."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ddpm_lib import NoiseSchedule, sample
from ddpm_lib.fast_sampling import (SpacedModel, ddim_invert, ddim_sample, ddim_step, respace,
                                    respaced_sample, spaced_timesteps)

SIGMA = 0.5
AB = NoiseSchedule.linear().alphas_cumprod


def toy_eps(x, t):
    """The Bayes-optimal eps for data x_0 ~ N(0, SIGMA^2) (as in test_sampling)."""
    a = AB[t].reshape(-1, 1, 1, 1)
    return (1 - a).sqrt() * x / (a * SIGMA ** 2 + 1 - a)


def wiggly_eps(x, t):  # non-linear in x and t, so that no wrong coefficient can cancel out
    return toy_eps(x, t) + 0.1 * torch.sin(3 * x + t.reshape(-1, 1, 1, 1) / 100)


def diffusers_loop(scheduler, num_steps, shape, seed, **step_kwargs):
    scheduler.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    for t in scheduler.timesteps:
        x = scheduler.step(wiggly_eps(x, t.repeat(shape[0])), t, x, generator=g,
                           **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("num_steps", [1, 7, 10, 30, 50, 1000])
def test_spaced_timesteps_are_diffusers_choice(num_steps, spacing):
    ref = DDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(num_steps)
    assert spaced_timesteps(num_steps, 1000, spacing) == sorted(ref.timesteps.tolist())


def test_spacings_differ_at_the_terminal_step():  # Lin et al. 2024: "leading" never sees T-1
    assert spaced_timesteps(10, 1000, "leading")[-1] == 900
    assert spaced_timesteps(10, 1000, "trailing")[-1] == 999


def test_respace_keeps_alpha_bar_at_the_visited_steps(linear):
    tau = spaced_timesteps(20, 1000)
    spaced = respace(linear, tau)
    assert spaced.num_timesteps == 20
    torch.testing.assert_close(spaced.alphas_cumprod, linear.alphas_cumprod[tau], rtol=1e-5, atol=0)
    # all T steps: the schedule itself (float32 rounding of abar ratios)
    torch.testing.assert_close(respace(linear, range(1000)).betas, linear.betas, rtol=1e-3, atol=1e-7)
    # beta' is not beta_tau: the jump covers T/S training steps
    assert (spaced.betas[1:] > 10 * linear.betas[tau[1:]]).all()


@pytest.mark.parametrize("bad", [[5, 3], [0, 0, 1], [-1, 4], [0, 1000], []])
def test_respace_rejects_bad_timesteps(linear, bad):
    with pytest.raises(ValueError, match="ascending 0-based"):
        respace(linear, bad)


@pytest.mark.parametrize("num_steps", [10, 50, 200])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_respaced_ddpm_equals_ddpm_scheduler_with_fewer_steps(linear, num_steps, spacing):
    shape = (3, 1, 6, 6)
    ours = respaced_sample(wiggly_eps, linear, shape, num_steps=num_steps, spacing=spacing,
                           generator=torch.Generator().manual_seed(5), progress=False)
    ref = diffusers_loop(DDPMScheduler(clip_sample=False, timestep_spacing=spacing), num_steps,
                         shape, seed=5)
    err = (ours - ref).abs().max().item()
    assert err < 1e-4, err


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("num_steps", [10, 20, 50, 100])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_equals_diffusers_ddim_scheduler(linear, num_steps, eta, spacing):
    shape = (3, 1, 6, 6)
    ours = ddim_sample(wiggly_eps, linear, shape, num_steps=num_steps, eta=eta, spacing=spacing,
                       generator=torch.Generator().manual_seed(2), progress=False)
    # the settings that make DDIMScheduler this chapter's equations: no clipping, abar = 1
    # after the last step (x_0 is clean), no offset
    ref = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                        timestep_spacing=spacing)
    err = (ours - diffusers_loop(ref, num_steps, shape, seed=2, eta=eta)).abs().max().item()
    assert err < 1e-4, err


def test_ddim_with_clipping_equals_diffusers_default_clip(linear):
    shape = (2, 1, 6, 6)
    big = lambda x, t: 3 * wiggly_eps(x, t)  # noqa: E731 (pushes x0_pred outside [-1, 1])
    ours = ddim_sample(big, linear, shape, num_steps=20, clip_x0=True,
                       generator=torch.Generator().manual_seed(4), progress=False)
    ref = DDIMScheduler(clip_sample=True, set_alpha_to_one=True)
    ref.set_timesteps(20)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g)
    for t in ref.timesteps:
        x = ref.step(big(x, t.repeat(2)), t, x).prev_sample
    assert (ours - x).abs().max().item() < 1e-4
    unclipped = ddim_sample(big, linear, shape, num_steps=20, generator=torch.Generator().manual_seed(4),
                            progress=False)
    assert (unclipped - x).abs().max().item() > 0.1  # the clamp matters here


def test_ddim_with_eta_1_and_all_steps_is_the_ancestral_sampler(linear):
    shape = (3, 1, 6, 6)
    ddpm = sample(wiggly_eps, linear, shape, generator=torch.Generator().manual_seed(9), progress=False)
    ddim = ddim_sample(wiggly_eps, linear, shape, num_steps=1000, eta=1.0,
                       generator=torch.Generator().manual_seed(9), progress=False)
    err = (ddpm - ddim).abs().max().item()
    assert err < 1e-4, err
    ddim0 = ddim_sample(wiggly_eps, linear, shape, num_steps=1000, eta=0.0,
                        generator=torch.Generator().manual_seed(9), progress=False)
    assert (ddpm - ddim0).abs().max().item() > 0.1  # eta = 0 is another sampler


@pytest.mark.parametrize("num_steps", [10, 50])
def test_ddim_with_eta_1_on_a_subsequence_is_respaced_ddpm(linear, num_steps):
    # sigma^2 = beta-tilde' and the mean is the posterior mean of the respaced chain
    kw = dict(generator=torch.Generator().manual_seed(6), progress=False, num_steps=num_steps)
    ddim = ddim_sample(wiggly_eps, linear, (3, 1, 6, 6), eta=1.0, **kw)
    kw["generator"] = torch.Generator().manual_seed(6)
    respaced = respaced_sample(wiggly_eps, linear, (3, 1, 6, 6), **kw)
    err = (ddim - respaced).abs().max().item()
    assert err < 1e-4, err


def test_ddim_eta_0_is_deterministic_given_x_T(linear):
    x_T = torch.randn(2, 1, 6, 6)
    a = ddim_sample(wiggly_eps, linear, x_T.shape, num_steps=20, x_T=x_T,
                    generator=torch.Generator().manual_seed(0), progress=False)
    b = ddim_sample(wiggly_eps, linear, x_T.shape, num_steps=20, x_T=x_T,
                    generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(a, b)
    c = ddim_sample(wiggly_eps, linear, x_T.shape, num_steps=20, eta=1.0, x_T=x_T,
                    generator=torch.Generator().manual_seed(1), progress=False)
    assert (a - c).abs().max() > 0.1


def test_ddim_with_the_optimal_denoiser_converges_to_the_data(linear):
    # For x_0 ~ N(0, SIGMA^2) eta = 0 DDIM is the ODE that maps N(0, I) to the data; with few
    # steps its discretisation shrinks the spread (measured std 0.375 / 0.473 / 0.4993 at
    # 10 / 50 / 1000 steps), and the error falls as the steps grow.
    stds = [ddim_sample(toy_eps, linear, (4000, 1, 8, 8), num_steps=n, progress=False,
                        generator=torch.Generator().manual_seed(1)).std().item()
            for n in (10, 50, 1000)]
    assert stds[0] < stds[1] < stds[2]
    assert abs(stds[2] - SIGMA) < 0.003, stds
    assert stds[0] < SIGMA - 0.1, stds


def test_ddim_step_with_the_true_noise_lands_on_the_marginal(linear):
    # eq. ddim-step with eps the true noise of x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and
    # sigma z added gives x_s with mean sqrt(abar_s) x0 and variance 1 - abar_s
    x0, t, s = torch.full((200_000,), 0.7), 600, 300
    a_t, a_s = linear.alphas_cumprod[t], linear.alphas_cumprod[s]
    eps = torch.randn_like(x0)
    xt = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    sigma = 0.3 * (1 - a_s).sqrt()
    xs = ddim_step(x0, (xt - a_t.sqrt() * x0) / (1 - a_t).sqrt(), a_s, sigma) + sigma * torch.randn_like(x0)
    assert abs(xs.mean() - a_s.sqrt() * 0.7) < 0.005
    assert abs(xs.var() - (1 - a_s)) < 0.01


def test_inversion_round_trips_with_a_first_order_error(linear):
    x0 = torch.randn(64, 1, 8, 8) * SIGMA

    def round_trip_rms(n):
        x_T = ddim_invert(toy_eps, linear, x0, num_steps=n, progress=False)
        assert abs(x_T.std().item() - 1) < 0.05  # the data are sent to noise
        back = ddim_sample(toy_eps, linear, x0.shape, num_steps=n, x_T=x_T, progress=False)
        return (back - x0).pow(2).mean().sqrt().item()
    # measured 0.0266 and 0.0133 (x0's rms is 0.5): the error halves when the steps double
    e50, e100 = round_trip_rms(50), round_trip_rms(100)
    assert e100 < 0.02 and 1.7 < e50 / e100 < 2.3, (e50, e100)


def test_spaced_model_passes_training_timesteps():
    seen = []
    m = SpacedModel(lambda x, t: seen.append(t.tolist()) or x, [3, 50, 700])
    m(torch.zeros(2, 1, 2, 2), torch.tensor([2, 0]))
    assert seen == [[700, 3]]


@pytest.mark.parametrize("kwargs, message", [
    ({"num_steps": 0}, "num_steps must be an int >= 1"),
    ({"num_steps": 1001}, r"num_steps must lie in \[1, 1000\]"),
    ({"num_steps": 2.5}, "num_steps must be an int"),
    ({"eta": -0.1}, r"eta must lie in \[0, 1\]"),
    ({"eta": 1.5}, r"eta must lie in \[0, 1\]"),
    ({"spacing": "linspace"}, "spacing must be one of"),
    ({"precision": "fp16"}, "precision must be one of"),
    ({"generator": 3}, "generator must be a torch.Generator"),
    ({"x_T": torch.zeros(2, 3, 6, 6)}, "x_T has 3 channels"),
])
def test_ddim_rejects_bad_arguments(linear, kwargs, message):
    from ddpm_lib import BasicUNetFixed

    with pytest.raises(ValueError, match=message):
        ddim_sample(BasicUNetFixed(), linear, (2, 1, 28, 28), progress=False, **kwargs)

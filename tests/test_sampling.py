import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_lib import NoiseSchedule, q_posterior, sample


SIGMA = 0.5
AB = NoiseSchedule.linear().alphas_cumprod


def toy_eps(x, t):
    """The Bayes-optimal eps for data x_0 ~ N(0, SIGMA^2): E[eps | x_t] = sqrt(1-abar) x_t / (abar SIGMA^2 + 1 - abar)."""
    a = AB[t].reshape(-1, 1, 1, 1)
    return (1 - a).sqrt() * x / (a * SIGMA ** 2 + 1 - a)


def test_sample_equals_handwritten_diffusers_loop(linear):
    shape = (3, 1, 8, 8)
    ours = sample(toy_eps, linear, shape, generator=torch.Generator().manual_seed(7), progress=False)
    ref = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    ref.set_timesteps(1000)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g)
    for t in ref.timesteps:
        x = ref.step(toy_eps(x, t.repeat(shape[0])), t, x, generator=g).prev_sample
    err = (ours - x).abs().max().item()
    assert err < 1e-4, err  # measured 1.9e-5: diffusers' float32 1 - abar near t = 0


def test_sampler_with_optimal_denoiser_reproduces_gaussian_data(linear):
    x = sample(toy_eps, linear, (4000, 1, 8, 8), generator=torch.Generator().manual_seed(1), progress=False)
    # 256,000 draws: std error of the std ~7e-4. DDPM's fixed variance beta-tilde is not the exact
    # reverse variance, which leaves a small bias (measured std 0.497); 0.01 catches a wrong sampler.
    assert abs(x.std().item() - SIGMA) < 0.01
    assert abs(x.mean().item()) < 0.01


def test_sample_with_clipping_equals_diffusers_default(linear):
    shape = (2, 1, 4, 4)
    ours = sample(toy_eps, linear, shape, generator=torch.Generator().manual_seed(3), progress=False, clip_x0=True)
    ref = DDPMScheduler(num_train_timesteps=1000)  # clip_sample=True
    ref.set_timesteps(1000)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    for t in ref.timesteps:
        x = ref.step(toy_eps(x, t.repeat(shape[0])), t, x, generator=g).prev_sample
    assert (ours - x).abs().max().item() < 1e-4


def test_oracle_sampler_recovers_x0(linear):
    # with eps_theta = the true noise of x_t given a known x0, every step is the exact posterior
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    a = linear.sqrt_alphas_cumprod.reshape(-1, 1, 1, 1, 1)
    s = linear.sqrt_one_minus_alphas_cumprod.reshape(-1, 1, 1, 1, 1)

    def oracle(xt, t):
        i = t[0].item()
        return (xt - a[i] * x0) / s[i]
    out, traj = sample(oracle, linear, x0.shape, generator=torch.Generator().manual_seed(0),
                       progress=False, return_trajectory=True)
    assert traj.shape == (1001, 4, 1, 8, 8)
    assert (out - x0).abs().max().item() < 1e-3
    # and the mean the sampler used at one step is the true posterior mean
    m, _ = q_posterior(x0, traj[500], 499, linear)
    assert m.shape == x0.shape


def test_sample_runs_the_seed_basic_unet(linear):
    from ddpm_lib import BasicUNet
    out = sample(BasicUNet(), linear, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False)
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_sample_leaves_the_callers_model_as_it_was():
    from ddpm_lib import BasicUNetFixed
    model = BasicUNetFixed().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample(model, NoiseSchedule.linear(num_timesteps=5), (2, 1, 28, 28), progress=False)
    assert model.training  # no hidden .eval(): the caller chooses the mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous()  # no in-place channels_last


class _Recorder(torch.nn.Module):
    """eps = conv(x_t): records the dtype its convolution computed in."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.dtypes = []

    def forward(self, x, t):
        out = self.conv(x)
        self.dtypes.append(out.dtype)
        return out


def test_bf16_precision_runs_the_model_under_autocast():
    s = NoiseSchedule.linear(num_timesteps=50)
    torch.manual_seed(0)
    model = _Recorder()
    x32 = sample(model, s, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0), progress=False)
    assert set(model.dtypes) == {torch.float32}
    model.dtypes.clear()
    x16 = sample(model, s, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0), progress=False,
                 precision="bf16")
    assert set(model.dtypes) == {torch.bfloat16} and x16.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: the same samples to ~1e-2, not bit for bit
    diff = (x16 - x32).abs()
    assert 0 < diff.max().item() < 0.1 and diff.mean().item() < 0.02, diff.max().item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_bench.sh runs it)")
def test_cuda_sample_with_a_cpu_generator_equals_the_cpu_sample():
    import ddpm_lib as dl
    model = dl.pretrained("basic-fixed")
    s = NoiseSchedule.linear()
    cpu = sample(model, s, (4, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False)
    gpu = sample(model.cuda(), s, (4, 1, 28, 28), generator=torch.Generator().manual_seed(0),
                 progress=False)
    assert gpu.device.type == "cuda" and (gpu.cpu() - cpu).abs().max().item() < 1e-2

"""Chapter 9: class labels through the loss, the loop and both samplers; classifier-free guidance
checked against closed-form scores of a Gaussian mixture."""
import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.guidance import GuidedModel, MixtureDenoiser, cfg_combine, check_labels, drop_labels
from ddpm_lib.models import num_classes
from ddpm_lib.models.unet2d import make_small_unet2d
from ddpm_lib.targets import eps_from_prediction

MEANS = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]
STD = 0.5


def mixture(schedule=None):
    return MixtureDenoiser(MEANS, STD, schedule or dl.NoiseSchedule.linear())


def small_conditional(seed=0):
    torch.manual_seed(seed)
    return make_small_unet2d(num_classes=10).eval()


def log_q_t(x, t, schedule, k=None):
    """log q_t(x) of the mixture (k None) or log q_t(x | k), written from the densities."""
    abar = schedule.alphas_cumprod.double()[t]
    var = abar * STD ** 2 + 1 - abar
    comps = torch.distributions.MultivariateNormal(abar.sqrt() * torch.tensor(MEANS, dtype=torch.float64),
                                                   covariance_matrix=var * torch.eye(2, dtype=torch.float64))
    log_k = comps.log_prob(x[:, None, :])  # (B, K)
    if k is not None:
        return log_k[:, k]
    return torch.logsumexp(log_k, -1) - torch.log(torch.tensor(float(len(MEANS))))


@pytest.mark.parametrize("w", [-1.0, 0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("t", [10, 300, 700])
def test_guided_eps_is_the_score_of_p_x_times_p_c_given_x_to_the_1_plus_w(w, t):
    # eq. cfg with s = 1 + w against autograd of log q_t(x) + (1 + w) log q_t(c | x), where
    # log q_t(c | x) = log q_t(x | c) + log q(c) - log q_t(x): a scale of w instead of 1 + w, or
    # the opposite sign, fails for every w but one
    schedule, c = dl.NoiseSchedule.linear(), 1
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(t)) * 2
    x.requires_grad_(True)
    log_post = log_q_t(x, t, schedule, c) - torch.log(torch.tensor(3.0)) - log_q_t(x, t, schedule)
    target = log_q_t(x, t, schedule) + (1 + w) * log_post
    score, = torch.autograd.grad(target.sum(), x)
    guided = GuidedModel(mixture(schedule), torch.full((64,), c), guidance_scale=1 + w)
    eps = guided(x.detach().reshape(64, 2, 1, 1), torch.full((64,), t)).reshape(64, 2)
    abar = schedule.alphas_cumprod.double()[t]
    torch.testing.assert_close(eps, -(1 - abar).sqrt() * score, rtol=1e-9, atol=1e-9)


def test_mixture_denoiser_null_label_is_the_marginal_score():
    schedule, t = dl.NoiseSchedule.linear(), 500
    x = torch.randn(32, 2, dtype=torch.float64).requires_grad_(True)
    score, = torch.autograd.grad(log_q_t(x, t, schedule).sum(), x)
    eps = mixture(schedule)(x.detach().reshape(32, 2, 1, 1), torch.full((32,), t)).reshape(32, 2)
    abar = schedule.alphas_cumprod.double()[t]
    torch.testing.assert_close(eps, -(1 - abar).sqrt() * score)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_guidance_through_both_samplers(sampler):
    # s = 1 draws class c's Gaussian, s = 0 the whole mixture; s = 4 pushes the samples away from
    # the other classes' means: a shifted mean and a smaller spread than at s = 1 from the same
    # x_T (much smaller under 100-step DDIM, slightly under 1000-step ancestral sampling)
    schedule, c, n = dl.NoiseSchedule.linear(), 2, 3000
    model = mixture(schedule)

    def draw(s, **kw):
        g = torch.Generator().manual_seed(0)
        labels = torch.full((n,), c)
        if sampler == "ancestral":
            x = dl.sample(model, schedule, (n, 2, 1, 1), generator=g, labels=labels,
                          guidance_scale=s, progress=False)
        else:
            x = dl.ddim_sample(model, schedule, (n, 2, 1, 1), num_steps=100, generator=g,
                               labels=labels, guidance_scale=s, progress=False)
        return x.reshape(n, 2).double()

    cond = draw(1.0)
    torch.testing.assert_close(cond.mean(0), torch.tensor(MEANS[c], dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(cond.std(0), torch.full((2,), STD, dtype=torch.float64), atol=0.04, rtol=0)
    uncond = draw(0.0)
    near = torch.cdist(uncond, torch.tensor(MEANS, dtype=torch.float64)).argmin(1)
    shares = torch.bincount(near, minlength=3).double() / n
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.04, rtol=0)
    guided = draw(4.0)
    assert guided[:, 1].mean() > cond[:, 1].mean() + 0.05  # away from the classes at y = 0
    assert (guided.std(0) < cond.std(0) - 0.02).all()


def test_guided_model_calls_once_at_s_1_and_s_0_and_combines_otherwise():
    model, x = small_conditional(), torch.randn(4, 1, 28, 28)
    t, labels, null = torch.tensor([5, 50, 500, 900]), torch.tensor([0, 3, 7, 9]), torch.full((4,), 10)
    with torch.no_grad():
        cond, uncond = model(x, t, class_labels=labels).sample, model(x, t, class_labels=null).sample
        torch.testing.assert_close(GuidedModel(model, labels, 1.0)(x, t), cond)
        torch.testing.assert_close(GuidedModel(model, labels, 0.0)(x, t), uncond)
        torch.testing.assert_close(GuidedModel(model, labels, 3.0)(x, t), uncond + 3 * (cond - uncond),
                                   atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cond, uncond)  # the label reaches the network


def test_combining_v_predictions_is_combining_eps():
    # GuidedModel combines raw outputs; for v (and x0) that equals eq. cfg on the eps they imply
    schedule, model = dl.NoiseSchedule.cosine(), small_conditional()
    x, t, labels = torch.randn(4, 1, 28, 28), torch.tensor([1, 200, 600, 999]), torch.tensor([1, 1, 2, 8])
    with torch.no_grad():
        v_c = model(x, t, class_labels=labels).sample
        v_u = model(x, t, class_labels=torch.full((4,), 10)).sample
        for kind in ("v_prediction", "sample"):
            eps_c, eps_u = (eps_from_prediction(x, t, v, schedule, kind) for v in (v_c, v_u))
            via_output = eps_from_prediction(x, t, cfg_combine(v_u, v_c, 2.5), schedule, kind)
            torch.testing.assert_close(via_output, cfg_combine(eps_u, eps_c, 2.5), atol=1e-4, rtol=1e-4)


def test_bad_labels_are_refused_clearly():
    model, shape = small_conditional(), (4, 1, 28, 28)
    schedule = dl.NoiseSchedule.linear(10)
    for bad, msg in [(torch.tensor([0.0, 1, 2, 3]), "integer tensor"), ([0, 1, 2, 3], "integer tensor"),
                     (torch.tensor([0, 1, 2, 10]), r"\[0, 9\]"), (torch.tensor([-1, 1, 2, 3]), r"\[0, 9\]"),
                     (torch.tensor([0, 1, 2]), r"shape \(4,\)"), (torch.tensor([True] * 4), "integer")]:
        with pytest.raises(ValueError, match=msg):
            dl.sample(model, schedule, shape, labels=bad, progress=False)
        with pytest.raises(ValueError, match=msg):
            dl.ddim_sample(model, schedule, shape, num_steps=2, labels=bad, progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        dl.sample(model, schedule, shape, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        dl.sample(model, schedule, shape, labels=torch.zeros(4, dtype=torch.long), guidance_scale=-1,
                  progress=False)
    with pytest.raises(ValueError, match="not class-conditional"):
        dl.sample(make_small_unet2d(), schedule, shape, labels=torch.zeros(4, dtype=torch.long),
                  progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        dl.sample(make_small_unet2d(), schedule, shape, guidance_scale=3.0, progress=False)
    # training accepts the null label 10, nothing above it
    x0 = torch.zeros(4, 1, 28, 28)
    dl.ddpm_loss(model, x0, schedule, labels=torch.tensor([10, 0, 5, 9]))
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        dl.ddpm_loss(model, x0, schedule, labels=torch.tensor([11, 0, 5, 9]))
    with pytest.raises(ValueError, match="p_uncond"):
        dl.train(model, x0, schedule, 1, batch_size=2, labels=torch.zeros(4, dtype=torch.long),
                 p_uncond=1.0, progress=False)
    assert num_classes(model) == 10 and num_classes(make_small_unet2d()) is None
    assert check_labels(torch.tensor([1, 2], dtype=torch.int32), 2, model).dtype == torch.long


def test_drop_labels_drops_at_the_stated_rate_and_only_to_the_null_label():
    labels = torch.arange(20000) % 10
    out = drop_labels(labels, 0.1, 10, torch.Generator().manual_seed(0))
    dropped = out != labels
    assert (out[dropped] == 10).all()
    assert abs(dropped.double().mean().item() - 0.1) < 0.006  # 4 sigma of a binomial share
    assert (drop_labels(labels, 0.0, 10) == labels).all()


def test_conditional_training_is_deterministic_and_label_dropout_matters():
    schedule = dl.NoiseSchedule.cosine()
    images = torch.randn(40, 1, 28, 28).clamp(-1, 1)
    labels = torch.arange(40) % 10

    def run(p_uncond, steps=4, start=0, model=None, optimizer=None):
        model = small_conditional() if model is None else model
        optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = dl.train(model, images, schedule, steps, batch_size=8, labels=labels, p_uncond=p_uncond,
                          optimizer=optimizer, start_step=start, prediction_type="v_prediction",
                          progress=False)
        return losses, model, optimizer

    a, model_a, _ = run(0.1)
    half, model_b, opt = run(0.1, steps=2)
    rest, model_b, _ = run(0.1, steps=4, start=2, model=model_b, optimizer=opt)
    assert a == half + rest
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
    assert run(0.5)[0] != a  # the dropped labels are used
    with pytest.raises(ValueError, match="class-conditional"):
        dl.train(small_conditional(), images, schedule, 1, batch_size=8, progress=False)

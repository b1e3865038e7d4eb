"""The three fixes for large guidance (chapter 9) against diffusers and against their definitions."""
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.guiders.guider_utils import rescale_noise_cfg

import ddpm_lib as dl
from ddpm_lib.guidance import GuidedModel, clip_prediction, rescale_cfg


def test_dynamic_thresholding_is_diffusers_thresholding():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 28, 28, generator=g) * torch.tensor([0.2, 0.9, 1.5, 2.0, 3.0, 6.0]).view(-1, 1, 1, 1)
    ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1e9)
    ours = clip_prediction(x0, "dynamic")
    assert torch.allclose(ours, ref._threshold_sample(x0.clone()), atol=1e-6)
    # a sample whose 99.5th percentile is below 1 is left alone; the others end in [-1, 1]
    assert torch.equal(ours[0], x0[0]) and ours.abs().max() <= 1
    assert not torch.allclose(ours[5], x0[5].clamp(-1, 1))  # not the static clamp
    assert torch.equal(clip_prediction(x0, True), x0.clamp(-1, 1))
    assert clip_prediction(x0, False) is x0


def test_rescale_cfg_is_diffusers_guidance_rescale():
    g = torch.Generator().manual_seed(1)
    cond, guided = torch.randn(2, 4, 1, 28, 28, generator=g)
    guided = 3 * guided
    for phi in (0.0, 0.7, 1.0):
        assert torch.allclose(rescale_cfg(guided, cond, phi), rescale_noise_cfg(guided, cond, phi), atol=1e-6)
    # phi = 1: the per-sample std of the conditional output exactly
    out = rescale_cfg(guided, cond, 1.0)
    assert torch.allclose(out.flatten(1).std(1), cond.flatten(1).std(1), rtol=1e-5)


class Recorder(torch.nn.Module):
    """A conditional 'network' whose output is its label (null = 10) plus x: records the calls."""
    in_channels, num_classes = 1, 10

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append(t.tolist())
        return x + class_labels.view(-1, 1, 1, 1).float()


def test_interval_guidance_guides_only_inside_the_interval():
    net, labels = Recorder(), torch.tensor([3, 3])
    model = GuidedModel(net, labels, 4.0, interval=(200, 600))
    x = torch.zeros(2, 1, 2, 2)
    for t, expected in ((100, 3.0), (200, 10 + 4 * (3 - 10)), (600, -18.0), (700, 3.0)):
        net.calls.clear()
        out = model(x, torch.full((2,), t))
        assert torch.allclose(out, torch.full_like(out, expected)), t
        # inside: one call on the labels and the null label together; outside: the labels only
        assert net.calls == ([[t] * 4] if 200 <= t <= 600 else [[t] * 2])
    # per element: a batch straddling the edge gets each element's own rule
    out = model(x, torch.tensor([100, 300]))
    assert out[0].unique().item() == 3.0 and out[1].unique().item() == -18.0


def test_ddim_and_respaced_samplers_take_the_fixes():
    net = Recorder()
    schedule = dl.NoiseSchedule.linear()
    kw = dict(labels=torch.tensor([1]), guidance_scale=3.0, progress=False,
              generator=torch.Generator().manual_seed(0))
    seen = []

    def spy(x, t, class_labels=None):
        seen.append((t[0].item(), (class_labels == 10).any().item()))
        return torch.zeros_like(x)
    net.forward = spy
    dl.ddim_sample(net, schedule, (1, 1, 4, 4), num_steps=10, guidance_interval=(300, 700), **kw)
    guided = sorted({t for t, null in seen if null})
    assert guided and all(300 <= t <= 700 for t in guided)  # the real timesteps, not indices
    assert {t for t, _ in seen} - set(guided)  # and some steps outside went unguided
    seen.clear()
    dl.respaced_sample(net, schedule, (1, 1, 4, 4), num_steps=10, guidance_interval=(300, 700), **kw)
    assert sorted({t for t, null in seen if null}) == guided
    with pytest.raises(ValueError, match="clip_x0"):
        dl.ddim_sample(net, schedule, (1, 1, 4, 4), num_steps=2, clip_x0="yes", **kw)
    with pytest.raises(ValueError, match="needs labels"):
        dl.ddim_sample(dl.pretrained("basic-fixed"), schedule, (1, 1, 28, 28), num_steps=2,
                       guidance_rescale=0.7, progress=False)

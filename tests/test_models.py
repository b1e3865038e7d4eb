import torch

import ddpm_lib as dl


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_book():
    assert n_params(dl.BasicUNet()) == 309_057
    assert n_params(dl.make_unet2d()) == 1_707_009
    assert n_params(dl.BasicUNetFixed()) == 309_857


def test_seed_basic_unet_output_is_bounded_below_by_silu_minimum():
    torch.manual_seed(0)
    m = dl.BasicUNet()
    with torch.no_grad():
        out = m(torch.randn(16, 1, 28, 28) * 5)
    assert out.shape == (16, 1, 28, 28)
    # min_x x * sigmoid(x) = -0.2785 (at x = -1.2785)
    assert out.min().item() >= -0.2785


def test_fixed_basic_unet_sees_t_and_is_unbounded():
    torch.manual_seed(0)
    m = dl.BasicUNetFixed()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        a = m(x, torch.zeros(4, dtype=torch.long))
        b = m(x, torch.full((4,), 999))
    assert not torch.allclose(a, b)
    # the final layer has no activation: a bias of -5 shows up in the output
    with torch.no_grad():
        m.up_layers[-1].bias.fill_(-5.0)
        assert m(x, torch.zeros(4, dtype=torch.long)).min().item() < -1.0


def test_one_calling_contract_for_every_denoiser():
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 900])
    for model in (dl.BasicUNet(), dl.BasicUNetFixed(), dl.make_unet2d(), lambda xt, tt: xt * 0):
        eps = dl.as_denoiser(model)(x, t)
        assert isinstance(eps, torch.Tensor) and eps.shape == x.shape
    unet = dl.make_unet2d().eval()
    with torch.no_grad():
        assert torch.equal(dl.as_denoiser(unet)(x, t), unet(x, t).sample)

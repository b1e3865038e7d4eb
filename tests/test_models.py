import torch

import ddpm_lib as dl


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_book():
    assert n_params(dl.BasicUNet()) == 309_057
    assert n_params(dl.make_unet2d()) == 1_707_009
    assert n_params(dl.BasicUNetFixed()) == 309_857
    small = dl.build_model("unet2d-small")  # chapter 8
    assert n_params(small) == 619_697 and small.config.block_out_channels == (16, 32, 64)
    attn = dl.build_model("unet2d-small", attention=True)
    assert attn.config.down_block_types[-1] == "AttnDownBlock2D" and n_params(attn) == 686_769


def test_small_unet_checkpoint_rebuilds_its_variant(tmp_path):
    model = dl.build_model("unet2d-small", block_out_channels=(8, 16), layers_per_block=2)
    dl.save_checkpoint(str(tmp_path / "c"), model, "unet2d-small")
    back, _ = dl.load_checkpoint(str(tmp_path / "c"))
    assert back.config.block_out_channels == (8, 16) and back.config.layers_per_block == 2
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    assert torch.equal(back(x, t).sample, model.eval()(x, t).sample)


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

"""Fast paths never change results beyond a stated tolerance."""
import copy
import threading

import pytest
import torch

import ddpm_lib as dl

S = dl.NoiseSchedule.linear()


def run(precision="fp32", channels_last=False, steps=6):
    torch.manual_seed(0)
    m = dl.BasicUNetFixed()
    images = dl.load_mnist("train", source="embedded").images[:256]
    return dl.train(m, images, S, steps=steps, batch_size=16, seed=0, progress=False,
                    precision=precision, channels_last=channels_last), m


def test_channels_last_training_matches_plain():
    (a, ma), (b, mb) = run(), run(channels_last=True)
    assert b == pytest.approx(a, rel=1e-4)
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_bf16_autocast_training_stays_within_two_percent_of_fp32():
    (a, _), (b, _) = run(), run(precision="bf16")
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.02  # measured on H200 for unet2d: 0.66 % over 30 steps


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU (measured on an H200: CUDA-graph vs eager max difference 0.0, "
                           "bench/results/gpu_checks.json)")
def test_cuda_graph_sampler_matches_the_eager_loop():
    model = dl.pretrained("unet2d", device="cuda")
    kw = dict(generator=torch.Generator().manual_seed(0), progress=False)
    fast = dl.sample(model, S, (4, 1, 28, 28), fast=True, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    plain = dl.sample(model, S, (4, 1, 28, 28), fast=False, **kw)
    assert (fast - plain).abs().max().item() < 1e-4


def test_schedule_to_returns_a_copy():
    s2 = S.to("cpu")
    assert s2 is not S and torch.equal(s2.alphas_cumprod, S.alphas_cumprod)


def test_default_optimizer_keeps_foreach_on_cpu():
    opt = dl.training.make_optimizer(dl.BasicUNet(), lr=1e-3)
    # fused=False would silently select the slow single-tensor loop; None lets PyTorch pick foreach
    assert opt.defaults["fused"] is None and opt.defaults["foreach"] is None


def _attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
    torch.manual_seed(0)
    attn = Attention(64, heads=8, dim_head=8, norm_num_groups=32, residual_connection=True,
                     bias=True, upcast_softmax=True, _from_deprecated_attn_block=True).eval()
    attn.set_processor(AttnProcessor2_0())
    return attn


@pytest.mark.parametrize("scale", [1.0, 300.0])
@pytest.mark.parametrize("size", [7, 14])
def test_channel_first_attention_equals_diffusers_processor(scale, size):
    from ddpm_lib.fastpaths import ChannelFirstAttnProcessor, _qkv1_weights
    attn = _attention()
    x = torch.randn(3, 64, size, size)
    with torch.no_grad():
        attn.to_q.weight.mul_(scale)
        # scale 300 makes scores of 2^128 and more possible: without the max subtraction, exp2 overflows
        w, b = _qkv1_weights(attn, x.dtype)
        qkv = (w @ attn.group_norm(x.reshape(3, 64, -1)) + b).view(3 * 8, 25, -1)
        biggest = (qkv[:, :8].transpose(1, 2) @ qkv[:, 8:16]).abs().max().item()
        assert (biggest < 96) if scale == 1 else (biggest > 128), biggest
        want = attn(x)
        got = ChannelFirstAttnProcessor()(attn, x)
        x_cl = x.to(memory_format=torch.channels_last)  # read as (B, HW, C) rows, written back NHWC
        got_cl = ChannelFirstAttnProcessor()(attn, x_cl)
    assert torch.isfinite(got).all() and torch.isfinite(got_cl).all()
    assert got.is_contiguous() and got_cl.is_contiguous(memory_format=torch.channels_last)
    for g in (got, got_cl):
        assert (g - want).abs().max().item() < 1e-5 * want.abs().max().item()


def test_channels_last_group_norm_equals_group_norm():
    from ddpm_lib.fastpaths import group_norm
    torch.manual_seed(0)
    for C, size, offset in [(32, 28, 0.0), (96, 14, 5.0), (64, 7, -20.0)]:
        norm = torch.nn.GroupNorm(32, C, eps=1e-5)
        with torch.no_grad():
            norm.weight.normal_(), norm.bias.normal_()
            x = (torch.randn(3, C, size, size) * 2 + offset + torch.randn(3, C, 1, 1)).to(
                memory_format=torch.channels_last)
            want = norm(x.contiguous())
            got = group_norm(norm, x)
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert (got - want).abs().max().item() < 1e-4, (C, offset)  # |want| ~ 5: float rounding
            y = x.clone()
            assert group_norm(norm, y, inplace=True).data_ptr() == y.data_ptr() and torch.equal(y, got)
            assert torch.equal(group_norm(norm, x.contiguous()), want)  # NCHW: PyTorch's own kernel
    x.requires_grad_(True)
    group_norm(norm, x).sum().backward()  # with grad enabled: PyTorch's kernel, differentiable
    assert x.grad is not None


def test_channels_last_conv_keeps_nhwc_and_the_result():
    from ddpm_lib.fastpaths import conv_channels_last
    torch.manual_seed(0)
    for cin, stride in [(1, 1), (32, 1), (64, 2)]:
        conv = torch.nn.Conv2d(cin, 64, 3, padding=1, stride=stride)
        w = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        x = torch.randn(2, cin, 14, 14)
        with torch.no_grad():
            want = conv(x)
            for inp in (x, x.to(memory_format=torch.channels_last)):
                got = conv_channels_last(conv, w, inp)
                assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == want.shape
                assert (got - want).abs().max().item() < 1e-5
    conv_channels_last(conv, w, x).sum().backward()  # grad enabled: the conv's own forward
    assert conv.weight.grad is not None


def test_few_out_conv_equals_conv2d():
    from ddpm_lib.fastpaths import few_out_conv
    torch.manual_seed(0)
    for k, out_ch, bias, channels_last in [(5, 1, True, True), (5, 1, True, False), (3, 1, True, False),
                                           (3, 3, False, False)]:
        conv = torch.nn.Conv2d(32, out_ch, k, padding=k // 2, bias=bias)
        x = torch.randn(2, 32, 12, 10)
        if channels_last:
            conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        with torch.no_grad():
            want, got = conv(x), few_out_conv(conv, x)
        assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5, (k, out_ch, bias)


def test_upsample_conv_equals_diffusers_upsample2d():
    from diffusers.models.upsampling import Upsample2D
    from ddpm_lib.fastpaths import upsample_conv
    torch.manual_seed(0)
    up = Upsample2D(16, use_conv=True, out_channels=24).eval()
    with torch.no_grad():
        for p in up.parameters():
            p.normal_()
        for size in [(7, 7), (5, 9)]:
            x = torch.randn(2, 16, *size)
            want, got = up(x), upsample_conv(up, x)
            got_cl = upsample_conv(up, x.to(memory_format=torch.channels_last))
            assert got.shape == want.shape == (2, 24, 2 * size[0], 2 * size[1])
            assert got_cl.is_contiguous(memory_format=torch.channels_last)
            for g in (got, got_cl):
                assert (g - want).abs().max().item() < 1e-5 * want.abs().max().item()
        x = torch.randn(2, 16, 7, 7)  # an odd target size goes to diffusers' own forward
        assert torch.equal(upsample_conv(up, x, output_size=(13, 15)), up(x, output_size=(13, 15)))


def test_in_place_resnet_block_is_bitwise_the_diffusers_block():
    from diffusers.models.resnet import ResnetBlock2D
    from ddpm_lib.fastpaths import resnet_block
    torch.manual_seed(0)
    for cin, cout in [(32, 32), (32, 64)]:  # without and with the 1x1 shortcut
        block = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=16).eval()
        x, temb = torch.randn(2, cin, 14, 14), torch.randn(2, 16)
        with torch.inference_mode():
            assert torch.equal(resnet_block(block, x, temb), block(x, temb))
            with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed dtypes: the block's own forward
                assert torch.equal(resnet_block(block, x, temb), block(x, temb))


def test_basic_unet_fast_forward_equals_the_seed_forward():
    from ddpm_lib.fastpaths import basic_unet, fast_inference
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    for model in (dl.BasicUNet().eval(), dl.BasicUNetFixed().eval()):
        args = (x,) if type(model) is dl.BasicUNet else (x, t)
        for channels_last in (False, True):
            if channels_last:
                model.to(memory_format=torch.channels_last)
            with torch.inference_mode():
                want = model(*args)
                assert torch.equal(basic_unet(model, *args), want)  # in-place ops, same order: bitwise
                with fast_inference(model):  # plus the 1-channel output conv: float rounding
                    assert (model(*args) - want).abs().max().item() < 1e-5
        assert not any("forward" in m.__dict__ for m in model.modules())


def test_fast_inference_swaps_layers_and_restores_them():
    from ddpm_lib.fastpaths import ChannelFirstAttnProcessor, fast_inference
    model = dl.make_unet2d()
    procs = [type(m.processor) for m in model.modules() if hasattr(m, "set_processor")]
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 900])
    with torch.no_grad():
        want = model(x, t).sample
        with fast_inference(model):
            assert {type(m.processor) for m in model.modules() if hasattr(m, "set_processor")} == \
                {ChannelFirstAttnProcessor}
            patched = {type(m).__name__ for m in model.modules() if "forward" in m.__dict__}
            assert patched == {"Conv2d", "GroupNorm", "Upsample2D", "ResnetBlock2D"}
            assert all("forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Conv2d)
            layouts = []
            hooks = [m.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(
                memory_format=torch.channels_last) and not o.is_contiguous()))
                for m in model.modules() if type(m).__name__ in ("ResnetBlock2D", "Attention", "Upsample2D")]
            got = model(x, t).sample
            for h in hooks:
                h.remove()
            assert len(layouts) == 17 + 11 + 2 and all(layouts)  # resnets, attentions, upsamplers: NHWC out
    assert [type(m.processor) for m in model.modules() if hasattr(m, "set_processor")] == procs
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert (got - want).abs().max().item() < 1e-4
    with torch.no_grad():  # weights are read on entry: a changed model is seen by the next block
        for p in model.parameters():
            p.mul_(1.1)
        want = model(x, t).sample
        with fast_inference(model):
            got = model(x, t).sample
    assert (got - want).abs().max().item() < 1e-4


def test_cpu_fast_sampler_splits_large_batches_and_matches_the_plain_loop(monkeypatch):
    calls = []
    split = dl.fastpaths.split_batch
    monkeypatch.setattr(dl.fastpaths, "split_batch", lambda *a, **k: calls.append(1) or split(*a, **k))
    s = dl.NoiseSchedule.linear(num_timesteps=3)
    model = dl.pretrained("unet2d")
    for B, splits in ((dl.sampling.SPLIT_MIN_BATCH - 1, 0), (dl.sampling.SPLIT_MIN_BATCH, 3)):
        calls.clear()
        out = [dl.sample(model, s, (B, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False,
                         fast=fast) for fast in (True, False)]
        assert len(calls) == (splits if torch.get_num_threads() >= 2 else 0)  # one per step when split
        assert (out[0] - out[1]).abs().max().item() < 1e-4


def test_cpu_fast_sampler_matches_the_plain_loop():
    s = dl.NoiseSchedule.linear(num_timesteps=20)
    for name in ("unet2d", "basic-fixed"):
        model = dl.pretrained(name)
        out = [dl.sample(model, s, (6, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False,
                         fast=fast) for fast in (True, False)]
        assert (out[0] - out[1]).abs().max().item() < 1e-4, name
    cl = dl.sample(copy.deepcopy(model), s, (6, 1, 28, 28), generator=torch.Generator().manual_seed(0),
                   progress=False, channels_last=True)  # model: basic-fixed, the loop's last
    assert (cl - out[1]).abs().max().item() < 1e-4
    assert torch.get_num_threads() >= 1 and not any(
        type(m.processor).__name__ == "ChannelFirstAttnProcessor" for m in model.modules() if hasattr(m, "processor"))


def test_split_batch_training_matches_plain_and_is_deterministic():
    images = dl.load_mnist("train", source="embedded").images[:64]
    threads = torch.get_num_threads()
    runs = []
    for split in (False, True, True):
        torch.manual_seed(0)
        m = dl.make_unet2d()
        # SGD: parameters move by lr * gradient, so they compare the gradients (AdamW's first step is
        # lr * sign(g), which flips on the ~1e-12 gradients that attention key biases get)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        losses = dl.train(m, images, S, steps=3, batch_size=8, seed=0, progress=False, optimizer=opt,
                          split_batch=split)
        runs.append((losses, torch.cat([p.detach().flatten() for p in m.parameters()])))
        assert torch.get_num_threads() == threads  # restored
    (a, pa), (b, pb), (c, pc) = runs
    assert b == pytest.approx(a, rel=1e-5)
    assert (pa - pb).abs().max().item() < 1e-5
    assert b == c and torch.equal(pb, pc)  # split runs are bitwise repeatable (resume relies on it)


def test_split_batch_returns_each_part_and_reraises():
    from ddpm_lib.fastpaths import split_batch
    x = torch.arange(10.0)
    parts = split_batch(lambda v: v * 2, x)
    assert [p.tolist() for p in parts] == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18]]

    def boom(v):
        if v[0] > 0:
            raise RuntimeError("second half failed")
        return v
    with pytest.raises(RuntimeError, match="second half failed"):
        split_batch(boom, x)


def test_split_batch_keeps_one_worker_thread_per_threads_per_part_block():
    from ddpm_lib.fastpaths import split_batch, threads_per_part
    x = torch.arange(4.0)
    n = torch.get_num_threads()
    seen = threading.local()  # a fresh thread starts at 0 calls; a kept one counts on

    def who(v):
        seen.calls = getattr(seen, "calls", 0) + 1
        return threading.current_thread() is threading.main_thread(), seen.calls, torch.get_num_threads()
    with threads_per_part():
        calls = [split_batch(who, x) for _ in range(3)]
    assert [c[1][:2] for c in calls] == [(False, 1), (False, 2), (False, 3)]  # one kept worker
    assert all(c[0][0] and c[1][2] == max(1, n // 2) for c in calls)  # each with its share of threads
    assert torch.get_num_threads() == n
    assert not any(th.name.startswith("ddpm_lib-part") for th in threading.enumerate())  # shut down
    assert split_batch(who, x)[1][1] == 1  # outside a block: a fresh thread


def test_split_batch_needs_two_images():
    with pytest.raises(ValueError, match="split_batch needs batch_size >= 2"):
        dl.train(dl.BasicUNetFixed(), dl.load_mnist("train", source="embedded").images[:8], S, steps=1,
                 batch_size=1, progress=False, split_batch=True)


@pytest.mark.slow
def test_bf16_sampling_stays_within_the_stated_tolerance():
    # the book states: bf16 samples differ from fp32 by ~0.01 mean |pixel| and show the same digit
    # (bench/results/bf16_sampling.json: 16 images per shipped model)
    from ddpm_lib import metrics
    model = dl.pretrained("basic-fixed")
    out = [dl.sample(model, S, (8, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False,
                     precision=p) for p in ("fp32", "bf16")]
    d = (out[0] - out[1]).abs()
    assert 0 < d.mean().item() < 0.02 and d.flatten(1).mean(1).max().item() < 0.1
    cls = metrics.load_classifier()
    with torch.no_grad():
        same = (cls(out[0]).argmax(-1) == cls(out[1]).argmax(-1)).sum().item()
    assert same >= 7


def test_fast_inference_leaves_a_subclass_with_its_own_forward_alone():
    from ddpm_lib.fastpaths import fast_inference

    class Zero(dl.BasicUNetFixed):
        def forward(self, x, t):
            return super().forward(x, t) * 0

    model = Zero().eval()
    with torch.inference_mode(), fast_inference(model):
        assert not model(torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])).any()


def test_fast_inference_on_other_unet2d_configurations():
    # layers the fast paths do not take (scale-shift time embedding, resnet up/down sampling,
    # 4 groups, 16-wide heads) fall back to diffusers' own code, in NHWC where the model runs NHWC
    from diffusers import UNet2DModel
    from ddpm_lib.fastpaths import fast_inference
    torch.manual_seed(0)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([1, 10, 100, 900])
    for kw in (dict(resnet_time_scale_shift="scale_shift", norm_num_groups=4, attention_head_dim=16),
               dict(downsample_type="resnet", upsample_type="resnet", norm_num_groups=8)):
        model = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                            block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kw).eval()
        with torch.inference_mode():
            want = model(x, t).sample
            with fast_inference(model):
                got = model(x, t).sample
        assert (got - want).abs().max().item() < 1e-4 * want.abs().max().item(), kw


def test_traced_sampler_traces_once_per_shape_and_equals_the_eager_fast_path(monkeypatch):
    traces = []
    trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: traces.append(a[1][0].shape) or trace(*a, **k))
    s = dl.NoiseSchedule.linear(num_timesteps=4)
    for name in ("unet2d", "basic-fixed"):
        model = dl.pretrained(name)
        for B in (1, 6):
            traces.clear()
            got = dl.sample(model, s, (B, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False)
            assert traces == [(B, 1, 28, 28)], (name, B)  # one trace, replayed for the other 3 steps
            with monkeypatch.context() as m:
                m.setattr(dl.fastpaths, "traced", lambda model, eps_fn: eps_fn)
                want = dl.sample(model, s, (B, 1, 28, 28), generator=torch.Generator().manual_seed(0),
                                 progress=False)
            assert torch.equal(got, want), (name, B)  # same operations in the same order


def test_traced_runs_a_call_again_eagerly_when_attention_needs_the_max_subtracted():
    from diffusers.models.attention_processor import Attention
    from ddpm_lib.fastpaths import ChannelFirstAttnProcessor, traced
    torch.manual_seed(0)
    attn = Attention(64, heads=8, dim_head=8, residual_connection=True, bias=True,
                     _from_deprecated_attn_block=True).eval()  # no GroupNorm: q and k scale with x
    attn.set_processor(ChannelFirstAttnProcessor())
    eps_fn = lambda x, t: attn(x) * t.view(-1, 1, 1, 1)  # noqa: E731
    x, t = torch.randn(2, 64, 7, 7), torch.ones(2)
    with torch.inference_mode():
        run = traced(attn, eps_fn)
        assert torch.equal(run(x, t), eps_fn(x, t))  # traced with small scores: no max subtraction
        for scale in (2.0, 40.0):  # 40 x: scores of 2^128 and more, where exp2 overflows without the max
            want, got = eps_fn(scale * x, t), run(scale * x, t)
            assert torch.isfinite(got).all() and torch.equal(got, want), scale
        (graph, shifted), = run.traces.values()  # the trace itself
        raw, bounds = graph(40.0 * x, t)
        assert not shifted.any() and (bounds >= dl.fastpaths.SHIFT_BOUND).all() and not torch.isfinite(raw).all()


def test_only_the_books_models_are_traced():
    from ddpm_lib.fastpaths import traceable

    class ByValue(dl.BasicUNetFixed):  # branches on t's value: a trace would fix the branch it saw
        def forward(self, x, t):
            return super().forward(x, t) if t[0] >= 2 else torch.zeros_like(x)

    hooked = dl.BasicUNetFixed()
    hooked.down_layers[0].register_forward_hook(lambda *a: None)
    assert traceable(dl.BasicUNet()) and traceable(dl.BasicUNetFixed()) and traceable(dl.make_unet2d())
    assert not traceable(ByValue()) and not traceable(hooked)
    torch.manual_seed(0)
    model = ByValue()
    s = dl.NoiseSchedule.linear(num_timesteps=4)
    out = dl.sample(model, s, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False)
    want = dl.sample(model, s, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False, fast=False)
    assert torch.equal(out, want)

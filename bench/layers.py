"""Each CPU fast path of ddpm_lib.fastpaths against the layer it replaces, one thread, 32 images
(the share of one sampling thread), on the shipped weights: milliseconds per call (median of
alternating repeats) and the largest difference of the outputs. Writes bench/results/layers_cpu.json,
which book/timings.md shows.

    python bench/layers.py
"""
import json
import math
import os
import platform
import statistics
import time

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import ddpm_lib as dl
from ddpm_lib import fastpaths

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "layers_cpu.json")


def timed(fn, calls):
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    return (time.perf_counter() - t0) / calls * 1e3, out


def compare(what, plain, fast, repeats=7, calls=5):
    times = ([], [])
    for _ in range(repeats):
        for fn, ts in zip((plain, fast), times):
            ms, out = timed(fn, calls)
            ts.append(ms)
    diff = (plain() - fast()).abs().max().item()
    row = {"what": what, "plain_ms": round(statistics.median(times[0]), 2),
           "fast_ms": round(statistics.median(times[1]), 2), "max_abs_diff": float(f"{diff:.2g}")}
    row["ratio"] = round(row["plain_ms"] / row["fast_ms"], 2)
    print(row, flush=True)
    return row


def with_fast(model, fn):
    def f():
        with fastpaths.fast_inference(model):
            return fn()
    return f


@torch.inference_mode()
def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    B = 32
    unet = dl.pretrained("unet2d")
    basic = dl.pretrained("basic-fixed").to(memory_format=torch.channels_last)
    attn = unet.down_blocks[1].attentions[0]  # 64 channels at 14x14
    attn7 = unet.mid_block.attentions[0]  # 64 channels at 7x7
    up = unet.up_blocks[1].upsamplers[0]  # 64 channels, 14x14 -> 28x28
    resnet = unet.up_blocks[1].resnets[0]  # 128 -> 64 channels at 14x14, with a 1x1 shortcut
    temb = torch.randn(B, resnet.time_emb_proj.in_features)
    x14, x7 = torch.randn(B, 64, 14, 14), torch.randn(B, 64, 7, 7)
    x28 = torch.randn(B, 32, 28, 28)
    xr = torch.randn(B, 128, 14, 14)
    xb = torch.randn(B, 32, 28, 28).contiguous(memory_format=torch.channels_last)
    x, t = torch.randn(B, 1, 28, 28), torch.full((B,), 500)
    cl = torch.channels_last
    x14_cl = x14.contiguous(memory_format=cl)
    conv = unet.mid_block.resnets[0].conv1  # 64 -> 64 at 7x7 in the model; timed here at 14x14
    conv28 = unet.up_blocks[2].resnets[2].conv1  # 64 -> 32 at 28x28
    norm = unet.up_blocks[2].resnets[2].norm1  # 64 channels at 28x28
    conv_w, conv28_w = (c.weight.detach().contiguous(memory_format=cl) for c in (conv, conv28))
    x28b = torch.randn(B, 64, 28, 28)
    x28b_cl = x28b.contiguous(memory_format=cl)
    z = torch.randn(6, 196, 196)  # ~1 MB of 14x14 attention scores, as they sit in cache
    z2 = z * math.log2(math.e)  # the processor folds log2(e) into q's weights
    rows = [
        compare("softmax's exponential on 6x196x196 scores (~1 MB): torch.exp(z) -> torch.exp2(z log2 e)",
                lambda: torch.exp(z), lambda: torch.exp2(z2), calls=20),
        compare("UNet2DModel attention, 14x14 (AttnProcessor2_0 -> ChannelFirstAttnProcessor)",
                lambda: AttnProcessor2_0()(attn, x14), lambda: fastpaths.ChannelFirstAttnProcessor()(attn, x14)),
        compare("UNet2DModel attention, 7x7",
                lambda: AttnProcessor2_0()(attn7, x7), lambda: fastpaths.ChannelFirstAttnProcessor()(attn7, x7)),
        compare("UNet2DModel conv_out, 3x3 32->1 (few_out_conv)",
                lambda: unet.conv_out(x28), lambda: fastpaths.few_out_conv(unet.conv_out, x28)),
        compare("BasicUNetFixed last conv, 5x5 32->1, channels_last (few_out_conv)",
                lambda: basic.up_layers[-1](xb), lambda: fastpaths.few_out_conv(basic.up_layers[-1], xb)),
        compare("UNet2DModel attention, 14x14, NHWC in and out",
                lambda: AttnProcessor2_0()(attn, x14), lambda: fastpaths.ChannelFirstAttnProcessor()(attn, x14_cl)),
        compare("UNet2DModel Upsample2D, 14x14 -> 28x28 (upsample_conv)",
                lambda: up(x14), lambda: fastpaths.upsample_conv(up, x14)),
        compare("UNet2DModel Upsample2D, 14x14 -> 28x28, NHWC (one transposed conv)",
                lambda: up(x14), lambda: fastpaths.upsample_conv(up, x14_cl)),
        compare("UNet2DModel 3x3 conv 64->64 at 14x14: NCHW -> NHWC (conv_channels_last)",
                lambda: conv(x14), lambda: fastpaths.conv_channels_last(conv, conv_w, x14_cl)),
        compare("UNet2DModel 3x3 conv 64->32 at 28x28: NCHW -> NHWC (conv_channels_last)",
                lambda: conv28(x28b), lambda: fastpaths.conv_channels_last(conv28, conv28_w, x28b_cl)),
        compare("GroupNorm, 64 channels at 28x28: NCHW (PyTorch) -> NHWC (group_norm)",
                lambda: norm(x28b), lambda: fastpaths.group_norm(norm, x28b_cl)),
        compare("GroupNorm, 64 channels at 28x28: NHWC, PyTorch's kernel -> group_norm",
                lambda: torch.nn.GroupNorm.forward(norm, x28b_cl), lambda: fastpaths.group_norm(norm, x28b_cl)),
        compare("UNet2DModel ResnetBlock2D, 128->64 at 14x14 (resnet_block)",
                lambda: resnet(xr, temb), lambda: fastpaths.resnet_block(resnet, xr, temb)),
        compare("BasicUNetFixed forward, channels_last (all of the above that apply)",
                lambda: basic(x, t), with_fast(basic, lambda: basic(x, t))),
        compare("UNet2DModel forward (all of the above)",
                lambda: unet(x, t).sample, with_fast(unet, lambda: unet(x, t).sample), repeats=5, calls=2),
    ]
    info = {"device": f"cpu ({os.cpu_count()} cores, {platform.machine()}), 1 thread", "torch": torch.__version__,
            "batch": B, "rows": rows}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(info, f, indent=2)
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()

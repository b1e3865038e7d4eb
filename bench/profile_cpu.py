"""Where the time of a UNet2DModel sampling step goes on the CPU: one forward of 32 images (the
share of one sampling thread) on one thread with every fast path on, split by kind of operation
(torch.profiler, self time); the arithmetic rate of its convolutions against this core's rate on
one large matrix product; and the step as sampling runs it (2 x 32 images on two threads, eager
and as the trace ``sample`` replays) against one thread alone (alternated, medians).
Writes bench/results/profile_cpu.json, which book/timings.md shows.

    python bench/profile_cpu.py
"""
import json
import os
import platform
import statistics
import time

import torch
from torch.profiler import profile

import ddpm_lib as dl
from ddpm_lib import fastpaths
from ddpm_lib.models import as_denoiser

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "profile_cpu.json")
KINDS = {  # aten op (self time) -> kind
    "aten::mkldnn_convolution": "conv", "aten::_convolution": "conv",
    "aten::bmm": "matmul", "aten::baddbmm": "matmul", "aten::addmm": "matmul", "aten::mm": "matmul",
    "aten::exp2_": "exp2",
}


def median_ms(fn, calls=10):
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def conv_flops(model, x, t):
    """Multiply-adds x 2 of the oneDNN convolutions in one forward under fast_inference: every
    Conv2d but the few-output ones (a GEMM there) and the Upsample2D phases (4 taps per output)."""
    total, hooks = [0], []

    def conv_hook(m, inp, out):
        if m.out_channels > 3:
            k = m.kernel_size[0] * m.kernel_size[1]
            total[0] += 2 * out.numel() * k * m.in_channels // m.groups

    def up_hook(m, inp, out):
        total[0] += 2 * out.numel() * 4 * m.conv.in_channels

    ups = [m for m in model.modules() if type(m).__name__ == "Upsample2D" and m.use_conv]
    for m in ups:
        hooks.append(m.register_forward_hook(up_hook))
    for m in model.modules():
        if type(m) is torch.nn.Conv2d and not any(m is u.conv for u in ups):  # counted by its Upsample2D
            hooks.append(m.register_forward_hook(conv_hook))
    model(x, t)
    for h in hooks:
        h.remove()
    return total[0]


@torch.inference_mode()
def main():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    model = dl.pretrained("unet2d").eval()
    x, t = torch.randn(64, 1, 28, 28), torch.full((64,), 500)
    with fastpaths.fast_inference(model):
        with fastpaths.threads_per_part():  # one intra-op thread, as each sampling thread has
            run = fastpaths.traced(model, as_denoiser(model))  # what sample() runs
            for _ in range(3):  # the trace, then TorchScript's profiling and optimising runs
                fastpaths.split_batch(run, x, t)
            one, two, two_traced = [], [], []
            for _ in range(5):  # alternated: this VM's speed drifts by a few per cent
                one.append(median_ms(lambda: model(x[:32], t[:32]), calls=4))
                two.append(median_ms(lambda: fastpaths.split_batch(model, x, t), calls=4))
                two_traced.append(median_ms(lambda: fastpaths.split_batch(run, x, t), calls=4))
            one, two, two_traced = statistics.median(one), statistics.median(two), statistics.median(two_traced)
            flops = conv_flops(model, x[:32], t[:32])
            a = torch.randn(2048, 2048)
            gemm_gflops = 2 * 2048 ** 3 / median_ms(lambda: a @ a, calls=5) / 1e6
            model(x[:32], t[:32])
            n = 5
            with profile() as prof:
                for _ in range(n):
                    model(x[:32], t[:32])
    kinds = dict.fromkeys(["conv", "matmul", "exp2", "other"], 0.0)
    for e in prof.key_averages():
        kinds[KINDS.get(e.key, "other")] += e.self_cpu_time_total / n / 1e3  # us -> ms per forward
    profiled = sum(kinds.values())
    info = {"device": f"cpu ({os.cpu_count()} cores, {platform.machine()})", "torch": torch.__version__,
            "batch": 32, "threads": threads,
            "ms_per_forward": {k: round(v, 1) for k, v in kinds.items()}, "profiled_ms": round(profiled, 1),
            "conv_gflop": round(flops / 1e9, 2), "conv_gflops": round(flops / kinds["conv"] / 1e6, 1),
            "gemm_2048_gflops": round(gemm_gflops, 1),
            "one_thread_32_ms": round(one, 1), "two_threads_2x32_ms": round(two, 1),
            "two_threads_2x32_traced_ms": round(two_traced, 1)}
    print(json.dumps(info, indent=2))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()

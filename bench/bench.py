"""Benchmark: ddpm_lib's training loop and sampler against the plain code a reader would write
from the seed (diffusers-course style). Alternates the two in one process, several repeats,
reports medians and ratios, writes JSON.

    python bench/bench.py [--quick] [--device cpu|cuda] [--json bench/results/cpu.json]

--quick (under a minute on a 2-core CPU) times 1-3 steps with no warm-up, 2 repeats: a smoke run
whose ratios are noisy; book/timings.md shows the full run (5 repeats). A full CPU run gets the
1000-step sampling time from runs of 2 and 52 steps (``per_1000``).
Memory: how far memory rose above its level at the start of one run of each (CUDA: allocated by
torch; CPU: the process's resident set, Linux only, else null); see ``measure``.
"""
import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import time

import torch
from diffusers import DDPMPipeline, DDPMScheduler

import ddpm_lib as dl


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def memory_mib(device, key):
    """CUDA: torch's allocated bytes; CPU: the process's resident memory from /proc (Linux)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated() if key == "peak" else torch.cuda.memory_allocated()) / 2**20
    status = open("/proc/self/status").read()
    return int(re.search(rf"{'VmHWM' if key == 'peak' else 'VmRSS'}:\s+(\d+) kB", status).group(1)) / 1024


def peak_reset(device):
    """Start a new high-water mark at the memory in use now; returns that memory (MiB), or None
    on a CPU without Linux's /proc."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif not os.path.exists("/proc/self/clear_refs"):
        return None
    else:
        ctypes.CDLL(None).malloc_trim(0)  # hand freed heap back, so one run's garbage is not the next one's baseline
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
    return memory_mib(device, "now")


def peak_extra_mib(fn, device):
    """Run fn; return (its result, how far memory rose above its level at the start, in MiB)."""
    start = peak_reset(device)
    value = fn()
    return value, None if start is None else memory_mib(device, "peak") - start


def fresh(name, device):
    torch.manual_seed(0)
    return dl.build_model(name).to(device)


def plain_train(name, images, device, steps, batch_size=128):
    """The loop a reader writes from the seed: add_noise, AdamW, fp32, model(x, t)."""
    model = fresh(name, device)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x0 = images[torch.randint(0, len(images), (batch_size,), generator=g)].to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (batch_size,), generator=g).to(device)
        noisy = sched.add_noise(x0, noise, t)
        pred = model(noisy, t).sample if name == "unet2d" else model(noisy)
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the course prints/records the loss every step
    sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def lib_train(name, images, device, steps, fast):
    model = fresh(name, device)
    kw = dict(fast)
    bs = kw.pop("batch_size")
    warm = kw.pop("warmup")
    s = dl.NoiseSchedule.linear()
    if warm:  # compile / cudnn autotune before the timed window, same model
        dl.train(model, images, s, steps=warm, batch_size=bs, progress=False, **kw)
        kw["channels_last"] = False  # already converted
    sync(device)
    t0 = time.perf_counter()
    dl.train(model, images, s, steps=warm + steps, batch_size=bs, progress=False, start_step=warm, **kw)
    sync(device)
    return steps * bs / (time.perf_counter() - t0)


def pipeline_sample(model, n, steps, device):
    sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    pipe = DDPMPipeline(unet=model, scheduler=sched).to(device)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    t0 = time.perf_counter()
    pipe(batch_size=n, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")
    sync(device)
    return time.perf_counter() - t0


def lib_sample(model, n, steps, device, kw):
    s = dl.NoiseSchedule.linear(num_timesteps=steps)  # per-step cost does not depend on T
    sync(device)
    t0 = time.perf_counter()
    dl.sample(model, s, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False, **kw)
    sync(device)
    return time.perf_counter() - t0


def two_lengths(run, steps):
    """(seconds for 2 steps, seconds for 2 + steps steps): see ``per_1000``."""
    return run(2), run(2 + steps)


def per_1000(short, long, steps):
    """Seconds for 1000 steps and the one-off seconds of a call, from the times of a 2-step run and
    a (2 + steps)-step run: their difference is `steps` steps. ddpm_lib traces the model on the
    first step of a CPU call (``fastpaths.traced``), a cost paid once per call, not per step."""
    step = (long - short) / steps
    return short + 998 * step, short - 2 * step


def mib(x):
    return None if x is None else round(x, 1)


def alternate(fns, repeats, device=None):
    """Run the functions in turn, `repeats` rounds, each round starting one function later (no
    function always runs right after the same one); the median of each. Given a device, the last
    round also measures each function's memory (``peak_extra_mib``): returns (medians, memory)."""
    times, memory = [[] for _ in fns], [None] * len(fns)
    for r in range(repeats):
        for i in range(len(fns)):
            j = (i + r) % len(fns)
            if device is not None and r == repeats - 1:
                value, memory[j] = peak_extra_mib(fns[j], device)
            else:
                value = fns[j]()
            times[j].append(value)
    medians = [tuple(map(statistics.median, zip(*ts))) if isinstance(ts[0], tuple) else statistics.median(ts)
               for ts in times]  # a function returning a tuple: the median of each entry
    return medians if device is None else (medians, memory)


def measure(fns, repeats, device, quick):
    """Medians of the alternated runs, and each function's memory from one more, untimed run:
    handing the freed heap back before a run (``peak_reset``) makes its first steps fault pages
    in, ~15 % slower for a 10-step sampling run, so a full run times none of those. --quick, a
    smoke run, takes the memory from its last timed round instead (one run fewer each)."""
    if quick:
        return alternate(fns, repeats, device)
    return alternate(fns, repeats), [peak_extra_mib(fn, device)[1] for fn in fns]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (under a minute on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--models", default="basic,unet2d")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    images = dl.load_mnist("train", source="embedded").images.to(device)
    repeats = 2 if args.quick else 5
    rows = []
    for name in args.models.split(","):
        if gpu:
            steps = 30 if args.quick else 100
            fast = dict(precision="bf16", channels_last=True, compile=True, warmup=20)
            # larger batches are a lever of their own on a GPU (the step is launch-bound at 128)
            variants = {"": dict(batch_size=512, **fast), ", batch 2048": dict(batch_size=2048, **fast)}
            sample_kw = {"": {}, ", bf16 opt-in": {"precision": "bf16"}}
        else:  # the CPU levers that pay for each model (book/timings.md): channels_last for BasicUNet's
            # 5x5 convolutions, two half-batches on two cores for unet2d's small feature maps; bf16 opt-in
            steps = {"basic": 3, "unet2d": 1}[name] if args.quick else {"basic": 20, "unet2d": 6}[name]
            lever = {"channels_last": True} if name == "basic" else {"split_batch": True}
            warm = 0 if args.quick else 1  # no compile or autotuning on CPU: --quick skips the warm-up step
            variants = {"": dict(batch_size=128, warmup=warm, **lever),
                        ", bf16 opt-in": dict(batch_size=128, warmup=warm, precision="bf16", **lever)}
            cl = {"channels_last": True} if name == "basic" else {}  # sampling splits the batch by default
            sample_kw = {"": cl, ", bf16 opt-in": dict(precision="bf16", **cl)}
        fns = [lambda: plain_train(name, images, device, steps)]
        fns += [lambda kw=kw: lib_train(name, images, device, steps, kw) for kw in variants.values()]
        (plain, *ours), (plain_mib, *ours_mib) = measure(fns, repeats, device, args.quick)
        for (suffix, kw), o, o_mib in zip(variants.items(), ours, ours_mib):
            rows.append({"what": f"train {name}{suffix}", "unit": "images/s", "plain": round(plain, 1),
                         "ddpm_lib": round(o, 1), "ratio": round(o / plain, 2),
                         "ddpm_lib_settings": {k: v for k, v in kw.items() if k != "warmup"},
                         "peak_extra_mib": {"plain": mib(plain_mib), "ddpm_lib": mib(o_mib)}})
            print(rows[-1], flush=True)
        # sampling, 64 images. A full CPU run times a 2-step and a (2 + 50)-step run of each: their
        # difference gives the cost of a step, the short run the one-off cost (per_1000). GPU runs time
        # whole runs; --quick times 3 steps, one-off cost included, and scales them
        n = 64
        sample_steps = 1000 if gpu and not args.quick else (200 if gpu else (3 if args.quick else 50))
        fit = not gpu and not args.quick
        torch.manual_seed(0)
        if name == "basic":  # the seed's class has no t input for a pipeline
            pipe_model = _PipelineAdapter(dl.BasicUNetFixed().to(device).eval())
            model = copy.deepcopy(pipe_model.model)  # its own copy: channels_last converts in place
        else:
            pipe_model = fresh(name, device).eval()
            model = copy.deepcopy(pipe_model)
        pipeline_sample(pipe_model, n, 2, device)  # warm-up
        for kw in sample_kw.values():
            lib_sample(model, n, 2, device, kw)
        runs = [lambda k: pipeline_sample(pipe_model, n, k, device)]
        runs += [lambda k, kw=kw: lib_sample(model, n, k, device, kw) for kw in sample_kw.values()]
        if fit:
            fns = [lambda run=run: two_lengths(run, sample_steps) for run in runs]
        else:
            fns = [lambda run=run: run(sample_steps) for run in runs]
        (plain_s, *ours_s), (plain_mib, *ours_mib) = measure(fns, repeats, device, args.quick)
        if fit:
            plain_s, ours_s = per_1000(*plain_s, sample_steps), [per_1000(*o, sample_steps) for o in ours_s]
            timed = [2, 2 + sample_steps]
        else:
            scale = 1000 / sample_steps
            plain_s, ours_s = (plain_s * scale, None), [(o * scale, None) for o in ours_s]
            timed = sample_steps
        label = name if name != "basic" else "basic-fixed"
        for (suffix, kw), o, o_mib in zip(sample_kw.items(), ours_s, ours_mib):
            rows.append({"what": f"sample {label} (64 images, 1000 steps){suffix}", "unit": "s",
                         "plain": round(plain_s[0], 2), "ddpm_lib": round(o[0], 2),
                         "ratio": round(plain_s[0] / o[0], 2), "ddpm_lib_settings": kw, "timed_steps": timed,
                         "peak_extra_mib": {"plain": mib(plain_mib), "ddpm_lib": mib(o_mib)}})
            if fit:
                rows[-1]["one_off_s"] = {"plain": round(plain_s[1], 2) + 0.0, "ddpm_lib": round(o[1], 2) + 0.0}  # no -0.0
            print(rows[-1], flush=True)
    info = {"device": torch.cuda.get_device_name(device) if gpu else f"cpu ({os.cpu_count()} cores, {platform.machine()})",
            "torch": torch.__version__, "quick": args.quick, "repeats": repeats,
            "order": "rotated each round", "rows": rows}
    print(f"device: {info['device']}  torch {info['torch']}  repeats {repeats} (medians)")
    print(f"{'benchmark':58s} {'plain':>10s} {'ddpm_lib':>10s} {'ratio':>6s}  {'unit':9s} peak extra MiB (plain / ddpm_lib)")
    for r in rows:
        m = r["peak_extra_mib"]
        print(f"{r['what']:58s} {r['plain']:>10} {r['ddpm_lib']:>10} {r['ratio']:>5}x  {r['unit']:9s} {m['plain']} / {m['ddpm_lib']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


class _PipelineAdapter(torch.nn.Module):
    """Give BasicUNetFixed the UNet2DModel interface DDPMPipeline expects (config, dtype, .sample)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        from types import SimpleNamespace
        self.config = SimpleNamespace(in_channels=1, sample_size=28)

    def forward(self, x, t):
        from types import SimpleNamespace
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return SimpleNamespace(sample=self.model(x, t.to(x.device)))

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    @property
    def device(self):
        return next(self.parameters()).device


if __name__ == "__main__":
    sys.exit(main())

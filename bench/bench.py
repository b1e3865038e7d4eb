"""Benchmark: ddpm_lib's training loop and sampler against the plain code a reader would write
from the seed (diffusers-course style) and DDPMPipeline, and each speed lever (bf16 autocast,
channels_last, torch.compile) against the plain ddpm_lib path. Alternates them in one process,
several repeats, reports medians and ratios, writes JSON.

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


def cpu_name():
    """The CPU as a reader would look it up: model, cores, and its widest vector instructions."""
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"cpu ({model.group(1).strip() if model else platform.processor()}, {os.cpu_count()} cores, "
            f"{platform.machine()}{', ' + ' '.join(isa) if isa else ''})")


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
        out = model(noisy, t)
        pred = out.sample if hasattr(out, "sample") else out
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the course prints/records the loss every step
    sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def lib_train(name, images, device, steps, lever):
    """ddpm_lib.train with one lever (LEVERS) applied the way a reader would apply it."""
    model = fresh(name, device)
    net, kw = apply_lever(model, lever)
    s = dl.NoiseSchedule.linear()
    bs, warm = kw.pop("batch_size", 128), kw.pop("warmup", 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if warm:  # one untimed step (compile, cudnn autotuning), same model and optimizer
        dl.train(net, images, s, steps=warm, batch_size=bs, optimizer=opt, progress=False, **kw)
    sync(device)
    t0 = time.perf_counter()
    dl.train(net, images, s, steps=warm + steps, start_step=warm, batch_size=bs, optimizer=opt,
             progress=False, **kw)
    sync(device)
    return steps * bs / (time.perf_counter() - t0)


def apply_lever(model, lever):
    """(the model to call, keyword arguments for train/sample) for one lever's settings."""
    kw = dict(lever)
    if kw.pop("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    mode = kw.pop("compile", None)
    return (torch.compile(model, mode=mode) if mode else model), kw


def pipeline_sample(model, n, steps, device):
    sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    pipe = DDPMPipeline(unet=model, scheduler=sched).to(device)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    t0 = time.perf_counter()
    pipe(batch_size=n, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
         output_type="np")
    sync(device)
    return time.perf_counter() - t0


def lib_sample(net, n, steps, device, kw):
    s = dl.NoiseSchedule.linear(num_timesteps=steps)  # per-step cost does not depend on T
    sync(device)
    t0 = time.perf_counter()
    dl.sample(net, s, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0), progress=False,
              **kw)
    sync(device)
    return time.perf_counter() - t0


def two_lengths(run, steps):
    """(seconds for 2 steps, seconds for 2 + steps steps): see ``per_1000``."""
    return run(2), run(2 + steps)


def per_1000(short, long, steps):
    """Seconds for 1000 steps and the one-off seconds of a call, from the times of a 2-step run and
    a (2 + steps)-step run: their difference is `steps` steps (a compiled model's first call,
    a cost paid once, is not counted 1000 / steps times)."""
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


# The levers a reader can pull, each one library call (book/timings.md says what each buys).
CPU_LEVERS = {"basic-fixed": {"bf16": {"precision": "bf16"}, "channels_last": {"channels_last": True}},
              "unet2d": {"bf16": {"precision": "bf16"}}}
CPU_SAMPLE_EXTRA = {"torch.compile": {"compile": "default"}}  # training: compiling took > 15 min here
GPU_LEVERS = {"bf16": {"precision": "bf16"},
              "bf16 + channels_last + torch.compile": {"precision": "bf16", "channels_last": True,
                                                       "compile": "default"}}
GPU_TRAIN_BATCH = {"batch 512, bf16 + channels_last + torch.compile": {
    "batch_size": 512, "precision": "bf16", "channels_last": True, "compile": "default", "warmup": 20}}
GPU_SAMPLE_EXTRA = {"torch.compile reduce-overhead (CUDA graphs)": {"compile": "reduce-overhead"}}


def bf16_probe(name, device, n=32):
    """Median ms of one n-image forward in fp32 and under bf16 autocast (3 calls each, after
    one warm-up): a CPU without bf16 units emulates bf16, many times slower than fp32."""
    model, x = fresh(name, device).eval(), torch.randn(n, 1, 28, 28, device=device)
    t = torch.full((n,), 500, device=device)
    out = {}
    for precision in ("fp32", "bf16"):
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            model(x, t)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                model(x, t)
                times.append(1000 * (time.perf_counter() - t0))
        out[precision] = round(statistics.median(times), 1)
    return out


def row(what, unit, labels, values, memory, **extra):
    """One benchmark: each variant's value and peak extra memory; the first label is the anchor
    (the outside reference), the second the plain ddpm_lib path, the rest its levers."""
    return {"what": what, "unit": unit, "values": {k: round(v, 2) for k, v in zip(labels, values)},
            "peak_extra_mib": {k: mib(m) for k, m in zip(labels, memory)}, **extra}


def speedup(r, a, b):
    """How many times faster variant a is than variant b in row r (images/s up, seconds down)."""
    va, vb = r["values"][a], r["values"][b]
    return va / vb if r["unit"] == "images/s" else vb / va


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (under a minute on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--models", default="basic-fixed,unet2d")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    images = dl.load_mnist("train", source="embedded").images.to(device)
    repeats = 2 if args.quick else 5
    warm = 0 if args.quick and not gpu else (20 if gpu else 1)
    rows = []
    skipped = {}
    for name in args.models.split(","):
        levers = dict(GPU_LEVERS if gpu else CPU_LEVERS[name])
        probe = bf16_probe(name, device)
        if probe["bf16"] > 1.5 * probe["fp32"]:  # emulated: minutes a step, and no reader's lever
            del levers["bf16"]
            skipped[f"{name} bf16"] = {"forward_ms_32_images": probe,
                                       "why": "bf16 emulated (no bf16 units): not timed"}
            print(name, skipped[f"{name} bf16"], flush=True)
        if gpu:
            steps = 30 if args.quick else 100
        else:
            steps = {"basic-fixed": 3, "unet2d": 1}[name] if args.quick else {"basic-fixed": 20, "unet2d": 4}[name]
        train_levers = {"ddpm_lib": {}, **levers, **(GPU_TRAIN_BATCH if gpu else {})}
        fns = [lambda: plain_train(name, images, device, steps)]
        fns += [lambda lv=lv: lib_train(name, images, device, steps, {"warmup": warm, **lv})
                for lv in train_levers.values()]
        values, memory = measure(fns, repeats, device, args.quick)
        rows.append(row(f"train {name}", "images/s", ["plain loop", *train_levers], values, memory,
                        batch_size=128, timed_steps=steps))
        print(rows[-1], flush=True)
        # sampling, 64 images. A full CPU run times a 2-step and a (2 + k)-step run of each: their
        # difference gives the cost of a step, the short run the one-off cost (per_1000). GPU runs
        # time whole runs; --quick times 3 steps, one-off cost included, and scales them
        n = 64
        sample_steps = 1000 if gpu and not args.quick else (200 if gpu else (3 if args.quick else
                                                                             {"basic-fixed": 50, "unet2d": 30}[name]))
        fit = not gpu and not args.quick
        extra_levers = GPU_SAMPLE_EXTRA if gpu else ({} if args.quick else CPU_SAMPLE_EXTRA)
        sample_levers = {"ddpm_lib": {}, **levers, **extra_levers}
        pipe_model = fresh(name, device).eval()
        pipe_net = _PipelineAdapter(pipe_model) if name == "basic-fixed" else pipe_model
        nets = [apply_lever(copy.deepcopy(pipe_model), lv) for lv in sample_levers.values()]
        runs = [lambda k: pipeline_sample(pipe_net, n, k, device)]
        runs += [lambda k, net=net, kw=kw: lib_sample(net, n, k, device, kw) for net, kw in nets]
        for run in runs:
            run(2)  # warm-up (a compiled model compiles here)
        if fit:
            fns = [lambda run=run: two_lengths(run, sample_steps) for run in runs]
        else:
            fns = [lambda run=run: run(sample_steps) for run in runs]
        values, memory = measure(fns, repeats, device, args.quick)
        if fit:
            fitted = [per_1000(*v, sample_steps) for v in values]
            values = [f[0] for f in fitted]
            extra = {"timed_steps": [2, 2 + sample_steps],
                     "one_off_s": {k: round(f[1], 2) + 0.0 for k, f in zip(["DDPMPipeline", *sample_levers], fitted)}}
        else:
            values = [v * 1000 / sample_steps for v in values]
            extra = {"timed_steps": sample_steps}
        rows.append(row(f"sample {name} (64 images, 1000 steps)", "s", ["DDPMPipeline", *sample_levers],
                        values, memory, **extra))
        print(rows[-1], flush=True)
    info = {"device": torch.cuda.get_device_name(device) if gpu else cpu_name(),
            "torch": torch.__version__, "quick": args.quick, "repeats": repeats,
            "order": "rotated each round", "rows": rows, "skipped": skipped}
    print(f"device: {info['device']}  torch {info['torch']}  repeats {repeats} (medians)")
    for r in rows:
        anchor, plain, *levers = r["values"]
        print(f"{r['what']} ({r['unit']}): {anchor} {r['values'][anchor]}, ddpm_lib {r['values'][plain]} "
              f"({speedup(r, plain, anchor):.2f}x)")
        for lv in levers:
            print(f"    {lv}: {r['values'][lv]} ({speedup(r, lv, anchor):.2f}x {anchor}, "
                  f"{speedup(r, lv, plain):.2f}x plain ddpm_lib)")
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

"""Benchmark: fewer steps against the 1000-step pipeline (chapter 加速采样). 64 digits from the
shipped ``unet2d``: DDPMPipeline's 1000 steps (fitted from runs of 2 and 52 steps, as in
bench.py), ``ddpm_lib.sample``'s 1000 steps likewise, ``ddim_sample`` at 10 and 20 steps and
diffusers' DPM-Solver++(2M) at 10 steps, alternated in one process after one untimed call each;
medians; writes JSON.

    python bench/fast_sampling.py [--repeats 3] [--json bench/results/fast_sampling_cpu.json]
"""
import argparse
import json
import os
import sys
import time

import torch
from diffusers import DPMSolverMultistepScheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

import ddpm_lib as dl  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dpm_solver(model, n, steps):
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.set_timesteps(steps)
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.repeat(n)).sample, t, x).prev_sample


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--short", type=int, default=52, help="steps of the longer pipeline run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model, lin, n, cpu = dl.pretrained("unet2d"), dl.NoiseSchedule.linear(), args.n, torch.device("cpu")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    fns = {
        "DDPMPipeline, 1000 steps": lambda: bench.two_lengths(
            lambda s: bench.pipeline_sample(model, n, s, cpu), args.short),
        "ddpm_lib.sample, 1000 steps": lambda: bench.two_lengths(
            lambda s: bench.lib_sample(model, n, s, cpu, {}), args.short),
        "ddim_sample, 20 steps": lambda: timed(lambda: dl.ddim_sample(
            model, lin, (n, 1, 28, 28), num_steps=20, generator=g(), progress=False)),
        "ddim_sample, 10 steps": lambda: timed(lambda: dl.ddim_sample(
            model, lin, (n, 1, 28, 28), num_steps=10, generator=g(), progress=False)),
        "DPM-Solver++(2M), 10 steps": lambda: timed(lambda: dpm_solver(model, n, 10)),
    }
    for fn in fns.values():  # one untimed call each: a process's first call pays one-off costs
        fn()                 # (lazy imports, allocator), which would make a 2-step run the slower
    medians = bench.alternate(list(fns.values()), args.repeats)
    values = {k: (bench.per_1000(*v, args.short)[0] if isinstance(v, tuple) else v)
              for k, v in zip(fns, medians)}
    anchor = values["DDPMPipeline, 1000 steps"]
    out = {"device": bench.cpu_name(), "torch": torch.__version__, "images": n,
           "repeats": args.repeats, "unit": "s",
           "values": {k: round(v, 2) for k, v in values.items()},
           "times_fewer_seconds_than_the_pipeline": {k: round(anchor / v, 1) for k, v in values.items()}}
    for k, v in values.items():
        print(f"{k:30s} {v:8.2f} s  {anchor / v:6.1f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

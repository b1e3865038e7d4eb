"""The quality / steps / CPU-time table of chapter 加速采样, on the shipped ``unet2d``.

Each configuration draws 256 digits as 4 batches of 64 (batch b starts from
``torch.Generator().manual_seed(b)``, so every sampler starts from the same four x_T), times
each batch, and rates the 256 with ``ddpm_lib.metrics.evaluate``. Writes
``book/results/fast_sampling.json`` and the first 16 digits of each configuration to
``book/results/fast_sampling_samples.safetensors``; configurations already in the JSON are
skipped, so an interrupted run continues. About 30 minutes on a 2-core CPU:

    .venv/bin/python tools/fast_sampling_table.py
"""
import json
import os
import sys
import time

import torch
from diffusers import DPMSolverMultistepScheduler
from safetensors.torch import load_file, save_file

import ddpm_lib as dl
from ddpm_lib import metrics
from ddpm_lib.fast_sampling import ddim_sample, respaced_sample

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench import cpu_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "book", "results", "fast_sampling.json")
SAMPLES = os.path.join(ROOT, "book", "results", "fast_sampling_samples.safetensors")
BATCHES, BATCH = 4, 64
# (sampler, steps, eta, spacing), the bar's candidates (<= 20 steps) first
CONFIGS = [("ddim", 10, 0.0, "leading"), ("ddim", 20, 0.0, "leading"),
           ("dpm_solver++", 10, None, "linspace"), ("dpm_solver++", 20, None, "linspace"),
           ("ddim", 10, 0.0, "trailing"), ("ddim", 20, 0.0, "trailing"),
           ("respaced_ddpm", 10, None, "leading"), ("respaced_ddpm", 20, None, "leading"),
           # eta = 1 on a subsequence is respaced DDPM (tests/test_fast_sampling.py): one row
           # shows it, the others would repeat the respaced rows
           ("ddim", 10, 1.0, "leading"),
           ("ddim", 50, 0.0, "leading"), ("respaced_ddpm", 50, None, "leading"),
           ("ddim", 100, 0.0, "leading"), ("respaced_ddpm", 100, None, "leading")]


def key(sampler, steps, eta, spacing):
    return f"{sampler} steps={steps}" + (f" eta={eta:g}" if eta is not None else "") + f" {spacing}"


@torch.inference_mode()
def dpm_solver(model, shape, steps, generator):
    """diffusers' DPM-Solver++(2M) with its defaults on the book's linear schedule."""
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.repeat(shape[0])).sample, t, x).prev_sample
    return x


def draw(model, schedule, sampler, steps, eta, spacing, b):
    g, shape = torch.Generator().manual_seed(b), (BATCH, 1, 28, 28)
    if sampler == "ddim":
        return ddim_sample(model, schedule, shape, num_steps=steps, eta=eta, spacing=spacing,
                           generator=g, progress=False)
    if sampler == "respaced_ddpm":
        return respaced_sample(model, schedule, shape, num_steps=steps, spacing=spacing,
                               generator=g, progress=False)
    return dpm_solver(model, shape, steps, g)


def main():
    torch.manual_seed(0)
    model, schedule = dl.pretrained("unet2d"), dl.NoiseSchedule.linear()
    classifier = metrics.load_classifier()
    table = json.load(open(OUT)) if os.path.exists(OUT) else {
        "model": "unet2d (shipped)", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": cpu_name(), "batches": f"{BATCHES} x {BATCH}",
        "rows": {}}
    samples = load_file(SAMPLES) if os.path.exists(SAMPLES) else {}
    for cfg in CONFIGS:
        name = key(*cfg)
        if name in table["rows"]:
            continue
        images, seconds = [], []
        for b in range(BATCHES):
            t0 = time.perf_counter()
            images.append(draw(model, schedule, *cfg, b))
            seconds.append(round(time.perf_counter() - t0, 2))
        x = torch.cat(images)
        row = metrics.evaluate(x, classifier)
        row.update(sampler=cfg[0], steps=cfg[1], eta=cfg[2], spacing=cfg[3], seconds_per_64=seconds)
        table["rows"][name] = row
        samples[name] = x[:16].contiguous()
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        save_file(samples, SAMPLES)
        with open(OUT, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{name}: FD {row['frechet']:.1f}, confident {row['confident']:.3f}, "
              f"s/64 {seconds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 7, exercise 4's recorded experiment: does clamping the predicted x_0 to [-1, 1]
(``clip_x0=True``) help or hurt few-step sampling, and why does it barely matter at 1000 steps?

On the shipped ``unet2d``: DDIM with 10 steps (eta = 0, leading spacing) with and without the
clamp, and 1000-step ancestral sampling (``ddpm_lib.sample``, sigma_t^2 = beta-tilde_t) with the
clamp; its unclamped partner is ``fixed_small`` of ``tools/ch3_variance.py``. 4 batches of 64,
batch b from ``torch.Generator().manual_seed(b)``: every row starts from the same four x_T, so the
rows are paired. Writes book/results/ch7_clip.json (``metrics.evaluate`` of each row) and all
samples (uint8) to book/results/ch7_clip_samples.safetensors; a row already there is skipped.
About 20 minutes on a 2-core CPU (the 1000-step row):

    .venv/bin/python tools/ch7_clip.py
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

import ddpm_lib as dl
from ddpm_lib import metrics
from ddpm_lib.fast_sampling import ddim_sample

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench import cpu_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "book", "results", "ch7_clip.json")
SAMPLES = os.path.join(ROOT, "book", "results", "ch7_clip_samples.safetensors")
BATCHES, BATCH = 4, 64
ROWS = {"ddim10": ("ddim", False), "ddim10_clip": ("ddim", True), "ddpm1000_clip": ("ddpm", True)}


def draw(model, schedule, sampler, clip, b):
    g, shape = torch.Generator().manual_seed(b), (BATCH, 1, 28, 28)
    if sampler == "ddim":
        return ddim_sample(model, schedule, shape, num_steps=10, generator=g, clip_x0=clip,
                           progress=False)
    return dl.sample(model, schedule, shape, generator=g, clip_x0=clip, progress=False)


def main():
    torch.manual_seed(0)
    model, schedule = dl.pretrained("unet2d"), dl.NoiseSchedule.linear()
    table = json.load(open(OUT)) if os.path.exists(OUT) else {
        "model": "unet2d (shipped)", "batches": f"{BATCHES} x {BATCH}, batch b: "
        "torch.Generator().manual_seed(b)", "torch": torch.__version__, "cpu": cpu_name(),
        "rows": {}}
    samples = load_file(SAMPLES) if os.path.exists(SAMPLES) else {}
    for name, (sampler, clip) in ROWS.items():
        if name in table["rows"]:
            continue
        images, seconds = [], []
        for b in range(BATCHES):
            t0 = time.perf_counter()
            with torch.inference_mode():
                images.append(draw(model, schedule, sampler, clip, b))
            seconds.append(round(time.perf_counter() - t0, 1))
            print(f"{name} batch {b}: {seconds[-1]} s", flush=True)
        samples[name] = ((torch.cat(images).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        row = metrics.evaluate(samples[name].float() / 127.5 - 1)
        table["rows"][name] = dict(row, sampler=sampler, clip_x0=clip, seconds_per_64=seconds)
        save_file(samples, SAMPLES)
        with open(OUT, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{name}: FD {row['frechet']:.1f}, confident {row['confident']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 3's recorded experiment: which fixed reverse variance samples the shipped ``unet2d``
better, sigma_t^2 = beta-tilde_t ("fixed_small") or sigma_t^2 = beta_t ("fixed_large")?

Ho et al. (2020, Section 3.2) note that beta_t is optimal for x_0 ~ N(0, I) and beta-tilde_t for a
deterministic x_0, the two extremes of the reverse-process entropy, and that both gave similar
results. Here: 256 digits per variance by 1000-step ancestral sampling (``ddpm_lib.sample``,
Algorithm 2, no clipping, fp32), 4 batches of 64, batch b from ``torch.Generator().manual_seed(b)``
(so both variances start from the same four x_T and the same z draws), judged by the book's
metric (``ddpm_lib.metrics.evaluate``). The chapter reads the samples and computes the intervals.
Writes book/results/ch3_variance.json and all samples (uint8) to
book/results/ch3_variance_samples.safetensors; a variance already there is skipped. About
18 minutes per variance on a 2-core CPU:

    .venv/bin/python tools/ch3_variance.py
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

import ddpm_lib as dl
from ddpm_lib import metrics

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench import cpu_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "book", "results", "ch3_variance.json")
SAMPLES = os.path.join(ROOT, "book", "results", "ch3_variance_samples.safetensors")
BATCHES, BATCH = 4, 64
VARIANCES = ("fixed_large", "fixed_small")


def to_uint8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def main():
    torch.manual_seed(0)
    model, schedule = dl.pretrained("unet2d"), dl.NoiseSchedule.linear()
    table = json.load(open(OUT)) if os.path.exists(OUT) else {
        "model": "unet2d (shipped)", "sampler": "dl.sample, 1000 steps, clip_x0=False, fp32",
        "batches": f"{BATCHES} x {BATCH}, batch b: torch.Generator().manual_seed(b)",
        "torch": torch.__version__, "cpu": cpu_name(), "rows": {}}
    samples = load_file(SAMPLES) if os.path.exists(SAMPLES) else {}
    for variance in VARIANCES:
        if variance in table["rows"]:
            continue
        images, seconds = [], []
        for b in range(BATCHES):
            t0 = time.perf_counter()
            with torch.inference_mode():
                images.append(dl.sample(model, schedule, (BATCH, 1, 28, 28), variance_type=variance,
                                        generator=torch.Generator().manual_seed(b), progress=False))
            seconds.append(round(time.perf_counter() - t0, 1))
            print(f"{variance} batch {b}: {seconds[-1]} s", flush=True)
        x = torch.cat(images)
        samples[variance] = to_uint8(x).contiguous()
        row = metrics.evaluate(samples[variance].float() / 127.5 - 1)
        row["seconds_per_64"] = seconds
        table["rows"][variance] = row
        save_file(samples, SAMPLES)
        with open(OUT, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{variance}: FD {row['frechet']:.1f}, confident {row['confident']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

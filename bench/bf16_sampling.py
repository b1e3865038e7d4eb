"""How far opt-in bf16 sampling lands from fp32: the shipped models, 16 images, 1000 steps,
the same generator; pixel differences and whether the classifier reads the same digit.
Writes bench/results/bf16_sampling.json (quoted on the book's timings page).

    python bench/bf16_sampling.py [-n 16]
"""
import argparse
import json
import os
import platform
import time

import torch

import ddpm_lib as dl
from ddpm_lib import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=16)
    args = p.parse_args(argv)
    s = dl.NoiseSchedule.linear()
    cls = metrics.load_classifier()
    report = {"device": f"cpu ({os.cpu_count()} cores, {platform.machine()})", "torch": torch.__version__,
              "images": args.n, "steps": s.num_timesteps}
    for name in ("basic-fixed", "unet2d"):
        model = dl.pretrained(name)
        out, secs = {}, {}
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            out[precision] = dl.sample(model, s, (args.n, 1, 28, 28), generator=torch.Generator().manual_seed(0),
                                       progress=False, precision=precision)
            secs[precision] = round(time.perf_counter() - t0, 1)
        d = (out["fp32"] - out["bf16"]).abs()
        with torch.no_grad():
            same = (cls(out["fp32"]).argmax(-1) == cls(out["bf16"]).argmax(-1)).sum().item()
        report[name] = {"mean_abs_diff": round(d.mean().item(), 5), "worst_image_mean_abs_diff":
                        round(d.flatten(1).mean(1).max().item(), 5), "max_abs_diff": round(d.max().item(), 4),
                        "same_digit": f"{same}/{args.n}", "seconds": secs}
        print(name, report[name], flush=True)
    path = os.path.join(ROOT, "bench", "results", "bf16_sampling.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print("->", path)


if __name__ == "__main__":
    main()

"""The reverse row of chapter 1's figure: the shipped unet2d sampled for all 1000 steps from
one noise (seed 3, fp32, CPU), kept at the chapter's k (x_k, k = 0 data, k = 1000 noise).
Writes book/results/ch1_reverse_chain.json, which the chapter draws (chapter 6 runs such a chain
live); tests/test_book_results.py regenerates it. About a minute on a 2-core CPU:

    .venv/bin/python tools/ch1_reverse_chain.py
"""
import json
import os
import platform
import sys
import time

import torch

import ddpm_lib as dl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "book", "results", "ch1_reverse_chain.json")
K = [0, 50, 100, 200, 400, 600, 800, 1000]  # the chapter's columns
SEED = 3


def reverse_chain():
    """x_k for k in K, (len(K), 28, 28): the trajectory after 1000 - k of the 1000 steps."""
    _, traj = dl.sample(dl.pretrained("unet2d"), dl.NoiseSchedule.linear(), (1, 1, 28, 28),
                        generator=torch.Generator().manual_seed(SEED), progress=False,
                        return_trajectory=True)
    return torch.stack([traj[1000 - k, 0, 0] for k in K])


def main():
    t0 = time.perf_counter()
    frames = reverse_chain()
    seconds = time.perf_counter() - t0
    out = {"command": "python tools/ch1_reverse_chain.py", "model": "unet2d", "seed": SEED,
           "steps": 1000, "k": K, "seconds": round(seconds, 1),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
           "frames": [[[round(v, 5) for v in row] for row in f] for f in frames.tolist()]}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"{OUT}: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

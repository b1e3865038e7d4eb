"""What torch.compile costs before it pays: the first call of a compiled model (the compile
itself) and the median of later calls, against the eager model, for one 64-image forward of
each shipped model. Writes bench/results/compile_cpu.json (the timings page shows it).

    python bench/compile_cpu.py
"""
import json
import os
import platform
import statistics
import sys
import time

import torch

import ddpm_lib as dl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(f, *args):
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


@torch.inference_mode()
def measure(name, n=64, calls=5):
    model = dl.pretrained(name)
    x, t = torch.randn(n, 1, 28, 28), torch.full((n,), 500)
    eager, compiled = dl.as_denoiser(model), dl.as_denoiser(torch.compile(model))
    eager(x, t)  # warm-up
    first = timed(compiled, x, t)  # the compile happens here
    eager_s = statistics.median(timed(eager, x, t) for _ in range(calls))
    compiled_s = statistics.median(timed(compiled, x, torch.full((n,), 400)) for _ in range(calls))
    return {"first_call_s": round(first, 1), "eager_ms": round(1000 * eager_s, 1),
            "compiled_ms": round(1000 * compiled_s, 1),
            "max_abs_diff": (compiled(x, t) - eager(x, t)).abs().max().item()}


def main():
    info = {"device": f"cpu ({os.cpu_count()} cores, {platform.machine()})", "torch": torch.__version__,
            "batch": 64, "models": {name: measure(name) for name in ("basic-fixed", "unet2d")}}
    print(json.dumps(info, indent=1))
    with open(os.path.join(ROOT, "bench", "results", "compile_cpu.json"), "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())

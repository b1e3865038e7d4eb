"""What torch.compile costs before it pays: the first call of a compiled model (the compile
itself), one 64-image forward of each shipped model with an empty compile cache, and how far
its output is from the eager model's. Writes bench/results/compile_cpu.json; the timings page
sets the first-call time against the per-step gain of bench.py's torch.compile sampling rows.

    python bench/compile_cpu.py
"""
import json
import os
import sys
import tempfile
import time

# a fresh, empty compile cache: a cache left by an earlier run would hide the compile time
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
import torch  # noqa: E402

import ddpm_lib as dl  # noqa: E402
from bench import cpu_name  # noqa: E402  (bench/bench.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(f, *args):
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


@torch.inference_mode()
def measure(name, n=64):
    model = dl.pretrained(name)
    x, t = torch.randn(n, 1, 28, 28), torch.full((n,), 500)
    eager, compiled = dl.as_denoiser(model), dl.as_denoiser(torch.compile(model))
    first = timed(compiled, x, t)  # the compile happens here
    # per-call times are left to bench.py's alternated sampling runs: right after a compile,
    # inductor's worker processes still hold the cores and would slow any timing taken here
    return {"first_call_s": round(first, 1),
            "max_abs_diff": (compiled(x, t) - eager(x, t)).abs().max().item()}


def main():
    info = {"device": cpu_name(), "torch": torch.__version__,
            "batch": 64, "models": {name: measure(name) for name in ("basic-fixed", "unet2d")}}
    print(json.dumps(info, indent=1))
    with open(os.path.join(ROOT, "bench", "results", "compile_cpu.json"), "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())

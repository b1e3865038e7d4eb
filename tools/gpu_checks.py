"""GPU-side checks and exports, run once on a lent GPU by tools/gpu_session.sh.

1. export each trained run's EMA weights in the shipped format;
2. draw the metric samples from them: 32 batches of 8, batch k from Generator(cpu).manual_seed(k),
   fp32 with TF32 off, so a CPU run of any batch reproduces it (tests/test_pretrained.py does);
3. fast path vs plain path on the GPU: CUDA-graph sampling vs the eager loop, bf16 vs fp32 losses.
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

import ddpm_lib as dl
from ship_model import export_weights  # tools/ship_model.py

SAMPLE_BATCHES, SAMPLE_BATCH = 32, 8


def main(out, runs, smoke=False):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s = dl.NoiseSchedule.linear()
    report, samples = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}, {}
    nb = 2 if smoke else SAMPLE_BATCHES
    for name, run in runs.items():
        export_weights(run, os.path.join(out, name))
        model, _ = dl.load_checkpoint(os.path.join(out, name), device=device)
        t0 = time.perf_counter()
        xs = [dl.sample(model, s, (SAMPLE_BATCH, 1, 28, 28), generator=torch.Generator().manual_seed(k), progress=False)
              for k in range(nb)]
        samples[name] = torch.cat(xs).cpu().contiguous()
        report[f"{name}_sample_s"] = round(time.perf_counter() - t0, 2)
    save_file(samples, os.path.join(out, "samples.safetensors"))  # shipped in ddpm_lib/weights/
    # bf16 fast training path vs fp32 plain path: same init, same batches
    images = dl.load_mnist("train", source="embedded").images
    for name in ("basic-fixed", "unet2d"):
        losses = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            m = dl.build_model(name).to(device)
            if precision == "bf16":  # the fast GPU path: bf16 autocast on a channels_last model
                m = m.to(memory_format=torch.channels_last)
            losses[precision] = dl.train(m, images, s, steps=5 if smoke else 30, batch_size=256, seed=0,
                                         progress=False, precision=precision)
        rel = [abs(a - b) / a for a, b in zip(losses["fp32"], losses["bf16"])]
        report[f"{name}_bf16_vs_fp32_loss_rel_max"] = max(rel)
        report[f"{name}_fp32_losses"] = losses["fp32"]
        report[f"{name}_bf16_losses"] = losses["bf16"]
    with open(os.path.join(out, "gpu_checks.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("losses")}, indent=1))


if __name__ == "__main__":
    out = sys.argv[1]
    runs = dict(arg.split("=", 1) for arg in sys.argv[2:] if "=" in arg)
    main(out, runs, smoke="--smoke" in sys.argv)

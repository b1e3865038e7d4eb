"""Ship one trained run: export its EMA weights to ddpm_lib/weights/NAME and redraw NAME's metric
samples in ddpm_lib/weights/samples.safetensors (32 batches of 8, batch k from
Generator(cpu).manual_seed(k), fp32; a class-conditional model draws the digits (8k + i) mod 10
at the guidance scale given, default DEFAULT_GUIDANCE_SCALE), keeping the other models' samples.
Then run `python tools/make_weights.py --skip-classifier` to rewrite MANIFEST.json.

    python tools/ship_model.py RUN_DIR NAME [GUIDANCE]  # e.g. runs/basic-fixed basic-fixed
"""
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

import ddpm_lib as dl
from ddpm_lib.checkpoints import WEIGHTS_DIR, load_checkpoint, save_checkpoint
from ddpm_lib.cli import SCHEDULES
from ddpm_lib.guidance import DEFAULT_GUIDANCE_SCALE
from ddpm_lib.models import num_classes

SAMPLE_BATCHES, SAMPLE_BATCH = 32, 8


def export_weights(run_or_checkpoint, out_dir, weights="ema", guidance_scale=DEFAULT_GUIDANCE_SCALE):
    """Write a compact, shippable checkpoint: the (EMA) weights as ``model.safetensors`` and a
    config.json with the training run's metadata (a conditional model's: the guidance_scale its
    shipped samples are drawn with). Returns out_dir."""
    model, config = load_checkpoint(run_or_checkpoint, weights=weights)
    meta = dict(config["meta"])
    meta["weights"] = "ema" if weights == "ema" and "ema.safetensors" in config["sha256"] else "model"
    if num_classes(model) is not None:  # the guidance its shipped samples are drawn with
        meta["guidance_scale"] = guidance_scale
    return save_checkpoint(out_dir, model, config["model"], meta=meta)


def sample_labels(meta, k):
    """The labels and guidance of shipped batch k: digits (8k + i) mod 10 for a conditional model."""
    if "guidance_scale" not in meta:
        return {}
    return {"labels": torch.arange(k * SAMPLE_BATCH, (k + 1) * SAMPLE_BATCH) % 10,
            "guidance_scale": meta["guidance_scale"]}


def main(run, name, guidance_scale=DEFAULT_GUIDANCE_SCALE):
    out = os.path.join(WEIGHTS_DIR, name)
    export_weights(run, out, guidance_scale=float(guidance_scale))
    model, cfg = dl.load_checkpoint(out)
    meta = cfg["meta"]  # the schedule and the target the model was trained with
    s = SCHEDULES[meta.get("schedule", "linear")](meta.get("num_timesteps", 1000))
    t0 = time.perf_counter()
    xs = [dl.sample(model, s, (SAMPLE_BATCH, 1, 28, 28), generator=torch.Generator().manual_seed(k),
                    prediction_type=meta.get("prediction_type", "epsilon"), progress=False,
                    **sample_labels(meta, k))
          for k in range(SAMPLE_BATCHES)]
    path = os.path.join(WEIGHTS_DIR, "samples.safetensors")
    samples = load_file(path)
    samples[name] = torch.cat(xs).contiguous()
    save_file(samples, path + ".tmp")
    os.replace(path + ".tmp", path)
    print(f"{name}: weights -> {out}; {SAMPLE_BATCHES * SAMPLE_BATCH} samples in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main(*sys.argv[1:4])

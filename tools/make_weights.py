"""Train the shipped digit classifier (CPU, deterministic) and write ddpm_lib/weights/MANIFEST.json
from the shipped checkpoints, their GPU-drawn samples (ddpm_lib/weights/samples.safetensors)
and the metric. Run: python tools/make_weights.py [--skip-classifier]"""
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import ddpm_lib as dl
from ddpm_lib import metrics
from ddpm_lib.checkpoints import PRETRAINED, FORMAT, read_config, sha256_file, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = os.path.join(ROOT, "ddpm_lib", "weights")
CLS_KW = dict(steps=800, batch_size=128, lr=1e-3, seed=0)


def train_classifier(steps=800, batch_size=128, lr=1e-3, seed=0):
    """Train DigitClassifier on the embedded train split, deterministically on CPU.
    Returns (model, losses); step k's batch comes from Generator().manual_seed(seed * 1_000_003 + k)."""
    data = dl.load_mnist("train", source="embedded")
    torch.manual_seed(seed)
    model = metrics.DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(data.images), (batch_size,), generator=g)
        x = data.images[idx]
        # random shifts of up to 2 pixels: a little robustness to the imperfect samples it will judge
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(x), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def write_classifier():
    t0 = time.perf_counter()
    model, losses = train_classifier(**CLS_KW)
    wall = time.perf_counter() - t0
    test = dl.load_mnist("test", source="embedded")
    with torch.no_grad():
        acc = (model(test.images).argmax(-1) == test.labels).double().mean().item()
    os.makedirs(metrics.WEIGHTS_DIR, exist_ok=True)
    target = os.path.join(metrics.WEIGHTS_DIR, "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, target)
    meta = {"call": f"tools/make_weights.py: train_classifier(**{CLS_KW})", **CLS_KW, "data": "embedded",
            "test_accuracy": acc, "wall_time_s": round(wall, 1), "hardware": f"cpu ({os.cpu_count()} cores, {platform.machine()})",
            "torch": torch.__version__, "losses": [round(x, 6) for x in losses]}
    config = {"format": FORMAT, "model": "classifier", "meta": meta,
              "sha256": {"model.safetensors": sha256_file(target)}}
    write_text(os.path.join(metrics.WEIGHTS_DIR, "config.json"), json.dumps(config, indent=2, ensure_ascii=False))


def main(argv):
    if "--skip-classifier" not in argv:
        write_classifier()
    cls = metrics.load_classifier()
    cmeta = read_config(metrics.WEIGHTS_DIR)["meta"]
    samples = load_file(os.path.join(W, "samples.safetensors"))
    base = metrics.baselines(cls)
    manifest = {"classifier": {"call": cmeta["call"], "test_accuracy": cmeta["test_accuracy"],
                               "wall_time_s": cmeta["wall_time_s"], "hardware": cmeta["hardware"],
                               "sha256": sha256_file(os.path.join(metrics.WEIGHTS_DIR, "model.safetensors"))},
                "baselines": {"real_vs_real": base["real"], "noise": base["noise"]}}
    for name in PRETRAINED:
        meta = read_config(os.path.join(W, name))["meta"]
        last = meta["losses"][-100:]
        manifest[name] = {
            "command": meta["commands"][0], "seed": meta["seed"], "data": meta["data"], "steps": meta["step"],
            "batch_size": meta["batch_size"], "images_seen": meta["step"] * meta["batch_size"],
            "wall_time_s": meta["wall_time_s"], "hardware": meta["hardware"], "torch": meta["torch"],
            "precision": meta["precision"], "weights": meta["weights"], "first_losses": meta["losses"][:20],
            "prediction_type": meta.get("prediction_type", "epsilon"), "snr_gamma": meta.get("snr_gamma"),
            "schedule": meta.get("schedule", "linear"),
            "final_loss_mean_last_100": round(sum(last) / len(last), 5),
            "metrics_256_samples": metrics.evaluate(samples[name], cls),
            "samples": "ddpm_lib/weights/samples.safetensors: 32 batches of 8, batch k drawn with "
                       "torch.Generator().manual_seed(k), fp32, TF32 off"
                       + (f"; digits (8k + i) mod 10, guidance_scale {meta['guidance_scale']}"
                          if "guidance_scale" in meta else ""),
            **({"conditional": True, "p_uncond": meta["p_uncond"], "guidance_scale": meta["guidance_scale"]}
               if "guidance_scale" in meta else {}),
            "sha256": sha256_file(os.path.join(W, name, "model.safetensors")),
        }
    write_text(os.path.join(W, "MANIFEST.json"), json.dumps(manifest, indent=2, ensure_ascii=False))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("first_losses", "counts")} for k, v in manifest.items()}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])

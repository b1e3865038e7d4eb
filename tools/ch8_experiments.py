"""Chapter 8's recorded training runs on this CPU: the ablation rows (one change each from the
first try, a fixed wall-time budget), and the quality-vs-minutes curves of the CPU recipe and of
the seed UNet2DModel. Every run is the CLI (`python -m ddpm_lib train ...`), its command kept;
every score is the book's metric: 256 samples of DDIM (eta = 0, 50 steps, x_T from
Generator(cpu).manual_seed(0)) from the EMA weights, judged by ddpm_lib.metrics.evaluate.

Writes book/results/ch8_runs.json after each run (a run already there is skipped: rerun the
tool to go on after an interruption) and 64 samples per scored checkpoint to
book/results/ch8_samples.safetensors (uint8).

    python tools/ch8_experiments.py rows [NAME ...]     # the ablation rows
    python tools/ch8_experiments.py curve recipe|seed-unet2d|recipe-conditional
    python tools/ch8_experiments.py samplers      # the recipes' 10- (and 5-) minute weights, 2 samplers
    python tools/ch8_experiments.py spread        # three rows retrained with seeds 0, 1, 2
    python tools/ch8_experiments.py precision     # the recipe's images/s in fp32 and bf16 here
    python tools/ch8_experiments.py ancestral recipe-fp32  # its last checkpoint, 1000 steps

recipe-conditional is the recipe given the digit's label (chapter 9's --conditional) and scored
without guidance (s = 1): each sample's label is drawn from the training labels' frequencies, so
the samples are draws from the model's p(x) = sum_c p(c) p(x | c), the same target as the
unconditional models' samples.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file, save_file

import ddpm_lib as dl
from ddpm_lib import metrics
from ddpm_lib.checkpoints import WEIGHTS_DIR, read_config
from ddpm_lib.cli import SCHEDULES
from ddpm_lib.fast_sampling import respaced_sample
from ddpm_lib.models import num_classes
from ddpm_lib.training import cpu_capability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "book", "results", "ch8_runs.json")
SAMPLES = os.path.join(ROOT, "book", "results", "ch8_samples.safetensors")
RUNS = os.environ.get("CH8_RUNS", "/tmp/ch8_runs")
ROW_MINUTES = 2
FIRST_TRY = ["--model", "unet2d-small", "--batch-size", "128", "--lr", "2e-3", "--precision", "bf16"]
ROWS = [  # name, what changes from the first try, the flags that change it
    ("first-try", "first try: eps, linear, no weighting", []),
    ("v", "v-prediction", ["--prediction-type", "v_prediction"]),
    ("x0", "x0-prediction", ["--prediction-type", "sample"]),
    ("eps-minsnr5", "eps + min-SNR-5", ["--snr-gamma", "5"]),
    ("v-minsnr5", "v + min-SNR-5", ["--prediction-type", "v_prediction", "--snr-gamma", "5"]),
    ("cosine", "cosine schedule", ["--schedule", "cosine"]),
    ("lr4e-3", "lr 4e-3", ["--lr", "4e-3"]),
    ("batch64", "batch 64", ["--batch-size", "64"]),
    ("fp32", "fp32 (no autocast)", ["--precision", "fp32"]),
    ("attention", "self-attention at 7x7", ["--attention"]),
    ("wide", "channels 32,64,128", ["--channels", "32,64,128"]),
    ("deep", "2 ResNet layers per block", ["--layers-per-block", "2"]),
    ("v-minsnr5-cosine", "v + min-SNR-5 + cosine", ["--prediction-type", "v_prediction",
                                                    "--snr-gamma", "5", "--schedule", "cosine"]),
]
SPREAD = ("first-try", "batch64", "v-minsnr5-cosine")  # rows retrained with other seeds
SEEDS = (0, 1, 2)
CURVES = {  # flags, minutes, the minute marks scored, steps between checkpoints (~10-20 s)
    "recipe": (["--recipe", "cpu", "--precision", "bf16"], 10, (1, 2, 5, 10), 50),  # as recorded
    # the recipe on a CPU without bf16 units, where --precision auto picks fp32 (issue #32)
    "recipe-fp32": (["--recipe", "cpu", "--precision", "fp32"], 10, (1, 2, 5, 10), 50),
    "seed-unet2d": (["--model", "unet2d", "--batch-size", "128", "--lr", "1e-3"], 5, (1, 2, 5), 5),
    "recipe-conditional": (["--recipe", "cpu", "--conditional"], 10, (1, 2, 5, 10), 50),
}


def prior_labels(n=None):
    """n labels drawn from the training digits' label frequencies p(c), Generator seed 0."""
    counts = torch.bincount(dl.load_mnist("train", source="embedded").labels, minlength=10).double()
    return torch.multinomial(counts, n or metrics.N_EVAL, replacement=True,
                             generator=torch.Generator().manual_seed(0))


def load_results():
    if os.path.isfile(RESULTS):
        with open(RESULTS, encoding="utf-8") as f:
            return json.load(f)
    return {"metric": "DDIM eta=0, 50 steps, 256 samples, x_T seed 0, EMA weights",
            "row_minutes": ROW_MINUTES, "rows": {}, "curves": {}}


def save_results(results):
    results["baselines"] = {k: {m: v for m, v in d.items() if m != "counts"}
                            for k, d in metrics.baselines().items()}
    with open(RESULTS + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(RESULTS + ".tmp", RESULTS)


def keep_samples(key, x):
    stored = load_file(SAMPLES) if os.path.isfile(SAMPLES) else {}
    stored[key] = ((x[:64].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).contiguous()
    save_file(stored, SAMPLES + ".tmp")
    os.replace(SAMPLES + ".tmp", SAMPLES)


def score(checkpoint, key, keep=True):
    """The book's metric for one checkpoint folder (its EMA weights)."""
    model, cfg = dl.load_checkpoint(checkpoint)
    meta = cfg["meta"]
    schedule = SCHEDULES[meta["schedule"]](meta["num_timesteps"])
    labels = prior_labels() if num_classes(model) else None  # sampled at s = 1: no guidance
    t0 = time.perf_counter()
    x = dl.ddim_sample(model, schedule, (metrics.N_EVAL, 1, 28, 28), num_steps=50,
                       generator=torch.Generator().manual_seed(0), labels=labels,
                       prediction_type=meta["prediction_type"], progress=False)
    m = metrics.evaluate(x)
    if keep:
        keep_samples(key, x)
    losses = meta["losses"]
    return {"step": meta["step"], "images": meta["step"] * meta["batch_size"],
            "train_minutes": round(meta["wall_time_s"] / 60, 3),
            "images_per_s": round(meta["step"] * meta["batch_size"] / meta["wall_time_s"], 1),
            "loss_last100": round(sum(losses[-100:]) / len(losses[-100:]), 5),
            "frechet": round(m["frechet"], 2), "confident": round(m["confident"], 4),
            "entropy_bits": round(m["entropy_bits"], 3), "counts": m["counts"],
            "sampling_s": round(time.perf_counter() - t0, 1)}


def run_cli(flags, out, minutes, keep, every=50, steps=100000, seed=0):
    """Train with the CLI (minutes=None: a step budget only); returns the command as a reader
    types it."""
    budget = ["--steps", str(steps)] + (["--minutes", str(minutes)] if minutes else [])
    args = ["train", *flags, *budget, "--seed", str(seed),
            "--checkpoint-every", str(every), "--keep", str(keep), "--no-progress", "--out", out]
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "ddpm_lib", *args], check=True, cwd=ROOT)
    return "python -m ddpm_lib " + " ".join(args[:-1] + ["runs/" + os.path.basename(out)])


def n_params(checkpoint):
    model, _ = dl.load_checkpoint(checkpoint)
    return sum(p.numel() for p in model.parameters())


def rows(names):
    results = load_results()
    for name, change, flags in ROWS:
        if (names and name not in names) or (not names and name in results["rows"]):
            continue
        out = os.path.join(RUNS, name)
        command = run_cli(FIRST_TRY + flags, out, ROW_MINUTES, keep=1)
        hardware = dl.load_checkpoint(out)[1]["meta"]["hardware"]
        row = {"change": change, "command": command, "params": n_params(out),
               "hardware": hardware, **score(out, name)}
        results["rows"][name] = row
        save_results(results)
        print(name, {k: row[k] for k in ("images", "loss_last100", "confident", "frechet")}, flush=True)


def curve(name):
    flags, minutes, marks, every = CURVES[name]
    out = os.path.join(RUNS, name)
    command = run_cli(flags, out, minutes, keep=0, every=every)
    steps = sorted(d for d in os.listdir(out) if d.startswith("step-"))
    walls = {d: dl.load_checkpoint(os.path.join(out, d))[1]["meta"]["wall_time_s"] for d in steps}
    points = []
    for mark in marks:  # the first checkpoint at or after the mark (the last one at the end)
        d = next((d for d in steps if walls[d] >= 60 * mark), steps[-1])
        points.append({"mark_minutes": mark, **score(os.path.join(out, d), f"{name}@{mark}")})
        print(name, points[-1], flush=True)
    results = load_results()
    last = dl.load_checkpoint(os.path.join(out, steps[-1]))[1]["meta"]
    results["curves"][name] = {"command": command, "params": n_params(out), "points": points,
                               "run": out, "first_losses": last["losses"][:50],
                               "hardware": last["hardware"], "torch": last["torch"],
                               "cpu": {k: v for k, v in cpu_capability().items() if k != "flags"}}
    save_results(results)


def sampler_row(model, meta, draw):
    """The metric's 256 samples drawn by ``draw`` (dl.ddim_sample or respaced_sample, 50 steps,
    x_T seed 0; a conditional model at s = 1 with prior_labels()) and their scores."""
    schedule = SCHEDULES[meta["schedule"]](meta["num_timesteps"])
    labels = prior_labels() if num_classes(model) else None
    x = draw(model, schedule, (metrics.N_EVAL, 1, 28, 28), num_steps=50,
             generator=torch.Generator().manual_seed(0), labels=labels,
             prediction_type=meta["prediction_type"], progress=False)
    m = metrics.evaluate(x)
    return x, {"step": meta["step"], "train_minutes": round(meta["wall_time_s"] / 60, 3),
               "frechet": round(m["frechet"], 2), "confident": round(m["confident"], 4),
               "entropy_bits": round(m["entropy_bits"], 3), "counts": m["counts"]}


def samplers():
    """The recipe's shipped 10-minute weights (cpu-recipe), the label-conditioned recipe's last
    checkpoint (10 minutes: shipped as cpu-labels) and its 5-minute one, each by the metric's
    50-step DDIM (eta = 0) and by 50-step respaced DDPM (chapter 7's stochastic sampler), from the
    same x_T."""
    results = load_results()
    cond = results["curves"]["recipe-conditional"]
    five = next(p["step"] for p in cond["points"] if p["mark_minutes"] == 5)
    out = {}
    for name, (model, meta) in {
            "recipe": (dl.pretrained("cpu-recipe"), read_config(os.path.join(WEIGHTS_DIR, "cpu-recipe"))["meta"]),
            "recipe-conditional": (lambda m, c: (m, c["meta"]))(*dl.load_checkpoint(cond["run"])),
            "recipe-conditional@5": (lambda m, c: (m, c["meta"]))(
                *dl.load_checkpoint(os.path.join(cond["run"], f"step-{five:07d}")))}.items():
        for sampler, draw in (("ddim50", dl.ddim_sample), ("respaced-ddpm50", respaced_sample)):
            x, out[f"{name} {sampler}"] = sampler_row(model, meta, draw)
            keep_samples(f"{name}/{sampler}", x)
            print(name, sampler, out[f"{name} {sampler}"], flush=True)
    results["samplers"] = out
    save_results(results)


def spread():
    """The seed spread of three rows: each retrained with the training seeds 0, 1 and 2 for exactly
    the steps its recorded row reached in 2 minutes (a step budget, so the spread does not depend
    on this CPU's speed; seed 0 again measures what another CPU's arithmetic changes). Scored by
    the same metric, x_T seed 0; a run already recorded is skipped."""
    results = load_results()
    flags = {name: f for name, _, f in ROWS}
    done = results.setdefault("spread", {})
    for name in SPREAD:
        steps = results["rows"][name]["step"]
        for seed in SEEDS:
            key = f"{name} seed={seed}"
            if key in done:
                continue
            out = os.path.join(RUNS, f"spread-{name}-{seed}")
            command = run_cli(FIRST_TRY + flags[name], out, None, keep=1, every=steps, steps=steps,
                              seed=seed)
            last = dl.load_checkpoint(out)[1]["meta"]
            done[key] = {"row": name, "seed": seed, "command": command,
                         "hardware": last["hardware"], **score(out, key, keep=False)}
            save_results(results)
            print(key, {k: done[key][k] for k in ("step", "frechet", "confident")}, flush=True)


def ancestral(name):
    """The last checkpoint of a curve drawn as the shipped models' samples are: 1000-step
    ancestral sampling, 32 batches of 8, batch k from torch.Generator().manual_seed(k)."""
    results = load_results()
    run = results["curves"][name]["run"]
    model, cfg = dl.load_checkpoint(run)
    meta = cfg["meta"]
    schedule = SCHEDULES[meta["schedule"]](meta["num_timesteps"])
    x = torch.cat([dl.sample(model, schedule, (8, 1, 28, 28), progress=False,
                             generator=torch.Generator().manual_seed(k),
                             prediction_type=meta["prediction_type"]) for k in range(32)])
    m = metrics.evaluate(x)
    keep_samples(f"{name}/ancestral1000", x)
    results["curves"][name]["ancestral_1000"] = {
        "step": meta["step"], "frechet": round(m["frechet"], 2),
        "confident": round(m["confident"], 4), "entropy_bits": round(m["entropy_bits"], 3),
        "counts": m["counts"]}
    save_results(results)
    print(name, results["curves"][name]["ancestral_1000"], flush=True)


def precision(steps=30):
    """The recipe's training speed on this CPU with each precision forced (30 steps each, a
    step budget), and what --precision auto reads of the CPU; one entry per CPU model."""
    results = load_results()
    cpu = {k: v for k, v in cpu_capability().items() if k != "flags"}
    entry = {"cpu": cpu, "steps": steps}
    for p in ("fp32", "bf16"):
        out = os.path.join(RUNS, f"precision-{p}")
        entry[f"command {p}"] = run_cli(["--recipe", "cpu", "--precision", p], out, None, keep=1,
                                        every=steps, steps=steps)
        meta = dl.load_checkpoint(out)[1]["meta"]
        entry[f"images_per_s {p}"] = round(steps * meta["batch_size"] / meta["wall_time_s"], 1)
        print(p, entry[f"images_per_s {p}"], flush=True)
    entry["bf16_speedup"] = round(entry["images_per_s bf16"] / entry["images_per_s fp32"], 3)
    key = f"{cpu['model_name']} ({cpu['torch_capability']}, bf16 units: {cpu['bf16_units'] or 'none'})"
    results.setdefault("precision", {})[key] = entry
    save_results(results)


if __name__ == "__main__":
    if sys.argv[1] == "rows":
        rows(sys.argv[2:])
    elif sys.argv[1] == "samplers":
        samplers()
    elif sys.argv[1] == "spread":
        spread()
    elif sys.argv[1] == "precision":
        precision()
    elif sys.argv[1] == "ancestral":
        ancestral(sys.argv[2])
    else:
        curve(sys.argv[2])

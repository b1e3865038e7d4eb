"""Chapter 9's recorded measurement: the class-conditional CPU-recipe model under classifier-free
guidance. For each w of W (guidance_scale s = 1 + w), 26 samples of every digit (260; 256 is not
a multiple of 10) by DDIM (eta = 0, 50 steps, x_T from Generator(cpu).manual_seed(0), the same
x_T for every w) from the EMA weights, judged by the book's classifier (ddpm_lib.metrics):

- accuracy: the share the classifier reads as the requested digit;
- confident: the share with max p >= 0.9, over all and per requested digit;
- frechet_class: the Fréchet distance of each digit's samples to the last 74 embedded test digits
  of that class, averaged over digits (26 samples per digit: biased upwards, comparable across w
  and with the first 26 test digits of each class, the "real" row);
- diversity: the mean pairwise distance of classifier features within a digit, averaged;
- frechet: the 260 samples against the 744 reference digits (chapter 6's distance).

Writes book/results/ch9_guidance.json and 8 samples per digit and w (uint8) to
book/results/ch9_samples.safetensors. The model is trained first if RUN holds none:

    python tools/ch9_experiments.py [RUN]      # RUN default /tmp/ch9_runs/cond
    python tools/ch9_experiments.py control    # then: the same run without --conditional
    python tools/ch9_experiments.py fixes      # the fixes for large guidance, on cpu-cfg

`control` trains the recipe with the same command less --conditional (in /tmp/ch9_runs/uncond)
and adds to the JSON the chapter-6 metric (evaluate: 260 samples against the 744 reference
digits) of its samples and of the conditional model's at s = 0 (the null label) and s = 1, all
from the same x_T: does knowing the digit make the network learn faster?
"""
import json
import os
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file, save_file

import ddpm_lib as dl
from ddpm_lib import metrics
from ddpm_lib.cli import SCHEDULES
from ddpm_lib.data import load_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "book", "results", "ch9_guidance.json")
SAMPLES = os.path.join(ROOT, "book", "results", "ch9_samples.safetensors")
TRAIN = ["train", "--recipe", "cpu", "--conditional", "--steps", "6000", "--seed", "0",
         "--checkpoint-every", "500", "--keep", "0", "--no-progress"]
W = (0, 0.5, 1, 2, 3, 5, 8)
PER_DIGIT, GRID = 26, 8


def digit_scores(images, labels, classifier, class_ref):
    """The figures above for images (N, 1, 28, 28) meant to show ``labels`` (N,); class_ref:
    each digit's reference features."""
    feats, probs = metrics._predict(classifier, images)
    conf, pred = probs.max(-1)
    fd, div, conf_digit = [], [], []
    for c in range(10):
        mine, real = feats[labels == c], class_ref[c]
        fd.append(metrics.frechet_distance(mine, real))
        div.append(torch.pdist(mine).mean().item())
        conf_digit.append((conf[labels == c] >= 0.9).double().mean().item())
    return {"accuracy": (pred == labels).double().mean().item(),
            "confident": (conf >= 0.9).double().mean().item(),
            "confident_per_digit": [round(v, 4) for v in conf_digit],
            "accuracy_per_digit": [round((pred[labels == c] == c).double().mean().item(), 4) for c in range(10)],
            "frechet_class": sum(fd) / 10, "diversity": sum(div) / 10}


def requested():
    """The requested digits: 26 zeros, 26 ones, …, 26 nines."""
    return torch.arange(10).repeat_interleave(PER_DIGIT)


def draw(model, schedule, meta, labels, w):
    """The measurement's samples at weight w: DDIM (eta = 0, 50 steps), x_T from seed 0, s = 1 + w."""
    return dl.ddim_sample(model, schedule, (len(labels), 1, 28, 28), num_steps=50,
                          generator=torch.Generator().manual_seed(0), labels=labels,
                          guidance_scale=1 + w, prediction_type=meta["prediction_type"], progress=False)


def grid_images(x):
    """The first GRID samples of each digit, as uint8."""
    keep = torch.cat([torch.arange(c * PER_DIGIT, c * PER_DIGIT + GRID) for c in range(10)])
    return ((x[keep].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).contiguous()


def class_references(classifier):
    """(the first 26 test digits of each class in order, each class's features of the other 74)."""
    test = load_mnist("test", source="embedded")
    by_class = [torch.nonzero(test.labels == c)[:, 0] for c in range(10)]
    first = torch.cat([i[:PER_DIGIT] for i in by_class])
    return test.images[first], [metrics._predict(classifier, test.images[i[PER_DIGIT:]])[0] for i in by_class]


def control(cond_run="/tmp/ch9_runs/cond", uncond_run="/tmp/ch9_runs/uncond"):
    train = [a for a in TRAIN if a != "--conditional"]
    if not os.path.isfile(os.path.join(uncond_run, "latest")):
        subprocess.run([sys.executable, "-m", "ddpm_lib", *train, "--out", uncond_run], check=True, cwd=ROOT)
    classifier, (_, ref) = metrics.load_classifier(), metrics.reference_sets()
    labels, out = requested(), {}
    for name, run, kw in (("unconditional", uncond_run, {}),
                          ("conditional, s = 0", cond_run, {"labels": labels, "guidance_scale": 0.0}),
                          ("conditional, s = 1", cond_run, {"labels": labels, "guidance_scale": 1.0})):
        model, cfg = dl.load_checkpoint(run)
        meta = cfg["meta"]
        x = dl.ddim_sample(model, SCHEDULES[meta["schedule"]](meta["num_timesteps"]), (len(labels), 1, 28, 28),
                           num_steps=50, generator=torch.Generator().manual_seed(0),
                           prediction_type=meta["prediction_type"], progress=False, **kw)
        m = metrics.evaluate(x, classifier, ref)
        out[name] = {"frechet": m["frechet"], "confident": m["confident"], "entropy_bits": m["entropy_bits"],
                     "step": meta["step"], "train_minutes": round(meta["wall_time_s"] / 60, 2),
                     "command": meta["commands"][0].replace(run, "runs/" + os.path.basename(run))}
        print(name, out[name], flush=True)
    with open(RESULTS, encoding="utf-8") as f:
        results = json.load(f)
    results["control"] = out
    with open(RESULTS + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(RESULTS + ".tmp", RESULTS)


def main(run):
    if not os.path.isfile(os.path.join(run, "latest")):
        subprocess.run([sys.executable, "-m", "ddpm_lib", *TRAIN, "--out", run], check=True, cwd=ROOT)
    model, cfg = dl.load_checkpoint(run)
    meta = cfg["meta"]
    schedule = SCHEDULES[meta["schedule"]](meta["num_timesteps"])
    classifier, (real, ref) = metrics.load_classifier(), metrics.reference_sets()
    labels = requested()
    # the real row: the first 26 test digits of each class, scored against the other 74
    real_digits, class_ref = class_references(classifier)
    rows = {"real": {**digit_scores(real_digits, labels, classifier, class_ref),
                     "frechet": metrics.baselines(classifier)["real"]["frechet"]}}  # 256 vs 744
    grid = {}
    for w in W:
        t0 = time.perf_counter()
        x = draw(model, schedule, meta, labels, w)
        seconds = time.perf_counter() - t0
        rows[str(w)] = {"w": w, "guidance_scale": 1 + w, **digit_scores(x, labels, classifier, class_ref),
                        "frechet": metrics.evaluate(x, classifier, ref)["frechet"],
                        "sampling_s": round(seconds, 1)}
        grid[f"w={w}"] = grid_images(x)
        print(w, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[str(w)].items()}, flush=True)
    results = {"metric": f"DDIM eta=0, 50 steps, {PER_DIGIT} samples per digit, x_T seed 0, EMA weights",
               "per_digit": PER_DIGIT, "w": list(W), "rows": rows,
               "model": {**{k: meta[k] for k in ("step", "batch_size", "wall_time_s", "hardware", "torch",
                                                 "p_uncond", "prediction_type", "schedule")},
                         "commands": [c.replace(run, "runs/cond") for c in meta["commands"]]},
               "first_losses": meta["losses"][:50],
               "loss_last100": sum(meta["losses"][-100:]) / 100}
    if os.path.isfile(RESULTS):  # keep the control rows of an earlier `control`
        with open(RESULTS, encoding="utf-8") as f:
            results.update({k: v for k, v in json.load(f).items() if k == "control"})
    with open(RESULTS + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(RESULTS + ".tmp", RESULTS)
    save_file(grid, SAMPLES)


# The fixes for large guidance, each at the same x_T and the same w as a row of the table
FIX_W = (3, 8)
FIXES = {"dynamic thresholding": {"clip_x0": "dynamic"},            # Saharia et al. 2022, p = 99.5 %
         "CFG rescale, phi = 0.7": {"guidance_rescale": 0.7},       # Lin et al. 2024's phi
         "interval (0.28, 5.42]": {"guidance_interval": "sigma"}}   # Kynkäänniemi et al. 2024, their SD-XL interval


def sigma_interval(schedule, lo=0.28, hi=5.42):
    """The 0-based timesteps t whose sigma_t = sqrt((1 - abar_t) / abar_t) lies in (lo, hi]."""
    abar = schedule.alphas_cumprod.double()
    inside = torch.nonzero((((1 - abar) / abar).sqrt() > lo) & (((1 - abar) / abar).sqrt() <= hi))[:, 0]
    return int(inside.min()), int(inside.max())


def fixes():
    """Rows w in FIX_W with each of FIXES, and two controls, from the shipped cpu-cfg (the run
    above: its EMA weights); each plain row must equal the table's. Rows already in the JSON are
    kept, not redrawn."""
    model = dl.pretrained("cpu-cfg")
    with open(RESULTS, encoding="utf-8") as f:
        results = json.load(f)
    meta = results["model"]
    schedule = SCHEDULES[meta["schedule"]](1000)
    interval = sigma_interval(schedule)
    classifier, (_, ref) = metrics.load_classifier(), metrics.reference_sets()
    labels, (_, class_ref) = requested(), class_references(classifier)
    rows, grid = results.get("fixes", {}).get("rows", {}), load_file(SAMPLES)  # kept rows are not redrawn
    test = load_mnist("test", source="embedded").images
    real = {"ink": ((test + 1) / 2).mean().item(), "saturated": (test > 0.98).double().mean().item()}
    # the fixes at each w of FIX_W; controls: dynamic thresholding without guidance (w = 0), and
    # the static clamp of chapter 7 at w = 8
    runs = [(0, "none", {}), (0, "dynamic thresholding", FIXES["dynamic thresholding"]),
            *[(w, name, kw) for w in FIX_W for name, kw in {"none": {}, **FIXES}.items()],
            (8, "static clip", {"clip_x0": True}),
            # DDIM keeps eps when it clamps x0_hat; the ancestral step uses the clamped x0_hat
            # with x_t (eq. mu-tilde): the same two rows by 50-step respaced DDPM
            (8, "none, ancestral", {"sampler": "ddpm"}),
            (8, "dynamic thresholding, ancestral", {"sampler": "ddpm", "clip_x0": "dynamic"})]
    for w, name, kw in runs:
        if f"w={w} {name}" in rows:
            continue
        kw = {k: (interval if v == "sigma" else v) for k, v in kw.items()}
        sampler = dl.respaced_sample if kw.pop("sampler", "ddim") == "ddpm" else dl.ddim_sample
        t0 = time.perf_counter()
        x = sampler(model, schedule, (len(labels), 1, 28, 28), num_steps=50,
                    generator=torch.Generator().manual_seed(0), labels=labels,
                    guidance_scale=1 + w, prediction_type=meta["prediction_type"],
                    progress=False, **kw)
        row = {"w": w, "fix": name, **digit_scores(x, labels, classifier, class_ref),
               "frechet": metrics.evaluate(x, classifier, ref)["frechet"],
               "sampling_s": round(time.perf_counter() - t0, 1),
               # saturation: the mean intensity ("ink") and the share of pixels above 0.98
               "ink": ((x.clamp(-1, 1) + 1) / 2).mean().item(),
               "saturated": (x > 0.98).double().mean().item()}
        if name == "none":  # the shipped weights give the table's row (DDIM)
            old = results["rows"][str(w)]
            assert abs(row["frechet"] / old["frechet"] - 1) < 0.02, (row, old)
            assert abs(row["accuracy"] - old["accuracy"]) < 0.01, (row, old)
        rows[f"w={w} {name}"] = row
        grid[f"w={w} {name}"] = grid_images(x)
        print(f"w={w} {name}", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
    rows = {f"w={w} {name}": rows[f"w={w} {name}"] for w, name, _ in runs}  # in the order of runs
    results["fixes"] = {"w": list(FIX_W), "interval_sigma": [0.28, 5.42], "interval_t": list(interval),
                        "weights": "shipped cpu-cfg", "real": real, "rows": rows}
    with open(RESULTS + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(RESULTS + ".tmp", RESULTS)
    save_file(grid, SAMPLES)


if __name__ == "__main__":
    if sys.argv[1:2] == ["control"]:
        control()
    elif sys.argv[1:2] == ["fixes"]:
        fixes()
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ch9_runs/cond")

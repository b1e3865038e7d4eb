"""The shipped weights: hash-checked loading, real provenance (the recorded command's first steps
replay to the recorded losses), GPU-drawn samples that replay on CPU, and the quality targets."""
import json
import os
import shlex
import sys

import pytest
import torch
from safetensors.torch import load_file

import ddpm_lib as dl
from ddpm_lib import metrics
from ddpm_lib.checkpoints import WEIGHTS_DIR, read_config
from ddpm_lib.cli import build_parser
from ddpm_lib.training import cpu_capability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = json.load(open(os.path.join(WEIGHTS_DIR, "MANIFEST.json")))
SAMPLES = os.path.join(WEIGHTS_DIR, "samples.safetensors")


def replay_losses(name, steps, seed=None):
    """Re-run the first steps of the recorded CLI command on the CPU, in fp32.

    Both models were trained with bf16 autocast; a CPU without bf16 units (AVX2 only) runs
    bf16 ~100x slower than fp32 (491 s for 3 unet2d steps here), and the fp32 loss of a
    step lies within 0.03 % of the bf16 one (measured: 0.028 % unet2d, 0.021 % basic-fixed),
    far inside what the negative control below separates."""
    argv = shlex.split(MANIFEST[name]["command"])[3:]  # drop "python -m ddpm_lib"
    args = build_parser().parse_args(argv)
    assert args.precision == "bf16"  # what the record says; replayed in fp32 (docstring)
    seed = args.seed if seed is None else seed
    torch.manual_seed(seed)
    model = dl.build_model(args.model)
    data = dl.load_mnist("train", source=args.data)
    return dl.train(model, data.images, dl.NoiseSchedule.linear(), steps=steps,
                    batch_size=args.batch_size, lr=args.lr, seed=seed, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name,steps", [("unet2d", 3), ("basic-fixed", 10)])
def test_recorded_command_replays_to_recorded_losses(name, steps):
    recorded = MANIFEST[name]["first_losses"][:steps]
    ours = replay_losses(name, steps)
    # unet2d was trained on an H200, basic-fixed on a 2-core CPU, both in bf16; this fp32 CPU
    # replay measured 0.028 % and 0.021 % from the records
    rel = [abs(a - b) / b for a, b in zip(ours, recorded)]
    assert max(rel) < 0.002, (ours, recorded)
    # negative control: seed 1 is farther than the tolerance (measured 12 % and 9 %), so the test can tell
    other = replay_losses(name, steps, seed=1)
    assert max(abs(a - b) / b for a, b in zip(other, recorded)) > 0.02


def test_classifier_replays_and_is_accurate():
    cfg = read_config(metrics.WEIGHTS_DIR)["meta"]
    kw = {k: cfg[k] for k in ("batch_size", "lr", "seed")}
    torch.manual_seed(kw["seed"])
    # the first 20 steps of the recorded call, exactly (same CPU code path)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from make_weights import train_classifier  # how the shipped classifier was trained
    _, losses = train_classifier(steps=20, **kw)
    assert losses == pytest.approx(cfg["losses"][:20], rel=1e-4, abs=1e-5)
    test = dl.load_mnist("test", source="embedded")
    with torch.no_grad():
        acc = (metrics.load_classifier()(test.images).argmax(-1) == test.labels).double().mean().item()
    assert acc == pytest.approx(cfg["test_accuracy"], abs=1e-6) and acc >= 0.95


def test_pretrained_checks_hash(tmp_path, monkeypatch):
    model = dl.pretrained("basic-fixed")
    assert isinstance(model, dl.BasicUNetFixed) and not model.training
    with pytest.raises(ValueError, match="name must be one of"):
        dl.pretrained("gan")
    import shutil
    import ddpm_lib.checkpoints as ck
    fake = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, fake)
    with open(fake / "basic-fixed" / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    monkeypatch.setattr(ck, "WEIGHTS_DIR", str(fake))
    with pytest.raises(ValueError, match="sha256"):
        ck.pretrained("basic-fixed")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["basic-fixed", "unet2d", "cpu-recipe", "cpu-cfg", "cpu-labels"])
def test_stored_samples_replay_on_cpu(name):
    # unet2d's samples were drawn on the H200 (fp32, TF32 off), the others on CPU; cpu-recipe
    # predicts v on the cosine schedule (its config's meta says so)
    stored = load_file(SAMPLES)[name][:8]
    meta = read_config(os.path.join(WEIGHTS_DIR, name))["meta"]
    schedule = getattr(dl.NoiseSchedule, meta.get("schedule", "linear"))()
    guided = {"labels": torch.arange(8), "guidance_scale": meta["guidance_scale"]} \
        if "guidance_scale" in meta else {}  # cpu-cfg, cpu-labels: batch 0 shows the digits 0-7
    x = dl.sample(dl.pretrained(name), schedule, (8, 1, 28, 28), generator=torch.Generator().manual_seed(0),
                  prediction_type=meta.get("prediction_type", "epsilon"), progress=False, **guided)
    assert (x - stored).abs().max().item() < 1e-2


def shipped_metrics(name):
    """metrics.evaluate of the shipped samples, checked against what MANIFEST.json records."""
    m = metrics.evaluate(load_file(SAMPLES)[name])
    recorded = MANIFEST[name]["metrics_256_samples"]
    assert m["counts"] == recorded["counts"]
    for k in ("frechet", "confident", "entropy_bits"):
        assert m[k] == pytest.approx(recorded[k], rel=1e-4)
    return m


def test_shipped_unet2d_meets_the_quality_targets():
    samples = load_file(SAMPLES)
    real = MANIFEST["baselines"]["real_vs_real"]
    m = shipped_metrics("unet2d")
    assert m["confident"] >= real["confident"] - 0.05
    assert m["entropy_bits"] >= 3.25
    assert m["frechet"] <= 2.5 * real["frechet"]
    # and the metric can tell: the weaker model and pure noise score worse
    b = metrics.evaluate(samples["basic-fixed"])
    noise = MANIFEST["baselines"]["noise"]
    assert b["frechet"] > 3 * m["frechet"] and b["confident"] < m["confident"] - 0.2
    assert noise["frechet"] > 10 * m["frechet"] and noise["entropy_bits"] < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cpu-recipe", "cpu-cfg", "cpu-labels"])
def test_cpu_recipe_replays_its_recorded_command_in_bf16(name):
    """The CPU recipe was trained on this machine type in bf16 on a CPU with bf16 units; where this
    CPU has them too, the replay runs the recorded precision (within 1e-3). Without them bf16 is
    emulated (11.6x slower, and rounded differently: 1.2e-2 off within 20 steps, measured on an
    AVX2 EPYC), so the replay runs fp32 as the notebooks do: 6.5e-3 to 7.3e-3 off within 20-30
    steps there, against 0.24-0.36 for other seeds. A seed-1 replay is the negative control.
    cpu-cfg and cpu-labels are the recipe with --conditional: the labels and their dropout replay too."""
    argv = shlex.split(MANIFEST[name]["command"])[3:]  # drop "python -m ddpm_lib"
    args = build_parser(recipe="cpu").parse_args(argv)
    assert args.recipe == "cpu" and MANIFEST[name]["precision"] == "bf16"  # as it was run
    assert args.conditional == (name in ("cpu-cfg", "cpu-labels"))
    recorded = MANIFEST[name]["first_losses"][:10]
    precision, tolerance, control = ("bf16", 1e-3, 0.02) if cpu_capability()["bf16_units"] \
        else ("fp32", 3e-2, 0.1)

    def replay(seed):
        torch.manual_seed(seed)
        model = dl.build_model(args.model, num_classes=10 if args.conditional else None)
        data = dl.load_mnist("train", source=args.data)
        schedule = getattr(dl.NoiseSchedule, args.schedule)()
        return dl.train(model, data.images, schedule, steps=10, batch_size=args.batch_size,
                        lr=args.lr, seed=seed, precision=precision, prediction_type=args.prediction_type,
                        snr_gamma=args.snr_gamma, labels=data.labels if args.conditional else None,
                        p_uncond=args.p_uncond, progress=False)

    assert max(abs(a - b) / b for a, b in zip(replay(args.seed), recorded)) < tolerance
    assert max(abs(a - b) / b for a, b in zip(replay(1), recorded)) > control


def test_shipped_cpu_recipe_quality_as_recorded():
    """Chapter 8's recipe after 10 minutes on this 2-core CPU (1000-step samples): the Frechet
    distance and the class entropy meet issue #20's bars; the confident share (78.1 %) does
    not reach its bar (real digits' 93.0 % minus 5 points): the test guards what it reaches."""
    real = MANIFEST["baselines"]["real_vs_real"]
    m = shipped_metrics("cpu-recipe")
    assert MANIFEST["cpu-recipe"]["wall_time_s"] <= 10 * 60 + 30  # stops at the first checkpoint after 10 min
    assert m["frechet"] <= 2 * real["frechet"] and m["entropy_bits"] >= 3.25
    assert m["confident"] >= 0.75  # what it reaches (the bar, real - 0.05 = 0.88, is not met)


def test_shipped_cpu_labels_meets_issue_20s_bars():
    """Chapter 8's recipe given the labels, 10 minutes on this 2-core CPU, drawn without guidance
    (s = 1, so the samples are the model's p(x | c), digits 0-9 in turn): issue #20's three bars
    on its shipped 1000-step samples. The unconditional recipe's samples, scored the same way,
    miss the confident bar, so the bar can tell the two apart."""
    real = MANIFEST["baselines"]["real_vs_real"]
    entry = MANIFEST["cpu-labels"]
    assert entry["conditional"] and entry["guidance_scale"] == 1.0  # no guidance: no sharpening
    assert entry["wall_time_s"] <= 10 * 60 + 30 and "--minutes 10" in entry["command"]
    m = shipped_metrics("cpu-labels")
    assert m["confident"] >= real["confident"] - 0.05
    assert m["entropy_bits"] >= 3.25 and m["frechet"] <= 2 * real["frechet"]
    assert metrics.evaluate(load_file(SAMPLES)["cpu-recipe"])["confident"] < real["confident"] - 0.05


def test_shipped_cpu_cfg_draws_the_requested_digits():
    """Chapter 9's conditional recipe, 1000-step ancestral samples at the shipped guidance scale:
    issue #21's bars (>= 95 % read as the requested digit, every digit's confident share >= 80 %),
    and the unconditional metric as recorded."""
    from ddpm_lib.guidance import DEFAULT_GUIDANCE_SCALE

    assert MANIFEST["cpu-cfg"]["guidance_scale"] == DEFAULT_GUIDANCE_SCALE
    samples, labels = load_file(SAMPLES)["cpu-cfg"], torch.arange(256) % 10
    shipped_metrics("cpu-cfg")
    probs = metrics.load_classifier()(samples.clamp(-1, 1)).softmax(-1)
    conf, pred = probs.max(-1)
    assert (pred == labels).double().mean() >= 0.95
    for c in range(10):
        assert (conf[labels == c] >= 0.9).double().mean() >= 0.80, c
    # the labels matter: read against shuffled labels, far fewer match
    assert (pred == labels.roll(1)).double().mean() < 0.3

"""The training CLI: bad arguments, atomic checkpoints, and resume after a real interruption."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.checkpoints import read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ddpm_lib", *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.mark.parametrize("args,message", [
    (["train", "--model", "vae", "--steps", "5", "--out", "x"], "invalid choice: 'vae'"),
    (["train", "--model", "basic", "--steps", "0", "--out", "x"], "expected a positive integer, got 0"),
    (["train", "--model", "basic", "--steps", "5", "--lr", "-1", "--out", "x"], "expected a positive number"),
    (["train", "--model", "basic", "--steps", "5"], "the following arguments are required: --out"),
    (["train", "--steps", "5", "--out", "x"], "train needs --model (or a --recipe that gives it)"),
    (["train", "--recipe", "gpu", "--steps", "5", "--out", "x"], "invalid choice: 'gpu'"),
    (["train", "--recipe", "cpu", "--channels", "16", "--steps", "5", "--out", "x"],
     "expected channels like 16,32,64"),
    (["sample", "--checkpoint", "/nonexistent", "--out", "g.png"], "no checkpoint at"),
    (["sample", "--out", "g.png"], "one of the arguments --checkpoint --pretrained is required"),
    (["sample", "--pretrained", "unet2d", "--checkpoint", "x", "--out", "g.png"], "not allowed with"),
    (["sample", "--pretrained", "vae", "--out", "g.png"], "invalid choice: 'vae'"),
    (["sample", "--pretrained", "unet2d", "--eta", "0.5", "--out", "g.png"], "add --sampler ddim"),
    (["sample", "--pretrained", "unet2d", "--sampler", "ddim", "--eta", "2", "--out", "g.png"],
     "expected a number in [0, 1], got 2.0"),
    (["sample", "--pretrained", "unet2d", "--steps", "1001", "-n", "1", "--out", "g.png"],
     "num_steps must lie in [1, 1000]"),
    (["train", "--model", "basic-fixed", "--conditional", "--steps", "5", "--out", "x"],
     "--conditional needs --model unet2d-small"),
    (["train", "--recipe", "cpu", "--conditional", "--p-uncond", "1", "--steps", "5", "--out", "x"],
     "expected a number in [0, 1), got 1.0"),
    (["sample", "--pretrained", "cpu-recipe", "--label", "7", "-n", "1", "--out", "g.png"],
     "--label needs a class-conditional model"),
    (["sample", "--pretrained", "cpu-recipe", "--label", "10", "--out", "g.png"], "expected a digit 0-9"),
    (["sample", "--pretrained", "cpu-recipe", "--guidance", "-1", "--out", "g.png"],
     "expected a number >= 0"),
])
def test_bad_arguments_exit_nonzero_with_a_message(args, message):
    r = cli(*args)
    assert r.returncode != 0
    assert message in r.stderr


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path):
    r = cli("train", "--model", "basic", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "r"),
            "--resume", "--device", "cpu")
    assert r.returncode != 0 and "holds no checkpoint" in r.stderr
    ok = cli("train", "--model", "basic", "--steps", "2", "--batch-size", "4", "--checkpoint-every", "1",
             "--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    again = cli("train", "--model", "basic", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "r"), "--device", "cpu")
    assert again.returncode != 0 and "already holds a run" in again.stderr


@pytest.mark.slow
def test_interrupted_run_resumes_with_no_lost_or_repeated_step(tmp_path):
    common = ["--model", "basic-fixed", "--batch-size", "8", "--lr", "1e-3", "--seed", "5", "--device", "cpu",
              "--no-progress", "--num-timesteps", "100"]
    # reference: 40 steps in one go
    ref = cli("train", *common, "--steps", "40", "--checkpoint-every", "40", "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    # the same run, killed (SIGKILL) once a checkpoint exists, then resumed
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "ddpm_lib", "train", *common, "--steps", "40", "--checkpoint-every", "5",
                          "--out", str(run)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "latest").exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = read_config(str(run))["meta"]["step"]
    assert 0 < killed_at < 40, killed_at  # it really was interrupted mid-run
    res = cli("train", *common, "--steps", "40", "--checkpoint-every", "5", "--out", str(run), "--resume")
    assert res.returncode == 0, res.stderr
    a, b = read_config(str(tmp_path / "ref"))["meta"], read_config(str(run))["meta"]
    assert b["step"] == 40 and len(b["losses"]) == 40
    assert b["losses"] == a["losses"]  # no step lost or repeated: the same 40 losses
    m_ref, _ = dl.load_checkpoint(str(tmp_path / "ref"), weights="model")
    m_run, _ = dl.load_checkpoint(str(run), weights="model")
    for p1, p2 in zip(m_ref.parameters(), m_run.parameters()):
        assert torch.equal(p1, p2)
    e_ref, _ = dl.load_checkpoint(str(tmp_path / "ref"), weights="ema")
    e_run, _ = dl.load_checkpoint(str(run), weights="ema")
    for p1, p2 in zip(e_ref.parameters(), e_run.parameters()):
        assert torch.allclose(p1, p2, atol=1e-7)
    assert len(b["commands"]) == 2


def test_sample_command_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    r = cli("sample", "--checkpoint", os.path.join(ROOT, "ddpm_lib", "weights", "basic-fixed"), "-n", "4",
            "--out", str(out), "--device", "cpu", "--no-progress", "--nrow", "2")
    assert r.returncode == 0, r.stderr
    from PIL import Image
    img = Image.open(out)
    assert img.size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)


@pytest.mark.parametrize("sampler, extra", [("ddim", ["--eta", "0.5"]), ("ddpm", [])])
def test_sample_from_a_shipped_model_by_name_with_few_steps(tmp_path, sampler, extra):
    from PIL import Image
    from torchvision.utils import save_image

    from ddpm_lib.fast_sampling import ddim_sample, respaced_sample

    out = tmp_path / "grid.png"
    r = cli("sample", "--pretrained", "basic-fixed", "--sampler", sampler, "--steps", "5", *extra,
            "-n", "4", "--seed", "3", "--out", str(out), "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"({sampler}, 5 steps)" in r.stdout
    # the grid holds what the library draws in-process with the same seed
    model, lin, g = dl.pretrained("basic-fixed"), dl.NoiseSchedule.linear(), torch.Generator().manual_seed(3)
    if sampler == "ddim":
        x = ddim_sample(model, lin, (4, 1, 28, 28), num_steps=5, eta=0.5, generator=g, progress=False)
    else:
        x = respaced_sample(model, lin, (4, 1, 28, 28), num_steps=5, generator=g, progress=False)
    save_image((x.clamp(-1, 1) + 1) / 2, tmp_path / "ref.png", nrow=8, padding=2, pad_value=1.0)
    import numpy as np
    a = np.asarray(Image.open(out), dtype=int)
    b = np.asarray(Image.open(tmp_path / "ref.png"), dtype=int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_speed_flags_train_and_sample(tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--model", "unet2d", "--steps", "3", "--batch-size", "4", "--out", str(run),
            "--device", "cpu", "--no-progress", "--channels-last", "--checkpoint-every", "2")
    assert r.returncode == 0, r.stderr
    meta = read_config(str(run))["meta"]
    assert meta["channels_last"] is True and len(meta["losses"]) == 3 and meta["step"] == 3
    # the same 3 steps in NCHW: channels_last changes the memory format, not the maths
    r = cli("train", "--model", "unet2d", "--steps", "3", "--batch-size", "4",
            "--out", str(tmp_path / "nchw"), "--device", "cpu", "--no-progress")
    nchw = read_config(str(tmp_path / "nchw"))["meta"]["losses"]
    assert meta["losses"] == pytest.approx(nchw, rel=1e-4)
    r = cli("train", "--model", "basic-fixed", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "b"),
            "--device", "cpu", "--no-progress", "--precision", "bf16", "--channels-last")
    assert r.returncode == 0, r.stderr
    assert read_config(str(tmp_path / "b"))["meta"]["precision"] == "bf16"
    grid = tmp_path / "grid.png"
    r = cli("sample", "--checkpoint", str(tmp_path / "b"), "-n", "2", "--out", str(grid), "--device", "cpu",
            "--no-progress", "--precision", "bf16", "--channels-last")
    assert r.returncode == 0, r.stderr
    assert grid.exists()
    r = cli("sample", "--checkpoint", str(tmp_path / "b"), "-n", "2", "--out", str(grid), "--precision", "fp16")
    assert r.returncode != 0 and "invalid choice: 'fp16'" in r.stderr


def test_recipe_is_a_preset_the_typed_flags_override():
    from ddpm_lib.cli import RECIPES, build_parser

    args = build_parser(recipe="cpu").parse_args(["train", "--recipe", "cpu", "--steps", "9",
                                                  "--out", "x", "--lr", "5e-4"])
    assert args.lr == 5e-4 and args.model == RECIPES["cpu"]["model"]
    for key in set(RECIPES["cpu"]) - {"lr"}:
        assert getattr(args, key) == RECIPES["cpu"][key], key
    plain = build_parser().parse_args(["train", "--model", "unet2d", "--steps", "9", "--out", "x"])
    assert plain.precision == "fp32" and plain.prediction_type == "epsilon" and plain.snr_gamma is None


def test_minutes_keep_and_the_target_travel_with_the_checkpoint(tmp_path):
    """--minutes stops at the first checkpoint past it; --keep 0 keeps every checkpoint; sample
    reads the schedule and the prediction type back from the run."""
    from torchvision.utils import save_image
    from PIL import Image
    import numpy as np

    run = tmp_path / "run"
    r = cli("train", "--model", "unet2d-small", "--steps", "1000", "--minutes", "0.0001",
            "--checkpoint-every", "2", "--keep", "0", "--batch-size", "4", "--schedule", "cosine",
            "--prediction-type", "v_prediction", "--snr-gamma", "5", "--channels", "8,16",
            "--out", str(run), "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    meta = read_config(str(run))["meta"]
    assert meta["step"] == 2 and len(meta["losses"]) == 2
    assert (meta["schedule"], meta["prediction_type"], meta["snr_gamma"]) == ("cosine", "v_prediction", 5.0)
    r = cli("train", "--model", "unet2d-small", "--steps", "6", "--checkpoint-every", "2", "--keep", "0",
            "--batch-size", "4", "--schedule", "cosine", "--prediction-type", "v_prediction",
            "--snr-gamma", "5", "--channels", "8,16", "--out", str(run), "--device", "cpu",
            "--no-progress", "--resume")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(run)) == ["latest", "step-0000002", "step-0000004", "step-0000006"]
    out = tmp_path / "grid.png"
    r = cli("sample", "--checkpoint", str(run), "--sampler", "ddim", "--steps", "4", "-n", "2",
            "--seed", "1", "--out", str(out), "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    model, _ = dl.load_checkpoint(str(run))
    assert model.config.block_out_channels == (8, 16)
    imgs = {}
    for pt in ("v_prediction", "epsilon"):
        x = dl.ddim_sample(model, dl.NoiseSchedule.cosine(), (2, 1, 28, 28), num_steps=4,
                           generator=torch.Generator().manual_seed(1), prediction_type=pt, progress=False)
        save_image((x.clamp(-1, 1) + 1) / 2, tmp_path / f"{pt}.png", nrow=8, padding=2, pad_value=1.0)
        imgs[pt] = np.asarray(Image.open(tmp_path / f"{pt}.png"), dtype=int)
    grid = np.asarray(Image.open(out), dtype=int)
    assert np.abs(grid - imgs["v_prediction"]).max() <= 1
    assert np.abs(grid - imgs["epsilon"]).max() > 10  # the target read as eps gives other images


def test_cosine_lr_decay_resumes_only_with_the_same_steps(tmp_path):
    base = ["--model", "unet2d-small", "--channels", "8,16", "--batch-size", "4", "--checkpoint-every", "2",
            "--device", "cpu", "--no-progress"]
    common = base + ["--lr-decay", "cosine"]
    r = cli("train", *common, "--steps", "4", "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    r = cli("train", *common, "--steps", "4", "--minutes", "0.0001", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    assert read_config(str(tmp_path / "two"))["meta"]["step"] == 2
    bad = cli("train", *common, "--steps", "6", "--resume", "--out", str(tmp_path / "two"))
    assert bad.returncode != 0 and "with cosine its --steps" in bad.stderr
    r = cli("train", *common, "--steps", "4", "--resume", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    one, two = (read_config(str(tmp_path / d))["meta"] for d in ("one", "two"))
    assert one["lr_decay"] == "cosine" and one["losses"] == two["losses"] and len(one["losses"]) == 4
    w1, w2 = (dl.load_checkpoint(str(tmp_path / d), weights="model")[0] for d in ("one", "two"))
    assert all(torch.equal(p, q) for p, q in zip(w1.parameters(), w2.parameters()))
    const = cli("train", *base, "--steps", "4", "--out", str(tmp_path / "const"))
    assert const.returncode == 0, const.stderr
    assert read_config(str(tmp_path / "const"))["meta"]["losses"][3] != one["losses"][3]


def test_conditional_train_sample_and_resume(tmp_path):
    # chapter 9: --conditional trains with the digits' labels; sample --label/--guidance draws them
    out, png = str(tmp_path / "run"), str(tmp_path / "sevens.png")
    base = ["train", "--recipe", "cpu", "--conditional", "--checkpoint-every", "2", "--no-progress",
            "--out", out]
    assert cli(*base, "--steps", "2").returncode == 0
    meta = read_config(out)["meta"]
    assert meta["conditional"] is True and meta["p_uncond"] == 0.1
    model, _ = dl.load_checkpoint(out)
    assert model.config.num_class_embeds == 11  # 10 digits and the null label
    r = cli(*base, "--steps", "4", "--resume", "--p-uncond", "0.2")
    assert r.returncode != 0 and "--p-uncond" in r.stderr
    r = cli("train", "--recipe", "cpu", "--steps", "4", "--resume", "--checkpoint-every", "2",
            "--no-progress", "--out", out)  # the same run without --conditional
    assert r.returncode != 0 and "--conditional" in r.stderr
    assert cli(*base, "--steps", "4", "--resume").returncode == 0
    assert read_config(out)["meta"]["step"] == 4
    r = cli("sample", "--checkpoint", out, "--sampler", "ddim", "--steps", "3", "--label", "7",
            "--guidance", "3", "-n", "4", "--no-progress", "--out", png)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(png) > 0
    # the CLI's samples are the library's: labels 7, guidance_scale 3, x_T from the seed
    from torchvision.io import read_image
    from torchvision.utils import save_image
    model, _ = dl.load_checkpoint(out)  # the resumed run's weights, as the CLI read them
    x = dl.ddim_sample(model, dl.NoiseSchedule.cosine(), (4, 1, 28, 28), num_steps=3,
                       generator=torch.Generator().manual_seed(0), labels=torch.full((4,), 7),
                       guidance_scale=3.0, prediction_type="v_prediction", progress=False)
    lib = str(tmp_path / "lib.png")
    save_image((x.clamp(-1, 1) + 1) / 2, lib, nrow=8, padding=2, pad_value=1.0)
    assert (read_image(png).int() - read_image(lib).int()).abs().max() <= 1
    x8 = dl.ddim_sample(model, dl.NoiseSchedule.cosine(), (4, 1, 28, 28), num_steps=3,
                        generator=torch.Generator().manual_seed(0), labels=torch.full((4,), 8),
                        guidance_scale=3.0, prediction_type="v_prediction", progress=False)
    assert (x8 - x).abs().max() > 0.05  # another digit draws other images: the label matters
    grid = cli("sample", "--checkpoint", out, "--sampler", "ddim", "--steps", "3", "-n", "4",
               "--no-progress", "--out", str(tmp_path / "digits.png"))
    assert grid.returncode == 0 and "wrote 4 samples" in grid.stdout

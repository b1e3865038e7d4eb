"""--precision auto (the CPU recipe's default) and a diverged run stopping with its last good
checkpoint intact (issue #32)."""
import hashlib
import os
import time

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib import cli, training
from ddpm_lib.checkpoints import read_config

NO_BF16 = {"model_name": "forced: no bf16 units", "bf16_units": [], "torch_capability": "AVX2",
           "flags": ["avx2"]}
BF16 = {"model_name": "forced: bf16 units", "bf16_units": ["avx512_bf16"],
        "torch_capability": "AVX512", "flags": ["avx512f", "avx512_bf16"]}


def _train(tmp_path, *flags):
    out = str(tmp_path / "run")
    code = cli.main(["train", "--recipe", "cpu", "--steps", "2", "--checkpoint-every", "1",
                     "--device", "cpu", "--no-progress", "--out", out, *flags])
    return code, out


def test_the_recipe_asks_for_auto_and_a_cpu_without_bf16_units_gets_fp32(tmp_path, monkeypatch,
                                                                         capsys):
    assert cli.RECIPES["cpu"]["precision"] == "auto"
    monkeypatch.setattr(cli, "cpu_capability", lambda: NO_BF16)
    monkeypatch.setattr(training, "cpu_capability", lambda: NO_BF16)
    timed = []
    monkeypatch.setattr(training, "train", lambda *a, **k: timed.append(k) or [])
    code, out = _train(tmp_path)
    assert code == 0 and timed == []  # decided by the flags: bf16 is not even timed
    meta = read_config(out)["meta"]
    assert meta["precision"] == "fp32"
    choice = meta["precision_choice"]
    assert choice["asked"] == "auto" and choice["chosen"] == "fp32"
    assert choice["cpu"] == NO_BF16 and choice["seconds_per_step"] is None
    assert "precision auto: fp32 (no bf16 units" in capsys.readouterr().out


def test_a_cpu_with_bf16_units_times_both_and_keeps_the_faster(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "cpu_capability", lambda: BF16)
    code, out = _train(tmp_path)
    choice = read_config(out)["meta"]["precision_choice"]
    seconds = choice["seconds_per_step"]
    assert code == 0 and set(seconds) == {"fp32", "bf16"} and min(seconds.values()) > 0
    assert choice["chosen"] == min(seconds, key=seconds.get)
    assert read_config(out)["meta"]["precision"] == choice["chosen"]
    # the timing trains copies: the run itself equals one that was told its precision
    code, forced = _train(tmp_path / "forced", "--precision", choice["chosen"])
    assert read_config(forced)["meta"]["losses"] == read_config(out)["meta"]["losses"]


def test_choose_precision_keeps_whichever_is_faster(monkeypatch):
    """The choice follows the clock, not a preference: make each precision the slow one."""
    model = dl.build_model("unet2d-small")
    images = dl.load_mnist("train", source="embedded").images[:64]
    for slow in ("bf16", "fp32"):
        def fake_train(*a, precision="fp32", **k):
            time.sleep(0.3 if precision == slow else 0.02)
            return []

        monkeypatch.setattr(training, "train", fake_train)
        choice, about = training.choose_precision(model, images, dl.NoiseSchedule.linear(),
                                                  capability=BF16, steps=1, batch_size=8)
        assert choice != slow and about["seconds_per_step"][slow] >= 0.3


def _digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()


def test_a_non_finite_loss_stops_the_run_and_leaves_the_last_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--recipe", "cpu", "--precision", "fp32", "--checkpoint-every", "1",
            "--device", "cpu", "--no-progress", "--out", out, "--steps"]
    assert cli.main(argv + ["1"]) == 0  # one good step, checkpointed
    good = os.path.join(out, "step-0000001")
    before = _digest(good)
    with pytest.raises(SystemExit) as stop:  # AdamW at lr 1e6: steps 2-6 are one piece
        cli.main(argv + ["6", "--resume", "--lr", "1e6", "--checkpoint-every", "5"])
    message = str(stop.value)  # update 2 at lr 1e6 makes the loss of step 3 nan
    assert "the loss is nan at step 3" in message and good in message and "untouched" in message
    assert sorted(os.listdir(out)) == ["latest", "step-0000001"]
    assert _digest(good) == before
    assert open(os.path.join(out, "latest")).read().strip() == "step-0000001"
    # the control: at the recipe's own learning rate the same resume trains on
    assert cli.main(argv + ["6", "--resume"]) == 0
    assert read_config(out)["meta"]["step"] == 6


def test_train_itself_raises_on_a_non_finite_loss():
    model = dl.build_model("unet2d-small")
    images = dl.load_mnist("train", source="embedded").images[:64]
    with pytest.raises(FloatingPointError, match="at step 2"):
        dl.train(model, images, dl.NoiseSchedule.linear(), steps=3, batch_size=8, lr=1e6,
                 progress=False)
    assert torch.isfinite(torch.tensor(dl.train(
        dl.build_model("unet2d-small"), images, dl.NoiseSchedule.linear(), steps=3,
        batch_size=8, lr=1e-3, progress=False))).all()

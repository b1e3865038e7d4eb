import json
import os
import shutil

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.checkpoints import (commit_run_checkpoint, load_training_state, read_config,
                                  resolve_checkpoint)


def trained_run(tmp_path):
    torch.manual_seed(0)
    model = dl.BasicUNetFixed()
    ema = dl.make_ema(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    s = dl.NoiseSchedule.linear()
    dl.train(model, torch.rand(16, 1, 28, 28) * 2 - 1, s, steps=3, batch_size=4, progress=False,
             optimizer=opt, ema=ema)
    path = dl.save_checkpoint(tmp_path / "ck", model, "basic-fixed", ema=ema, optimizer=opt,
                              meta={"steps": 3})
    return model, ema, opt, path


def test_save_load_roundtrip_with_ema_and_optimizer(tmp_path):
    model, ema, opt, path = trained_run(tmp_path)
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert set(cfg["sha256"]) == {"model.safetensors", "ema.safetensors", "training_state.pt"}
    raw, _ = dl.load_checkpoint(path, weights="model")
    for p, q in zip(raw.parameters(), model.parameters()):
        assert torch.equal(p, q)
    averaged, _ = dl.load_checkpoint(path, weights="ema")
    for p, q in zip(averaged.parameters(), ema.shadow_params):
        assert torch.equal(p, q)
    # the resumable state: the optimizer's and the EMA's own state_dict(), restored exactly
    opt2 = torch.optim.AdamW(raw.parameters(), lr=1e-3)
    ema2 = dl.make_ema(raw)
    load_training_state(path, opt2, ema2)
    a, b = opt2.state_dict(), opt.state_dict()
    for i in b["state"]:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][i][k], b["state"][i][k])
    assert ema2.optimization_step == 3 and ema2.decay == ema.decay
    for p, q in zip(ema2.shadow_params, ema.shadow_params):
        assert torch.equal(p, q)


def test_run_folder_latest_pointer_and_pruning(tmp_path):
    m = dl.BasicUNet()
    for step in (10, 20, 30):
        commit_run_checkpoint(tmp_path, step, m, "basic", keep=2)
    assert open(tmp_path / "latest").read().strip() == "step-0000030"
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-"))
    assert kept == ["step-0000020", "step-0000030"]
    assert resolve_checkpoint(str(tmp_path)).endswith("step-0000030")


def _flip_last_bytes(path):
    with open(path, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")


def _truncate_json(path):
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])


# each damaged or missing part of a checkpoint: what to do to it, and what the error must say
DAMAGE = [
    ("config.json corrupt", lambda p: _truncate_json(p / "config.json"), r"config\.json is not valid JSON"),
    ("config.json not ours", lambda p: (p / "config.json").write_text('{"a": 1}'),
     r"config\.json is not a ddpm_lib-checkpoint-1 config \(missing: \['format'"),
    ("config.json missing", lambda p: os.remove(p / "config.json"), "no checkpoint at"),
    ("model corrupt", lambda p: _flip_last_bytes(p / "model.safetensors"),
     r"sha256 mismatch for .*model\.safetensors"),
    ("model missing", lambda p: os.remove(p / "model.safetensors"), r"model\.safetensors is missing"),
    ("ema corrupt", lambda p: _flip_last_bytes(p / "ema.safetensors"),
     r"sha256 mismatch for .*ema\.safetensors"),
    ("state corrupt", lambda p: _flip_last_bytes(p / "training_state.pt"),
     r"sha256 mismatch for .*training_state\.pt"),
    ("state missing", lambda p: os.remove(p / "training_state.pt"), r"training_state\.pt is missing"),
]


@pytest.mark.parametrize("what,damage,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_every_damaged_part_is_named_with_what_to_do(tmp_path, what, damage, message):
    model, ema, opt, path = trained_run(tmp_path)
    damage(tmp_path / "ck")
    with pytest.raises(ValueError, match=message) as e:
        dl.load_checkpoint(path)
        load_training_state(path, opt, ema)
    assert str(tmp_path / "ck") in str(e.value)
    assert "no checkpoint" in str(e.value) or "train it again" in str(e.value)


def test_a_latest_file_naming_a_missing_checkpoint_says_so(tmp_path):
    commit_run_checkpoint(tmp_path, 10, dl.BasicUNet(), "basic")
    shutil.rmtree(tmp_path / "step-0000010")
    with pytest.raises(ValueError, match="names 'step-0000010', which holds no config.json"):
        read_config(tmp_path)


def test_cli_sample_names_the_corrupt_config_file(tmp_path):
    import subprocess
    import sys
    path = dl.save_checkpoint(tmp_path / "ck", dl.BasicUNet(), "basic")
    _truncate_json(tmp_path / "ck" / "config.json")
    r = subprocess.run([sys.executable, "-m", "ddpm_lib", "sample", "--checkpoint", str(path),
                        "--out", str(tmp_path / "g.png")], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{tmp_path / 'ck' / 'config.json'} is not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr

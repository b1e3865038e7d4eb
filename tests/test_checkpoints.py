import json
import os

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.checkpoints import commit_run_checkpoint, load_ema_state, load_optimizer_state, resolve_checkpoint


def test_save_load_roundtrip_with_ema_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = dl.BasicUNetFixed()
    ema = dl.make_ema(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    s = dl.NoiseSchedule.linear()
    dl.train(model, torch.rand(16, 1, 28, 28) * 2 - 1, s, steps=3, batch_size=4, progress=False, optimizer=opt, ema=ema)
    path = dl.save_checkpoint(tmp_path / "ck", model, "basic-fixed", ema=ema, optimizer=opt, meta={"steps": 3})
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert set(cfg["sha256"]) == {"model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    raw, _ = dl.load_checkpoint(path, weights="model")
    for p, q in zip(raw.parameters(), model.parameters()):
        assert torch.equal(p, q)
    averaged, _ = dl.load_checkpoint(path, weights="ema")
    for p, q in zip(averaged.parameters(), ema.shadow_params):
        assert torch.equal(p, q)
    opt2 = torch.optim.AdamW(raw.parameters(), lr=1e-3)
    load_optimizer_state(path, opt2)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    ema2 = dl.make_ema(raw)
    load_ema_state(path, ema2, raw)
    assert ema2.optimization_step == 3


def test_corrupted_weights_are_refused(tmp_path):
    path = dl.save_checkpoint(tmp_path / "ck", dl.BasicUNet(), "basic")
    with open(os.path.join(path, "model.safetensors"), "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        dl.load_checkpoint(path)


def test_run_folder_latest_pointer_and_pruning(tmp_path):
    m = dl.BasicUNet()
    for step in (10, 20, 30):
        commit_run_checkpoint(tmp_path, step, m, "basic", keep=2)
    assert open(tmp_path / "latest").read().strip() == "step-0000030"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-")) == ["step-0000020", "step-0000030"]
    assert resolve_checkpoint(str(tmp_path)).endswith("step-0000030")

"""Chapter 8: the CLI's training under `accelerate launch` (two gloo processes on this CPU) is the
one-process run with the same global batch, and resumes across a change of process count."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import ddpm_lib as dl
from ddpm_lib.checkpoints import resolve_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--model", "unet2d-small", "--batch-size", "8", "--checkpoint-every", "3",
         "--precision", "fp32", "--no-progress", "--device", "cpu", "--lr", "2e-3"]


class FakeAccelerator:  # process 1 of 2, without the other process: what train() asks of Accelerate
    process_index, num_processes = 1, 2

    def backward(self, loss):
        loss.backward()

    def reduce(self, x, reduction):
        return x


class Tiny(torch.nn.Module):
    in_channels = 1

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, xt, t):
        return self.conv(xt)


def test_each_process_trains_on_its_share_of_the_step_batch(linear):
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    model = Tiny()
    before = Tiny()
    before.load_state_dict(model.state_dict())
    loss = dl.train(model, images, linear, steps=1, batch_size=8, seed=3,
                    accelerator=FakeAccelerator(), progress=False)[0]
    g = torch.Generator().manual_seed(3 * 1_000_003 + 0)  # train()'s draws for step 0
    x0 = images[torch.randint(0, 32, (8,), generator=g)]
    t = torch.randint(0, 1000, (8,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    share = dl.ddpm_loss(before, x0[4:], linear, t=t[4:], noise=eps[4:]).item()
    whole = dl.ddpm_loss(before, x0, linear, t=t, noise=eps).item()
    assert loss == pytest.approx(share, rel=1e-6) and abs(share - whole) > 1e-3
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        dl.train(model, images, linear, steps=1, batch_size=7, accelerator=FakeAccelerator(),
                 progress=False)


def train(out, steps, processes, *extra):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
              "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = (launch if processes == 2 else [sys.executable]) + ["-m", "ddpm_lib", *TRAIN,
                                                              "--steps", str(steps), "--out", str(out), *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    path = resolve_checkpoint(str(out))
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        meta = json.load(f)["meta"]
    return meta, load_file(os.path.join(path, "model.safetensors")), load_file(os.path.join(path, "ema.safetensors"))


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_processes_take_the_one_process_steps_and_resume_across_counts(tmp_path):
    one, w1, e1 = train(tmp_path / "one", 6, 1)
    two, w2, e2 = train(tmp_path / "two", 6, 2)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["commands"][0].startswith("accelerate launch --num_processes 2 -m ddpm_lib train")
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    # measured here: 2.8e-4 after 6 AdamW steps at lr 2e-3. The all-reduce sums the two
    # halves' gradients in another order than one process's batch mean, and AdamW's first steps
    # move every weight by about lr whatever its gradient's size: where a gradient is near 0,
    # rounding can flip its sign. Tolerance: half the learning rate.
    assert max_diff(w1, w2) < 1e-3 and max_diff(e1, e2) < 1e-3
    # interrupted at step 3 on two processes, resumed on one, and the other way round
    train(tmp_path / "a", 3, 2)
    a, wa, _ = train(tmp_path / "a", 6, 1, "--resume")
    train(tmp_path / "b", 3, 1)
    b, wb, _ = train(tmp_path / "b", 6, 2, "--resume")
    for meta, w in ((a, wa), (b, wb)):
        assert meta["losses"] == pytest.approx(one["losses"], rel=1e-5) and max_diff(w1, w) < 1e-3
    # the check can fail: a run with another seed is far away
    other, wo, _ = train(tmp_path / "other", 6, 2, "--seed", "1")
    assert max_diff(w1, wo) > 1e-2 and other["losses"] != pytest.approx(one["losses"], rel=1e-3)

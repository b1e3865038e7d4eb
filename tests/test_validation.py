"""Every public function rejects bad input with a ValueError that names the argument."""
import pytest
import torch

import ddpm_lib as dl
from ddpm_lib import NoiseSchedule

S = NoiseSchedule.linear(num_timesteps=50)
X = torch.zeros(2, 1, 8, 8)


def _train(**kw):
    args = dict(model=dl.BasicUNet(), images=torch.zeros(4, 1, 8, 8), schedule=S, steps=1, progress=False)
    args.update(kw)
    return dl.train(**args)


CASES = [
    ("betas 2-D", lambda: NoiseSchedule(torch.full((2, 3), 0.1)), "1-D"),
    ("betas empty", lambda: NoiseSchedule(torch.tensor([])), "non-empty"),
    ("betas NaN", lambda: NoiseSchedule(torch.tensor([0.1, float("nan")])), "NaN"),
    ("betas zero", lambda: NoiseSchedule(torch.tensor([0.0, 0.1])), r"\(0, 1\)"),
    ("betas one", lambda: NoiseSchedule(torch.tensor([0.5, 1.0])), r"\(0, 1\)"),
    ("num_timesteps 0", lambda: NoiseSchedule.linear(num_timesteps=0), "num_timesteps"),
    ("num_timesteps float", lambda: NoiseSchedule.cosine(num_timesteps=1.5), "num_timesteps must be an int >= 1"),
    ("t float", lambda: dl.q_sample(X, torch.tensor([1.0, 2.0]), S), "integer"),
    ("t too large", lambda: dl.q_sample(X, 50, S), r"\[0, 49\]"),
    ("t negative", lambda: dl.q_sample(X, torch.tensor([-1, 0]), S), r"\[0, 49\]"),
    ("t batch", lambda: dl.q_sample(X, torch.tensor([1, 2, 3]), S), r"shape \(2,\)"),
    ("t bool", lambda: dl.q_sample(X, True, S), "bool"),
    ("t string", lambda: dl.q_sample(X, "3", S), "int or an integer tensor"),
    ("noise shape", lambda: dl.q_sample(X, 1, S, noise=torch.zeros(2, 1, 4, 4)), "noise must have the shape of x0"),
    ("x0 list", lambda: dl.q_sample([[0.0]], 0, S), "x0 must be a torch.Tensor"),
    ("x0 int dtype", lambda: dl.q_sample(torch.zeros(2, 3, dtype=torch.long), 0, S), "x0 must be a floating-point"),
    ("q_step t", lambda: dl.q_step(X, 99, S), r"t must lie in \[0, 49\]"),
    ("q_posterior shapes", lambda: dl.q_posterior(X, torch.zeros(2, 1, 4, 4), 0, S), "xt must have the shape of x0"),
    ("predict_x0 eps", lambda: dl.predict_x0(X, 0, torch.zeros(1, 1, 8, 8), S), "eps must have the shape of xt"),
    ("p_mean eps shape", lambda: dl.p_mean(X, 0, torch.zeros(2, 8, 8), S), "eps must have the shape of xt"),
    ("loss channels", lambda: dl.ddpm_loss(dl.BasicUNet(), torch.zeros(2, 3, 8, 8), S), "3 channels but the model expects 1"),
    ("loss 3-D", lambda: dl.ddpm_loss(dl.BasicUNet(), torch.zeros(2, 8, 8), S), r"x0 must be \(B, C, H, W\)"),
    ("sample shape", lambda: dl.sample(dl.BasicUNet(), S, (2, 8, 8), progress=False), r"shape must be \(B, C, H, W\)"),
    ("sample channels", lambda: dl.sample(dl.make_unet2d(), S, (1, 3, 28, 28), progress=False), "3 channels but the model expects 1"),
    ("sample variance", lambda: dl.sample(dl.BasicUNet(), S, (1, 1, 8, 8), variance_type="learned", progress=False), "variance_type"),
    ("sample generator", lambda: dl.sample(dl.BasicUNet(), S, (1, 1, 8, 8), generator=0, progress=False), "generator"),
    ("sample not callable", lambda: dl.sample(42, S, (1, 1, 8, 8), progress=False), "model must be callable"),
    ("train steps", lambda: _train(steps=-1), "steps must be an int >= 0"),
    ("train batch", lambda: _train(batch_size=0), "batch_size must be an int >= 1"),
    ("train NaN images", lambda: _train(images=torch.full((4, 1, 8, 8), float("nan"))), "images must be finite"),
    ("train precision", lambda: _train(precision="fp16"), "precision must be one of 'fp32', 'bf16'"),
    ("sample precision", lambda: dl.sample(dl.BasicUNet(), S, (1, 1, 8, 8), precision="fp16", progress=False), "precision"),
    ("train lr", lambda: _train(lr=0), "lr must be a positive number"),
    ("train start", lambda: _train(start_step=5, steps=2), r"start_step \(5\) must not exceed"),
    ("train channels", lambda: _train(images=torch.zeros(4, 2, 8, 8)), "images has 2 channels"),
    ("mnist split", lambda: dl.load_mnist(split="val"), "split must be one of"),
    ("mnist source", lambda: dl.load_mnist(source="web"), "source must be one of"),
    ("mnist no files", lambda: dl.load_mnist(source="torchvision", root="/nonexistent-dir"), "no MNIST files under root"),
    ("model name", lambda: dl.build_model("vae"), "model must be one of 'basic', 'basic-fixed', 'unet2d'"),
    ("checkpoint weights", lambda: dl.load_checkpoint("/nonexistent", weights="best"), "weights must be one of 'ema', 'model'"),
    ("checkpoint missing", lambda: dl.load_checkpoint("/nonexistent"), "no checkpoint at"),
]


@pytest.mark.parametrize("name,call,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_value_error(name, call, message):
    with pytest.raises(ValueError, match=message):
        call()


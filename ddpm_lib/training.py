"""The training loop for L_simple (chapter 优化目标, Algorithm 1)."""
import contextlib

import torch

from . import fastpaths
from .losses import check_images, l_simple
from .models import as_denoiser
from .sampling import BAR_FORMAT


def make_ema(model, decay=0.999):
    """EMA of the weights with warm-up: decay_n = min(decay, (1 + n) / (10 + n)).

    A fixed 0.999 from step 0 keeps ~30 % of the random init after 1,200 steps (see the book).
    Returns a diffusers ``EMAModel``; ``ema.copy_to(model.parameters())`` applies it.
    """
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=decay, foreach=True)


def make_optimizer(model, lr=1e-3):
    """AdamW over the model's parameters: the fused kernel on CUDA, PyTorch's default (foreach)
    elsewhere. (Passing fused=False explicitly would also switch foreach off.)"""
    cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, fused=True if cuda else None)


def step_generator(seed, step):
    """The CPU generator for one training step: a function of (seed, step) only, so a resumed
    run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def train(model, images, schedule, steps, batch_size=128, lr=1e-3, seed=0, progress=True,
          optimizer=None, ema=None, start_step=0, callback=None, precision="fp32", channels_last=False,
          compile=False, split_batch=False):
    """Minimise L_simple with AdamW (优化目标, Algorithm 1); returns the loss of each step.

    model: a denoiser on its device; images: (N, C, H, W) in [-1, 1] (any device);
    steps: total steps, of which start_step are already done (resume); each step draws its
    batch, t and eps from ``step_generator(seed, step)``, so on CPU the run is deterministic
    and resuming repeats nothing. optimizer defaults to ``make_optimizer(model, lr)``; ema (``make_ema``) is
    updated after each step; callback(step, loss_tensor) runs after each step (1-based step).
    precision: "fp32" (default, the plain loop) or "bf16" (autocast on the model's device: the
    fast GPU path, and on CPUs with bf16 instructions for BasicUNet; losses within ~1 % of fp32).
    channels_last converts the model's memory format in place (GPUs; BasicUNet on CPU).
    compile trains a ``torch.compile`` of the model (same parameters). A CUDA run uses the
    fused AdamW kernel and pinned, non-blocking copies of each step's CPU-drawn batch.
    split_batch (CPU only): each step runs the two halves of the batch on two threads, half the
    cores each, and adds their gradients: the same gradient to float rounding, and faster where
    the model's ops are too small to keep two cores busy (unet2d; not BasicUNet).
    """
    from tqdm import tqdm

    check_images(images, model, name="images")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seed", seed), ("start_step", start_step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_step > steps:
        raise ValueError(f"start_step ({start_step}) must not exceed steps ({steps})")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if split_batch and batch_size < 2:
        raise ValueError(f"split_batch needs batch_size >= 2, got {batch_size}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    device = next(model.parameters()).device
    images = images.to(device)
    schedule = schedule.to(device)
    if optimizer is None:
        optimizer = make_optimizer(model, lr)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    eps_fn = as_denoiser(torch.compile(model) if compile else model)
    cuda = device.type == "cuda"
    split = split_batch and device.type == "cpu"
    params = [p for p in model.parameters() if p.requires_grad]

    def half_grads(x0, t, noise):  # one half's share of the batch-mean loss and its gradients
        with autocast():
            loss = l_simple(eps_fn, x0, t, noise, schedule) * (x0.shape[0] / batch_size)
        return loss.detach(), torch.autograd.grad(loss, params)

    def to_device(x):  # CPU-drawn randomness keeps CPU and GPU runs on the same draws
        return x.pin_memory().to(device, non_blocking=True) if cuda else x

    def autocast():  # a fresh context each time: split halves enter it on two threads
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    losses = []
    N, T = images.shape[0], schedule.num_timesteps
    with fastpaths.threads_per_part() if split else contextlib.nullcontext():
        for step in tqdm(range(start_step, steps), desc="train", initial=start_step, total=steps,
                         disable=not progress, bar_format=BAR_FORMAT):
            # 1. x_0 from the data, t ~ U{0..T-1}, eps ~ N(0, I), all from this step's generator
            g = step_generator(seed, step)
            idx = torch.randint(0, N, (batch_size,), generator=g)
            t = torch.randint(0, T, (batch_size,), generator=g)
            noise = torch.randn((batch_size, *images.shape[1:]), generator=g)
            x0 = images[to_device(idx)]
            # 2. gradient step on ||eps - eps_theta(x_t, t)||^2
            optimizer.zero_grad(set_to_none=True)
            if split:
                (l0, g0), (l1, g1) = fastpaths.split_batch(half_grads, x0, t, noise)
                for p, a, b in zip(params, g0, g1):
                    p.grad = a + b
                loss = l0 + l1
            else:
                with autocast():
                    loss = l_simple(eps_fn, x0, to_device(t), to_device(noise), schedule)
                loss.backward()
            optimizer.step()
            if ema is not None:
                ema.step(model.parameters())
            loss = loss.detach()
            losses.append(loss)
            if callback is not None:
                callback(step + 1, loss)
    return torch.stack(losses).tolist() if losses else []

"""The training loop for L_simple (chapter 优化目标, Algorithm 1)."""
import copy
import math
import platform
import time

import torch
from tqdm import tqdm

from .losses import ddpm_loss
from .guidance import check_labels, drop_labels
from .models import model_device, num_classes
from .sampling import BAR_FORMAT, PRECISIONS
from .validation import check_choice, check_images, check_int


def make_ema(model, decay=0.999):
    """An exponential moving average of the weights, with diffusers' warm-up of the decay.

    diffusers' ``EMAModel.get_decay(n)`` after n updates: 0 at n = 1, then
    min(decay, n / (n + 9)) (its (1 + k) / (10 + k) with k = n - 1). A fixed decay d from the
    first step keeps d^n of the random initial weights: 30 % after 1,200 steps at 0.999.
    Returns a diffusers ``EMAModel``; ``ema.copy_to(model.parameters())`` applies it.
    """
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=decay, foreach=True)


def cosine_lr(lr, steps):
    """A learning rate that falls from lr at step 0 to 0 at ``steps`` along half a cosine
    (Loshchilov & Hutter 2017): lr (1 + cos(pi step / steps)) / 2. Returns a function of the step."""
    return lambda step: lr * (1 + math.cos(math.pi * min(step, steps) / steps)) / 2


def train(model, images, schedule, steps, batch_size=128, lr=1e-3, seed=0, optimizer=None,
          ema=None, start_step=0, precision="fp32", prediction_type="epsilon", snr_gamma=None,
          labels=None, p_uncond=0.1, accelerator=None, progress=True):
    """Minimise L_simple with AdamW (优化目标, Algorithm 1); returns the loss of each step.

    Args: model: a denoiser (``models.as_denoiser``) on its device; put in training mode here
            (``model.train()``) and left so. A ``torch.compile(model)`` trains the same weights.
        images: (N, C, H, W) training data in [-1, 1], on any device; schedule: a NoiseSchedule.
        steps: the total number of steps, of which ``start_step`` are already done: each
            step draws its batch, t and eps from a generator seeded by (seed, step), so a run
            split into pieces (``start_step`` = where the last piece stopped) equals one
            uninterrupted run, bit for bit on a CPU.
        lr: the learning rate, or a function of the 0-based step giving it (a decay over the
            run, e.g. ``cosine_lr``), set on the optimizer before each step; a number is used
            only to build the default optimizer.
        optimizer: defaults to ``torch.optim.AdamW(model.parameters(), lr)``.
        ema: a ``make_ema`` average, updated after every step.
        precision: "fp32", or "bf16" to run the forward pass under ``torch.autocast``.
        prediction_type, snr_gamma: the target and the loss weighting (``ddpm_loss``).
        labels: for a class-conditional model, the (N,) integer classes of the images; each
            drawn label becomes the null label with probability p_uncond (``guidance.drop_labels``).
        accelerator: an ``accelerate.Accelerator`` that prepared model and optimizer, for one
            process or many (``accelerate launch``): every process draws the whole step's batch
            from (seed, step) and trains on its 1/N share; DDP averages the gradients, so N
            processes take the steps one process takes with the same batch_size.
    Returns ``steps - start_step`` floats (each step's loss); FloatingPointError if one is not finite.
    """
    check_images(images, model, "images")
    check_int(steps, "steps"), check_int(seed, "seed"), check_int(batch_size, "batch_size", 1)
    check_int(start_step, "start_step")
    if not callable(lr) and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ValueError(f"lr must be a positive number or a function of the step, got {lr!r}")
    check_choice(precision, "precision", PRECISIONS)
    if start_step > steps:
        raise ValueError(f"start_step ({start_step}) must not exceed steps ({steps})")
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite (no NaN or inf)")
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index,
                                                      accelerator.num_processes)
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the {world} processes")
    share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)  # this process's
    device = model_device(model)
    if labels is not None or num_classes(model) is not None:
        labels = check_labels(labels, images.shape[0], model).to(device)
        drop_labels(labels[:0], p_uncond, num_classes(model))  # checks p_uncond
    images, schedule = images.to(device), schedule.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr(start_step) if callable(lr) else lr)
    model.train()
    losses = []
    for step in tqdm(range(start_step, steps), desc="train", initial=start_step, total=steps,
                     disable=not progress, bar_format=BAR_FORMAT):
        # 1. x_0 from the data, t ~ U{0, …, T-1}, eps ~ N(0, I): this step's own draws
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g).to(device)
        x0 = images[idx]
        t = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        # and, for a conditional model, its labels with some dropped to the null label (ch. 9)
        c = None if labels is None else drop_labels(labels[idx], p_uncond, num_classes(model), g)
        # 2. a gradient step on ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2
        #    (or on another target, weighted: chapter 8), over this process's share of the batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = ddpm_loss(model, x0[share], schedule, t=t[share], noise=eps[share],
                             prediction_type=prediction_type, snr_gamma=snr_gamma,
                             labels=None if c is None else c[share])
        for group in optimizer.param_groups if callable(lr) else ():
            group["lr"] = lr(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward() if accelerator is None else accelerator.backward(loss)
        optimizer.step()
        # 3. the moving average of the weights, which sampling uses
        if ema is not None:
            ema.step(model.parameters())
        loss = loss.detach() if accelerator is None else accelerator.reduce(loss.detach(), "mean")
        losses.append(loss)  # no .item(): a GPU keeps running ahead
    losses = torch.stack(losses).tolist() if losses else []
    bad = next((i for i, x in enumerate(losses) if not math.isfinite(x)), None)
    if bad is not None:  # a diverged run: its weights are no longer worth a checkpoint
        raise FloatingPointError(f"the loss is {losses[bad]} at step {start_step + bad + 1}; "
                                 "training stopped")
    return losses


BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (Linux's names) and Arm's "bf16"


def cpu_capability():
    """What decides bf16's speed on this CPU: its model name, its flags (Linux's /proc/cpuinfo,
    which ``lscpu`` reads too; none elsewhere), those that are bf16 units, and PyTorch's
    ``torch.backends.cpu.get_cpu_capability()`` (the vector ISA its kernels use)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)  # the last CPU's
        info = {k.strip(): v.strip() for k, v in info.items()}
        name, flags = info.get("model name", name), info.get("flags", info.get("Features", "")).split()
    except OSError:
        pass
    return {"model_name": name, "bf16_units": sorted(BF16_FLAGS.intersection(flags)),
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "flags": flags}


def choose_precision(model, images, schedule, capability=None, steps=3, **train_kwargs):
    """``--precision auto`` (chapter 8): "bf16" where it trains faster here, else "fp32".

    A GPU: bf16 where it supports it. A CPU without bf16 units among its flags (most laptops;
    ``capability`` defaults to ``cpu_capability()``) runs bf16 autocast many times slower than
    fp32 (book/timings.md): fp32, untimed. A CPU with them: ``steps`` training steps of a copy
    of the model in each precision, after one warm-up step, and the faster one kept. The
    caller's model, optimizer and random draws are untouched. Returns (choice, provenance)."""
    device = model_device(model)
    if device.type != "cpu":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return ("bf16" if bf16 else "fp32"), {"reason": f"{device.type}: bf16 supported: {bf16}"}
    capability = cpu_capability() if capability is None else capability
    about = {"cpu": capability, "seconds_per_step": None}
    if not capability["bf16_units"]:
        return "fp32", dict(about, reason="no bf16 units among the CPU's flags")
    seconds = {}
    for precision in PRECISIONS:
        trial = copy.deepcopy(model)
        train(trial, images, schedule, steps=1, precision=precision, progress=False, **train_kwargs)
        t0 = time.perf_counter()
        train(trial, images, schedule, steps=1 + steps, start_step=1, precision=precision,
              progress=False, **train_kwargs)
        seconds[precision] = round((time.perf_counter() - t0) / steps, 4)
    choice = min(seconds, key=seconds.get)
    return choice, dict(about, seconds_per_step=seconds, reason=f"timed {steps} steps each")

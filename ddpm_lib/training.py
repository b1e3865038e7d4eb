"""The training loop for L_simple (chapter 优化目标, Algorithm 1)."""
import torch

from .losses import check_images, ddpm_loss
from .sampling import BAR_FORMAT


def make_ema(model, decay=0.999):
    """EMA of the weights with warm-up: decay_n = min(decay, (1 + n) / (10 + n)).

    A fixed 0.999 from step 0 keeps ~30 % of the random init after 1,200 steps (see the book).
    Returns a diffusers ``EMAModel``; ``ema.copy_to(model.parameters())`` applies it.
    """
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=decay, foreach=True)


def step_generator(seed, step):
    """The CPU generator for one training step: a function of (seed, step) only, so a resumed
    run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def train(model, images, schedule, steps, batch_size=128, lr=1e-3, seed=0, progress=True,
          optimizer=None, ema=None, start_step=0, callback=None):
    """Minimise L_simple with AdamW (优化目标, Algorithm 1); returns the loss of each step.

    model: a denoiser on its device; images: (N, C, H, W) in [-1, 1] (any device);
    steps: total steps, of which start_step are already done (resume); each step draws its
    batch, t and eps from ``step_generator(seed, step)``, so on CPU the run is deterministic
    and resuming repeats nothing. optimizer defaults to AdamW(lr); ema (``make_ema``) is
    updated after each step; callback(step, loss_tensor) runs after each step (1-based step).
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
    param = next(model.parameters())
    device = param.device
    images = images.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    N, T = images.shape[0], schedule.num_timesteps
    for step in tqdm(range(start_step, steps), desc="train", initial=start_step, total=steps,
                     disable=not progress, bar_format=BAR_FORMAT):
        # 1. x_0 from the data, t ~ U{0..T-1}, eps ~ N(0, I), all from this step's generator
        g = step_generator(seed, step)
        idx = torch.randint(0, N, (batch_size,), generator=g)
        t = torch.randint(0, T, (batch_size,), generator=g)
        noise = torch.randn((batch_size, *images.shape[1:]), generator=g)
        x0 = images[idx.to(device)]
        # 2. gradient step on ||eps - eps_theta(x_t, t)||^2
        loss = ddpm_loss(model, x0, schedule, t=t.to(device), noise=noise.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.step(model.parameters())
        loss = loss.detach()
        losses.append(loss)
        if callback is not None:
            callback(step + 1, loss)
    return torch.stack(losses).tolist() if losses else []

"""Ancestral sampling, DDPM Algorithm 2 (chapter 反向过程)."""
import contextlib

import torch

from . import fastpaths
from .models import as_denoiser, model_in_channels

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt}"  # no rate/ETA: stable text
# Below this batch, two half-batch threads are slower than one batch on all cores. UNet2DModel on
# 2 cores, ms/step, split vs one batch (from 4 images both under fast_inference): 26.7/23.3 at 2
# images, 70.5/49.9 at 8, 95.8/83.6 at 16, 177.5/182.2 at 32, 320.2/327.5 at 64.
SPLIT_MIN_BATCH = 32


def _model_device(model, device):
    if device is not None:
        return torch.device(device)
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")


@torch.inference_mode()
def sample(model, schedule, shape, generator=None, progress=True, return_trajectory=False,
           clip_x0=False, variance_type="fixed_small", device=None, fast=True, precision="fp32",
           channels_last=False):
    """Draw x_0 ~ p_theta by ancestral sampling (反向过程, Algorithm 2).

    x_T ~ N(0, I); for t = T-1 … 0 (0-based): x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I),
    with no noise at t = 0. sigma_t^2 = beta-tilde_t ("fixed_small", diffusers' default) or beta_t
    ("fixed_large"). clip_x0=True clamps the predicted x_0 to [-1, 1] first (diffusers'
    clip_sample); off by default, so the loop is the paper's.
    shape: (B, C, H, W); generator: a torch.Generator (its device draws the noise).
    fast: on CUDA, replay the model's forward pass as one CUDA graph per step (the loop is
    launch-bound there; the noise is drawn up front in the same order); on a CPU with two or
    more threads and batches of ``SPLIT_MIN_BATCH`` (32) or more, run the two halves of the
    batch on two threads, half the cores each; and for batches of 4 or more, run the model
    under ``fastpaths.fast_inference`` (cheaper attention, output conv, upsampling and in-place
    blocks, and NHWC activations inside a UNet2DModel; below 4 images their extra small
    operations cost about what they save); on CPU in fp32, replay the book's models
    (``fastpaths.traceable``) as a TorchScript trace made on the first step (``fastpaths.traced``).
    Either way the result equals the plain loop's to float rounding (tested).
    precision: "fp32" (default) or "bf16" (the model runs under bf16 autocast, opt-in: faster on
    CPUs with bf16 instructions; samples differ from fp32 by the tolerance the book states).
    channels_last: convert the model's memory format in place (faster for BasicUNet's 5x5
    convolutions on CPU, slower for UNet2DModel; same result to float rounding).
    Returns x_0 (B, C, H, W), or (x_0, trajectory) with trajectory a (T+1, B, C, H, W) CPU
    tensor [x_T, …, x_0] if return_trajectory.
    """
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be (B, C, H, W) of positive ints, got {shape}")
    c = model_in_channels(model)
    if c is not None and shape[1] != c:
        raise ValueError(f"shape has {shape[1]} channels but the model expects {c}")
    if variance_type == "fixed_small":
        variances = schedule.posterior_variance
    elif variance_type == "fixed_large":
        variances = schedule.betas
    else:
        raise ValueError(f"variance_type must be 'fixed_small' or 'fixed_large', got {variance_type!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    from tqdm import tqdm

    device = _model_device(model, device)
    gen_device = generator.device if generator is not None else device
    eps_fn = as_denoiser(model)
    if hasattr(model, "eval"):
        model.eval()
    if channels_last and isinstance(model, torch.nn.Module):
        model.to(memory_format=torch.channels_last)
    # per-step scalars as Python floats: no gather/broadcast work inside the loop
    coef_x = schedule.sqrt_recip_alphas.tolist()
    coef_eps = (schedule.sqrt_recip_alphas * schedule.eps_coef).tolist()
    sigmas = variances.sqrt().tolist()
    sqrt_recip_ac = schedule.sqrt_recip_alphas_cumprod.tolist()
    sqrt_recipm1_ac = schedule.sqrt_recipm1_alphas_cumprod.tolist()
    c1, c2 = schedule.posterior_mean_coef1.tolist(), schedule.posterior_mean_coef2.tolist()

    T, B = schedule.num_timesteps, shape[0]
    use_graph = fast and device.type == "cuda" and isinstance(model, torch.nn.Module)
    use_split = (fast and device.type == "cpu" and isinstance(model, torch.nn.Module) and B >= SPLIT_MIN_BATCH
                 and torch.get_num_threads() >= 2)
    use_layers = fast and device.type == "cpu" and isinstance(model, torch.nn.Module) and B >= 4
    use_trace = fast and device.type == "cpu" and isinstance(model, torch.nn.Module) and precision == "fp32"
    if precision == "bf16":
        eps_fn = _autocast_bf16(eps_fn, device)
    with contextlib.ExitStack() as stack:
        if use_layers:
            stack.enter_context(fastpaths.fast_inference(model))
        if use_trace and fastpaths.traceable(model):
            eps_fn = fastpaths.traced(model, eps_fn)
        if use_split:
            stack.enter_context(fastpaths.threads_per_part())
            eps_fn = _split(eps_fn)

        def draw():
            return torch.randn(shape, generator=generator, device=gen_device).to(device)

        # 1. x_T ~ N(0, I)
        x = draw()
        if use_graph:
            zs = [draw() for _ in range(T - 1)]  # z for t = T-1 … 1, the plain loop's order
            eps_fn = _graphed(eps_fn, x, B, device)
        trajectory = [x.cpu()] if return_trajectory else None
        for t in tqdm(range(T - 1, -1, -1), desc="sample", disable=not progress, bar_format=BAR_FORMAT):
            # 2. eps_theta(x_t, t)
            eps = eps_fn(x, torch.full((B,), t, device=device, dtype=torch.long) if not use_graph else t)
            # 3. mean of p_theta(x_{t-1} | x_t), eq. mu-eps (or via a clipped x_0 and eq. mu-tilde)
            if clip_x0:
                x0_pred = (sqrt_recip_ac[t] * x - sqrt_recipm1_ac[t] * eps).clamp(-1, 1)
                mean = c1[t] * x0_pred + c2[t] * x
            else:
                mean = coef_x[t] * x - coef_eps[t] * eps
            # 4. add sigma_t z, except at the last step (t = 0), which returns the mean
            if t > 0:
                z = zs[T - 1 - t] if use_graph else draw()
                x = mean + sigmas[t] * z
            else:
                x = mean
            if return_trajectory:
                trajectory.append(x.cpu())
        if return_trajectory:
            return x, torch.stack(trajectory)
        return x


def _autocast_bf16(eps_fn, device):  # the model under bf16 autocast, eps back in float32
    def f(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return eps_fn(x, t).float()
    return f


def _split(eps_fn):  # each half of the batch on its own thread and core
    return lambda x, t: torch.cat(fastpaths.split_batch(eps_fn, x, t))


def _graphed(eps_fn, x, B, device):
    """Capture eps_fn on static (x, t) buffers as a CUDA graph; returns f(x, t_int) -> eps."""
    static_x = x.clone()
    static_t = torch.zeros(B, dtype=torch.long, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph (cudnn picks its kernels)
        for _ in range(2):
            eps_fn(static_x, static_t)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_eps = eps_fn(static_x, static_t)

    def f(xt, t):
        static_x.copy_(xt)
        static_t.fill_(t)
        graph.replay()
        return static_eps
    return f

"""Checks of user input at the public entry points: a ValueError naming the argument and what
was expected. Value scans (betas, a timestep tensor's range, training images) run once a call."""
import torch


def check_int(value, name, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_betas(betas):
    """A non-empty 1-D float64 tensor of values in (0, 1)."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    if torch.isnan(betas).any():
        raise ValueError("betas must not contain NaN")
    if not ((betas > 0) & (betas < 1)).all():
        raise ValueError("betas must lie in the open interval (0, 1)")
    return betas


def check_tensor(x, name, like=None, like_name=None):
    """A floating-point tensor with a batch dimension (and the shape of ``like``, if given)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point or x.ndim < 1:
        raise ValueError(f"{name} must be a floating-point tensor with a batch dimension, "
                         f"got dtype {x.dtype}, shape {tuple(x.shape)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, "
                         f"got {tuple(x.shape)}")
    return x


def check_timesteps(t, x, num_timesteps, name="t"):
    """t (an int, or an integer tensor of shape (B,) or () on any device) as 0-based timesteps
    for the batch x: a LongTensor of shape (B,) on x's device."""
    B, T = x.shape[0], num_timesteps
    if isinstance(t, int) and not isinstance(t, bool):
        if not 0 <= t < T:
            raise ValueError(f"{name} must lie in [0, {T - 1}] (0-based), got {t}")
        return torch.full((B,), t, dtype=torch.long, device=x.device)
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype.is_complex \
            or t.dtype == torch.bool:
        what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be an int or an integer tensor, got {what}")
    t = t.reshape(1).expand(B) if t.ndim == 0 else t
    if t.shape != (B,):
        raise ValueError(f"{name} must have shape ({B},), got {tuple(t.shape)}")
    if B and (t.min() < 0 or t.max() >= T):
        raise ValueError(f"{name} must lie in [0, {T - 1}] (0-based), "
                         f"got min {t.min().item()}, max {t.max().item()}")
    return t.long().to(x.device)


def check_images(shape, model, name):
    """A (B, C, H, W) shape (a tuple, or a tensor's) whose C is what the model expects."""
    from .models import model_in_channels

    if isinstance(shape, torch.Tensor) or not isinstance(shape, (tuple, list, torch.Size)):
        shape = check_tensor(shape, name).shape
    if len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"{name} must be (B, C, H, W) of positive sizes, got {tuple(shape)}")
    c = model_in_channels(model)
    if c is not None and shape[1] != c:
        raise ValueError(f"{name} has {shape[1]} channels but the model expects {c}")
    return tuple(shape)


def check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, "
                         f"got {type(generator).__name__}")
    return generator

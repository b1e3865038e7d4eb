"""Denoisers and the one calling contract every part of ddpm_lib uses: ``eps = model(x_t, t)``,
or ``model(x_t, t, class_labels=c)`` for a class-conditional one (chapter 条件生成)."""
import torch

from .basic_unet import BasicUNet, BasicUNetFixed
from .unet2d import make_small_unet2d, make_unet2d
from ..validation import check_choice

MODEL_NAMES = ("basic", "basic-fixed", "unet2d", "unet2d-small")


def build_model(name, num_timesteps=1000, **kwargs):
    """Build a fresh model by CLI name: "basic" (seed), "basic-fixed", "unet2d" (seed config) or
    "unet2d-small" (chapter 8; kwargs go to ``make_small_unet2d``)."""
    check_choice(name, "model", MODEL_NAMES)
    if name == "unet2d-small":
        return make_small_unet2d(**kwargs)
    if name == "basic-fixed":
        return BasicUNetFixed(num_timesteps=num_timesteps)
    return BasicUNet() if name == "basic" else make_unet2d()


def as_denoiser(model):
    """Adapt a model to ``eps = f(x_t, t, class_labels=None)``: the seed's BasicUNet ignores t;
    any other callable is called as ``model(x_t, t)``, or ``model(x_t, t, class_labels=c)`` when
    labels are given, and an output with ``.sample`` (diffusers') is unwrapped."""
    if type(getattr(model, "_orig_mod", model)) is BasicUNet:  # _orig_mod: under torch.compile
        return lambda xt, t, class_labels=None: model(xt)
    if not callable(model):
        raise ValueError(f"model must be callable as model(x_t, t), got {type(model).__name__}")

    def f(xt, t, class_labels=None):
        out = model(xt, t) if class_labels is None else model(xt, t, class_labels=class_labels)
        return out.sample if hasattr(out, "sample") else out
    return f


def model_device(model):
    """The device of a model's parameters; the CPU for a model without any."""
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    return next(params, torch.zeros(0)).device


def num_classes(model):
    """K, the classes of a class-conditional model (its class embeddings less the null label),
    or None for an unconditional one; sees through torch.compile, DDP and ddpm_lib's wrappers."""
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    if hasattr(model, "num_classes"):
        return model.num_classes
    n = getattr(getattr(model, "config", None), "num_class_embeds", None)
    return None if n is None else n - 1


def model_in_channels(model):
    """The input channel count a model expects (x_t's channels), or None if it cannot tell."""
    if hasattr(getattr(model, "config", None), "in_channels"):
        return model.config.in_channels
    if isinstance(model, BasicUNetFixed):
        return model.down_layers[0].in_channels - 1
    if isinstance(model, BasicUNet):
        return model.down_layers[0].in_channels
    return getattr(model, "in_channels", None)

"""ddpm_lib — the small library behind the DDPM book. Names follow the book's notation."""
from .checkpoints import load_checkpoint, pretrained, pretrained_samples, save_checkpoint
from .data import Digits, load_mnist
from .fast_sampling import ddim_invert, ddim_sample, respace, respaced_sample, spaced_timesteps
from .forward import q_sample, q_step
from .losses import ddpm_loss
from .models import BasicUNet, BasicUNetFixed, as_denoiser, build_model, make_unet2d
from .posterior import p_mean, predict_x0, q_posterior
from .sampling import sample
from .schedule import NoiseSchedule, extract
from .training import make_ema, train

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "extract", "q_sample", "q_step", "q_posterior", "predict_x0", "p_mean",
    "ddpm_loss", "sample", "train", "make_ema", "BasicUNet", "BasicUNetFixed", "make_unet2d",
    "as_denoiser", "build_model", "load_mnist", "Digits", "save_checkpoint", "load_checkpoint",
    "pretrained", "pretrained_samples", "spaced_timesteps", "respace", "respaced_sample",
    "ddim_sample", "ddim_invert",
]

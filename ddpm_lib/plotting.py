"""Figures for the book: image grids, and the font that lets their labels be Chinese."""
import os

import torch

FONT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fonts", "ddpm-book-cjk-subset.otf")


def use_book_font():
    """Chinese figure titles and labels on any machine, a CJK font installed or not: register the
    shipped subset of Noto Sans CJK SC (tools/make_font.py; the characters of the book's code
    cells) and let matplotlib fall back to it glyph by glyph after DejaVu Sans (Latin, digits).
    Returns the font's family name."""
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    font_manager.fontManager.addfont(FONT)
    name = font_manager.FontProperties(fname=FONT).get_name()
    plt.rcParams["font.family"] = ["DejaVu Sans", name]
    return name


def to_grid(images, nrow=8, padding=2):
    """Images in [-1, 1], (B, C, H, W) -> one (H', W') or (H', W', C) float array in [0, 1] for imshow."""
    from torchvision.utils import make_grid

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)
    return grid[0].numpy() if images.shape[1] == 1 else grid.permute(1, 2, 0).numpy()


def show_images(images, nrow=8, ax=None, title=None):
    """Draw images in [-1, 1], (B, C, H, W), as a grid on ``ax`` (a new figure if None); returns ax."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(min(8, 1.0 * nrow), min(8, 1.0 * ((images.shape[0] + nrow - 1) // nrow))))
    ax.imshow(to_grid(images, nrow=nrow), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax

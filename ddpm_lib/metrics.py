"""Sample quality for digits (chapter 6): in the feature space of a small classifier (trained by
``tools/make_weights.py``), the Fréchet distance to held-out digits, the confident fraction and
the class entropy. Reference sets: the 1,000 embedded test digits in a fixed shuffled order,
the first 256 the "real" comparison set, the other 744 the reference for the distance.
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .data import load_mnist

N_EVAL = 256
WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights", "classifier")


class DigitClassifier(nn.Module):
    """Two conv blocks and a 128-d feature layer; ``features(x)`` is what the distance uses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
        )
        self.fc = nn.Linear(64 * 7 * 7, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def load_classifier():
    """The shipped classifier (weights checked against their sha256)."""
    from .checkpoints import load_tensors

    model = DigitClassifier()
    model.load_state_dict(load_tensors(WEIGHTS_DIR, "model"))
    return model.eval()


@torch.no_grad()
def _predict(classifier, images, batch_size=500):
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = classifier.features(images[i:i + batch_size].float().clamp(-1, 1))
        feats.append(f)
        probs.append(classifier.head(f).softmax(-1))
    return torch.cat(feats).double(), torch.cat(probs)


def frechet_distance(feats_a, feats_b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between two (N, D) feature sets."""
    import numpy as np

    a, b = feats_a.double().numpy(), feats_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr (S_a S_b)^{1/2} = sum of sqrt(eigenvalues of S_a^{1/2} S_b S_a^{1/2}), a symmetric PSD
    # matrix: eigh is exact and stable even when S_a is singular (as for noise images)
    w, v = np.linalg.eigh(s_a)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(half @ s_b @ half), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def reference_sets():
    """(real, reference): 256 and 744 embedded test digits in a fixed shuffled order."""
    test = load_mnist("test", source="embedded")
    perm = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(0))
    return test.images[perm[:N_EVAL]], test.images[perm[N_EVAL:]]


def evaluate(images, classifier=None, reference=None):
    """Quality of (N, 1, 28, 28) images in [-1, 1]: dict with frechet (vs the 744 reference digits),
    confident (fraction with max p >= 0.9), entropy_bits (of the predicted-class histogram; max
    log2(10) = 3.32) and counts (per predicted class)."""
    classifier = load_classifier() if classifier is None else classifier
    if reference is None:
        reference = reference_sets()[1]
    f, p = _predict(classifier, images)
    f_ref, _ = _predict(classifier, reference)
    conf, pred = p.max(-1)
    counts = torch.bincount(pred, minlength=10)
    q = counts.double() / counts.sum()
    entropy = sum(-float(v) * math.log2(float(v)) for v in q if v > 0)  # 0.0, not -0.0, for one class
    return {"frechet": frechet_distance(f, f_ref), "confident": float((conf >= 0.9).double().mean()),
            "entropy_bits": entropy, "counts": counts.tolist()}


def baselines(classifier=None):
    """The real-vs-real floor and the noise ceiling, as evaluate() dicts."""
    real, ref = reference_sets()
    noise = torch.randn(N_EVAL, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    classifier = load_classifier() if classifier is None else classifier
    return {"real": evaluate(real, classifier, ref), "noise": evaluate(noise, classifier, ref)}

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


def _entropy_bits(pred):
    q = torch.bincount(pred, minlength=10).double() / len(pred)
    return sum(-float(v) * math.log2(float(v)) for v in q if v > 0)  # 0.0, not -0.0, for one class


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
    return {"frechet": frechet_distance(f, f_ref), "confident": float((conf >= 0.9).double().mean()),
            "entropy_bits": _entropy_bits(pred), "counts": torch.bincount(pred, minlength=10).tolist()}


def baselines(classifier=None):
    """The real-vs-real floor and the noise ceiling, as evaluate() dicts."""
    real, ref = reference_sets()
    noise = torch.randn(N_EVAL, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    classifier = load_classifier() if classifier is None else classifier
    return {"real": evaluate(real, classifier, ref), "noise": evaluate(noise, classifier, ref)}


# Uncertainty (issue #32): the intervals and yardsticks the chapters read a comparison against.

def share_interval(k, n, level=0.95):
    """Exact (Clopper-Pearson) interval for a share of k successes in n trials: the p at which
    P(X >= k | p) and P(X <= k | p) equal (1 - level) / 2, each found by bisection."""
    def cdf(j, p):  # P(X <= j) for X ~ Binomial(n, p), 0 < p < 1
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                            + i * math.log(p) + (n - i) * math.log1p(-p)) for i in range(j + 1))

    def root(f):  # f increases in p from negative to positive on (0, 1)
        lo, hi = 0.0, 1.0
        for _ in range(50):
            lo, hi = ((lo + hi) / 2, hi) if f((lo + hi) / 2) < 0 else (lo, (lo + hi) / 2)
        return (lo + hi) / 2

    a = (1 - level) / 2
    low = 0.0 if k == 0 else root(lambda p: 1 - cdf(k - 1, p) - a)
    high = 1.0 if k == n else root(lambda p: a - cdf(k, p))
    return low, high


def bootstrap(statistic, *samples, n_boot=200, level=0.95, seed=0):
    """Percentile interval of statistic(*samples) when the N rows are resampled with replacement.
    The same indices resample every argument, so the statistic of paired sets (a difference of
    two samplers from the same x_T) keeps its pairing."""
    g = torch.Generator().manual_seed(seed)
    n = len(samples[0])
    values = sorted(statistic(*(s[idx] for s in samples))
                    for idx in (torch.randint(n, (n,), generator=g) for _ in range(n_boot)))
    return values[int((1 - level) / 2 * n_boot)], values[int((1 + level) / 2 * n_boot) - 1]


def frechet_spread(n, classifier=None, reference=None, sets=15):
    """How much the FD of n real digits moves from one set of n to another: (mean, standard
    deviation) of the FD of `sets` disjoint sets of n embedded training digits (none of them in
    the reference) against the reference. A bootstrap cannot give this: repeated images shrink
    the feature covariance and lift every resampled FD far above the FD of the set itself."""
    classifier = load_classifier() if classifier is None else classifier
    reference = reference_sets()[1] if reference is None else reference
    train = load_mnist("train", source="embedded").images
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    if sets * n > len(train):
        raise ValueError(f"{sets} disjoint sets of {n} need {sets * n} digits; there are {len(train)}")
    f, _ = _predict(classifier, train[perm[:sets * n]])
    f_ref, _ = _predict(classifier, reference)
    fds = torch.tensor([frechet_distance(f[i * n:(i + 1) * n], f_ref) for i in range(sets)])
    return float(fds.mean()), float(fds.std())


def intervals(images, classifier=None, reference=None, n_boot=200, level=0.95):
    """evaluate(images) plus its uncertainty: the exact binomial interval of the confident share,
    a bootstrap interval (images resampled) of the entropy, and beside the FD the spread of the
    FD of real digits at the same n (``frechet_spread``): compare FDs at equal n only, and read a
    gap smaller than about two of those standard deviations as no difference."""
    classifier = load_classifier() if classifier is None else classifier
    reference = reference_sets()[1] if reference is None else reference
    row = evaluate(images, classifier, reference)
    _, p = _predict(classifier, images)
    conf, pred = p.max(-1)
    row["n"] = len(images)
    row["confident_interval"] = share_interval(int((conf >= 0.9).sum()), len(images), level)
    row["entropy_interval"] = bootstrap(_entropy_bits, pred, n_boot=n_boot, level=level)
    row["frechet_real_spread"] = frechet_spread(len(images), classifier, reference)
    return row


def seed_spread(values):
    """Mean, sample standard deviation and n of one number over training seeds (n = 1: no spread)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "n": n}

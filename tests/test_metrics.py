"""The uncertainty helpers of ddpm_lib.metrics (issue #32) against independent references."""
import math

import pytest
import torch
from scipy import stats

from ddpm_lib import metrics


@pytest.mark.parametrize("k,n", [(0, 20), (1, 20), (228, 256), (256, 256), (17, 40)])
def test_share_interval_is_the_exact_clopper_pearson_interval(k, n):
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    low, high = metrics.share_interval(k, n)
    assert abs(low - ref.low) < 1e-9 and abs(high - ref.high) < 1e-9
    # a normal-approximation interval would differ here: p-hat +- 1.96 s.e. is symmetric
    if 0 < k < n:
        p = k / n
        assert abs((high - p) - (p - low)) > 1e-4


def test_bootstrap_of_a_mean_has_the_normal_width_and_keeps_pairs():
    x = torch.randn(2000, generator=torch.Generator().manual_seed(0)).double()
    low, high = metrics.bootstrap(lambda a: float(a.mean()), x, n_boot=400)
    width = 2 * 1.96 * float(x.std()) / math.sqrt(len(x))
    assert low < float(x.mean()) < high
    assert abs((high - low) / width - 1) < 0.15
    # paired sets: the same indices resample both, so identical sets differ by exactly 0,
    # and a constant shift stays exactly that shift
    d = metrics.bootstrap(lambda a, b: float((a - b).mean()), x, x + 0.25)
    assert d == pytest.approx((-0.25, -0.25))


def test_intervals_bracket_the_numbers_of_real_digits():
    real, ref = metrics.reference_sets()
    row = metrics.intervals(real, reference=ref, n_boot=100)
    assert row["n"] == 256
    k = round(row["confident"] * 256)
    assert row["confident_interval"] == metrics.share_interval(k, 256)
    lo, hi = row["confident_interval"]
    assert lo < row["confident"] < hi and hi - lo > 0.04
    lo, hi = row["entropy_interval"]
    assert lo <= row["entropy_bits"] <= hi + 0.02 and hi - lo > 0.005
    mean, sd = row["frechet_real_spread"]
    # the real test digits are one more set of 256 real digits: their FD lies inside the spread
    # of the training sets', which is far narrower than that FD itself
    assert abs(row["frechet"] - mean) < 3 * sd and 0.5 < sd < mean / 4


def test_a_bootstrap_fd_lies_above_the_fd_of_the_set_itself():
    # why frechet_spread exists: resampling with replacement lifts every FD
    real, ref = metrics.reference_sets()
    clf = metrics.load_classifier()
    f, f_ref = (clf.features(x).double().detach() for x in (real, ref))
    fd = metrics.frechet_distance(f, f_ref)
    lo, hi = metrics.bootstrap(lambda a: metrics.frechet_distance(a, f_ref), f, n_boot=50)
    assert fd < lo


def test_seed_spread():
    assert metrics.seed_spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert math.isnan(metrics.seed_spread([0.5])["sd"])

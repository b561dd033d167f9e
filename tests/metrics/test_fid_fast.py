"""FID without the matrix square root (training hook, bootstrap) and the FID ratio."""

import numpy as np
import pytest

from medsynth.metrics.evaluate import fid_ratio
from medsynth.metrics.fid import (
    feature_stats,
    fid_bootstrap,
    fid_from_features,
    fid_from_features_fast,
    fid_stats_features_fast,
)


def test_fast_fid_of_sampled_gaussians_approaches_the_closed_form():
    """Large samples of N(0, I) and N(m, diag(lam)): the fast FID (no sqrtm) converges to
    |m|^2 + sum((1 - sqrt(lam))^2); with 40,000 samples in 8 dimensions, within 2%."""
    rng = np.random.default_rng(3)
    d, n = 8, 40000
    m, lam = rng.normal(size=d), rng.uniform(0.25, 4.0, size=d)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) * np.sqrt(lam) + m
    expected = float((m ** 2).sum() + ((1 - np.sqrt(lam)) ** 2).sum())
    assert fid_from_features_fast(a, b) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("n1, n2, d", [(50, 40, 16), (30, 45, 64), (200, 150, 256)])
def test_fast_fid_equals_pytorch_fids_arithmetic(n1, n2, d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n2, d)) * 1.2 + 0.4
    assert fid_from_features_fast(a, b) == pytest.approx(fid_from_features(a, b), rel=1e-6)
    assert fid_stats_features_fast(*feature_stats(a), b) == pytest.approx(fid_from_features(a, b), rel=1e-6)


def test_bootstrap_interval_holds_the_estimate_shrinks_with_n_and_is_seeded():
    rng = np.random.default_rng(0)
    d = 32
    small = fid_bootstrap(rng.normal(size=(100, d)), rng.normal(size=(100, d)) + 0.3, draws=60, seed=1)
    a, b = rng.normal(size=(1000, d)), rng.normal(size=(1000, d)) + 0.3
    big = fid_bootstrap(a, b, draws=60, seed=1)
    est = fid_from_features(a, b)
    assert big["low"] < est < big["high"]
    assert big["high"] - big["low"] < (small["high"] - small["low"]) / 2
    assert big == fid_bootstrap(a, b, draws=60, seed=1)


def test_fid_ratio_is_about_one_for_real_like_data_and_large_otherwise():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(64, 64))
    train, hold, syn = (rng.normal(size=(n, 64)) @ mix for n in (300, 100, 500))
    r = fid_ratio(train, hold, syn)
    assert r["n"] == 300 and r["n_holdout"] == 100 and 0.8 < r["fid_ratio"] < 1.25
    far = fid_ratio(train, hold, syn + 10.0)
    assert far["fid_ratio"] > 3

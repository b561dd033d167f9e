"""medsynth/metrics/kid.py: KID = unbiased MMD^2 with the cubic polynomial kernel, as torch-fidelity."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.metrics.kid import kid_from_features, mmd2_unbiased, polynomial_kernel


def _k(x, y):
    """k(x, y) = (x . y / d + 1)^3, one pair at a time."""
    return (sum(float(a) * float(b) for a, b in zip(x, y)) / len(x) + 1.0) ** 3


def _direct_mmd2(x, y):
    """Bińkowski et al. 2018's unbiased MMD^2, written out with explicit O(m^2) loops."""
    m = len(x)
    xx = sum(_k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(_k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(_k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_polynomial_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    k = polynomial_kernel(x, y)
    assert k.shape == (3, 4)
    assert k[2, 1] == pytest.approx(_k(x[2], y[1]), rel=1e-13)


def test_kid_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    direct = _direct_mmd2(x, y)
    assert mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y)) == \
        pytest.approx(direct, rel=1e-12)
    # one subset of the whole set: a permutation, which MMD does not see
    res = kid_from_features(x, y, subsets=1, subset_size=12)
    assert res.mean == pytest.approx(direct, rel=1e-12) and res.std == 0 and res.subset_size == 12


def test_kid_subsets_are_drawn_like_torch_fidelity():
    """100-subset default mechanics: RandomState(seed), choice(n, m, replace=False) for set 1 then set 2."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((25, 4)) * 1.1
    res = kid_from_features(a, b, subsets=5, subset_size=10, seed=7)
    draws = np.random.RandomState(7)
    mmds = []
    for _ in range(5):
        x = a[draws.choice(30, 10, replace=False)]
        y = b[draws.choice(25, 10, replace=False)]
        mmds.append(_direct_mmd2(x, y))
    assert res.mean == pytest.approx(np.mean(mmds), rel=1e-12)
    assert res.std == pytest.approx(np.std(mmds), rel=1e-9)
    assert kid_from_features(a, b, subsets=5, subset_size=10, seed=7) == res  # seeded
    assert kid_from_features(a, b, subsets=5, subset_size=10, seed=8) != res


def test_kid_of_the_same_distribution_is_zero_within_its_std():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((400, 16))
    same = kid_from_features(a, a, subsets=50, subset_size=100)
    assert abs(same.mean) <= 2 * same.std
    fresh = kid_from_features(a, rng.standard_normal((400, 16)), subsets=50, subset_size=100)
    assert abs(fresh.mean) <= 2 * fresh.std
    shifted = kid_from_features(a, rng.standard_normal((400, 16)) + 0.5, subsets=50, subset_size=100)
    assert shifted.mean > 5 * shifted.std


def test_subset_size_is_capped_at_the_set_sizes():
    rng = np.random.default_rng(4)
    res = kid_from_features(rng.standard_normal((9, 3)), rng.standard_normal((15, 3)), subsets=3)
    assert res.subset_size == 9 and res.subsets == 3
    with pytest.raises(ValueError, match="at least 2"):
        kid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))


def test_kid_on_real_features(our_features):
    """Real Inception features: two chest X-ray sets are closer than chest X-ray vs brain MRI."""
    cxr = kid_from_features(our_features["cxr_a"], our_features["cxr_b"], subsets=20)
    mri = kid_from_features(our_features["cxr_a"], our_features["mrbrain"], subsets=20)
    assert mri.mean > 3 * max(cxr.mean, 0) and mri.mean > 0 and cxr.subset_size == 8

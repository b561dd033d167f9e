r"""Kernel Inception Distance (Bińkowski et al. 2018), as torch-fidelity computes it.

KID is the squared maximum mean discrepancy (MMD) between two sets of Inception features under
the cubic polynomial kernel

    k(x, y) = (x . y / d + 1)^3        (d = feature dimension, 2048 for Inception pool3)

estimated without bias on random subsets. For subsets X = {x_1..x_m}, Y = {y_1..y_m} of equal
size m (Bińkowski et al. 2018, eq. for MMD^2_u; torch-fidelity's ``mmd_est="unbiased"``):

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j)
            + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
            - 2/m^2      sum_{i, j}   k(x_i, y_j)

Unlike FID it is unbiased in the number of samples, so small sets (hundreds of images) are
comparable, and it can be slightly negative. :func:`kid_from_features` averages it over
``subsets`` random subset pairs of ``subset_size`` and returns the mean and the standard
deviation (``np.std``, ddof 0) over subsets. Defaults follow torch-fidelity: 100 subsets of 1000,
seed 2020, subsets drawn by ``np.random.RandomState(seed).choice(n, m, replace=False)`` (first
set, then second, per subset), so the same features give torch-fidelity's numbers. Unlike
torch-fidelity, which refuses sets smaller than the subset size, the subset size is capped at the
smaller set; and the arithmetic is float64 (torch-fidelity's features are float32).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["KIDResult", "kid_from_features", "mmd2_unbiased", "polynomial_kernel"]

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020
KID_DEGREE = 3
KID_COEF0 = 1.0


class KIDResult(NamedTuple):
    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(x, y, degree: int = KID_DEGREE, gamma: float | None = None, coef0: float = KID_COEF0):
    """``(x @ y.T * gamma + coef0) ** degree`` with ``gamma = 1 / d`` by default."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx, k_xy, k_yy) -> float:
    """Unbiased MMD^2 from the three m x m kernel matrices (see the module docstring)."""
    m = k_xx.shape[0]
    if k_xx.shape != (m, m) or k_xy.shape != (m, m) or k_yy.shape != (m, m):
        raise ValueError(f"kernel matrices: expected three {m}x{m} matrices, got "
                         f"{k_xx.shape}, {k_xy.shape}, {k_yy.shape}")
    if m < 2:
        raise ValueError("MMD: need subsets of at least 2 samples")
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(features_a, features_b, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                      seed: int = KID_SEED, degree: int = KID_DEGREE, gamma: float | None = None,
                      coef0: float = KID_COEF0) -> KIDResult:
    """KID between feature sets (N, D) and (M, D): mean and std of MMD^2_u over random subset pairs."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features: expected two arrays (N, D) and (M, D), got {a.shape} and {b.shape}")
    if int(subsets) < 1:
        raise ValueError(f"subsets: expected >= 1, got {subsets}")
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set and subset_size >= 2 "
                         f"(sets of {a.shape[0]} and {b.shape[0]}, subset_size {subset_size})")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(int(subsets))
    for i in range(int(subsets)):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        mmds[i] = mmd2_unbiased(polynomial_kernel(x, x, degree, gamma, coef0),
                                polynomial_kernel(x, y, degree, gamma, coef0),
                                polynomial_kernel(y, y, degree, gamma, coef0))
    return KIDResult(float(np.mean(mmds)), float(np.std(mmds)), int(subsets), m)

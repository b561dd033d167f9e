"""Fréchet Inception Distance (Heusel et al. 2017), with pytorch-fid's numerics.

FID fits a Gaussian to each set of Inception features (:mod:`medsynth.metrics.features`) and
returns the squared Fréchet (2-Wasserstein) distance between the two Gaussians::

    FID = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

``mu`` is the mean of the features and ``S`` their covariance with the 1/(n-1) normalisation
(``np.mean(axis=0)``, ``np.cov(rowvar=False)``, in float64). :func:`frechet_distance` performs the
same sequence of NumPy/SciPy operations as ``pytorch_fid.fid_score.calculate_frechet_distance``
(Dougal Sutherland's stable version), so the same statistics give the same number; it differs only
in reporting: warnings instead of ``print`` (stdout stays clean for ``--json``) and no use of
``scipy.linalg.sqrtm``'s ``disp`` argument, deprecated in SciPy 1.16 and removed in 1.18 (the
matrix square root it returns is the same).

Cost: ``sqrtm`` of a 2048x2048 matrix (a Schur decomposition) takes tens of seconds on a laptop
CPU; this is the price of pytorch-fid's exact numerics.

Statistics files are pytorch-fid's ``.npz`` format (arrays ``mu`` and ``sigma``), so
``python -m pytorch_fid stats.npz other.npz`` reads ours and :func:`load_stats` reads theirs.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from scipy import linalg

__all__ = ["feature_stats", "fid_from_features", "frechet_distance", "load_stats", "save_stats"]


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> ``(mu, sigma)`` in float64, as pytorch-fid: ``np.mean(axis=0)``, ``np.cov(rowvar=False)``."""
    act = np.asarray(features, dtype=np.float64)
    if act.ndim != 2:
        raise ValueError(f"features: expected a 2D array (N, D), got shape {act.shape}")
    if act.shape[0] < 2:
        raise ValueError(f"features: need at least 2 samples for a covariance, got {act.shape[0]}")
    if not np.isfinite(act).all():
        raise ValueError("features: contain NaN or Inf")
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm(a)``: the same matrix as pytorch-fid's ``sqrtm(a, disp=False)[0]``, on every SciPy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return linalg.sqrtm(a, disp=False)[0]  # SciPy < 1.18 (>= 1.16 deprecates `disp`)
        except TypeError:
            return linalg.sqrtm(a)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid computes it.

    ``|mu1 - mu2|^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrtm(sigma1 @ sigma2))``. If the matrix square
    root is not finite, ``eps`` is added to both diagonals and it is tried again; a complex result is
    accepted when the imaginary parts of its diagonal are within 1e-3 of zero (its real part is
    used), else ``ValueError``, as in pytorch-fid.
    """
    mu1 = np.atleast_1d(mu1)
    mu2 = np.atleast_1d(mu2)
    sigma1 = np.atleast_2d(sigma1)
    sigma2 = np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different shapes: {sigma1.shape} vs {sigma2.shape}")
    if sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariance shape {sigma1.shape} does not match mean shape {mu1.shape}")

    diff = mu1 - mu2

    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the product of covariances is singular; adding {eps} to their diagonals",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))

    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: imaginary component {m} in the matrix square root")
        covmean = covmean.real

    tr_covmean = np.trace(covmean)

    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(features_a, features_b) -> float:
    """FID between two sets of features (N, D) and (M, D)."""
    mu1, s1 = feature_stats(features_a)
    mu2, s2 = feature_stats(features_b)
    return frechet_distance(mu1, s1, mu2, s2)


def save_stats(path: str | os.PathLike, mu, sigma) -> None:
    """Write ``mu``, ``sigma`` as pytorch-fid does (``np.savez_compressed(path, mu=..., sigma=...)``), atomically.

    Unlike ``np.savez_compressed``, no ``.npz`` is appended to ``path``.
    """
    from medsynth.runs import atomic_write_bytes

    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"stats: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, mu=mu, sigma=sigma)
    atomic_write_bytes(path, buf.getvalue())


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(mu, sigma)`` from a pytorch-fid ``.npz`` statistics file (ours or theirs); no pickles."""
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = f["mu"][:], f["sigma"][:]
    except KeyError as e:
        raise ValueError(f"{path}: not FID statistics (needs arrays 'mu' and 'sigma')") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return mu, sigma

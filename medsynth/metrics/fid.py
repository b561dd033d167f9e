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

__all__ = ["feature_stats", "fid_bootstrap", "fid_from_features", "fid_from_features_fast", "frechet_distance",
           "load_stats", "read_stats", "save_stats"]


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


STATS_FEATURES = "pytorch-fid InceptionV3 pool3 2048-d (FID weights), 8-bit input"
STATS_VERSION = 1


def save_stats(path: str | os.PathLike, mu, sigma, *, features_id: str = STATS_FEATURES, n: int | None = None) -> None:
    """Write ``mu``, ``sigma`` as pytorch-fid does (``np.savez_compressed(path, mu=..., sigma=...)``), atomically.

    Two small extra arrays say what made them (``medsynth_features``, ``medsynth_stats_version``, and
    ``n``, the number of images): pytorch-fid ignores them, :func:`read_stats` checks them. Unlike
    ``np.savez_compressed``, no ``.npz`` is appended to ``path``.
    """
    from medsynth.runs import atomic_write_bytes

    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"stats: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, mu=mu, sigma=sigma, medsynth_features=np.array(features_id),
                        medsynth_stats_version=np.array(STATS_VERSION), n=np.array(-1 if n is None else int(n)))
    atomic_write_bytes(path, buf.getvalue())


def read_stats(path: str | os.PathLike, features_id: str = STATS_FEATURES) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(mu, sigma, meta)`` from a statistics file, refusing one made by another feature extractor or a
    newer medsynth. A file without medsynth's marks (pytorch-fid's own ``--save-stats``) is accepted:
    pytorch-fid's features are these features; ``meta["origin"]`` says so."""
    mu, sigma = load_stats(path)
    with np.load(path, allow_pickle=False) as f:
        made_by = str(f["medsynth_features"]) if "medsynth_features" in f.files else None
        version = int(f["medsynth_stats_version"]) if "medsynth_stats_version" in f.files else None
        n = int(f["n"]) if "n" in f.files else -1
    if made_by is not None and made_by != features_id:
        raise ValueError(f"{path}: statistics of other features ({made_by!r}); this FID needs {features_id!r}. "
                         "Compute the statistics again with this medsynth")
    if version is not None and version > STATS_VERSION:
        raise ValueError(f"{path}: statistics format version {version} is newer than this medsynth reads "
                         f"({STATS_VERSION}); upgrade medsynth or compute them again")
    if mu.shape[0] != 2048 and features_id == STATS_FEATURES:
        raise ValueError(f"{path}: {mu.shape[0]}-d statistics; FID uses 2048-d Inception pool3 features")
    origin = "medsynth" if made_by else "pytorch-fid format without medsynth's marks (assumed pytorch-fid features)"
    return mu, sigma, {"origin": origin, "n": None if n < 0 else n, "version": version}


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(mu, sigma)`` from a pytorch-fid ``.npz`` statistics file (ours or theirs); no pickles."""
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = f["mu"][:], f["sigma"][:]
    except KeyError as e:
        raise ValueError(f"{path}: not FID statistics (needs arrays 'mu' and 'sigma')") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz statistics file ({e})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return mu, sigma


# --------------------------------------------------------------------------------------------
# the same distance without a 2048x2048 matrix square root: for the training hook and bootstrap


def _trace_sqrt_product(m: np.ndarray) -> float:
    """Sum of the singular values (nuclear norm) of ``m``, via the eigenvalues of its smaller Gram matrix."""
    g = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(g), 0.0, None)).sum())


def fid_from_features_fast(features_a, features_b) -> float:
    r"""FID from features without ``sqrtm``; equal to :func:`fid_from_features` up to rounding.

    With centred features X_1 (n_1 x d) and X_2, S_i = X_i^T X_i / (n_i - 1), the non-zero eigenvalues of
    S_1 S_2 are those of M M^T with M = X_1 X_2^T / sqrt((n_1 - 1)(n_2 - 1)), so
    Tr((S_1 S_2)^(1/2)) is the sum of M's singular values. For sets smaller than d this is much cheaper
    than the d x d matrix square root (2,000 vs 2,000 images: about 1 s instead of tens of seconds).
    When a set is larger than d, its covariance's symmetric square root stands in for X_i.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    fa, fb = _cov_factor(a - mu_a), _cov_factor(b - mu_b)
    diff = mu_a - mu_b
    return float(diff @ diff + (fa * fa).sum() + (fb * fb).sum() - 2.0 * _trace_sqrt_product(fa @ fb.T))


def fid_stats_features_fast(mu, sigma, features) -> float:
    """:func:`fid_from_features_fast` with the first set given as statistics (``mu``, ``sigma``)."""
    b = np.asarray(features, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    w, v = np.linalg.eigh(np.asarray(sigma, dtype=np.float64))
    fa = np.sqrt(np.clip(w, 0.0, None))[:, None] * v.T
    mu_b = b.mean(axis=0)
    fb = _cov_factor(b - mu_b)
    diff = mu - mu_b
    return float(diff @ diff + np.trace(sigma) + (fb * fb).sum() - 2.0 * _trace_sqrt_product(fa @ fb.T))


def _cov_factor(centred: np.ndarray) -> np.ndarray:
    """A with A^T A = the covariance of ``centred`` (rows = samples), with min(n, d) rows."""
    n, d = centred.shape
    if n < 2:
        raise ValueError(f"features: need at least 2 samples for a covariance, got {n}")
    if n <= d:
        return centred / np.sqrt(n - 1)
    w, v = np.linalg.eigh(centred.T @ centred / (n - 1))
    return np.sqrt(np.clip(w, 0.0, None))[:, None] * v.T


def fid_bootstrap(features_a, features_b, draws: int = 100, level: float = 0.95, seed: int = 0) -> dict:
    """Bootstrap interval of FID: both sets resampled with replacement ``draws`` times.

    The interval shows the sampling spread of FID at these set sizes, centred on the estimate itself:
    resampling with replacement repeats points, which shrinks the effective set and inflates every
    resampled FID (for 2,000 vs 2,000 Gaussian features by about half), so the draws are shifted by
    their mean excess over the estimate before their 2.5% and 97.5% quantiles are taken. FID's own
    upward bias at small sizes is neither removed nor added.

    Each draw is computed from the precomputed cross-products of the two sets (no covariance
    matrices): a few ms for hundreds of images, about 1-2 s per draw for 2,000 vs 2,000 on two CPU cores.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError(f"bootstrap FID needs at least 2 samples per set (got {na} and {nb})")
    rng = np.random.default_rng(seed)
    cross = a @ b.T                                   # x_i . y_j, reused by every draw
    sq_a, sq_b = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    values = np.empty(int(draws))
    for t in range(int(draws)):
        wa = np.bincount(rng.integers(0, na, na), minlength=na).astype(np.float64)
        wb = np.bincount(rng.integers(0, nb, nb), minlength=nb).astype(np.float64)
        ma, mb = wa @ a / na, wb @ b / nb
        ia, ib = np.flatnonzero(wa), np.flatnonzero(wb)
        # centred cross-products (x_i - ma).(y_j - mb) for the drawn points, weighted by multiplicity
        c = (cross[np.ix_(ia, ib)] - (a[ia] @ mb)[:, None] - (b[ib] @ ma)[None, :] + ma @ mb)
        c *= np.sqrt(wa[ia])[:, None] * np.sqrt(wb[ib])[None, :] / np.sqrt((na - 1) * (nb - 1))
        tr_a = (wa @ sq_a - na * (ma @ ma)) / (na - 1)
        tr_b = (wb @ sq_b - nb * (mb @ mb)) / (nb - 1)
        diff = ma - mb
        values[t] = diff @ diff + tr_a + tr_b - 2.0 * _trace_sqrt_product(c)
    estimate = fid_from_features_fast(a, b)
    shifted = values - values.mean() + estimate
    lo, hi = np.quantile(shifted, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"low": float(lo), "high": float(hi), "std": float(values.std(ddof=1)) if draws > 1 else 0.0,
            "level": level, "draws": int(draws)}

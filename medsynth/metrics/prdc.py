r"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020).

Each set of features is a cloud of points; around every point lies a ball whose radius is the
distance to its k-th nearest neighbour in its own set (k = 3 by default, the papers' choice; the
point itself does not count). With R the real and F the synthetic features, B(x, r) the open ball:

    precision = 1/|F| * #{ f in F : f in B(r, NND_k(r)) for some r in R }     (synthetic looks real)
    recall    = 1/|R| * #{ r in R : r in B(f, NND_k(f)) for some f in F }     (real is covered)
    density   = 1/(k|F|) * sum_f #{ r in R : f in B(r, NND_k(r)) }            (can exceed 1)
    coverage  = 1/|R| * #{ r in R : the nearest f is inside B(r, NND_k(r)) }

"Inside" is a strict ``<``, as in the authors' reference code (clovaai/prdc), which these
functions reproduce; distances are Euclidean, computed in float64 block by block, so memory grows
with the block size, not with |R| x |F|. Precision and density are means over synthetic points,
recall and coverage means over real points; :func:`prdc` also returns those per-point values, and
the confidence intervals of :func:`prdc_bootstrap` resample them (with the balls held fixed).

The four numbers depend on the set sizes, not only on the distributions: the synthetic balls shrink
as more synthetic images are drawn, so recall falls and coverage rises with |F| even when both sets
come from one distribution (Gaussian features of rank 64 in 2048-d, 320 real points: recall 0.70 at
|F| = 320 and 0.58 at |F| = 2,000; coverage 0.89 and 1.00). The papers compare equal-sized sets;
:func:`prdc_matched` does that for sets of different sizes: the larger set is shuffled and cut
into ``L // S`` disjoint parts of the smaller set's size S, each part is compared with the whole
smaller set, and the results are averaged (the ``L % S`` points left over are not used).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PRDC_K", "kth_neighbour_distances", "prdc", "prdc_bootstrap", "prdc_matched"]

PRDC_K = 3
_BLOCK = 1024


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _distances(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in float64."""
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def _check(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def kth_neighbour_distances(x, k: int = PRDC_K, block: int = _BLOCK) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    x = _check(x, "features")
    if not 1 <= k < len(x):
        raise ValueError(f"k-th neighbour distances need 1 <= k < number of points (k={k}, {len(x)} points)")
    sq = _sq_norms(x)
    out = np.empty(len(x))
    for s in range(0, len(x), block):
        d = _distances(x[s:s + block], x, sq[s:s + block], sq)
        # the point itself is at distance ~0 and is the smallest; the k-th neighbour is the (k+1)-th smallest
        out[s:s + block] = np.partition(d, k, axis=1)[:, k]
    return out


def prdc(real, synthetic, k: int = PRDC_K, block: int = _BLOCK) -> dict:
    """Precision, recall, density and coverage of ``synthetic`` (M, D) against ``real`` (N, D).

    Returns the four numbers plus ``per_point``: boolean/count arrays whose means they are.
    """
    r = _check(real, "real features")
    f = _check(synthetic, "synthetic features")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]}, synthetic {f.shape[1]}")
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"precision/recall need more than k={k} images per set (real {len(r)}, "
                         f"synthetic {len(f)})")
    r_rad = kth_neighbour_distances(r, k, block)
    f_rad = kth_neighbour_distances(f, k, block)
    r_sq, f_sq = _sq_norms(r), _sq_norms(f)
    in_real_balls = np.zeros(len(f), dtype=np.int64)   # per synthetic point: how many real balls hold it
    real_covered = np.zeros(len(r), dtype=bool)          # per real point: inside some synthetic ball
    nearest_syn = np.empty(len(r))                       # per real point: distance to the nearest synthetic
    for s in range(0, len(r), block):
        d = _distances(r[s:s + block], f, r_sq[s:s + block], f_sq)
        in_real_balls += (d < r_rad[s:s + block, None]).sum(axis=0)
        real_covered[s:s + block] = (d < f_rad[None, :]).any(axis=1)
        nearest_syn[s:s + block] = d.min(axis=1)
    precise = in_real_balls > 0
    covered = nearest_syn < r_rad
    return {"precision": float(precise.mean()), "recall": float(real_covered.mean()),
            "density": float(in_real_balls.mean() / k), "coverage": float(covered.mean()), "k": k,
            "per_point": {"precision": precise, "recall": real_covered, "density": in_real_balls / k,
                          "coverage": covered}}


def prdc_matched(real, synthetic, k: int = PRDC_K, seed: int = 0, block: int = _BLOCK) -> dict:
    """:func:`prdc` at equal set sizes: the mean over disjoint, equal-sized parts of the larger set.

    With S the smaller set's size, the larger set is shuffled (``seed``) and its first ``(L // S) * S``
    points are cut into parts of S; each part is compared with the whole smaller set. Returns the four
    means plus ``n_per_set`` (S), ``parts`` and ``per_point``: for the set that was cut, each used
    point's value from its own part (in the original order, unused points left out); for the other
    set, each point's value averaged over the parts. Their means are the four numbers, so
    :func:`prdc_bootstrap` applies unchanged. Equal sizes give exactly :func:`prdc`.
    """
    r = _check(real, "real features")
    f = _check(synthetic, "synthetic features")
    if len(r) == len(f):
        out = prdc(r, f, k, block)
        return {**out, "n_per_set": len(r), "parts": 1}
    cut_synthetic = len(f) > len(r)
    small, large = (r, f) if cut_synthetic else (f, r)
    size = len(small)
    parts = len(large) // size
    order = np.random.default_rng(seed).permutation(len(large))[:parts * size]
    used = np.sort(order)
    position = np.empty(len(large), dtype=np.int64)
    position[used] = np.arange(len(used))
    # the side that is cut: one value per used point; the other side: a sum over parts
    cut_side = ("precision", "density") if cut_synthetic else ("recall", "coverage")
    per_point = {}
    for p in range(parts):
        idx = order[p * size:(p + 1) * size]
        res = prdc(r, large[idx], k, block) if cut_synthetic else prdc(large[idx], f, k, block)
        for name, values in res["per_point"].items():
            values = np.asarray(values, dtype=np.float64)
            if name in cut_side:
                per_point.setdefault(name, np.empty(len(used)))[position[idx]] = values
            else:
                per_point[name] = per_point.get(name, 0.0) + values / parts
    means = {name: float(np.mean(v)) for name, v in per_point.items()}
    return {**means, "k": k, "n_per_set": size, "parts": parts, "per_point": per_point}


def prdc_bootstrap(per_point: dict, draws: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals ``{metric: [low, high]}`` from :func:`prdc`'s per-point values."""
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for name, values in per_point.items():
        v = np.asarray(values, dtype=np.float64)
        means = v[rng.integers(0, len(v), size=(draws, len(v)))].mean(axis=1)
        out[name] = [float(np.quantile(means, lo_q)), float(np.quantile(means, hi_q))]
    return out

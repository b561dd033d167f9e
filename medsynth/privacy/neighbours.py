"""Exact nearest neighbours between image sets, in blocks: no N x M matrix is ever held in memory.

Two kinds of search, both exact:

* :func:`knn` - k nearest rows of ``ref`` for every row of ``query`` by Euclidean distance (feature
  space, e.g. Inception's 2048-d features) or by cosine similarity. Candidates come from blocked
  (bfloat16 or float32) matrix products on the CPU or a GPU; for Euclidean distance they are re-ranked
  by exact float64 distances, with a certificate that no true neighbour was missed (queries without one
  are searched exhaustively), so the result equals a float64 brute-force search.
* :func:`shift_max_ncc` - pixel space: the normalised cross-correlation (NCC) between images, the
  maximum over small translations. Each image is made zero-mean and unit-norm, so the similarity is
  a dot product and does not change when intensities are scaled or offset (``a * x + b``). The
  central window of each query (a margin of ``max_shift`` pixels cut off every side) is compared with
  every window of a reference image shifted by up to ``max_shift`` pixels along each axis, so a copy
  shifted by a pixel or two still scores close to 1. Works for 2D images and 3D volumes alike.

Memory: ``block`` query rows by ``block`` reference rows of float32 scores at a time (64 MiB for the
default 4096), plus the running top-k. Time: one matrix product per block pair (per shift for NCC).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn.functional as F

__all__ = ["band_pass", "gaussian_smooth", "knn", "normalize_rows", "pixel_grid", "shift_max_ncc", "topk_dot"]

DEFAULT_BLOCK = 4096


def _device(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_2d(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected (N, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def normalize_rows(x: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Rows made zero-mean (when ``center``) and unit-norm, float32. A constant row becomes all zeros,
    whose similarity with anything is 0."""
    x = x.reshape(x.shape[0], -1).float()
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 1e-12, x / norm.clamp_min(1e-12), torch.zeros_like(x))


def _merge_topk(best_v, best_i, v, i, k: int, largest: bool):
    if best_v is None:
        return v, i
    cv, ci = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
    top, pos = cv.topk(min(k, cv.shape[1]), dim=1, largest=largest)
    return top, ci.gather(1, pos)


def _blocked_topk(query: torch.Tensor, ref: torch.Tensor, k: int, largest: bool, score, block: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``score(q_block, r_block)`` over all ref rows, for every query row; blocks on ``device``."""
    out_v = torch.empty(query.shape[0], k, dtype=torch.float32)
    out_i = torch.empty(query.shape[0], k, dtype=torch.long)
    ref_blocks = [(s, ref[s:s + block].to(device, non_blocking=True)) for s in range(0, ref.shape[0], block)] \
        if ref.shape[0] * ref.shape[1] * 4 <= 2 ** 30 else None     # keep the reference on the device if it fits 1 GiB
    for qs in range(0, query.shape[0], block):
        q = query[qs:qs + block].to(device, non_blocking=True)
        best_v = best_i = None
        blocks = ref_blocks if ref_blocks is not None else (
            (s, ref[s:s + block].to(device, non_blocking=True)) for s in range(0, ref.shape[0], block))
        for rs, r in blocks:
            sc = score(q, r, rs)
            v, i = sc.topk(min(k, sc.shape[1]), dim=1, largest=largest)
            best_v, best_i = _merge_topk(best_v, best_i, v, i + rs, k, largest)
        out_v[qs:qs + q.shape[0]] = best_v.float().cpu()
        out_i[qs:qs + q.shape[0]] = best_i.cpu()
    return out_v, out_i


def topk_dot(query: torch.Tensor, ref: torch.Tensor, k: int = 1, *, block: int = DEFAULT_BLOCK,
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest dot products ``query @ ref.T`` per query row and their ref indices (float32)."""
    dev = _device(device)
    q, r = query.float(), ref.float()
    return _blocked_topk(q, r, k, True, lambda a, b, _s: a @ b.T, block, dev)


def knn(query, ref, k: int = 1, *, metric: str = "euclidean", block: int = DEFAULT_BLOCK, device=None,
        extra: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every ``query`` row among the ``ref`` rows.

    ``metric``: ``"euclidean"`` returns float64 distances (of the float32 rows centred on the reference
    mean: about 1e-7 relative), nearest first; ``"cosine"`` returns cosine
    similarities (rows L2-normalised, not centred), most similar first. Returns ``(values (Q, k),
    indices (Q, k))`` on the CPU. ``block`` sets memory (``block**2`` scores per step), ``device``
    where the products run (default CUDA when available).

    Euclidean search in two stages. (1) Candidates: the ``k + extra`` best of every query by blocked
    float32 matrix products of the rows centred on the reference mean (distances do not change).
    (2) Exact: the candidates' distances in float64, and a certificate: the k-th exact score must beat
    the best score any non-candidate could have, the last candidate's float32 score plus a worst-case
    bound on its rounding; queries without it are searched exhaustively in float64. So the neighbours
    are those of a float64 brute-force search (scikit-learn's ``NearestNeighbors(algorithm="brute")``).
    (bfloat16 products, 4x faster on CPUs with AVX512-BF16, round their output to 8 bits, which no
    useful certificate survives; they are not used.)
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric: expected 'euclidean' or 'cosine', got {metric!r}")
    q, r = _as_2d(query, "query"), _as_2d(ref, "ref")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query has {q.shape[1]} dimensions, ref {r.shape[1]}")
    if not 1 <= k <= r.shape[0]:
        raise ValueError(f"k: expected 1..{r.shape[0]} (the reference size), got {k}")
    dev = _device(device)
    if metric == "cosine":
        return topk_dot(normalize_rows(q, center=False), normalize_rows(r, center=False), k, block=block, device=dev)
    center = r.double().mean(dim=0, keepdim=True).float()
    qc, rc = q.float() - center, r.float() - center
    qsq = (qc.double() ** 2).sum(1)
    rsq = (rc.double() ** 2).sum(1)
    kc = min(r.shape[0], k + max(0, int(extra)))
    rsq32 = rsq.float()
    # argmax of 2 q.r - |r|^2 is argmin of |q - r|^2 (|q|^2 is the same for every r)
    neg_rsq = -rsq32
    score, cand = _blocked_topk(qc, rc, kc, True,      # one fused product: 2 q.r - |r|^2, no temporaries
                                lambda a, b, s: torch.addmm(neg_rsq[s:s + b.shape[0]].to(a.device), a, b.T, alpha=2.0),
                                block, dev)
    # worst-case rounding of a D-term float32 dot product (times 2), and of |r|^2 rounded to float32
    rmax = float(rsq.max().sqrt())
    bound = 2 * (q.shape[1] + 2) * 2.0 ** -24 * qsq.sqrt() * rmax + 2 * 2.0 ** -24 * rmax ** 2
    idx = torch.empty(q.shape[0], k, dtype=torch.long)
    d2 = torch.empty(q.shape[0], k, dtype=torch.float64)
    ok = torch.ones(q.shape[0], dtype=torch.bool)
    step = max(1, (1 << 24) // max(1, kc * q.shape[1]))
    for s in range(0, q.shape[0], step):
        c = cand[s:s + step]
        diff = rc[c].double() - qc[s:s + step, None, :].double()
        e = diff.mul_(diff).sum(-1)                                     # exact squared distances, float64
        e, order = e.sort(dim=1, stable=True)
        idx[s:s + step], d2[s:s + step] = c.gather(1, order[:, :k]), e[:, :k]
        if kc < r.shape[0]:
            ok[s:s + step] = qsq[s:s + step] - e[:, k - 1] > score[s:s + step, -1].double() + bound[s:s + step]
    for rows in torch.nonzero(~ok).flatten().split(256):                 # no certificate: exhaustive float64
        e = qsq[rows, None] + rsq[None] - 2 * (qc[rows].double() @ rc.double().T)
        top = e.topk(k, dim=1, largest=False)
        idx[rows], d2[rows] = top.indices, top.values
    knn.last_exhaustive = int((~ok).sum())
    return d2.clamp_(min=0).sqrt_(), idx


# ------------------------------------------------------------------------------------------------
# pixel space


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) matrix of a 1D Gaussian blur with replicated edges: ``M @ v`` blurs the vector ``v``."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    cols = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None]).clamp_(0, n - 1)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, cols, k.expand(n, -1).clone())
    return m.float()


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, *S) images along every spatial axis (edges replicated); sigma in pixels.

    One small matrix product per axis (much faster than a convolution for images this size)."""
    if not sigma or sigma <= 0:
        return x
    out = x.float()
    for _ in range(1, x.ndim):   # blur the last axis, then rotate it to the front; nd rotations restore the order
        m = _blur_matrix(int(out.shape[-1]), float(sigma))
        out = (out.reshape(-1, out.shape[-1]) @ m.T).reshape(out.shape).movedim(-1, 1).contiguous()
    return out


def band_pass(x: torch.Tensor, fine: float, coarse: float) -> torch.Tensor:
    """Difference of Gaussians: ``blur(x, fine) - blur(x, coarse)`` (``coarse`` 0: just ``blur(x, fine)``).

    The fine blur removes pixel noise; subtracting the coarse blur removes the smooth layout every
    image of a body part shares, so what is compared is the anatomical detail of one patient."""
    low = gaussian_smooth(x, fine)
    return low - gaussian_smooth(low, coarse) if coarse and coarse > 0 else low


def pixel_grid(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, *S) images -> (N, *s) float32 on a grid whose longest side is at most ``size`` (area average,
    the aspect ratio kept), channels averaged. ``size`` None keeps the resolution."""
    x = images.float()
    if x.ndim not in (4, 5):
        raise ValueError(f"images: expected (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    x = x.mean(dim=1, keepdim=True)
    spatial = x.shape[2:]
    if size is not None and max(spatial) > size:
        f = max(spatial) / size
        target = tuple(max(1, round(s / f)) for s in spatial)
        x = F.adaptive_avg_pool2d(x, target) if x.ndim == 4 else F.adaptive_avg_pool3d(x, target)
    return x[:, 0].contiguous()


def _window(x: torch.Tensor, shift: tuple[int, ...], m: int) -> torch.Tensor:
    """The window of ``x`` (N, *S) of size S - 2m, offset by ``shift`` from the centre window."""
    sl = [slice(None)] + [slice(m + d, n - m + d) for d, n in zip(shift, x.shape[1:])]
    return x[tuple(sl)]


def shift_max_ncc(query: torch.Tensor, ref: torch.Tensor, max_shift: int = 1, *, band: tuple[float, float] = (0, 0),
                  block: int = DEFAULT_BLOCK, device=None,
                  chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every query image its most similar ``ref`` image by NCC, maximised over translations.

    ``query`` (Q, *S), ``ref`` (R, *S) on the same grid (see :func:`pixel_grid`). Returns
    ``(similarity (Q,), ref index (Q,), shift (Q, ndim))``: the best NCC of the query's central window
    with any window of a reference image shifted by at most ``max_shift`` pixels per axis. Every window
    is band-pass filtered (:func:`band_pass` with ``band = (fine, coarse)`` sigmas in pixels) after it
    is cut out, so a translated copy gives the very same filtered window. With ``max_shift`` 0 and
    ``band`` (0, 0) this is the plain NCC of the whole images.
    """
    if query.shape[1:] != ref.shape[1:]:
        raise ValueError(f"images of different sizes: {tuple(query.shape[1:])} and {tuple(ref.shape[1:])}")
    m = int(max_shift)
    if m < 0 or any(n - 2 * m < 2 for n in query.shape[1:]):
        raise ValueError(f"max_shift {m} does not fit images of size {tuple(query.shape[1:])}")
    if query.shape[0] == 0 or ref.shape[0] == 0:
        raise ValueError("empty image set")
    dev = _device(device)
    fine, coarse = band

    def prep(x):
        return normalize_rows(band_pass(x, fine, coarse))

    qv = torch.cat([prep(_window(query[s:s + chunk], (0,) * (query.ndim - 1), m))
                    for s in range(0, query.shape[0], chunk)])
    best_s = torch.full((query.shape[0],), -math.inf)
    best_i = torch.zeros(query.shape[0], dtype=torch.long)
    best_d = torch.zeros(query.shape[0], query.ndim - 1, dtype=torch.long)
    for shift in itertools.product(range(-m, m + 1), repeat=query.ndim - 1):
        for cs in range(0, ref.shape[0], chunk):    # normalise the shifted reference a chunk at a time
            rv = prep(_window(ref[cs:cs + chunk], shift, m))
            s, i = topk_dot(qv, rv, 1, block=block, device=dev)
            s, i = s[:, 0], i[:, 0] + cs
            better = s > best_s
            best_s = torch.where(better, s, best_s)
            best_i = torch.where(better, i, best_i)
            best_d[better] = torch.tensor(shift, dtype=torch.long)
    return best_s.clamp_(-1.0, 1.0), best_i, best_d

"""Memorization: synthetic images closer to a training image than real unseen images ever are.

For one comparison space (pixel NCC, Inception features, ...), all similarities, higher = closer:

* ``holdout_train``: every holdout image's nearest-neighbour similarity to the training set. Holdout
  images are real images of patients the model never saw, so this is how close *unseen* data comes to
  the training set by chance (same anatomy, same scanner...).
* the **threshold** is the ``quantile`` (default 99.5th percentile, linear interpolation) of those;
* a synthetic image is **memorized** when its similarity to its nearest training image exceeds the
  threshold; with a model that never copies, about ``1 - quantile`` of samples are flagged by chance.

Also reported: the distance to the closest record (DCR = 1 - similarity) as quantiles, and the share of
synthetic images closer to the training set than to the holdout set. For that share the training set
is subsampled to the holdout's size (seeded), so that a model that does not copy scores about 50%
whatever the split's proportions; well above 50% means samples sit nearer the training patients.
"""

from __future__ import annotations

import io

import numpy as np
import torch

QUANTILE_POINTS = {"min": 0.0, "q01": 0.01, "q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95,
                   "q99": 0.99, "max": 1.0}


def quantiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {k: round(float(np.quantile(v, q)), 6) for k, q in QUANTILE_POINTS.items()}


def calibrate_threshold(holdout_train_similarity, quantile: float) -> float:
    """The ``quantile`` of the holdout images' nearest-training-image similarities (linear interpolation)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile: expected a value between 0 and 1 (e.g. 0.995), got {quantile}")
    v = np.asarray(holdout_train_similarity, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no holdout similarities to calibrate on")
    return float(np.quantile(v, quantile))


def reliable_holdout_size(quantile: float) -> int:
    """Holdout images needed before the ``quantile`` rests on more than the two or so largest values."""
    return int(max(100, np.ceil(2.0 / (1.0 - quantile))))


def memorization_summary(syn_train, holdout_train, syn_holdout, syn_train_equal,
                         quantile: float) -> tuple[dict, np.ndarray]:
    """Summarise one space. Arguments are nearest-neighbour similarities: synthetic->train,
    holdout->train, synthetic->holdout and synthetic->(train subsampled to the holdout's size).
    Returns ``(summary dict, memorized flags per synthetic image)``."""
    syn_train = np.asarray(syn_train, dtype=np.float64)
    threshold = calibrate_threshold(holdout_train, quantile)
    flags = syn_train > threshold
    a, b = np.asarray(syn_train_equal, dtype=np.float64), np.asarray(syn_holdout, dtype=np.float64)
    closer = float(np.mean((a > b) + 0.5 * (a == b)))
    summary = {
        "threshold": round(threshold, 6), "quantile": quantile,
        "memorized": int(flags.sum()), "memorized_share": round(float(flags.mean()), 6),
        "expected_share_by_chance": round(1.0 - quantile, 6),
        "holdout_nn_similarity": quantiles(holdout_train),
        "synthetic_nn_similarity": quantiles(syn_train),
        "dcr": quantiles(1.0 - syn_train),
        "closer_to_train_share": round(closer, 6),
    }
    return summary, flags


def _display(img: torch.Tensor, px: int) -> np.ndarray:
    """One image (C, *S) -> uint8 (px, px) for display: 3D volumes show their middle axial slice;
    each image stretched to its own min..max."""
    from PIL import Image

    a = img.float().mean(dim=0)
    while a.ndim > 2:
        a = a[..., a.shape[-1] // 2]
    a = a.numpy()
    lo, hi = float(a.min()), float(a.max())
    u8 = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(u8).resize((px, px), Image.NEAREST))


def closest_pairs_png(synthetic: torch.Tensor, train: torch.Tensor, similarity, nearest, *, k: int = 8,
                      threshold: float | None = None, px: int = 96) -> bytes:
    """PNG bytes: the ``k`` synthetic images most similar to a training image, each above its nearest
    training image, with the similarity underneath (red when above ``threshold``)."""
    from PIL import Image, ImageDraw

    sim = np.asarray(similarity, dtype=np.float64)
    order = np.argsort(-sim, kind="stable")[:k]
    pad, text_h = 4, 14
    w = len(order) * (px + pad) + pad
    h = 2 * px + 3 * pad + 2 * text_h
    canvas = Image.new("RGB", (max(w, 200), h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 1), "synthetic (top) and its closest training image (bottom)", fill=(0, 0, 0))
    for col, i in enumerate(order):
        x = pad + col * (px + pad)
        canvas.paste(Image.fromarray(_display(synthetic[i], px)).convert("RGB"), (x, text_h + pad))
        canvas.paste(Image.fromarray(_display(train[int(nearest[i])], px)).convert("RGB"),
                     (x, text_h + 2 * pad + px))
        flagged = threshold is not None and sim[i] > threshold
        draw.text((x, text_h + 3 * pad + 2 * px - 2), f"{sim[i]:.4f}", fill=(200, 0, 0) if flagged else (0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()

"""Diversity: mean MS-SSIM between random pairs of images of one set (MONAI ``MultiScaleSSIMMetric``).

Two different images of a varied set are structurally dissimilar, so their MS-SSIM is low; a
generator that collapses onto a few modes produces pairs with high MS-SSIM. The number means little
on its own: compare the synthetic set's value with the real set's (the Odena et al. 2017 and
Kynkäänniemi et al. use of MS-SSIM as a diversity check). Lower = more diverse.

Pairs: ``pairs`` random pairs (i, j), i != j, drawn independently with a seeded generator (at most
N(N-1)/2 of them; a pair may repeat). Images in [-1, 1] are mapped to [0, 1] (``data_range`` 1).
MS-SSIM needs each scale to hold the Gaussian window; the standard setting (5 scales, 11-pixel
window, Wang et al. 2003 weights) needs images of at least 176 pixels a side, so smaller images use
a 7-pixel window (sigma 1.5) and as many scales as fit (64 px: 4, 32 px: 3), with the first weights
renormalised to sum to 1. The setting used is part of the result, and only results with the same setting are comparable.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim_diversity", "ms_ssim_setting"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _fits(size: int, kernel: int, scales: int) -> bool:
    # MONAI's own check (size // (scales - 1)^2 > kernel - 1) and the real one: the coarsest scale
    # (size / 2^(scales - 1)) must still hold the window
    return size // max(1, scales - 1) ** 2 > kernel - 1 and size // 2 ** (scales - 1) >= kernel


def ms_ssim_setting(spatial: tuple[int, ...]) -> dict:
    """Window size and per-scale weights for images of this spatial size."""
    smallest = min(spatial)
    for kernel in (11, 7):
        for scales in range(5, 0, -1):
            if _fits(smallest, kernel, scales) and (kernel == 7 or scales == 5):
                w = np.asarray(MS_SSIM_WEIGHTS[:scales])
                return {"kernel_size": kernel, "kernel_sigma": 1.5, "scales": scales,
                        "weights": [float(v) for v in w / w.sum()]}
    raise ValueError(f"images of size {list(spatial)} are too small for MS-SSIM (need at least 7 pixels a side)")


@torch.no_grad()
def ms_ssim_diversity(images, pairs: int = 1000, seed: int = 0, batch_size: int = 100) -> dict:
    """Mean and spread of MS-SSIM over random pairs of a set of (N, C, *spatial) images in [-1, 1]."""
    from monai.metrics import MultiScaleSSIMMetric

    x = torch.as_tensor(images)
    if x.dim() not in (4, 5):
        raise ValueError(f"images: expected (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"MS-SSIM diversity needs at least 2 images, got {n}")
    setting = ms_ssim_setting(tuple(x.shape[2:]))
    metric = MultiScaleSSIMMetric(spatial_dims=x.dim() - 2, data_range=1.0, kernel_size=setting["kernel_size"],
                                  kernel_sigma=setting["kernel_sigma"], weights=tuple(setting["weights"]),
                                  reduction="none")
    rng = np.random.default_rng(seed)
    total = min(int(pairs), n * (n - 1) // 2)
    i = rng.integers(0, n, size=total)
    j = (i + rng.integers(1, n, size=total)) % n           # uniform over the other n - 1 images
    scores = []
    for s in range(0, total, batch_size):
        a = (x[i[s:s + batch_size]].float() + 1) / 2
        b = (x[j[s:s + batch_size]].float() + 1) / 2
        scores.append(metric(a.clamp(0, 1), b.clamp(0, 1)).reshape(-1).double().cpu())
    v = torch.cat(scores).numpy()
    return {"ms_ssim": float(v.mean()), "ms_ssim_std": float(v.std()), "ms_ssim_sem": float(v.std() / np.sqrt(len(v))),
            "pairs": int(len(v)), **setting}

"""Membership inference: can an attacker tell training patients from holdout patients?

* **Distance attack** (black box, needs only the synthetic images): score each real image by its
  similarity to the nearest synthetic image; a patient's score is the maximum over their images. If
  the generator leaks its training data, training patients score higher than holdout patients. The
  attack's ROC AUC (training = positive) is 0.5 when nothing leaks; a bootstrap over patients gives
  its confidence interval.
* **Discriminator attack** (white box, where the checkpoint has a discriminator): the discriminator's
  logits on training vs holdout images. An overfitted discriminator recognises its training images;
  the discriminator is not shared with the synthetic data, so this measures overfitting rather than
  a leak of the released images, and is reported without gating the verdict by default.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata


def roc_auc(positive, negative) -> float:
    """ROC AUC of scores (positive class scores higher): the Mann-Whitney U / (n_pos n_neg), ties count 1/2."""
    p, n = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if p.size == 0 or n.size == 0:
        raise ValueError(f"AUC needs both classes (positive {p.size}, negative {n.size})")
    ranks = rankdata(np.concatenate([p, n]))
    return float((ranks[:p.size].sum() - p.size * (p.size + 1) / 2.0) / (p.size * n.size))


def bootstrap_auc_ci(positive, negative, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of :func:`roc_auc`, resampling each class with replacement."""
    p, n = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        aucs[b] = roc_auc(p[rng.integers(0, p.size, p.size)], n[rng.integers(0, n.size, n.size)])
    lo, hi = np.quantile(aucs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [round(float(lo), 6), round(float(hi), 6)]


def group_max(scores, groups) -> np.ndarray:
    """Per-group maximum of ``scores`` (groups: one ID per score, e.g. the patient), in first-seen order;
    ``groups`` None keeps one score per image."""
    s = np.asarray(scores, dtype=np.float64)
    if groups is None:
        return s
    best: dict = {}
    for v, g in zip(s, groups):
        best[g] = max(best.get(g, -np.inf), v)
    return np.array(list(best.values()), dtype=np.float64)


def attack_summary(train_scores, holdout_scores, *, train_groups=None, holdout_groups=None, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """AUC (train = positive) with a bootstrap CI, scores aggregated per patient where groups are given."""
    pos = group_max(train_scores, train_groups)
    neg = group_max(holdout_scores, holdout_groups)
    return {"auc": round(roc_auc(pos, neg), 6), "ci95": bootstrap_auc_ci(pos, neg, n_boot=n_boot, seed=seed),
            "n_train": int(pos.size), "n_holdout": int(neg.size),
            "unit": "patient" if train_groups is not None else "image"}


@torch.no_grad()
def discriminator_scores(discriminator: torch.nn.Module, images: torch.Tensor, labels=None, *, batch_size: int = 64,
                         device=None) -> np.ndarray:
    """The discriminator's logits (higher = "real") for ``images`` (N, C, *S) in [-1, 1]."""
    dev = torch.device(device) if device is not None else next(discriminator.parameters()).device
    d = discriminator.to(dev).eval()
    out = []
    for s in range(0, images.shape[0], batch_size):
        y = labels[s:s + batch_size].to(dev) if labels is not None else None
        out.append(d(images[s:s + batch_size].to(dev), y).float().reshape(-1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def load_discriminator(state: dict) -> torch.nn.Module | None:
    """The discriminator stored in a checkpoint state (built by the model registry from the checkpoint's
    own config), or None when the checkpoint has none."""
    from medsynth.config import config_from_dict
    from medsynth.models import build_model

    weights = state.get("discriminator")
    if not weights:
        return None
    cfg = config_from_dict(state["config"], source="checkpoint")
    n_classes = len(state["labels"]) if state.get("conditional") else 0
    model = build_model(cfg.model, tuple(state["image_shape"]), n_classes)
    model.discriminator.load_state_dict(weights)
    return model.discriminator.eval()

"""``medsynth evaluate``: FID and KID between a real and a synthetic image set (first increment of #5).

Images are read with medsynth's readers and scaled to [-1, 1] by their bit depth (value / (2^bits - 1)),
so 16-bit PNGs written by ``medsynth generate`` are read correctly (pytorch-fid's ``convert("RGB")``
would saturate them); features then follow :class:`~medsynth.metrics.features.FeatureExtractor`
(8-bit quantisation, pytorch-fid's resize). For 8-bit files this equals pytorch-fid's file path.
Images of different sizes are fine: Inception resizes each one to 299x299; they are batched by size.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from medsynth.metrics.fid import feature_stats, frechet_distance, save_stats
from medsynth.metrics.kid import kid_from_features

FID_RELIABLE_N = 2048


class EvaluationError(ValueError):
    """Inputs that make the metrics meaningless (too few images, non-finite values...)."""


def _features_by_shape(extractor, images: list[torch.Tensor]) -> np.ndarray:
    out = np.empty((len(images), extractor.dims), dtype=np.float64)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        groups[tuple(im.shape)].append(i)
    for idx in groups.values():
        out[idx] = extractor.features(torch.stack([images[i] for i in idx]))
    return out


def load_image_folder(path) -> tuple[list[torch.Tensor], list[str | None], list[tuple[str, str]], dict]:
    """2D images of a folder (class folders give labels) as (1, H, W) tensors in [-1, 1]."""
    from medsynth.data.readers import UnreadableFile, read_image
    from medsynth.data.sources import discover, require_usable

    disc = discover(path)
    require_usable(disc)
    images, labels, skipped, sizes = [], [], list(disc.skipped), defaultdict(int)
    for r in disc.records:
        if r.kind != "image":
            skipped.append((r.key, "not a 2D image (evaluate compares 2D images)"))
            continue
        try:
            arr, meta = read_image(r.files[0])
        except UnreadableFile as e:
            skipped.append((r.key, e.reason))
            continue
        top = float(2 ** (meta.bit_depth or 8) - 1)
        images.append(torch.from_numpy(np.clip(arr / top, 0, 1) * 2 - 1).float()[None])
        labels.append(r.label)
        sizes["x".join(map(str, arr.shape))] += 1
    if len(images) < 2:
        raise EvaluationError(f"{path}: {len(images)} usable image(s); FID and KID need at least 2")
    return images, labels, skipped, dict(sizes)


def compare_features(real: np.ndarray, synthetic: np.ndarray) -> dict:
    if len(real) < 2 or len(synthetic) < 2:
        raise EvaluationError(f"FID needs at least 2 images per set (real {len(real)}, synthetic {len(synthetic)})")
    mu1, s1 = feature_stats(real)
    mu2, s2 = feature_stats(synthetic)
    kid = kid_from_features(real, synthetic)
    return {"fid": frechet_distance(mu1, s1, mu2, s2), "kid_mean": kid.mean, "kid_std": kid.std,
            "n_real": int(len(real)), "n_synthetic": int(len(synthetic))}


def _warnings(n_real: int, n_syn: int) -> list[str]:
    if min(n_real, n_syn) < FID_RELIABLE_N:
        return [f"fewer than {FID_RELIABLE_N} images (real {n_real}, synthetic {n_syn}): FID is biased upwards "
                "at this size; compare FIDs only at equal set sizes, and prefer KID, which is unbiased"]
    return []


def evaluate_folders(real, synthetic, *, save_stats_path=None, extractor=None) -> dict:
    from medsynth.metrics.features import FeatureExtractor

    extractor = extractor or FeatureExtractor()
    r_img, _, r_skip, r_sizes = load_image_folder(real)
    s_img, _, s_skip, s_sizes = load_image_folder(synthetic)
    fr = _features_by_shape(extractor, r_img)
    fs = _features_by_shape(extractor, s_img)
    result = compare_features(fr, fs)
    if save_stats_path:
        save_stats(save_stats_path, *feature_stats(fr))
    result.update({"real": str(real), "synthetic": str(synthetic), "real_sizes": r_sizes, "synthetic_sizes": s_sizes,
                   "skipped": {"real": len(r_skip), "synthetic": len(s_skip)},
                   "warnings": _warnings(len(fr), len(fs)) + ([f"real set has images of {len(r_sizes)} sizes"]
                                                              if len(r_sizes) > 1 else []),
                   "weights": extractor.weights_source})
    return result


def evaluate_run(run_dir, *, n: int | None = None, seed: int = 0, extractor=None) -> dict:
    """The run's (EMA) generator against its training images; per class for conditional models.

    ``n`` synthetic images (default: as many as training images). Appends one line to metrics.jsonl.
    """
    from medsynth.config import config_from_dict
    from medsynth.data import build_dataset
    from medsynth.data.sources import Split
    from medsynth.metrics.features import FeatureExtractor
    from medsynth.runs import append_jsonl
    from medsynth.sampling import load_generator

    run_dir = Path(run_dir)
    g = load_generator(run_dir)
    cfg = config_from_dict(g.state["config"], source=str(g.checkpoint))
    split_path = run_dir / "split.json"
    bundle = build_dataset(cfg.data, split=Split.load(split_path) if split_path.is_file() else None)
    train = bundle.train_indices
    n = int(n or len(train))
    extractor = extractor or FeatureExtractor()
    real = bundle.prepared.batch(train, bundle.mapping)
    fr = extractor.features(real)
    fake, y = g.sample(n, seed=seed)
    fs = extractor.features(fake)
    result = {"step": int(g.state["step"]), "checkpoint": g.checkpoint.name, "checkpoint_sha256": g.checkpoint_sha256,
              "seed": seed, **compare_features(fr, fs)}
    if g.conditional:
        real_labels = bundle.prepared.label_index[train]
        per_class = {}
        for k, name in enumerate(g.labels):
            a, b = fr[real_labels == k], fs[(y == k).numpy()]
            if len(a) >= 2 and len(b) >= 2:
                per_class[name] = compare_features(a, b)
        result["per_class"] = per_class
    result["warnings"] = _warnings(len(fr), len(fs))
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    append_jsonl(run_dir / "metrics.jsonl", result)
    return result


def render_text(result: dict) -> str:
    lines = [f"FID  {result['fid']:.3f}   (real {result['n_real']}, synthetic {result['n_synthetic']} images)",
             f"KID  {result['kid_mean']:.5f} ± {result['kid_std']:.5f}"]
    for name, r in result.get("per_class", {}).items():
        lines.append(f"  {name:12s} FID {r['fid']:.3f}  KID {r['kid_mean']:.5f} ± {r['kid_std']:.5f}  "
                     f"(real {r['n_real']}, synthetic {r['n_synthetic']})")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)

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

from medsynth.metrics.diversity import ms_ssim_diversity
from medsynth.metrics.fid import (
    feature_stats,
    fid_bootstrap,
    fid_from_features_fast,
    fid_stats_features_fast,
    frechet_distance,
    save_stats,
)
from medsynth.metrics.kid import kid_from_features
from medsynth.metrics.prdc import PRDC_K, prdc_bootstrap, prdc_matched

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


FID_METHODS = {"fast": "singular values of the centred cross-covariance (equal to pytorch-fid's sqrtm within 1e-6)",
               "sqrtm": "scipy sqrtm of sigma1 @ sigma2 (pytorch-fid's arithmetic, bit-identical)"}


def _fid(real: np.ndarray, synthetic: np.ndarray, method: str) -> float:
    if method == "sqrtm":
        return frechet_distance(*feature_stats(real), *feature_stats(synthetic))
    return fid_from_features_fast(real, synthetic)


def compare_features(real: np.ndarray, synthetic: np.ndarray, *, bootstrap: int = 100, seed: int = 0,
                     fid_method: str = "fast") -> dict:
    """FID, KID, precision/recall/density/coverage, with bootstrap intervals.

    ``bootstrap`` draws for the FID interval and the PRDC intervals (0: no intervals). ``fid_method``:
    "fast" (default) or "sqrtm" (pytorch-fid's exact operations; tens of seconds per FID on a CPU).
    """
    if len(real) < 2 or len(synthetic) < 2:
        raise EvaluationError(f"FID needs at least 2 images per set (real {len(real)}, synthetic {len(synthetic)})")
    if fid_method not in FID_METHODS:
        raise EvaluationError(f"unknown FID method {fid_method!r}; choose {' or '.join(FID_METHODS)}")
    kid = kid_from_features(real, synthetic)
    out = {"fid": _fid(real, synthetic, fid_method), "kid_mean": kid.mean, "kid_std": kid.std,
           "n_real": int(len(real)), "n_synthetic": int(len(synthetic)), "fid_method": fid_method}
    if bootstrap:
        ci = fid_bootstrap(real, synthetic, draws=bootstrap, seed=seed)
        out["fid_ci"] = [ci["low"], ci["high"]]
    if min(len(real), len(synthetic)) > PRDC_K:
        pr = prdc_matched(real, synthetic, seed=seed)   # at equal set sizes (see prdc.py)
        out.update({k: pr[k] for k in ("precision", "recall", "density", "coverage")})
        out["prdc_sets"] = {"n_per_set": pr["n_per_set"], "parts": pr["parts"]}
        if bootstrap:
            out["prdc_ci"] = prdc_bootstrap(pr["per_point"], draws=max(bootstrap, 200), seed=seed)
    return out


def fid_ratio(train: np.ndarray, holdout: np.ndarray, synthetic: np.ndarray) -> dict:
    """FID(synthetic, holdout) / FID(train, holdout) at the same set sizes (the real-data floor).

    The synthetic set is cut to the training set's size (or the training set to the synthetic's) so
    both FIDs carry the same small-sample bias. 1 means as close to unseen real data as the training
    images themselves are; the larger, the further.
    """
    m = min(len(train), len(synthetic))
    floor = fid_from_features_fast(train[:m], holdout)
    syn = fid_from_features_fast(synthetic[:m], holdout)
    return {"fid_ratio": syn / floor if floor > 0 else float("inf"), "fid_synthetic_holdout": syn,
            "fid_train_holdout": floor, "n": int(m), "n_holdout": int(len(holdout))}


def _warnings(n_real: int, n_syn: int) -> list[str]:
    out = []
    if min(n_real, n_syn) < FID_RELIABLE_N:
        out.append(f"fewer than {FID_RELIABLE_N} images (real {n_real}, synthetic {n_syn}): FID is biased upwards "
                   "at this size; compare FIDs only at equal set sizes, and prefer KID, which is unbiased")
    if min(n_real, n_syn) <= PRDC_K:
        out.append(f"precision/recall/density/coverage need more than {PRDC_K} images per set: not computed")
    return out


def _diversity(images: list[torch.Tensor] | torch.Tensor, seed: int) -> dict | None:
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        return None
    x = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    try:
        return ms_ssim_diversity(x, seed=seed)
    except ValueError:
        return None


def _compare_images(extractor, real, synthetic, *, bootstrap: int, seed: int,
                    fid_method: str = "fast") -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of two image sets: 2D lists/tensors, or 3D volume tensors (2.5D: one result per plane)."""
    if isinstance(real, torch.Tensor) and real.dim() == 5:
        fr, fs = extractor.features_25d(real), extractor.features_25d(synthetic)
        planes = {p: compare_features(fr[p], fs[p], bootstrap=bootstrap, seed=seed, fid_method=fid_method)
                  for p in fr}
        head = {k: float(np.mean([planes[p][k] for p in planes])) for k in
                ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage") if k in planes["axial"]}
        head.update({"n_real": int(len(real)), "n_synthetic": int(len(synthetic)), "planes": planes,
                     "fid_method": fid_method,
                     "features": "2.5D: central sagittal, coronal and axial slice; headline = mean over planes"})
        return head, np.concatenate(list(fr.values()), 1), np.concatenate(list(fs.values()), 1)
    fr = _features_by_shape(extractor, list(real))
    fs = _features_by_shape(extractor, list(synthetic))
    return compare_features(fr, fs, bootstrap=bootstrap, seed=seed, fid_method=fid_method), fr, fs


def evaluate_folders(real, synthetic, *, save_stats_path=None, extractor=None, bootstrap: int = 100,
                     seed: int = 0, fid_method: str = "fast") -> dict:
    from medsynth.metrics.features import FeatureExtractor

    extractor = extractor or FeatureExtractor()
    if Path(real).is_file():
        return _evaluate_against_stats(real, synthetic, extractor, save_stats_path, fid_method)
    r_img, _, r_skip, r_sizes = load_image_folder(real)
    s_img, _, s_skip, s_sizes = load_image_folder(synthetic)
    result, fr, _ = _compare_images(extractor, r_img, s_img, bootstrap=bootstrap, seed=seed, fid_method=fid_method)
    if save_stats_path:
        save_stats(save_stats_path, *feature_stats(fr), n=len(fr))
    result.update({"real": str(real), "synthetic": str(synthetic), "real_sizes": r_sizes, "synthetic_sizes": s_sizes,
                   "diversity": {"real": _diversity(r_img, seed), "synthetic": _diversity(s_img, seed)},
                   "skipped": {"real": len(r_skip), "synthetic": len(s_skip)},
                   "warnings": _warnings(len(r_img), len(s_img))
                   + [f"{name} set has images of {len(sizes)} sizes (each resized to 299x299 for the features; "
                      "MS-SSIM diversity not computed)" for name, sizes in (("real", r_sizes), ("synthetic", s_sizes))
                      if len(sizes) > 1],
                   "weights": extractor.weights_source})
    return result


def _evaluate_against_stats(stats_path, synthetic, extractor, save_stats_path, fid_method: str = "fast") -> dict:
    """FID of an image folder against saved real statistics (``--save-stats`` of an earlier run)."""
    from medsynth.metrics.fid import read_stats

    if save_stats_path:
        raise EvaluationError("--save-stats saves the statistics of a real image folder; --real is already a "
                              "statistics file")
    try:
        mu, sigma, meta = read_stats(stats_path)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    s_img, _, s_skip, s_sizes = load_image_folder(synthetic)
    fs = _features_by_shape(extractor, s_img)
    n_real = meta["n"] if meta["n"] is not None else 0
    fid = (frechet_distance(mu, sigma, *feature_stats(fs)) if fid_method == "sqrtm"
           else fid_stats_features_fast(mu, sigma, fs))
    return {"fid": fid, "fid_method": fid_method, "n_real": n_real, "n_synthetic": len(fs),
            "real": str(stats_path), "real_stats": meta, "synthetic": str(synthetic), "synthetic_sizes": s_sizes,
            "skipped": {"real": 0, "synthetic": len(s_skip)}, "weights": extractor.weights_source,
            "warnings": (_warnings(n_real, len(fs))[:1] if n_real else [])
            + ["real set given as statistics: FID only (KID, precision/recall and diversity need the images)"]}


def _subset(indices: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` of ``indices``, drawn with ``seed`` in proportion to their labels (all when
    ``limit`` is None or not smaller); sorted, so the same call gives the same images."""
    if limit is None or limit >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    lab = labels[indices]
    keep = []
    classes, counts = np.unique(lab, return_counts=True)
    quota = np.floor(counts * limit / len(indices)).astype(int)
    quota[np.argsort(-(counts * limit / len(indices) - quota))[:limit - quota.sum()]] += 1
    for c, q in zip(classes, quota):
        members = indices[lab == c]
        keep.append(rng.choice(members, size=int(q), replace=False))
    return np.sort(np.concatenate(keep))


def evaluate_run(run_dir, *, n: int | None = None, seed: int = 0, extractor=None, bootstrap: int = 100,
                 generator=None, write: bool = True, fid_method: str = "fast", n_real: int | None = None) -> dict:
    """The run's (EMA) generator against its training images; per class for conditional models.

    ``run_dir``: a run directory (its newest checkpoint) or one of its checkpoint files (e.g. best.pt).

    ``n`` synthetic images (default: as many as training images). ``n_real`` caps the real images
    (training and holdout split each; a seeded draw in proportion to the classes; default all): less
    Inception time for quick looks, at the price of noisier numbers. The holdout split gives the FID
    ratio. Appends one line to metrics.jsonl (``write``). ``generator``: an already loaded
    :class:`~medsynth.sampling.LoadedGenerator` (default: the run's newest checkpoint).
    """
    from medsynth.config import config_from_dict
    from medsynth.data import build_dataset
    from medsynth.data.sources import Split
    from medsynth.metrics.features import FeatureExtractor
    from medsynth.runs import append_jsonl
    from medsynth.sampling import load_generator

    run_dir = Path(run_dir)
    g = generator or load_generator(run_dir)
    if run_dir.is_file():                       # a checkpoint: RUN/checkpoints/<name>.pt
        run_dir = run_dir.parent.parent if run_dir.parent.name == "checkpoints" else run_dir.parent
    cfg = config_from_dict(g.state["config"], source=str(g.checkpoint))
    split_path = run_dir / "split.json"
    bundle = build_dataset(cfg.data, split=Split.load(split_path) if split_path.is_file() else None)
    if n_real is not None and n_real < 2:
        raise EvaluationError(f"n_real must be at least 2, got {n_real}")
    labels = bundle.prepared.label_index
    train = _subset(bundle.train_indices, labels, n_real, seed)
    n = int(n or len(train))
    extractor = extractor or FeatureExtractor()
    real = bundle.prepared.batch(train, bundle.mapping)
    fake, y = g.sample(n, seed=seed)
    head, fr, fs = _compare_images(extractor, real, fake, bootstrap=bootstrap, seed=seed, fid_method=fid_method)
    result = {"step": int(g.state["step"]), "checkpoint": g.checkpoint.name, "checkpoint_sha256": g.checkpoint_sha256,
              "training_runtime": g.state.get("runtime"), "seed": seed, **head}
    result["diversity"] = {"real": _diversity(real, seed), "synthetic": _diversity(fake, seed)}
    warnings = _warnings(len(real), len(fake))
    holdout = _subset(bundle.holdout_indices, labels, n_real, seed)
    if len(holdout) >= 2:
        hold = bundle.prepared.batch(holdout, bundle.mapping)
        fh = (np.concatenate(list(extractor.features_25d(hold).values()), 1) if hold.dim() == 5
              else extractor.features(hold))
        result["fid_ratio"] = fid_ratio(fr, fh, fs)
    else:
        warnings.append(f"the holdout split has {len(holdout)} image(s): no FID ratio (set data.holdout_fraction)")
    if g.conditional and real.dim() == 4:
        real_labels = labels[train]
        per_class = {}
        for k, name in enumerate(g.labels):
            a, b = fr[real_labels == k], fs[(y == k).numpy()]
            if len(a) >= 2 and len(b) >= 2:
                per_class[name] = compare_features(a, b, bootstrap=0, fid_method=fid_method)
        result["per_class"] = per_class
    result["warnings"] = warnings
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if write:
        append_jsonl(run_dir / "metrics.jsonl", result)
    return result


def _fmt_ci(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def render_text(result: dict) -> str:
    lines = [f"FID        {result['fid']:.3f}{_fmt_ci(result.get('fid_ci'))}   "
             f"(real {result['n_real'] or '?'}, synthetic {result['n_synthetic']} images)"]
    if "kid_mean" in result:
        lines.append(f"KID        {result['kid_mean']:.5f} ± {result['kid_std']:.5f}")
    ci = result.get("prdc_ci", {})
    for k in ("precision", "recall", "density", "coverage"):
        if k in result:
            lines.append(f"{k:10s} {result[k]:.3f}{_fmt_ci(ci.get(k))}")
    sets = result.get("prdc_sets")
    if sets and sets["parts"] > 1:
        lines.append(f"           (precision to coverage: {sets['n_per_set']} vs {sets['n_per_set']} images, "
                     f"mean of {sets['parts']} disjoint parts of the larger set)")
    if "fid_ratio" in result:
        r = result["fid_ratio"]
        lines.append(f"FID ratio  {r['fid_ratio']:.2f}   FID(synthetic, holdout) {r['fid_synthetic_holdout']:.2f} / "
                     f"FID(train, holdout) {r['fid_train_holdout']:.2f}  ({r['n']} vs {r['n_holdout']} images)")
    div = result.get("diversity") or {}
    if div.get("real") and div.get("synthetic"):
        lines.append(f"MS-SSIM    synthetic {div['synthetic']['ms_ssim']:.3f}, real {div['real']['ms_ssim']:.3f} "
                     "(mean over random pairs; lower = more diverse)")
    for name, r in result.get("planes", {}).items():
        lines.append(f"  {name:12s} FID {r['fid']:.3f}  KID {r['kid_mean']:.5f} ± {r['kid_std']:.5f}")
    for name, r in result.get("per_class", {}).items():
        extra = f"  precision {r['precision']:.3f} recall {r['recall']:.3f}" if "precision" in r else ""
        lines.append(f"  {name:12s} FID {r['fid']:.3f}  KID {r['kid_mean']:.5f} ± {r['kid_std']:.5f}{extra}  "
                     f"(real {r['n_real']}, synthetic {r['n_synthetic']})")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)

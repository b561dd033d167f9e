"""``medsynth utility``: does synthetic data help a downstream classifier? (issue #8)

For a conditional run, a small MONAI classifier is trained K times (seeds 0..K-1) on each of three
training sets and tested on the run's REAL HOLDOUT split (patients the generator never saw):

* ``real``            - the run's real training images (a seeded, stratified ``real_fraction`` of them);
* ``real+synthetic``  - the same real images mixed with synthetic ones at synthetic share ``ratio``
  (n_synthetic / (n_real + n_synthetic), :func:`medsynth.mix`; 0.5: as many synthetic as real images);
* ``synthetic``       - those synthetic images alone (train on synthetic, test on real).

Synthetic images come from :class:`medsynth.SyntheticDataset` (seed = the repetition's seed, latents
scaled by ``truncation``), with class counts proportional to the real subset's (largest remainder), so
the three sets differ in where the images come from, not in their class balance. Per seed the real
subset, the network's initialisation, the batch order and the synthetic images are drawn from that seed.

Reported per training set: accuracy and macro one-vs-rest ROC AUC (the mean over the holdout's classes
of the AUC of "this class" against the rest, on softmax scores; Mann-Whitney, ties count 1/2), each as
the mean over seeds, the sample standard deviation and a 95% Student-t interval of the mean
(mean +- t(0.975, K-1) * std / sqrt(K), clipped to [0, 1]; none for K = 1), plus every seed's value.
Results are appended to ``RUN/utility.json`` (schema medsynth-utility/1).

Classifiers (``model``; on 2 CPU cores, 2D, batch 32, measured training throughput; docs/augmentation.md):

* ``densenet`` (default): ``monai.networks.nets.DenseNet`` with 3 dense blocks of 2 layers, 16 initial
  features, growth rate 8 (20k parameters): ~300-500 images/s at 32x32, ~100 at 64x64;
* ``densenet121``: ``monai.networks.nets.DenseNet121`` at low width (16 initial features, growth 8;
  451k parameters): ~40-60 images/s at 32x32, ~16-22 at 64x64 - for a GPU.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["ARMS", "MODELS", "UtilityError", "macro_auc", "render_text", "seed_summary", "stratified_subset",
           "utility_run"]

SCHEMA = "medsynth-utility/1"
ARMS = ("real", "real+synthetic", "synthetic")
MODELS = {
    "densenet": "monai.networks.nets.DenseNet(block_config=(2, 2, 2), init_features=16, growth_rate=8)",
    "densenet121": "monai.networks.nets.DenseNet121(init_features=16, growth_rate=8)",
}


class UtilityError(ValueError):
    """Input that makes the utility check impossible or meaningless; the CLI exits 2."""


def _note(progress, msg: str) -> None:
    if progress is None or progress:
        print(f"utility: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# numbers


def macro_auc(scores, y, classes=None) -> tuple[float, dict[int, float]]:
    """Macro one-vs-rest ROC AUC of (N, C) class scores against labels ``y`` (N,).

    For each class c among ``classes`` (default: those present in ``y``) that has positives and
    negatives, the AUC of scores[:, c] for y == c against y != c; returns (their mean, {c: AUC}).
    """
    from medsynth.privacy.membership import roc_auc

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(y)
    classes = sorted(set(y.tolist())) if classes is None else list(classes)
    per = {}
    for c in classes:
        pos = y == c
        if pos.any() and (~pos).any():
            per[int(c)] = roc_auc(s[pos, c], s[~pos, c])
    if not per:
        raise UtilityError("the ROC AUC needs at least two classes among the labels")
    return float(np.mean(list(per.values()))), per


def seed_summary(values) -> dict:
    """Mean, sample std and 95% Student-t interval of the mean (clipped to [0, 1]) of per-seed values."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    out = {"mean": round(float(v.mean()), 6), "std": None, "ci95": None, "values": [round(float(x), 6) for x in v]}
    if v.size > 1:
        sd = float(v.std(ddof=1))
        half = float(t.ppf(0.975, v.size - 1)) * sd / math.sqrt(v.size)
        out["std"] = round(sd, 6)
        out["ci95"] = [round(max(0.0, float(v.mean()) - half), 6), round(min(1.0, float(v.mean()) + half), 6)]
    return out


def stratified_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Positions of a seeded, stratified ``fraction`` of ``labels``: round(fraction * n_c), at least 1, per class."""
    y = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 7])
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(idx.size, max(1, int(math.floor(fraction * idx.size + 0.5))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` split proportionally to ``counts`` (largest remainder; ties to the lower class index)."""
    share = counts / counts.sum() * total
    out = np.floor(share).astype(np.int64)
    rest = total - int(out.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(share[c] - out[c]), c))
    for c in order[:rest]:
        out[c] += 1
    return out


# --------------------------------------------------------------------------------------------
# the classifier


def build_classifier(model: str, spatial_dims: int, n_classes: int) -> torch.nn.Module:
    from monai.networks.nets import DenseNet, DenseNet121

    if model == "densenet":
        return DenseNet(spatial_dims=spatial_dims, in_channels=1, out_channels=n_classes, init_features=16,
                        growth_rate=8, block_config=(2, 2, 2))
    if model == "densenet121":
        return DenseNet121(spatial_dims=spatial_dims, in_channels=1, out_channels=n_classes, init_features=16,
                           growth_rate=8)
    raise UtilityError(f"unknown classifier {model!r}; choose {' or '.join(MODELS)}")


def train_classifier(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, model: str = "densenet", epochs: int = 10,
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device="cpu") -> torch.nn.Module:
    """Cross-entropy, Adam; initialisation and batch order from ``seed``; last partial batch kept."""
    torch.manual_seed(int(seed))
    net = build_classifier(model, x.dim() - 2, n_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    net.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            b = order[i:i + batch_size]
            if len(b) < 2:       # batch norm needs two samples
                continue
            loss = torch.nn.functional.cross_entropy(net(x[b].to(device)), y[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: torch.nn.Module, x: torch.Tensor, device="cpu", batch_size: int = 128) -> np.ndarray:
    out = [torch.softmax(net(x[i:i + batch_size].to(device)).float(), 1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


# --------------------------------------------------------------------------------------------
# the check


def _run_dir_of(path: Path) -> Path:
    if path.is_file():       # a checkpoint: RUN/checkpoints/<name>.pt
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def utility_run(run, *, real_fraction: float = 1.0, seeds: int = 3, epochs: int = 10, ratio: float = 0.5,
                model: str = "densenet", batch_size: int = 32, lr: float = 1e-3, truncation: float = 1.0,
                device=None, write: bool = True, progress=None) -> dict:
    """Train the classifier on real, real+synthetic and synthetic-only images and test it on the real holdout.

    ``run``: a run directory (its newest checkpoint) or one of its checkpoint files. See the module
    docstring for what is trained and reported. Appends the result to ``RUN/utility.json`` (``write``).
    """
    from medsynth.augment import SyntheticDataset, mix, synthetic_count
    from medsynth.config import config_from_dict
    from medsynth.data import build_dataset
    from medsynth.data.sources import Split
    from medsynth.sampling import load_generator
    from medsynth.training.checkpoint import CheckpointError

    path = Path(run)
    if not path.exists():
        raise UtilityError(f"{path}: no such run directory or checkpoint")
    run_dir = _run_dir_of(path)
    if path.is_dir() and not (path / "checkpoints").is_dir():
        raise UtilityError(f"{path}: not a run directory (no checkpoints/; train one with 'medsynth train')")
    if not 0 < real_fraction <= 1:
        raise UtilityError(f"--real-fraction must be in (0, 1], got {real_fraction}")
    if not 0 < ratio < 1:
        raise UtilityError(f"--ratio (the synthetic share of real+synthetic) must be in (0, 1), got {ratio}")
    for name, v in (("--seeds", seeds), ("--epochs", epochs), ("--batch-size", batch_size)):
        if int(v) < 1:
            raise UtilityError(f"{name} must be at least 1, got {v}")
    if not lr > 0:
        raise UtilityError(f"--lr must be positive, got {lr}")
    if not truncation > 0:
        raise UtilityError(f"--truncation must be positive, got {truncation}")
    if model not in MODELS:
        raise UtilityError(f"unknown classifier {model!r}; choose {' or '.join(MODELS)}")
    if device is not None:
        try:
            dev_asked = torch.device(device)
        except (RuntimeError, ValueError):
            raise UtilityError(f"--device {device!r}: not a device (cpu, cuda or cuda:N)") from None
        if dev_asked.type == "cuda" and not torch.cuda.is_available():
            raise UtilityError(f"--device {device}: CUDA is not available on this machine")
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise UtilityError(f"{run_dir}: no split.json; the utility check tests on the run's real holdout split")
    try:
        g = load_generator(path, device=device)
    except CheckpointError as e:
        raise UtilityError(str(e)) from None
    if not g.conditional or len(g.labels) < 2:
        raise UtilityError(f"{run_dir}: the utility check trains a classifier of the run's classes and needs a "
                           "conditional generator of at least 2 labels (model.conditional: true); this run's "
                           "generator is unconditional")
    dev = g.device
    cfg = config_from_dict(g.state["config"], source=str(g.checkpoint))
    bundle = build_dataset(cfg.data, split=Split.load(split_path), progress=False)
    names = list(g.labels)
    if list(bundle.labels) != names:
        raise UtilityError(f"{run_dir}: the data's labels {bundle.labels} differ from the generator's {names}")
    k = len(names)
    train_idx, hold_idx = bundle.train_indices, bundle.holdout_indices
    y_train_all = bundle.prepared.label_index[train_idx]
    y_hold = bundle.prepared.label_index[hold_idx]
    labelled = y_hold >= 0
    hold_idx, y_hold = hold_idx[labelled], y_hold[labelled]
    present = sorted(set(y_hold.tolist()))
    if len(present) < 2:
        raise UtilityError(f"{run_dir}: the real holdout has {len(hold_idx)} labelled image(s) of "
                           f"{len(present)} class(es) ({', '.join(names[c] for c in present) or 'none'}); accuracy "
                           "and ROC AUC need at least 2 classes (raise data.holdout_fraction)")
    keep = y_train_all >= 0
    train_idx, y_train_all = train_idx[keep], y_train_all[keep]
    x_hold = bundle.prepared.batch(hold_idx, bundle.mapping)
    warnings = []
    missing = [names[c] for c in range(k) if c not in present]
    if missing:
        warnings.append(f"no holdout images of {', '.join(missing)}: the macro AUC averages over "
                        f"{', '.join(names[c] for c in present)} only")
    _note(progress, f"{run_dir}: {len(train_idx)} real training images, holdout {len(hold_idx)} "
                    f"({', '.join(f'{names[c]} {int((y_hold == c).sum())}' for c in present)}); classifier {model}, "
                    f"{seeds} seed(s) x {epochs} epoch(s) x 3 training sets on {dev}")
    values = {arm: {"accuracy": [], "auc": []} for arm in ARMS}
    per_class = {arm: [] for arm in ARMS}
    sizes = {}
    t_start = time.perf_counter()
    for s in range(int(seeds)):
        sub = stratified_subset(y_train_all, real_fraction, s)
        x_real = bundle.prepared.batch(train_idx[sub], bundle.mapping)
        y_real = torch.from_numpy(y_train_all[sub].astype(np.int64))
        n_syn = synthetic_count(len(sub), ratio)
        if n_syn < 2 or len(sub) < 2:
            raise UtilityError(f"{len(sub)} real and {n_syn} synthetic training image(s) at --real-fraction "
                               f"{real_fraction:g} and --ratio {ratio:g}: each training set needs at least 2")
        counts = _apportion(np.bincount(y_real.numpy(), minlength=k).astype(np.float64), max(n_syn, 1))
        syn_labels = [c for c in range(k) for _ in range(int(counts[c]))]
        syn = SyntheticDataset(g, labels=syn_labels, seed=s, truncation=truncation)
        mixed = mix(torch.utils.data.TensorDataset(x_real, y_real), syn, ratio, seed=s)
        items = [mixed[i] for i in range(len(mixed))]
        x_mix = torch.stack([im for im, _ in items])
        y_mix = torch.stack([torch.as_tensor(lab) for _, lab in items]).long()
        is_syn = torch.tensor([mixed.is_synthetic(i) for i in range(len(mixed))])
        sets = {"real": (x_real, y_real), "real+synthetic": (x_mix, y_mix),
                "synthetic": (x_mix[is_syn], y_mix[is_syn])}
        sizes[s] = {"real": int(len(x_real)), "synthetic": int(is_syn.sum())}
        for arm in ARMS:
            t0 = time.perf_counter()
            x, y = sets[arm]
            net = train_classifier(x, y, k, model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=s,
                                   device=dev)
            p = predict(net, x_hold, dev)
            acc = float((p.argmax(1) == y_hold).mean())
            auc, per = macro_auc(p, y_hold, present)
            values[arm]["accuracy"].append(acc)
            values[arm]["auc"].append(auc)
            per_class[arm].append(per)
            _note(progress, f"seed {s + 1}/{seeds} {arm:15s} {len(x):5d} images: accuracy {acc:.3f}, AUC {auc:.3f} "
                            f"({time.perf_counter() - t0:.1f} s)")
    seconds = time.perf_counter() - t_start
    arms = {}
    for arm in ARMS:
        arms[arm] = {"accuracy": seed_summary(values[arm]["accuracy"]), "auc": seed_summary(values[arm]["auc"]),
                     "auc_per_class": {names[c]: round(float(np.mean([pc[c] for pc in per_class[arm]])), 6)
                                       for c in present}}
    majority = float(np.bincount(y_hold, minlength=k).max() / len(y_hold))
    n_real = sizes[0]["real"]
    n_syn = sizes[0]["synthetic"]
    arms["real"]["n_train"] = {"real": n_real, "synthetic": 0}
    arms["real+synthetic"]["n_train"] = {"real": n_real, "synthetic": n_syn}
    arms["synthetic"]["n_train"] = {"real": 0, "synthetic": n_syn}
    result = {
        "schema": SCHEMA, "run": str(run_dir), "checkpoint": g.checkpoint.name,
        "checkpoint_sha256": g.checkpoint_sha256, "step": int(g.state["step"]), "labels": names,
        "settings": {"real_fraction": real_fraction, "seeds": int(seeds), "epochs": int(epochs), "ratio": ratio,
                     "model": model, "model_detail": MODELS[model], "batch_size": int(batch_size), "lr": lr,
                     "truncation": truncation, "device": str(dev), "optimizer": "Adam", "loss": "cross-entropy",
                     "synthetic_labels": "proportional to the real subset's class counts"},
        "n_real_train_available": int(len(train_idx)),
        "holdout": {"n": int(len(hold_idx)), "per_class": {names[c]: int((y_hold == c).sum()) for c in present}},
        "chance": {"accuracy_majority": round(majority, 6), "auc": 0.5},
        "arms": arms,
        "ci": "95% Student-t interval of the mean over seeds, clipped to [0, 1]",
        "auc_definition": "macro one-vs-rest ROC AUC over the holdout's classes, softmax scores",
        "warnings": warnings, "seconds": round(seconds, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if write:
        append_result(run_dir / "utility.json", result)
        result["written"] = str(run_dir / "utility.json")
    return result


def append_result(path: Path, result: dict) -> None:
    """Add ``result`` to the list in ``path`` (created when absent), written atomically."""
    from medsynth.runs import atomic_write_text

    doc = {"schema": SCHEMA, "results": []}
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UtilityError(f"{path} is not readable JSON ({e}); move it away to start a new one") from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("results"), list):
            raise UtilityError(f"{path} is not a {SCHEMA} file; move it away to start a new one")
    doc["results"].append(result)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _fmt(summary: dict) -> str:
    text = f"{summary['mean']:.3f}"
    if summary["std"] is not None:
        text += f" ± {summary['std']:.3f} [{summary['ci95'][0]:.3f}, {summary['ci95'][1]:.3f}]"
    return text


def render_text(result: dict) -> str:
    st = result["settings"]
    hold = result["holdout"]
    lines = [f"downstream utility of {result['run']} (step {result['step']}): classifier {st['model']}, "
             f"{st['seeds']} seed(s) x {st['epochs']} epoch(s), real fraction {st['real_fraction']:g}, "
             f"synthetic share {st['ratio']:g} in real+synthetic",
             f"tested on the real holdout: {hold['n']} images "
             f"({', '.join(f'{k} {v}' for k, v in hold['per_class'].items())})", "",
             f"{'training set':16s} {'real':>5s} {'synth':>5s}  {'accuracy (mean ± std [95% CI])':33s}  "
             f"{'ROC AUC, macro one-vs-rest':33s}"]
    for arm, r in result["arms"].items():
        n = r["n_train"]
        lines.append(f"{arm:16s} {n['real']:5d} {n['synthetic']:5d}  {_fmt(r['accuracy']):33s}  {_fmt(r['auc']):33s}")
    lines.append("")
    lines.append(f"chance: accuracy {result['chance']['accuracy_majority']:.3f} (majority class), AUC 0.500")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    if result.get("written"):
        lines.append(f"appended to {result['written']}")
    return "\n".join(lines)

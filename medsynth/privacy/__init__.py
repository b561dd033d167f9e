"""Privacy checks: memorization and membership inference against a patient-disjoint holdout.

* :func:`check_sets` - the checks on three tensors (train, holdout, synthetic images in [-1, 1]).
* :func:`check_run` - a training run: its split's train and holdout images, and the samples in a
  folder written by ``medsynth generate`` (or generated now); writes ``RUN/privacy.json``.
* :func:`check_folders` - any three image folders.
* :func:`filter_samples` - copy the samples that passed into a new folder, with a manifest.

A check that ran gives a report with ``verdict`` "pass" or "fail"; bad input (empty or overlapping
holdout, images of different sizes or modalities...) raises :class:`PrivacyError`. See docs/privacy.md.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medsynth.privacy.membership import attack_summary, discriminator_scores, load_discriminator, roc_auc
from medsynth.privacy.memorization import closest_pairs_png, memorization_summary, reliable_holdout_size
from medsynth.privacy.neighbours import knn, pixel_grid, shift_max_ncc

__all__ = ["DEFAULT_LIMITS", "DEFAULT_SETTINGS", "PrivacyError", "SCHEMA", "check_folders", "check_run",
           "check_sets", "filter_samples", "render_text"]

SCHEMA = "medsynth-privacy/1"
SPACES = ("pixel", "inception")
DEFAULT_LIMITS = {"max_memorized": 0.02, "max_mia_auc": 0.6, "max_discriminator_auc": None}
DEFAULT_SETTINGS = {"space": "pixel", "quantile": 0.995, "pixel_size": None, "max_shift": None,
                    "band": [1.0, 4.0], "bootstrap": 1000}
PIXEL_SIZE = {2: 64, 3: 32}       # default comparison grid (longest side) for 2D images and 3D volumes
MAX_SHIFT = {2: 2, 3: 1}          # default translation search, pixels of that grid


class PrivacyError(ValueError):
    """Input that makes the privacy check meaningless (empty or overlapping holdout, mismatched sets...)."""


def _note(progress, msg: str) -> None:
    if progress is None or progress:
        print(f"privacy: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# comparison spaces


class PixelSpace:
    """Normalised cross-correlation of band-passed images, maximised over small translations."""

    name = "pixel"

    def __init__(self, ndim: int, size=None, max_shift=None, band=(1.0, 4.0), device=None):
        self.size = int(size or PIXEL_SIZE[ndim])
        self.max_shift = int(MAX_SHIFT[ndim] if max_shift is None else max_shift)
        self.band = (float(band[0]), float(band[1]))
        self.device = device

    def settings(self) -> dict:
        return {"pixel_size": self.size, "max_shift": self.max_shift, "band": list(self.band)}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return pixel_grid(images, self.size)

    def fit(self, train_emb) -> None:
        pass

    def nn(self, query, ref) -> tuple[np.ndarray, np.ndarray]:
        s, i, _ = shift_max_ncc(query, ref, self.max_shift, band=self.band, device=self.device)
        return s.numpy().astype(np.float64), i.numpy()


class FeatureSpace:
    """Cosine similarity of embeddings (e.g. Inception's 2048-d features) centred on the training mean."""

    def __init__(self, name: str, embed_fn, device=None):
        self.name, self.embed_fn, self.device = name, embed_fn, device
        self.center = None

    def settings(self) -> dict:
        return {}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.embed_fn(images), dtype=np.float32))

    def fit(self, train_emb) -> None:
        self.center = train_emb.mean(dim=0, keepdim=True)

    def nn(self, query, ref) -> tuple[np.ndarray, np.ndarray]:
        s, i = knn(query - self.center, ref - self.center, 1, metric="cosine", device=self.device)
        return s[:, 0].numpy().astype(np.float64), i[:, 0].numpy()


def inception_embedding(device=None):
    """Images (N, C, H, W) or volumes (N, C, D, H, W) -> pytorch-fid Inception features (2.5D for volumes:
    the three central orthogonal slices' features concatenated)."""
    from medsynth.metrics.features import FeatureExtractor

    holder = {}

    def embed(images: torch.Tensor) -> np.ndarray:
        if "x" not in holder:
            holder["x"] = FeatureExtractor(device=device)
        ex = holder["x"]
        if images.ndim == 5:
            parts = ex.features_25d(images)
            return np.concatenate([parts[p] for p in ("sagittal", "coronal", "axial")], axis=1)
        return ex.features(images)
    return embed


def make_spaces(space: str, ndim: int, *, pixel_size=None, max_shift=None, band=(1.0, 4.0), embeddings=None,
                device=None) -> list:
    names = {"pixel": ["pixel"], "inception": ["inception"], "both": ["pixel", "inception"]}.get(space)
    if names is None:
        raise PrivacyError(f"space: expected pixel, inception or both, got {space!r}")
    out = []
    for n in names:
        if n == "pixel":
            out.append(PixelSpace(ndim, pixel_size, max_shift, band, device))
        else:
            out.append(FeatureSpace("inception", inception_embedding(device), device))
    for name, fn in (embeddings or {}).items():
        out.append(FeatureSpace(name, fn, device))
    return out


# ------------------------------------------------------------------------------------------------
# the check on tensors


@dataclass
class Details:
    """Per-image results of :func:`check_sets` next to the report (for files, figures and tests)."""

    memorized: np.ndarray                        # (S,) bool, any space
    nn_similarity: dict = field(default_factory=dict)   # space -> (S,) synthetic->train similarity
    nearest_train: dict = field(default_factory=dict)   # space -> (S,) index into train
    thresholds: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)           # space -> (S,) bool


def _validate_sets(train, holdout, synthetic) -> int:
    for name, x in (("train", train), ("holdout", holdout), ("synthetic", synthetic)):
        if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise PrivacyError(f"{name}: expected images (N, C, H, W) or volumes (N, C, D, H, W), got {shape}")
    if holdout.shape[0] == 0:
        raise PrivacyError("the holdout set is empty: without real images the model never saw, memorization "
                           "cannot be told from chance similarity (give a holdout, e.g. data.holdout_fraction > 0)")
    if train.shape[0] == 0:
        raise PrivacyError("the training set is empty")
    if synthetic.shape[0] == 0:
        raise PrivacyError("the synthetic set is empty")
    shapes = {"train": tuple(train.shape[1:]), "holdout": tuple(holdout.shape[1:]),
              "synthetic": tuple(synthetic.shape[1:])}
    if len(set(shapes.values())) > 1:
        raise PrivacyError("the sets have different image sizes: " + ", ".join(
            f"{k} {'x'.join(map(str, v[1:]))} ({v[0]} channel(s))" for k, v in shapes.items())
            + "; compare images of one size and modality")
    for name, x in (("train", train), ("holdout", holdout), ("synthetic", synthetic)):
        if not torch.isfinite(x).all():
            raise PrivacyError(f"{name}: contains NaN or Inf")
    return train.ndim - 2


def _content_hashes(x: torch.Tensor) -> list[str]:
    a = x.float().contiguous().numpy()
    return [hashlib.sha256(a[i].tobytes()).hexdigest() for i in range(a.shape[0])]


def check_overlap(train: torch.Tensor, holdout: torch.Tensor) -> None:
    """Holdout images identical in content to a training image make the calibration meaningless."""
    seen = set(_content_hashes(train))
    dup = sum(h in seen for h in _content_hashes(holdout))
    if dup:
        raise PrivacyError(f"{dup} of {holdout.shape[0]} holdout image(s) are identical to training images: the "
                           "holdout must hold other patients than the training set, or the check is meaningless")


def check_sets(train: torch.Tensor, holdout: torch.Tensor, synthetic: torch.Tensor, *, train_groups=None,
               holdout_groups=None, space: str = "pixel", quantile: float = 0.995, pixel_size=None, max_shift=None,
               band=(1.0, 4.0), embeddings=None, limits=None, bootstrap: int = 1000, seed: int = 0, device=None,
               progress=None) -> tuple[dict, Details]:
    """Memorization and distance-attack membership inference on image tensors in [-1, 1].

    ``train_groups`` / ``holdout_groups``: a patient ID per image, so the attack scores patients (the
    maximum over their images); None scores images. ``space``: "pixel", "inception" or "both";
    ``embeddings``: extra named embedding functions (images -> (N, d) features) compared by cosine
    similarity. Returns ``(report, details)``; the report has no per-sample list (callers add it).
    """
    ndim = _validate_sets(train, holdout, synthetic)
    if not 0.0 < float(quantile) < 1.0:
        raise PrivacyError(f"quantile: expected a value between 0 and 1 (e.g. 0.995), got {quantile}")
    limits = _limits(limits)
    check_overlap(train, holdout)
    for name, g, x in (("train_groups", train_groups, train), ("holdout_groups", holdout_groups, holdout)):
        if g is not None and len(g) != x.shape[0]:
            raise PrivacyError(f"{name}: {len(g)} IDs for {x.shape[0]} images")
    if train_groups is not None and holdout_groups is not None:
        shared = set(train_groups) & set(holdout_groups)
        if shared:
            raise PrivacyError(f"{len(shared)} patient(s) are in both the training and the holdout set: the "
                               "holdout must hold other patients, or the check is meaningless")
    warn = []
    need = reliable_holdout_size(quantile)
    if holdout.shape[0] < need:
        warn.append(f"only {holdout.shape[0]} holdout images: the {quantile:.1%} threshold rests on the few largest "
                    f"holdout similarities and is unreliable below {need} holdout images")
    spaces = make_spaces(space, ndim, pixel_size=pixel_size, max_shift=max_shift, band=band, embeddings=embeddings,
                         device=device)
    rng = np.random.default_rng(seed)
    equal = np.sort(rng.choice(train.shape[0], size=min(train.shape[0], holdout.shape[0]), replace=False))
    memorization, membership, details = {}, {}, Details(np.zeros(synthetic.shape[0], dtype=bool))
    for sp in spaces:
        t0 = time.perf_counter()
        _note(progress, f"{sp.name} space: {train.shape[0]} train, {holdout.shape[0]} holdout, "
                        f"{synthetic.shape[0]} synthetic images")
        et, eh, es = sp.embed(train), sp.embed(holdout), sp.embed(synthetic)
        sp.fit(et)
        s_tr, i_tr = sp.nn(es, et)
        h_tr, _ = sp.nn(eh, et)
        s_ho, _ = sp.nn(es, eh)
        s_eq, _ = sp.nn(es, et[torch.from_numpy(equal)]) if equal.size < train.shape[0] else (s_tr, None)
        summary, flags = memorization_summary(s_tr, h_tr, s_ho, s_eq, float(quantile))
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        memorization[sp.name] = summary
        # membership: every real image's similarity to its nearest synthetic image
        tr_syn, _ = sp.nn(et, es)
        ho_syn, _ = sp.nn(eh, es)
        membership[sp.name] = attack_summary(tr_syn, ho_syn, train_groups=train_groups, holdout_groups=holdout_groups,
                                             n_boot=bootstrap, seed=seed)
        details.nn_similarity[sp.name], details.nearest_train[sp.name] = s_tr, i_tr
        details.thresholds[sp.name], details.flags[sp.name] = summary["threshold"], flags
        details.memorized |= flags
    n_mem = int(details.memorized.sum())
    report = {
        "schema": SCHEMA,
        "n": {"train": int(train.shape[0]), "holdout": int(holdout.shape[0]), "synthetic": int(synthetic.shape[0])},
        "spaces": [sp.name for sp in spaces],
        "settings": {"quantile": float(quantile), "bootstrap": bootstrap, "seed": seed,
                     **{k: v for sp in spaces for k, v in sp.settings().items()}},
        "limits": limits,
        "memorization": {"memorized": n_mem, "memorized_share": round(n_mem / synthetic.shape[0], 6),
                         "spaces": memorization},
        "membership": {"distance": membership, "discriminator": None},
        "warnings": warn,
    }
    return report, details


def _limits(limits) -> dict:
    out = dict(DEFAULT_LIMITS)
    for k, v in (limits or {}).items():
        if k not in out:
            raise PrivacyError(f"unknown limit {k!r}; known: {', '.join(out)}")
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1):
            raise PrivacyError(f"limit {k}: expected a number between 0 and 1, got {v!r}")
        out[k] = None if v is None else float(v)
    return out


def decide(report: dict) -> dict:
    """Set ``verdict`` and ``reasons`` from the report's numbers and limits."""
    lim, reasons = report["limits"], []
    mem = report["memorization"]
    if lim["max_memorized"] is not None and mem["memorized_share"] > lim["max_memorized"]:
        reasons.append(f"{mem['memorized']} of {report['n']['synthetic']} synthetic images "
                       f"({mem['memorized_share']:.1%}) are memorized; the limit is {lim['max_memorized']:.1%}")
    for name, m in report["membership"]["distance"].items():
        if lim["max_mia_auc"] is not None and m["auc"] > lim["max_mia_auc"]:
            reasons.append(f"membership-inference AUC ({name} distance attack) {m['auc']:.3f} exceeds "
                           f"{lim['max_mia_auc']:.3f}")
    d = report["membership"].get("discriminator")
    if d and lim["max_discriminator_auc"] is not None and d["auc"] > lim["max_discriminator_auc"]:
        reasons.append(f"discriminator membership AUC {d['auc']:.3f} exceeds {lim['max_discriminator_auc']:.3f}")
    report["verdict"] = "fail" if reasons else "pass"
    report["reasons"] = reasons
    return report


# ------------------------------------------------------------------------------------------------
# folders


@dataclass
class ImageSet:
    images: torch.Tensor        # (N, 1, *S) in [-1, 1]
    files: list[str]            # paths relative to the folder (posix)
    sha256: list[str]           # of each file's bytes
    root: Path
    modalities: set


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_image_folder(path, role: str) -> ImageSet:
    """Every 2D image below ``path`` as (N, 1, H, W) in [-1, 1], scaled by bit depth (value / (2^bits - 1)),
    as ``medsynth evaluate`` reads folders; 16-bit PNGs from ``medsynth generate`` are read exactly."""
    from medsynth.data.readers import UnreadableFile, read_image
    from medsynth.data.sources import DataError, discover

    root = Path(path)
    if not root.is_dir():
        raise PrivacyError(f"--{role} {root}: no such folder")
    try:
        disc = discover(root)
    except DataError as e:
        raise PrivacyError(f"{role}: {e}") from None
    images, files, shas, sizes, modalities, skipped = [], [], [], {}, set(), 0
    for r in disc.records:
        if r.kind != "image":
            raise PrivacyError(f"{role} {root}: {r.key} is a volume or series; folder mode compares 2D images "
                               "(check volumes through their run or the Python API)")
        try:
            arr, meta = read_image(r.files[0])
        except UnreadableFile:
            skipped += 1
            continue
        top = float(2 ** (meta.bit_depth or 8) - 1)
        images.append(torch.from_numpy(np.clip(arr / top, 0, 1) * 2 - 1).float()[None])
        files.append(Path(r.files[0]).relative_to(root).as_posix())
        shas.append(_sha256(Path(r.files[0])))
        sizes["x".join(map(str, arr.shape))] = sizes.get("x".join(map(str, arr.shape)), 0) + 1
        modalities.add(meta.modality)
    if not images:
        raise PrivacyError(f"{role} {root}: no readable image" + (f" ({skipped} unreadable)" if skipped else ""))
    if len(sizes) > 1:
        raise PrivacyError(f"{role} {root}: images of different sizes ("
                           + ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items())) + "); use one size")
    return ImageSet(torch.stack(images), files, shas, root.resolve(), modalities)


def _check_modalities(*sets: tuple[str, set]) -> None:
    found = {name: {m for m in mods if m} for name, mods in sets}
    all_m = set().union(*found.values())
    if len(all_m) > 1:
        raise PrivacyError("the sets have different modalities: " + ", ".join(
            f"{name} {'/'.join(sorted(m)) or 'unknown'}" for name, m in found.items()))


def _samples(report: dict, details: Details, syn: ImageSet | None) -> list[dict]:
    first = report["spaces"][0]
    sim = details.nn_similarity[first]
    out = []
    for i in range(len(sim)):
        rec = {"file": syn.files[i], "sha256": syn.sha256[i]} if syn is not None else {"index": i}
        rec.update({"passed": not bool(details.memorized[i]), "memorized": bool(details.memorized[i]),
                    "nn_similarity": round(float(sim[i]), 6)})
        for name in report["spaces"][1:]:
            rec[f"nn_similarity_{name}"] = round(float(details.nn_similarity[name][i]), 6)
        out.append(rec)
    return out


def _write_outputs(report: dict, details: Details, synthetic, train, report_path: Path | None,
                   figure_path: Path | None) -> None:
    from medsynth.runs import atomic_write_bytes, atomic_write_text

    first = report["spaces"][0]
    if figure_path is not None:
        atomic_write_bytes(figure_path, closest_pairs_png(synthetic, train, details.nn_similarity[first],
                                                          details.nearest_train[first],
                                                          threshold=details.thresholds[first]))
        report["figure"] = str(figure_path)
    if report_path is not None:
        atomic_write_text(report_path, json.dumps(report, indent=1) + "\n")


def check_folders(train_dir, holdout_dir, synthetic_dir, *, report_path=None, figure_path=None, progress=None,
                  **settings) -> tuple[dict, Details]:
    """The checks on three folders of 2D images (``--real-train``/``--real-holdout``/``--synthetic``)."""
    dirs = {"real-train": Path(train_dir), "real-holdout": Path(holdout_dir), "synthetic": Path(synthetic_dir)}
    resolved = {k: v.resolve() for k, v in dirs.items()}
    if resolved["real-train"] == resolved["real-holdout"]:
        raise PrivacyError("--real-train and --real-holdout are the same folder: the holdout must hold other "
                           "patients than the training set")
    tr = read_image_folder(dirs["real-train"], "real-train")
    ho = read_image_folder(dirs["real-holdout"], "real-holdout")
    sy = read_image_folder(dirs["synthetic"], "synthetic")
    same_files = set(tr.sha256) & set(ho.sha256)
    if same_files:
        raise PrivacyError(f"{len(same_files)} file(s) appear in both --real-train and --real-holdout: the holdout "
                           "must hold other patients than the training set")
    _check_modalities(("train", tr.modalities), ("holdout", ho.modalities), ("synthetic", sy.modalities))
    report, details = check_sets(tr.images, ho.images, sy.images, progress=progress, **settings)
    report.update({"checkpoint_sha256": None, "synthetic_dir": str(sy.root),
                   "real_train_dir": str(tr.root), "real_holdout_dir": str(ho.root)})
    decide(report)
    report["samples"] = _samples(report, details, sy)
    _write_outputs(report, details, sy.images, tr.images, Path(report_path) if report_path else None,
                   Path(figure_path) if figure_path else None)
    return report, details


# ------------------------------------------------------------------------------------------------
# a run


def _run_sets(run_dir: Path, state: dict, progress):
    from medsynth.config import config_from_dict
    from medsynth.data import build_dataset
    from medsynth.data.sources import Split

    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise PrivacyError(f"{run_dir}: no split.json; the privacy check needs the run's holdout "
                           "(see 'medsynth data prepare')")
    split = Split.load(split_path)
    if not split.holdout:
        raise PrivacyError(f"{run_dir}: the run's holdout is empty (holdout_fraction {split.holdout_fraction}); "
                           "without unseen patients memorization cannot be told from chance similarity")
    overlap = set(split.train) & set(split.holdout)
    if overlap or set(split.train_patients) & set(split.holdout_patients):
        raise PrivacyError(f"{run_dir}/split.json: {len(overlap)} record(s) and "
                           f"{len(set(split.train_patients) & set(split.holdout_patients))} patient(s) are in both "
                           "train and holdout; the check would be meaningless")
    cfg = config_from_dict(state["config"], source=str(run_dir))
    bundle = build_dataset(cfg.data, split=split, progress=progress)
    if bundle.holdout_indices.size == 0:
        raise PrivacyError(f"{run_dir}: none of the holdout records in split.json is in the dataset any more")
    patient = {r.key: r.patient_id for r in bundle.discovery.records}
    tr_idx, ho_idx = np.sort(bundle.train_indices), np.sort(bundle.holdout_indices)
    items = bundle.prepared.items
    tr_groups = [patient.get(items[i]["record"], items[i]["record"]) for i in tr_idx]
    ho_groups = [patient.get(items[i]["record"], items[i]["record"]) for i in ho_idx]
    train = bundle.prepared.tensor(tr_idx, bundle.mapping)
    holdout = bundle.prepared.tensor(ho_idx, bundle.mapping)
    labels = torch.from_numpy(bundle.prepared.label_index)
    return train, holdout, tr_groups, ho_groups, labels[tr_idx], labels[ho_idx]


def check_run(run_dir, synthetic_dir=None, *, n=None, seed=0, limits=None, write=True, progress=None,
              **settings) -> dict:
    """Check a training run's samples against its own split; see the module docstring and docs/privacy.md.

    ``synthetic_dir``: a folder written by ``medsynth generate``; None generates ``n`` samples (default:
    as many as training images) with ``seed`` into ``RUN/privacy/samples/``. With ``write`` the report
    goes to ``RUN/privacy.json`` and the figure to ``RUN/privacy/closest_pairs.png``. ``settings``:
    the keyword arguments of :func:`check_sets` (space, quantile, max_shift, ...).
    """
    from medsynth.sampling import load_generator, write_samples

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PrivacyError(f"{run_dir}: no such run directory")
    g = load_generator(run_dir, device=settings.get("device"))
    train, holdout, tr_groups, ho_groups, tr_y, ho_y = _run_sets(run_dir, g.state, progress)
    syn_set = None
    if synthetic_dir is None and len(g.image_shape) == 3:     # (C, H, W): 2D samples go through files
        count = int(n or train.shape[0])
        if count < 1:
            raise PrivacyError(f"n must be at least 1, got {n}")
        sdir = run_dir / "privacy" / "samples"
        if sdir.is_dir():
            for p in list(sdir.glob("sample_*.png")) + [sdir / "manifest.csv"]:
                p.unlink(missing_ok=True)
        _note(progress, f"generating {count} samples (seed {seed}) into {sdir}")
        write_samples(g, sdir, count, seed=seed)
        synthetic_dir = sdir
    if synthetic_dir is not None:
        syn_set = read_image_folder(synthetic_dir, "synthetic")
        synthetic = syn_set.images
    else:   # 3D: samples are checked in memory (generate writes 2D images only)
        count = int(n or train.shape[0])
        _note(progress, f"generating {count} volumes (seed {seed}) in memory")
        synthetic, _ = g.sample(count, seed=seed)
    if tuple(synthetic.shape[1:]) != tuple(train.shape[1:]):
        raise PrivacyError(f"synthetic images are {'x'.join(map(str, synthetic.shape[2:]))} but the run's training "
                           f"images are {'x'.join(map(str, train.shape[2:]))}: different image sizes")
    report, details = check_sets(train, holdout, synthetic, train_groups=tr_groups, holdout_groups=ho_groups,
                                 limits=limits, seed=seed, progress=progress, **settings)
    disc = load_discriminator(load_checkpoint_state(g.checkpoint))
    if disc is not None:
        dev = settings.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        cond = g.conditional
        a = discriminator_scores(disc, train, tr_y if cond else None, device=dev)
        b = discriminator_scores(disc, holdout, ho_y if cond else None, device=dev)
        report["membership"]["discriminator"] = {**attack_summary(a, b, train_groups=tr_groups,
                                                                  holdout_groups=ho_groups,
                                                                  n_boot=report["settings"]["bootstrap"], seed=seed),
                                                 "image_auc": round(roc_auc(a, b), 6)}
    report.update({"checkpoint": g.checkpoint.name, "checkpoint_sha256": g.checkpoint_sha256, "step": g.state["step"],
                   "synthetic_dir": str(syn_set.root) if syn_set is not None else None, "seed": seed,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    decide(report)
    report["samples"] = _samples(report, details, syn_set)
    if write:
        _write_outputs(report, details, synthetic, train, run_dir / "privacy.json",
                       run_dir / "privacy" / "closest_pairs.png")
    return report


def load_checkpoint_state(path) -> dict:
    from medsynth.training.checkpoint import load_checkpoint

    return load_checkpoint(path)


# ------------------------------------------------------------------------------------------------
# filter


def filter_samples(report: dict, out_dir) -> dict:
    """Copy the samples that passed into ``out_dir`` (which must not exist or be empty), with a
    manifest.csv: the source manifest's rows for those files when it has one, else file,sha256,nn_similarity.
    Each file is checked against the sha256 the check recorded. The folder is built under a temporary
    name and renamed, so it is never half-written. Returns ``{"written": n, "left_out": m, "out": path}``."""
    if report.get("verdict") != "pass":
        raise PrivacyError("the privacy verdict is 'fail': no samples are written (see the reasons in the report)")
    src = report.get("synthetic_dir")
    if not src:
        raise PrivacyError("these samples were checked in memory, not from a folder; nothing to filter")
    src, out = Path(src), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrivacyError(f"--filter {out}: exists and is not an empty folder; give a new folder")
    passed = [s for s in report["samples"] if s["passed"]]
    tmp = out.parent / f".{out.name}.tmp-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        for s in passed:
            data = (src / s["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != s["sha256"]:
                raise PrivacyError(f"{src / s['file']} changed since it was checked; check the folder again")
            (tmp / s["file"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp / s["file"]).write_bytes(data)
        keep = {s["file"] for s in passed}
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        if (src / "manifest.csv").is_file():
            with open(src / "manifest.csv", newline="") as fh:
                rows = list(csv.reader(fh))
            w.writerow(rows[0])
            w.writerows(r for r in rows[1:] if r and r[0] in keep)
        else:
            w.writerow(["file", "sha256", "nn_similarity"])
            w.writerows([s["file"], s["sha256"], s["nn_similarity"]] for s in passed)
        (tmp / "manifest.csv").write_text(text.getvalue())
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"written": len(passed), "left_out": len(report["samples"]) - len(passed), "out": str(out)}


def render_text(report: dict) -> str:
    n = report["n"]
    lines = [f"privacy check: {n['synthetic']} synthetic vs {n['train']} train / {n['holdout']} holdout images"]
    for name, m in report["memorization"]["spaces"].items():
        lines.append(f"  [{name}] memorized {m['memorized']} ({m['memorized_share']:.2%}; by chance about "
                     f"{m['expected_share_by_chance']:.2%}), threshold {m['threshold']:.4f} "
                     f"(holdout {m['quantile']:.1%} quantile); closer to train than holdout "
                     f"{m['closer_to_train_share']:.1%} (50% healthy); DCR median {m['dcr']['median']:.4f}")
    for name, a in report["membership"]["distance"].items():
        lines.append(f"  [{name}] membership inference AUC {a['auc']:.3f} (95% CI {a['ci95'][0]:.3f}-"
                     f"{a['ci95'][1]:.3f}; {a['n_train']} train / {a['n_holdout']} holdout {a['unit']}s)")
    d = report["membership"].get("discriminator")
    if d:
        lines.append(f"  discriminator (white box) AUC {d['auc']:.3f} (95% CI {d['ci95'][0]:.3f}-{d['ci95'][1]:.3f})")
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    lines.append(f"verdict: {report['verdict'].upper()}" + "".join(f"\n  - {r}" for r in report["reasons"]))
    return "\n".join(lines)


"""Synthetic images in a user's training pipeline: :class:`SyntheticDataset`, :func:`mix`, :func:`balance`.

``SyntheticDataset(source, ...)`` is a map-style ``torch.utils.data.Dataset`` of MONAI-style dicts
``{"image": MetaTensor (1, H, W) or (1, D, H, W), "label": int}``, the layout of
:class:`medsynth.data.CachedImageDataset` (the run's own real pipeline):

* ``image``: float32, channel first, in [-1, 1] (``intensity="model"``, what the network was trained on) or
  in the source units of the training data (``intensity="source"``, ``mapping.inverse`` of the former).
  A ``monai.data.MetaTensor`` whose affine carries the run's voxel spacing (3D: RAS, the volume centre at
  the origin, exactly the affine ``medsynth export --format nifti`` writes; 2D: the in-plane spacing on
  the diagonal, nominal 1 mm when the training images had none, ``meta["spacing_nominal"]``), and
  ``meta`` records ``synthetic``, ``label_name``, ``index``, ``seed`` and ``checkpoint_sha256``.
* ``label``: the class index in the run's label list (``dataset.labels``), -1 for unconditional runs.

Two sources:

* a run directory or checkpoint (or a loaded :func:`medsynth.load_generator`): images are generated on
  the fly. Item ``i`` is a function of ``(seed, i)`` and its label only: its latent vector comes from a
  ``torch.Generator`` seeded with a hash of ``(seed, i)``, and each item is generated on its own, so it
  is bit-identical (on a CPU) whatever the access order, batch size or worker process. The generator is
  loaded lazily, once per process, on the GPU when there is one (never in a forked worker whose parent
  has initialised CUDA: that one uses the CPU); the dataset itself holds no network and no CUDA state,
  so DataLoader workers work with fork and spawn. These latents are not those of ``medsynth generate``
  (which draws all latents of a call from one generator): the same seed gives other images.
* a folder: written by ``medsynth generate`` (or ``medsynth privacy --filter``), read with
  :func:`medsynth.sampling.read_sample` (exact), or written by ``medsynth export`` (PNG, NIfTI or DICOM,
  read back with medsynth's readers; DICOM/NIfTI hold rounded source units, PNG a quantised [-1, 1]).
  ``privacy_checked=True`` keeps only the samples that passed the run's privacy check: for a generate
  folder the decision of :func:`medsynth.export.gate.apply_gate` on ``RUN/privacy.json`` (file name and
  sha256 listed as passed, verdict pass), for an export folder the ``privacy`` column the export's gate
  wrote into its manifest. No applicable check is an error.

Real items for :func:`mix` and :func:`balance` may be dicts with ``"image"`` and ``"label"`` (MONAI
``Dataset``/``CacheDataset``, :class:`~medsynth.data.CachedImageDataset`) or ``(image, label)`` tuples
(``TensorDataset``, torchvision style). Synthetic items are given the same form as the real ones: dict or
tuple, a plain tensor unless the real image is a ``MetaTensor``, and the label as the real labels are -
a name (str), an index (int) or a 0-dim tensor. Integer labels are indices into the run's label list
unless ``class_names`` gives the user's order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

__all__ = ["SyntheticDataset", "MixedDataset", "BalancedDataset", "mix", "balance", "item_seed", "synthetic_count",
           "INTENSITIES"]

INTENSITIES = ("model", "source")
NOMINAL_SPACING_MM = 1.0


class PrivacyCheckMissing(ValueError):
    """``privacy_checked=True`` but no privacy check applies to the folder (or none of its samples passed)."""


def item_seed(seed: int, index: int) -> int:
    """The 63-bit seed of item ``index``'s latent vector: a hash of (seed, index), the same in every process."""
    digest = hashlib.blake2b(f"medsynth-synthetic-item:{int(seed)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------
# what the dataset needs to know about the run (no network, no CUDA: cheap to pickle)


def _run_meta(state: dict, checkpoint: Path, sha256: str) -> dict:
    from medsynth.data.transforms import IntensityMapping

    return {"labels": list(state["labels"]), "conditional": bool(state["conditional"]),
            "image_shape": tuple(int(v) for v in state["image_shape"]),
            "mapping": IntensityMapping.from_dict(state["intensity"]), "geometry": dict(state.get("geometry") or {}),
            "checkpoint": Path(checkpoint), "checkpoint_sha256": sha256}


def _affine(meta: dict) -> tuple[np.ndarray, bool]:
    """(4x4 affine, spacing nominal?) of the run's images: see the module docstring."""
    from medsynth.export.geometry import volume_affine

    spatial = meta["image_shape"][1:]
    spacing = meta["geometry"].get("spacing")
    nominal = not spacing or len(spacing) != len(spatial)
    sp = [NOMINAL_SPACING_MM] * len(spatial) if nominal else [float(v) for v in spacing]
    if len(spatial) == 3:
        return volume_affine(spatial, sp), nominal
    return volume_affine((*spatial, 1), (*sp, NOMINAL_SPACING_MM)), nominal


def _find_run(folder: Path) -> Path | None:
    for p in [folder, *folder.parents]:
        if (p / "checkpoints").is_dir():
            return p
    return None


def _choose_device(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    # a forked child of a process that initialised CUDA cannot use it: generate on the CPU there
    if torch.cuda.is_available() and not torch.cuda._is_in_bad_fork():
        return torch.device("cuda")
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# SyntheticDataset


class SyntheticDataset(torch.utils.data.Dataset):
    """Synthetic images as MONAI-style dicts; see the module docstring.

    ``source``: a run directory, a checkpoint file or a :class:`~medsynth.sampling.LoadedGenerator`
    (generated on the fly), or a folder with a manifest.csv (``medsynth generate`` or ``medsynth export``).

    On the fly: ``length`` items (required unless ``labels`` is a list); ``labels`` None or "balanced"
    (item ``i`` has class ``i % k``), a name or index for every item, or a list giving each item's label;
    ``seed`` (default 0) and ``truncation`` (default 1, the latent scale) choose the images; ``device``
    where the generator runs (default: CUDA when available).

    From a folder: every sample listed in its manifest, in manifest order (the first ``length`` when
    given); ``labels`` a name or list of names keeps those classes; ``privacy_checked`` keeps only the
    samples that passed the run's privacy check; ``run`` the run directory (default: found above the
    folder, or named in an export's provenance.json).

    Both: ``intensity`` "model" ([-1, 1]) or "source" (training-data units), ``transform`` a callable
    applied to each item dict after synthesis (e.g. a MONAI dictionary transform), as in
    ``monai.data.Dataset``.
    """

    def __init__(self, source, *, length: int | None = None, labels=None, seed: int | None = None,
                 truncation: float | None = None, intensity: str = "model", transform=None,
                 privacy_checked: bool = False, run=None, device=None, use_ema: bool = True):
        from medsynth.sampling import LoadedGenerator

        if intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {', '.join(map(repr, INTENSITIES))}, got {intensity!r}")
        if length is not None and (not isinstance(length, (int, np.integer)) or length < 1):
            raise ValueError(f"length must be a positive integer, got {length!r}")
        self.intensity, self.transform = intensity, transform
        self._device, self._use_ema = device, use_ema
        self._gen = None
        self._gen_pid = None
        self.privacy: dict | None = None
        if isinstance(source, LoadedGenerator):
            self._init_generator(source, length, labels, seed, truncation, privacy_checked)
            self._gen, self._gen_pid = source, os.getpid()
            return
        path = Path(source)
        if path.is_dir() and (path / "manifest.csv").is_file():
            if seed is not None or truncation is not None:
                raise ValueError(f"{path} is a folder of samples: seed and truncation apply to a run or checkpoint "
                                 "(images generated on the fly), not to a folder")
            self._init_folder(path, length, labels, privacy_checked, run)
        else:
            from medsynth.sampling import load_generator

            loaded = load_generator(path, device="cpu", use_ema=use_ema)   # checks the checkpoint; no CUDA here
            self._init_generator(loaded, length, labels, seed, truncation, privacy_checked)
            if device is not None and torch.device(device).type == "cpu":   # keep it for this process
                self._gen, self._gen_pid = loaded, os.getpid()

    # ---- set-up
    def _init_generator(self, loaded, length, labels, seed, truncation, privacy_checked):
        if privacy_checked:
            raise ValueError("privacy_checked=True needs a folder of samples that 'medsynth privacy' checked; "
                             "images generated on the fly have not been checked (write them with 'medsynth "
                             "generate', check the folder, then pass the folder)")
        self.mode = "generator"
        self.meta = _run_meta(loaded.state, loaded.checkpoint, loaded.checkpoint_sha256)
        self.seed = 0 if seed is None else int(seed)
        self.truncation = 1.0 if truncation is None else float(truncation)
        if not self.truncation > 0:
            raise ValueError(f"truncation must be positive, got {truncation}")
        if isinstance(labels, str) and labels == "balanced":
            labels = None
        if length is None:
            if labels is None or isinstance(labels, (str, int, np.integer)):
                raise ValueError("length is required: how many synthetic items (or give a list with each item's label)")
            length = len(labels)
        self._length = int(length)
        if labels is not None and not loaded.conditional:
            raise ValueError(f"{loaded.checkpoint}: this generator is unconditional: it takes no labels")
        y = loaded.label_indices(self._length, labels)
        self._label_index = y.numpy().astype(np.int64) if y is not None else np.full(self._length, -1, np.int64)
        self._latent_dim = int(loaded.generator.latent_dim)
        self._affine, self._nominal = _affine(self.meta)

    def _init_folder(self, folder: Path, length, labels, privacy_checked, run):
        from medsynth.training.checkpoint import CheckpointError, file_sha256, load_checkpoint

        self.mode = "folder"
        self.folder = folder
        self.seed, self.truncation = None, None
        with open(folder / "manifest.csv", newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        provenance = folder / "provenance.json"
        export = "sample_file" in header and provenance.is_file()
        prov = None
        if export:
            try:
                prov = json.loads(provenance.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"{provenance}: not readable JSON ({e})") from None
        run_dir = Path(run) if run is not None else (Path(prov["run_dir"]) if prov and prov.get("run_dir")
                                                     else _find_run(folder.resolve()))
        if run_dir is None or not (run_dir / "checkpoints").is_dir():
            raise ValueError(f"{folder}: cannot find the run that generated these samples (no checkpoints/ above "
                             f"the folder{' at ' + str(run_dir) if run_dir else ''}); pass run=RUN_DIR")
        from medsynth.sampling import resolve_checkpoint

        try:
            ckpt = resolve_checkpoint(run_dir)
            state = load_checkpoint(ckpt)
        except CheckpointError as e:
            raise ValueError(str(e)) from None
        # labels, intensity mapping and geometry belong to the run's data: equal in all its checkpoints
        self.meta = _run_meta(state, ckpt, file_sha256(ckpt))
        self.run_dir = run_dir
        entries = self._export_entries(folder, prov) if export else self._generate_entries(folder)
        if privacy_checked:
            entries = self._privacy_filter(folder, run_dir, entries, export, prov)
        if labels is not None:
            keep = [labels] if isinstance(labels, str) else list(labels)
            unknown = [lab for lab in keep if lab not in self.meta["labels"]]
            if unknown:
                raise ValueError(f"unknown label(s) {', '.join(map(repr, unknown))}; the run knows "
                                 f"{', '.join(self.meta['labels'])}")
            entries = [e for e in entries if e["label"] in keep]
        if length is not None:
            if length > len(entries):
                raise ValueError(f"{folder}: length {length} asked, but only {len(entries)} sample(s) are available")
            entries = entries[:length]
        if not entries:
            raise ValueError(f"{folder}: no samples left to read")
        self._entries = entries
        self._length = len(entries)
        self._label_index = np.array([self.meta["labels"].index(e["label"]) if e["label"] else -1 for e in entries],
                                     dtype=np.int64)
        self._affine, self._nominal = _affine(self.meta)

    def _generate_entries(self, folder: Path) -> list[dict]:
        from medsynth.export import ExportError, read_samples

        try:
            samples = read_samples(folder)
        except ExportError as e:
            raise ValueError(str(e)) from None
        for s in samples:
            if s.label and s.label not in self.meta["labels"]:
                raise ValueError(f"{folder}/manifest.csv: label {s.label!r} of {s.name} is not one of the run's "
                                 f"labels ({', '.join(self.meta['labels'])}): samples of another run?")
        return [{"name": s.name, "files": [s.path], "format": "sample", "label": s.label, "seed": s.seed,
                 "index": s.index, "checkpoint_sha256": s.checkpoint_sha256} for s in samples]

    def _export_entries(self, folder: Path, prov: dict) -> list[dict]:
        from medsynth.export.manifest import read_manifest

        rows = read_manifest(folder / "manifest.csv")
        grouped: dict[str, dict] = {}
        for r in rows:
            e = grouped.setdefault(r["sample_file"], {
                "name": r["sample_file"], "files": [], "format": r["format"], "label": r["label"],
                "seed": int(r["seed"]), "index": int(r["index"]), "checkpoint_sha256": r["checkpoint_sha256"],
                "privacy": r.get("privacy", "")})
            path = folder / r["file"]
            if not path.is_file():
                raise ValueError(f"{folder}/manifest.csv lists {r['file']!r}, which is not a file in {folder}")
            e["files"].append(path)
        return list(grouped.values())

    def _privacy_filter(self, folder: Path, run_dir: Path, entries: list[dict], export: bool, prov) -> list[dict]:
        from medsynth.export.gate import PASSED, apply_gate, sha256_bytes

        if export:   # the export's own gate decided per sample and wrote it into the manifest
            verdict = (prov.get("privacy") or {}).get("verdict")
            if verdict is None:
                raise PrivacyCheckMissing(f"{folder} was exported without a privacy check (--skip-privacy-check "
                                          "and no applicable privacy.json): privacy_checked=True has nothing to "
                                          "go by; export checked samples instead")
            kept = [e for e in entries if e["privacy"] == PASSED]
            self.privacy = {"verdict": verdict, "source": str(folder / "manifest.csv"),
                            "counts": dict(Counter(e["privacy"] for e in entries))}
        else:
            digests = {e["name"]: sha256_bytes(e["files"][0].read_bytes()) for e in entries}
            gate = apply_gate(run_dir, folder, digests, skip=True)   # per-sample status, never refuses
            if gate.verdict is None:
                raise PrivacyCheckMissing(f"{folder}: no privacy check applies: {gate.reason}; check the folder "
                                          f"with: medsynth privacy {run_dir} --synthetic {folder}")
            kept = [e for e in entries if gate.status[e["name"]] == PASSED]
            self.privacy = {**gate.to_dict(), "source": gate.privacy_json}
            unchecked = self.privacy["counts"]["unchecked"]
            if unchecked:
                warnings.warn(f"{folder}: {unchecked} sample(s) not covered by {gate.privacy_json} (not listed, or "
                              "changed since the check) left out", stacklevel=3)
        if not kept:
            raise PrivacyCheckMissing(f"{folder}: none of the {len(entries)} sample(s) passed the privacy check "
                                      f"(verdict {self.privacy['verdict']!r})")
        return kept

    # ---- what the dataset is
    @property
    def labels(self) -> list[str]:
        """The run's label names: ``item["label"]`` indexes this list."""
        return list(self.meta["labels"])

    @property
    def label_index(self) -> np.ndarray:
        """Every item's class index (-1 unconditional), without generating or reading any image."""
        return self._label_index.copy()

    @property
    def mapping(self):
        return self.meta["mapping"]

    def __len__(self) -> int:
        return self._length

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_gen"], state["_gen_pid"] = None, None    # workers load their own generator
        return state

    # ---- items
    def _generator(self):
        if self._gen is None or self._gen_pid != os.getpid():
            from medsynth.sampling import load_generator

            dev = _choose_device(self._device)
            try:
                g = load_generator(self.meta["checkpoint"], device=dev, use_ema=self._use_ema)
            except RuntimeError as e:   # CUDA unusable here: a forked worker of a process that touched CUDA
                if self._device is not None or dev.type != "cuda":
                    raise
                warnings.warn(f"SyntheticDataset: CUDA is not usable in process {os.getpid()} ({str(e)[:120]}); "
                              "generating on the CPU (use multiprocessing_context='spawn' for GPU workers)",
                              stacklevel=3)
                g = load_generator(self.meta["checkpoint"], device="cpu", use_ema=self._use_ema)
            if g.checkpoint_sha256 != self.meta["checkpoint_sha256"]:
                raise RuntimeError(f"{g.checkpoint} changed since this dataset was created (sha256 differs)")
            self._gen, self._gen_pid = g, os.getpid()
        return self._gen

    @torch.no_grad()
    def _synthesize(self, i: int) -> torch.Tensor:
        g = self._generator()
        gen = torch.Generator().manual_seed(item_seed(self.seed, i))
        z = torch.randn(1, self._latent_dim, generator=gen) * self.truncation
        k = int(self._label_index[i])
        y = torch.tensor([k], dtype=torch.long, device=g.device) if k >= 0 else None
        return g.generator(z.to(g.device), y).float().cpu().clamp_(-1, 1)[0]

    def _read(self, e: dict) -> torch.Tensor:
        """One folder sample in [-1, 1], (1, *size)."""
        from medsynth.sampling import read_sample

        spatial = self.meta["image_shape"][1:]
        if e["format"] == "sample":
            arr = read_sample(e["files"][0])
        else:
            arr = _read_exported(e, len(spatial), self.meta["mapping"])
        if tuple(arr.shape) != tuple(spatial):
            raise ValueError(f"{e['files'][0]}: shape {tuple(arr.shape)}, but the run's images are {tuple(spatial)}")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]

    def __getitem__(self, i):
        from monai.data import MetaTensor

        i = int(i)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"index {i} out of range for {self._length} items")
        if self.mode == "generator":
            image = self._synthesize(i)
            seed, index, sha = self.seed, i, self.meta["checkpoint_sha256"]
        else:
            e = self._entries[i]
            image = self._read(e)
            seed, index, sha = e["seed"], e["index"], e["checkpoint_sha256"]
        if self.intensity == "source":
            image = self.meta["mapping"].inverse(image).float()
        k = int(self._label_index[i])
        meta = {"synthetic": True, "label_name": self.meta["labels"][k] if k >= 0 else "", "index": int(index),
                "seed": int(seed), "checkpoint_sha256": sha, "spacing_nominal": bool(self._nominal),
                "intensity": self.intensity}
        item = {"image": MetaTensor(image, affine=torch.as_tensor(self._affine, dtype=torch.float64), meta=meta),
                "label": k}
        if self.transform is not None:
            from monai.transforms import apply_transform

            item = apply_transform(self.transform, item)
        return item

    def __repr__(self) -> str:
        src = f"{self.meta['checkpoint']}" if self.mode == "generator" else f"{self.folder}"
        return (f"SyntheticDataset({src!s}, {self._length} items, {self.mode}, intensity={self.intensity!r}"
                + (f", seed={self.seed}" if self.mode == "generator" else "") + ")")


def _reorient_ras(volume: np.ndarray, affine) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    return nib.orientations.apply_orientation(volume, ornt)


def _read_exported(e: dict, ndim: int, mapping) -> np.ndarray:
    """A file (or DICOM series) written by ``medsynth export`` back in [-1, 1] as trained: (H, W) or RAS (X, Y, Z)."""
    from medsynth.data.readers import read_dicom_series, read_image

    fmt, files = e["format"], e["files"]
    if fmt == "png":
        arr, meta = read_image(files[0])
        return np.clip(arr / float(2 ** (meta.bit_depth or 8) - 1), 0, 1) * 2 - 1
    if fmt == "nifti":
        arr, meta = read_image(files[0])
        source = arr[:, :, 0].T if ndim == 2 else _reorient_ras(arr, meta.affine)
    elif fmt == "dicom":
        if ndim == 2:
            source, _ = read_image(files[0])
        else:
            vol, meta = read_dicom_series(files)
            source = _reorient_ras(vol, meta.affine)
    else:
        raise ValueError(f"{files[0]}: unknown export format {fmt!r} in the manifest")
    return mapping.forward(np.asarray(source, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# the form of the user's real items, given to synthetic ones


class _ItemForm:
    """Dict or tuple, MetaTensor or plain tensor, and label as name / index / tensor: read off a real item."""

    def __init__(self, item, class_names: list[str] | None, run_labels: list[str]):
        if isinstance(item, dict):
            if "image" not in item or "label" not in item:
                raise ValueError(f"real items are dicts with keys {sorted(item)}; expected 'image' and 'label'")
            extra = sorted(set(item) - {"image", "label"})
            if extra:
                raise ValueError(f"real items carry keys {extra} besides 'image' and 'label', which synthetic items "
                                 "do not have (a batch needs the same keys in every item); drop them, e.g. with "
                                 "monai.transforms.SelectItemsd(keys=['image', 'label'])")
            self.kind, image, label = "dict", item["image"], item["label"]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            self.kind, (image, label) = "tuple", item
        else:
            raise ValueError(f"real items must be dicts with 'image' and 'label' or (image, label) pairs; got "
                             f"{type(item).__name__}")
        from monai.data import MetaTensor

        self.meta_tensor = isinstance(image, MetaTensor)
        self.numpy = isinstance(image, np.ndarray)
        self.label_kind = _label_kind(label)
        self.names = list(class_names) if class_names is not None else list(run_labels)
        self.run_labels = run_labels
        self.shape = tuple(image.shape)
        self.range = (float(image.min()), float(image.max()))

    def convert(self, item: dict):
        image = item["image"]
        if not self.meta_tensor:
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
            if self.numpy:
                image = image.numpy()
        k = int(item["label"])
        name = self.run_labels[k] if k >= 0 else ""
        if self.label_kind == "name":
            label = name
        else:
            if name and name not in self.names:
                raise ValueError(f"synthetic class {name!r} is not in class_names {self.names}")
            idx = self.names.index(name) if name else -1
            label = torch.tensor(idx) if self.label_kind == "tensor" else idx
        return {"image": image, "label": label} if self.kind == "dict" else (image, label)


def _label_kind(label) -> str:
    if isinstance(label, str):
        return "name"
    if isinstance(label, torch.Tensor):
        if label.dim() != 0:
            raise ValueError(f"real labels must be scalars (a class name or index); got a tensor of shape "
                             f"{tuple(label.shape)} (one-hot labels are not supported)")
        return "tensor"
    if isinstance(label, (int, np.integer)):
        return "index"
    raise ValueError(f"real labels must be a class name (str) or index (int); got {type(label).__name__}")


def _as_synthetic(source, length: int, labels, seed: int, options: dict):
    """A dataset as given (a SyntheticDataset, or any dataset whose items are used as they are), or a
    SyntheticDataset of ``length`` items generated from a run, checkpoint or loaded generator."""
    if isinstance(source, torch.utils.data.Dataset):
        if options:
            raise ValueError(f"options {sorted(options)} apply when synthetic is a run or generator, not a dataset")
        return source
    return SyntheticDataset(source, length=length, labels=labels, seed=seed, **options)


def _check_intensity(form: _ItemForm, syn: SyntheticDataset) -> None:
    lo, hi = form.range
    if syn.intensity == "model" and (lo < -1.5 or hi > 1.5):
        warnings.warn(f"the first real image spans [{lo:.4g}, {hi:.4g}] but synthetic images are in [-1, 1] "
                      "(intensity='model'); use intensity='source' for real units", stacklevel=3)
    spatial = tuple(syn.meta["image_shape"])
    if form.shape != spatial:
        warnings.warn(f"real images have shape {form.shape}, synthetic ones {tuple(spatial)}: batches cannot "
                      "mix them unless a transform resizes one or the other", stacklevel=3)


# --------------------------------------------------------------------------------------------
# mix


class MixedDataset(torch.utils.data.Dataset):
    """Real and synthetic items in one seeded order; ``is_synthetic(i)`` says which."""

    def __init__(self, real, synthetic, real_indices, synthetic_indices, form: _ItemForm | None, seed: int,
                 shuffle: bool):
        self.real, self.synthetic, self._form = real, synthetic, form
        src = np.concatenate([np.zeros(len(real_indices), np.int64), np.ones(len(synthetic_indices), np.int64)])
        idx = np.concatenate([np.asarray(real_indices, np.int64), np.asarray(synthetic_indices, np.int64)])
        order = np.random.default_rng([int(seed), 1]).permutation(len(idx)) if shuffle else np.arange(len(idx))
        self._source, self._index = src[order], idx[order]
        self.n_real, self.n_synthetic = len(real_indices), len(synthetic_indices)

    @property
    def synthetic_fraction(self) -> float:
        """n_synthetic / (n_real + n_synthetic)."""
        return self.n_synthetic / len(self) if len(self) else 0.0

    def is_synthetic(self, i: int) -> bool:
        return bool(self._source[i])

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i):
        j = int(self._index[i])
        if self._source[i]:
            item = self.synthetic[j]
            return self._form.convert(item) if self._form is not None else item
        return self.real[j]


def _fraction(ratio) -> Fraction:
    r = Fraction(ratio).limit_denominator(10 ** 9) if not isinstance(ratio, Fraction) else ratio
    if not 0 <= r <= 1:
        raise ValueError(f"ratio is the synthetic share of the mixed dataset, synthetic / (real + synthetic), "
                         f"in [0, 1]; got {ratio}")
    return r


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def synthetic_count(n_real: int, ratio) -> int:
    """How many synthetic items :func:`mix` adds to ``n_real`` real ones for synthetic share ``ratio``:
    ratio / (1 - ratio) * n_real, rounded half up."""
    r = _fraction(ratio)
    if r == 1:
        raise ValueError("ratio 1 means no real items at all: give length= the number of synthetic items")
    return _round_half_up(r * int(n_real) / (1 - r))


def mix(real, synthetic, ratio, *, length: int | None = None, seed: int = 0, shuffle: bool = True,
        class_names: list[str] | None = None, **synthetic_options) -> MixedDataset:
    """Real and synthetic items with synthetic share ``ratio`` = n_synthetic / (n_real + n_synthetic).

    Without ``length`` every real item is used once and n_synthetic = ratio / (1 - ratio) * n_real; with
    ``length`` the mix has that many items, n_synthetic = ratio * length and a seeded subset of
    n_real = length - n_synthetic real items. The share is exact whenever that count is a whole number
    (e.g. ratio 0.5, 0.25, 0.2 of 100 real items), else the count is rounded half up and
    ``synthetic_fraction`` gives the share reached (within 1 / (2 * total) of ``ratio``).

    ``synthetic``: a :class:`SyntheticDataset` (a seeded subset is used when it is longer than needed;
    too short is an error), or a run directory / checkpoint / loaded generator, from which exactly the
    items needed are generated (``seed``, balanced labels; ``synthetic_options`` such as ``intensity``,
    ``truncation``, ``transform`` go to :class:`SyntheticDataset`). The order is a seeded shuffle
    (``shuffle=False``: real items first). Same arguments and seed, same dataset.
    """
    r = _fraction(ratio)
    n_available = len(real)
    if length is None:
        n_real = n_available
        n_syn = synthetic_count(n_real, r)
    else:
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        n_syn = _round_half_up(r * length)
        n_real = length - n_syn
        if n_real > n_available:
            raise ValueError(f"a mix of {length} items at ratio {float(r):g} needs {n_real} real items; the real "
                             f"dataset has {n_available}")
    if n_syn == 0 and n_real == 0:
        raise ValueError("the mix would be empty")
    rng = np.random.default_rng([int(seed), 0])
    real_idx = np.arange(n_available) if n_real == n_available else np.sort(rng.choice(n_available, n_real,
                                                                                        replace=False))
    syn = _as_synthetic(synthetic, max(n_syn, 1), None, seed, synthetic_options)
    if len(syn) < n_syn:
        raise ValueError(f"ratio {float(r):g} needs {n_syn} synthetic items; the synthetic dataset has {len(syn)}")
    syn_idx = np.arange(n_syn) if len(syn) == n_syn else np.sort(rng.choice(len(syn), n_syn, replace=False))
    form = None
    if n_real and isinstance(syn, SyntheticDataset):
        form = _ItemForm(real[int(real_idx[0])], class_names, syn.labels)
        _check_intensity(form, syn)
    return MixedDataset(real, syn, real_idx, syn_idx, form, seed, shuffle)


# --------------------------------------------------------------------------------------------
# balance


def _raw_labels(real) -> list:
    """The label of every real item, reading as little as possible."""
    from medsynth.data import CachedImageDataset

    if isinstance(real, CachedImageDataset):
        return [int(v) for v in real.prepared.label_index[real.indices]]
    data = getattr(real, "data", None)     # monai.data.Dataset / CacheDataset: the dicts before transforms
    if isinstance(data, (list, tuple)) and len(data) == len(real) and data and isinstance(data[0], dict) \
            and "label" in data[0]:
        return [d["label"] for d in data]
    if isinstance(real, torch.utils.data.TensorDataset) and len(real.tensors) == 2:
        return list(real.tensors[1])
    out = []
    for i in range(len(real)):
        item = real[i]
        out.append(item["label"] if isinstance(item, dict) else item[1])
    return out


def _class_of(label, names: list[str], run_labels: list[str]) -> str:
    kind = _label_kind(label)
    if kind == "name":
        if label not in run_labels:
            raise ValueError(f"real label {label!r} is not one of the generator's labels ({', '.join(run_labels)})")
        return label
    k = int(label)
    if not 0 <= k < len(names):
        raise ValueError(f"real label index {k} out of range for {len(names)} classes ({', '.join(names)})")
    if names[k] not in run_labels:
        raise ValueError(f"class {names[k]!r} is not one of the generator's labels ({', '.join(run_labels)})")
    return names[k]


class BalancedDataset(torch.utils.data.Dataset):
    """The real items followed by the synthetic items that balance them (``synthetic``, a SyntheticDataset)."""

    def __init__(self, real, synthetic: SyntheticDataset, form: _ItemForm | None, counts_real: dict,
                 counts: dict):
        self.real, self.synthetic, self._form = real, synthetic, form
        self.counts_real, self.counts = counts_real, counts

    def is_synthetic(self, i: int) -> bool:
        return i >= len(self.real)

    def __len__(self) -> int:
        return len(self.real) + len(self.synthetic)

    def __getitem__(self, i):
        i = int(i)
        if i < len(self.real):
            return self.real[i]
        item = self.synthetic[i - len(self.real)]
        return self._form.convert(item) if self._form is not None else item


def balance(real, generator, target="equal", *, seed: int = 0, class_names: list[str] | None = None,
            **synthetic_options):
    """Generate just enough synthetic items of each class to reach ``target`` class counts.

    ``real``: a dataset (MONAI ``Dataset``/``CacheDataset``, :class:`~medsynth.data.CachedImageDataset`,
    any map-style dataset of dicts or (image, label) pairs), or the real labels themselves (a sequence of
    names or indices). ``generator``: a conditional run directory, checkpoint or loaded generator.
    ``target``: "equal" (every one of the generator's classes up to the largest real class count) or a
    dict {class name or index: total count} (classes not named keep their count; a target below the real
    count is an error: balancing only adds). Integer labels index the run's labels, or ``class_names``.

    Returns, for a dataset, a :class:`BalancedDataset` (real items then synthetic ones; ``counts`` per
    class name after balancing, ``counts_real`` before); for a label sequence, the
    :class:`SyntheticDataset` of the items to add (class by class, ``seed``). ``synthetic_options`` such as
    ``intensity``, ``truncation``, ``transform`` go to the SyntheticDataset.
    """
    from medsynth.sampling import LoadedGenerator, load_generator

    loaded = generator if isinstance(generator, LoadedGenerator) else load_generator(generator, device="cpu")
    if not loaded.conditional:
        raise ValueError(f"{loaded.checkpoint}: balancing classes needs a conditional generator "
                         "(model.conditional: true); this one is unconditional")
    run_labels = list(loaded.labels)
    names = list(class_names) if class_names is not None else run_labels
    is_dataset = isinstance(real, torch.utils.data.Dataset)
    raw = _raw_labels(real) if is_dataset else list(real)
    counts_real = Counter(_class_of(lab, names, run_labels) for lab in raw)
    have = {name: counts_real.get(name, 0) for name in run_labels}
    if isinstance(target, str):
        if target != "equal":
            raise ValueError(f"target must be 'equal' or a dict of counts per class, got {target!r}")
        want = dict.fromkeys(run_labels, max(have.values()) if have else 0)
    elif isinstance(target, dict):
        want = dict(have)
        for key, count in target.items():
            name = key if isinstance(key, str) else names[int(key)] if 0 <= int(key) < len(names) else None
            if name not in run_labels:
                raise ValueError(f"target names class {key!r}, which is not one of the generator's labels "
                                 f"({', '.join(run_labels)})")
            if int(count) < have[name]:
                raise ValueError(f"target {name}: {count} is below the {have[name]} real items of that class; "
                                 "balance only adds synthetic items")
            want[name] = int(count)
    else:
        raise ValueError(f"target must be 'equal' or a dict of counts per class, got {type(target).__name__}")
    add = [name for name in run_labels for _ in range(want[name] - have[name])]
    if not add:
        raise ValueError(f"the classes already have the target counts ({dict(have)}): nothing to add")
    syn = SyntheticDataset(loaded, labels=add, seed=seed, **synthetic_options)
    if not is_dataset:
        return syn
    form = _ItemForm(real[0], class_names, run_labels) if len(real) else None
    if form is not None:
        _check_intensity(form, syn)
    return BalancedDataset(real, syn, form, dict(have), want)

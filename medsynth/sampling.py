"""Checkpoint -> generator -> images, deterministic by seed.

``load_generator(path)`` accepts a run directory (its newest checkpoint) or a checkpoint file and
returns a :class:`LoadedGenerator`; ``.sample(n, labels=..., seed=...)`` returns images in [-1, 1].
Image ``i`` of a call depends only on the seed, ``i`` and its label, never on the batch size, so
``sample(10, seed=3)[:4]`` equals ``sample(4, seed=3)``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsynth.config import ModelConfig, config_from_dict
from medsynth.data.transforms import IntensityMapping
from medsynth.models import build_model
from medsynth.training.checkpoint import CheckpointError, file_sha256, latest_checkpoint, load_checkpoint


@dataclass
class LoadedGenerator:
    generator: torch.nn.Module
    labels: list[str]
    conditional: bool
    mapping: IntensityMapping
    image_shape: tuple[int, ...]
    checkpoint: Path
    checkpoint_sha256: str
    state: dict            # the checkpoint minus network weights: config, geometry, step, ...

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def label_indices(self, n: int, labels=None) -> torch.Tensor | None:
        """Resolve ``labels`` (None, a name, an index, or a list of n of them) to n class indices."""
        if not self.conditional:
            if labels is not None:
                raise ValueError("this generator is unconditional: it takes no labels")
            return None
        k = len(self.labels)
        if labels is None:   # balanced: 0, 1, ..., k-1, 0, 1, ...
            return torch.arange(n) % k
        if isinstance(labels, (str, int)):
            labels = [labels] * n
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} images")
        out = []
        for lab in labels:
            if isinstance(lab, str):
                if lab not in self.labels:
                    raise ValueError(f"unknown label {lab!r}; this generator knows {', '.join(self.labels)}")
                out.append(self.labels.index(lab))
            else:
                if not 0 <= int(lab) < k:
                    raise ValueError(f"label index {lab} out of range 0..{k - 1}")
                out.append(int(lab))
        return torch.tensor(out, dtype=torch.long)

    @torch.no_grad()
    def sample(self, n: int, labels=None, seed: int = 0, truncation: float = 1.0, batch_size: int = 64):
        """``n`` images as a (n, 1, *size) float32 CPU tensor in [-1, 1], plus their label indices (or None)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not truncation > 0:
            raise ValueError(f"truncation must be positive, got {truncation}")
        y = self.label_indices(n, labels)
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.generator.latent_dim, generator=g) * float(truncation)
        out = []
        dev = self.device
        for i in range(0, n, batch_size):
            yb = y[i:i + batch_size].to(dev) if y is not None else None
            out.append(self.generator(z[i:i + batch_size].to(dev), yb).float().cpu())
        return torch.cat(out).clamp_(-1, 1), y


def resolve_checkpoint(path) -> Path:
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p / "checkpoints") if (p / "checkpoints").is_dir() else latest_checkpoint(p)
        if found is None:
            raise CheckpointError(f"{p}: no checkpoint found (expected {p}/checkpoints/step_*.pt)")
        return found
    if not p.exists():
        raise CheckpointError(f"{p}: no such run directory or checkpoint")
    return p


def load_generator(path, device: str | torch.device | None = None, use_ema: bool = True) -> LoadedGenerator:
    """Load the (EMA) generator from a run directory or checkpoint file, safely (weights_only)."""
    ckpt = resolve_checkpoint(path)
    state = load_checkpoint(ckpt)
    try:
        cfg = config_from_dict(state["config"], source=str(ckpt))
        labels = list(state["labels"])
        conditional = bool(state["conditional"])
        shape = tuple(state["image_shape"])
        model_cfg: ModelConfig = cfg.model
        model = build_model(model_cfg, shape, len(labels) if conditional else 0)
        weights = state["ema"] if (use_ema and state.get("ema") is not None) else state["generator"]
        model.generator.load_state_dict(weights)
        mapping = IntensityMapping.from_dict(state["intensity"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt}: checkpoint does not fit its own model config "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = model.generator.to(dev).eval()
    meta = {k: v for k, v in state.items() if k not in ("generator", "discriminator", "ema", "opt_g", "opt_d", "rng",
                                                       "batches")}
    return LoadedGenerator(gen, labels, conditional, mapping, shape, ckpt, file_sha256(ckpt), meta)


STAGING_PREFIX = ".staging-"
REPLACED_MANIFEST = ".manifest.csv.replacing"     # the earlier write's manifest, while files are renamed
INCOMING_MANIFEST = ".manifest.csv.incoming"      # this write's manifest, until its files are in place


def _clear_stale_staging(out_dir: Path) -> None:
    """Remove staging folders that an earlier, killed :func:`write_samples` left in ``out_dir`` (its
    process is gone); a live writer's folder is left alone."""
    import os
    import shutil

    for d in out_dir.glob(STAGING_PREFIX + "*"):
        try:
            pid = int(d.name[len(STAGING_PREFIX):])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:        # another user's live process
            alive = True
        if d.is_dir() and not alive:
            shutil.rmtree(d, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path, names: list[str]) -> None:
    import os

    for name in names:
        os.replace(staging / name, out_dir / name)


def write_samples(loaded: LoadedGenerator, out_dir: Path, n: int, labels=None, seed: int = 0,
                  truncation: float = 1.0, batch_size: int = 64) -> Path:
    """Generate and write 16-bit PNGs (2D) or .npy uint16 volumes (3D) plus manifest.csv (file, index,
    seed, label, checkpoint hash).

    Grey levels are a linear map of [-1, 1] to 0..65535 (:func:`read_sample` inverts it); the
    intensity mapping back to source units is in the checkpoint. The images are sampled and written
    into a hidden staging folder inside ``out_dir`` first, so an interruption there (the long part)
    leaves ``out_dir`` as it was. Then the new manifest is written as ``.manifest.csv.incoming``, an
    earlier one is set aside as ``.manifest.csv.replacing``, the files are renamed into place and the
    incoming manifest is renamed to ``manifest.csv`` last. A folder never holds a ``manifest.csv`` that
    lists another write's files, and after an interruption while renaming, :func:`listed_samples` still
    lists both writes' files, so the next ``generate --overwrite`` removes them.
    """
    import os
    import shutil

    from PIL import Image

    from medsynth.runs import atomic_write_bytes, atomic_write_text

    volumes = len(loaded.image_shape) == 4
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_staging(out_dir)
    images, y = loaded.sample(n, labels=labels, seed=seed, truncation=truncation, batch_size=batch_size)
    staging = out_dir / f"{STAGING_PREFIX}{os.getpid()}"
    rows, names = [], []
    try:
        staging.mkdir(exist_ok=True)
        for i in range(n):
            arr = ((images[i, 0].numpy() + 1.0) * 32767.5).round().astype(np.uint16)
            name = f"sample_{seed}_{i:06d}.{'npy' if volumes else 'png'}"
            buf = io.BytesIO()
            if volumes:
                np.save(buf, arr, allow_pickle=False)
            else:
                Image.fromarray(arr).save(buf, format="PNG")
            atomic_write_bytes(staging / name, buf.getvalue())
            names.append(name)
            label = loaded.labels[int(y[i])] if y is not None else ""
            rows.append([name, i, seed, label, truncation, loaded.checkpoint_sha256])
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["file", "index", "seed", "label", "truncation", "checkpoint_sha256"])
        w.writerows(rows)
        manifest, replaced = out_dir / "manifest.csv", out_dir / REPLACED_MANIFEST
        atomic_write_text(out_dir / INCOMING_MANIFEST, text.getvalue())
        if manifest.is_file():
            os.replace(manifest, replaced)
        _move_into_place(staging, out_dir, names)
        os.replace(out_dir / INCOMING_MANIFEST, manifest)
        replaced.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def listed_samples(out_dir: Path) -> list[str] | None:
    """The files listed by the manifest.csv that :func:`write_samples` wrote into ``out_dir``, or None when
    the folder holds no manifest. Without a manifest.csv but with the two manifests of a write that was
    stopped while renaming its files into place, the files both of them list. Only plain names are
    returned (a listed path that leaves the folder is ignored), so deleting them can never touch anything
    else."""
    from medsynth.export.manifest import read_manifest

    out_dir = Path(out_dir)
    found = [out_dir / "manifest.csv"]
    if not found[0].is_file():
        found = [out_dir / REPLACED_MANIFEST, out_dir / INCOMING_MANIFEST]
        if not any(m.is_file() for m in found):
            return None
    names: list[str] = []
    for manifest in found:
        if not manifest.is_file():
            continue
        try:
            rows = read_manifest(manifest)
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        names += [r.get("file") or "" for r in rows if (r.get("file") or "") not in names]
    return [n for n in names if n and Path(n).name == n and n not in (".", "..")]


def remove_earlier_samples(out_dir: Path, earlier: list[str]) -> int:
    """After :func:`write_samples` replaced an earlier write into ``out_dir``: delete the files that the
    earlier manifest listed (``earlier``, from :func:`listed_samples` before the write) and the new one
    does not; returns how many were removed. Nothing is deleted when the new manifest cannot be read."""
    keep, removed = set(listed_samples(out_dir) or []), 0
    if not keep:
        return 0
    for name in earlier:
        path = Path(out_dir) / name
        if name not in keep and name != "manifest.csv" and path.is_file():
            path.unlink()
            removed += 1
    return removed


def read_sample(path) -> np.ndarray:
    """A file written by :func:`write_samples` back in [-1, 1] (float32; 2D from PNG, 3D from .npy)."""
    from PIL import Image

    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I"):
                raise ValueError(f"{path}: expected a 16-bit greyscale PNG written by medsynth generate, "
                                 f"got mode {im.mode}")
            arr = np.asarray(im)
    if arr.dtype != np.uint16 and not (arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 65535):
        raise ValueError(f"{path}: expected 16-bit values, got {arr.dtype}")
    return (arr.astype(np.float32) / np.float32(32767.5)) - np.float32(1.0)

"""From a read record to fixed-size arrays: MONAI geometric transforms, then an intensity mapping.

Two stages, kept apart on purpose:

1. **Geometry** (:func:`prepare_record`): reorient volumes to RAS, resample to ``data.spacing``,
   take 2D slices or keep 3D volumes, pad/crop/resize to ``data.image_size``. Output stays in the
   source's units (HU, raw MR signal, 0..255 pixel values), so the tensor cache does not depend on
   the intensity settings.
2. **Intensity** (:class:`IntensityMapping`): one affine map per dataset from a source window
   ``[source_min, source_max]`` to [-1, 1], clipped. The window is fixed (``window`` mode) or the
   dataset-level percentiles of the *training* split (``percentile`` mode). It is stored with the
   run and the checkpoint, so export can write synthetic images back in real units.

2D slices of volumes follow the radiological display convention of DICOM scanners: an axial slice
has rows running anterior->posterior and columns patient right->left (ImageOrientationPatient
1\\0\\0\\0\\1\\0), coronal rows superior->inferior and columns right->left (1\\0\\0\\0\\0\\-1), sagittal
rows superior->inferior and columns anterior->posterior (0\\1\\0\\0\\0\\-1). ``SLICE_IOP`` records them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from medsynth.config import DataConfig, IntensityConfig
from medsynth.data.readers import UnreadableFile, read_dicom_series, read_image

# ImageOrientationPatient (LPS, DICOM) of a 2D slice in each plane, as produced by slice_volume
SLICE_IOP = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}
_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}   # RAS array axis normal to each plane


@dataclass
class Item:
    """One preprocessed training item (geometry done, intensity still in source units)."""

    array: np.ndarray                 # float32, shape == image_size
    spacing: tuple[float, ...] | None  # mm per array axis after preprocessing, when known
    slice_index: int | None = None    # index along the slice axis for slices of volumes
    notes: tuple[str, ...] = ()


def read_record(record, cfg: DataConfig):
    """Read a :class:`~medsynth.data.sources.Record` into (array, meta)."""
    if record.kind == "series":
        return read_dicom_series(record.files)
    return read_image(record.files[0], volume_index=cfg.volume_index)


def prepare_record(record, cfg: DataConfig) -> list[Item]:
    """Read one record and return its preprocessed items; raises UnreadableFile to skip it."""
    array, meta = read_record(record, cfg)   # the readers refuse NaN/Inf, so arrays here are finite
    is_volume = array.ndim == 3 and array.shape[2] > 1 and meta.affine is not None
    if is_volume and "affine has shear" in meta.notes:
        # MONAI's Orientation/Spacing keep the file's (non-orthogonal) axes, so the volume would be
        # trained and exported as if it were on an orthogonal grid: wrong geometry, silently
        raise UnreadableFile(record.files[0], "affine has shear (non-orthogonal voxel axes); resample it to an "
                                              "orthogonal grid first (e.g. FSL flirt -applyxfm or ANTs)")
    if cfg.mode == "3d":
        if not is_volume:
            raise UnreadableFile(record.files[0], "2D image in a 3d-mode dataset (data.mode: 3d needs volumes)")
        return [_prepare_volume(array, meta.affine, cfg)]
    if is_volume:
        return _prepare_slices(array, meta.affine, cfg)
    if array.ndim == 3:            # a single-slice volume (e.g. NIfTI with k == 1)
        array = array[:, :, 0].T
    spacing = tuple(meta.spacing[:2]) if meta.spacing else None
    out, spacing, notes = _prepare_2d(array, spacing, cfg)
    return [Item(out, spacing, None, notes + tuple(meta.notes))]


# --------------------------------------------------------------------------------------------
# 2D


def _prepare_2d(img: np.ndarray, spacing, cfg: DataConfig):
    """(H, W), or a stack (K, H, W) of same-size slices, -> image_size: optional resampling to
    data.spacing, then pad/crop/resize. A stack goes through each MONAI transform once, as channels."""
    from monai.transforms import CenterSpatialCrop, ResizeWithPadOrCrop, SpatialPad

    target = tuple(cfg.image_size)
    single = img.ndim == 2
    x = (img[None] if single else img).astype(np.float32, copy=False)
    h, w = x.shape[1:]
    notes = []
    background = float(x.min())
    if cfg.spacing is not None and spacing is not None:
        shape = tuple(max(1, round(n * s / t)) for n, s, t in zip((h, w), spacing, cfg.spacing))
        if shape != (h, w):
            x = _resize(x, shape)
        x = ResizeWithPadOrCrop(target, mode="constant", value=background)(x)
        out = _np(x)
        return (out[0] if single else out), tuple(float(s) for s in cfg.spacing), tuple(notes)
    if (h, w) != target:
        if cfg.resize == "pad" and h != w:
            x = SpatialPad((max(h, w),) * 2, mode="constant", value=background)(x)
        elif cfg.resize == "crop" and h != w:
            x = CenterSpatialCrop((min(h, w),) * 2)(x)
        x = _resize(x, target)
        notes.append(f"resized from {h}x{w}")
        if spacing is not None:
            side = _np(x).shape[1:]
            spacing = None if cfg.resize == "stretch" else tuple(
                max(h, w) * s / t if cfg.resize == "pad" else min(h, w) * s / t
                for s, t in zip(spacing, side))
    out = _np(x)
    return (out[0] if single else out), spacing, tuple(notes)


def _resize(x, shape):
    """Anti-aliased when shrinking (area), bilinear/trilinear when growing."""
    from monai.transforms import Resize

    shrinking = all(t <= s for t, s in zip(shape, x.shape[1:]))
    mode = "area" if shrinking else ("bilinear" if len(shape) == 2 else "trilinear")
    return Resize(tuple(shape), mode=mode)(x)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def slice_volume(volume_ras: np.ndarray, index: int, plane: str) -> np.ndarray:
    """2D slice of a RAS-oriented volume in the radiological convention described above."""
    if plane == "axial":
        return volume_ras[::-1, ::-1, index].T
    if plane == "coronal":
        return volume_ras[::-1, index, ::-1].T
    if plane == "sagittal":
        return volume_ras[index, ::-1, ::-1].T
    raise ValueError(f"unknown plane {plane!r}")


def _to_ras(array: np.ndarray, affine):
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    t = MetaTensor(np.ascontiguousarray(array)[None], affine=np.asarray(affine, dtype=np.float64))
    # nibabel affines map to RAS+; naming the labels keeps MONAI >= 1.5 from warning (once per reader process)
    # that its default labels will follow the tensor's space
    return Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(t)


def _spacing_of(affine) -> tuple[float, ...]:
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


def _prepare_slices(array, affine, cfg: DataConfig) -> list[Item]:
    vol = _to_ras(array, affine)
    data = _np(vol)[0]
    spacing = _spacing_of(vol.affine)
    axis = _AXIS[cfg.slice_axis]
    n = data.shape[axis]
    start = math.floor(cfg.slice_range[0] * n)
    stop = max(start + 1, math.ceil(cfg.slice_range[1] * n))
    lo = float(data.min())
    threshold = lo + 0.1 * (float(np.percentile(data, 99)) - lo)
    in_plane = tuple(s for i, s in enumerate(spacing) if i != axis)[::-1]  # (row, col) spacing
    kept = []
    for k in range(start, min(stop, n)):
        img = slice_volume(data, k, cfg.slice_axis)
        if cfg.min_foreground > 0 and float((img > threshold).mean()) < cfg.min_foreground:
            continue
        kept.append((k, img))
    if not kept:
        return []
    # all slices of one volume share a shape: pad/resize them in one pass
    stack = np.ascontiguousarray(np.stack([img for _, img in kept]))
    out, sp, notes = _prepare_2d(stack, in_plane, cfg)
    return [Item(out[i], sp, k, notes) for i, (k, _) in enumerate(kept)]


def _prepare_volume(array, affine, cfg: DataConfig) -> Item:
    from monai.transforms import ResizeWithPadOrCrop, Spacing

    vol = _to_ras(array, affine)
    target = tuple(cfg.image_size)
    if cfg.spacing is not None:
        vol = Spacing(pixdim=tuple(cfg.spacing), mode="bilinear")(vol)
        background = float(vol.min())
        vol = ResizeWithPadOrCrop(target, mode="constant", value=background)(vol)
        spacing = tuple(float(s) for s in cfg.spacing)
    else:
        fov = [n * s for n, s in zip(vol.shape[1:], _spacing_of(vol.affine))]
        vol = _resize(vol, target)
        spacing = tuple(f / t for f, t in zip(fov, target))
    return Item(_np(vol)[0], spacing, None, ())


# --------------------------------------------------------------------------------------------
# Intensity


@dataclass(frozen=True)
class IntensityMapping:
    """Affine map [source_min, source_max] -> [-1, 1], clipped; inverse maps back to source units."""

    source_min: float
    source_max: float
    mode: str = "window"
    percentiles: tuple[float, float] | None = None

    def __post_init__(self):
        if not self.source_max > self.source_min:
            raise ValueError(f"intensity window must have max > min, got [{self.source_min}, {self.source_max}]")

    def forward(self, x):
        scale = 2.0 / (self.source_max - self.source_min)
        y = (x - self.source_min) * scale - 1.0
        return y.clamp(-1.0, 1.0) if hasattr(y, "clamp") else np.clip(y, -1.0, 1.0)

    def forward_(self, x: np.ndarray) -> np.ndarray:
        """In-place version of :meth:`forward` for a float32 numpy array: no temporaries."""
        scale = np.float32(2.0 / (self.source_max - self.source_min))
        x -= np.float32(self.source_min)
        x *= scale
        x -= np.float32(1.0)
        return np.clip(x, -1.0, 1.0, out=x)

    def inverse(self, y):
        return (y + 1.0) * 0.5 * (self.source_max - self.source_min) + self.source_min

    def to_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles) if self.percentiles else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> IntensityMapping:
        p = d.get("percentiles")
        return cls(float(d["source_min"]), float(d["source_max"]), d.get("mode", "window"),
                   tuple(p) if p else None)


def fit_intensity(cfg: IntensityConfig, images: np.ndarray, indices=None, max_values: int = 4_000_000,
                  seed: int = 0) -> IntensityMapping:
    """The mapping for ``cfg``; percentile mode samples values from ``images[indices]`` (train only)."""
    if cfg.mode == "window":
        lo, hi = cfg.window  # type: ignore[misc]
        return IntensityMapping(float(lo), float(hi), "window", None)
    idx = np.arange(len(images)) if indices is None else np.asarray(indices)
    if idx.size == 0:
        raise ValueError("cannot fit percentiles on an empty training set")
    per_item = int(np.prod(images.shape[1:]))
    rng = np.random.default_rng(seed)
    if idx.size * per_item <= max_values:
        values = np.asarray(images[np.sort(idx)], dtype=np.float32).ravel()
    else:
        take_items = np.sort(rng.choice(idx, size=min(idx.size, max(1, max_values // per_item) * 4),
                                        replace=False))
        values = np.asarray(images[take_items], dtype=np.float32).reshape(len(take_items), -1)
        cols = rng.choice(per_item, size=min(per_item, max(1, max_values // len(take_items))), replace=False)
        values = values[:, cols].ravel()
    lo, hi = np.percentile(values, [cfg.lower, cfg.upper])
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise ValueError(f"all training intensities equal {lo}: nothing to learn")
    return IntensityMapping(float(lo), float(hi), "percentile", (cfg.lower, cfg.upper))

"""Build small, valid DICOM files and series for tests (pydicom only, nothing downloaded).

Geometry convention (the same as ``medsynth.data.readers``): a volume is indexed ``[i, j, k]`` with
``i`` = DICOM column index, ``j`` = row index, ``k`` = slice; its 4x4 affine maps voxels to RAS+ mm.
Slice ``k`` is stored as ``volume[:, :, k].T`` (Rows = size along j, Columns = size along i).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ds_values(values: Sequence[float]) -> list[DSfloat]:
    """Floats as DICOM DS values, formatted to fit the 16-character limit."""
    return [DSfloat(float(v), auto_format=True) for v in values]


def make_image_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "MR",
    sop_class_uid: str | UID = MRImageStorage,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    patient_id: str = "MEDSYNTH-TEST",
    study_uid: str | None = None,
    series_uid: str | None = None,
    **attributes,
) -> Dataset:
    """A single-frame image data set with file meta (Explicit VR Little Endian), ready for save_as.

    ``pixels`` is (rows, cols) for MONOCHROME1/2 or (rows, cols, 3) for RGB, of an integer dtype; extra
    keyword arguments become DICOM attributes (e.g. ``PixelSpacing=[0.5, 0.5]``, ``RescaleSlope=2``).
    """
    instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(sop_class_uid))
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(str(sop_class_uid))
    ds.SOPInstanceUID = instance_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Synthetic"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    pixels = np.ascontiguousarray(pixels)
    ds.set_pixel_data(
        pixels, photometric, bits_stored or pixels.dtype.itemsize * 8, generate_instance_uid=False
    )
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def dicom_geometry(affine: np.ndarray) -> dict[str, np.ndarray | float]:
    """RAS voxel->world affine -> DICOM geometry (LPS): cosines, in-plane spacings, slice step, origin.

    Raises ValueError for an affine a stack of parallel DICOM slices cannot express (non-orthogonal
    in-plane axes, or a slice step that is not along the slice normal).
    """
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
    col_spacing = float(np.linalg.norm(lps[:3, 0]))
    row_spacing = float(np.linalg.norm(lps[:3, 1]))
    row_cos = lps[:3, 0] / col_spacing
    col_cos = lps[:3, 1] / row_spacing
    normal = np.cross(row_cos, col_cos)
    step = lps[:3, 2]
    in_plane_orthogonal = abs(float(row_cos @ col_cos)) < 1e-6
    step_along_normal = np.linalg.norm(np.cross(step, normal)) < 1e-6 * np.linalg.norm(step)
    if not (in_plane_orthogonal and step_along_normal):
        raise ValueError("affine cannot be written as parallel DICOM slices (shear)")
    return {
        "row_cosine": row_cos,
        "col_cosine": col_cos,
        "row_spacing": row_spacing,
        "col_spacing": col_spacing,
        "slice_step": step,
        "origin": lps[:3, 3],
    }


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    directory: str | os.PathLike,
    *,
    modality: str = "MR",
    sop_class_uid: str | UID = MRImageStorage,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "MEDSYNTH-TEST",
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    bits_stored: int | None = None,
    slice_thickness: float | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume[i, j, k]`` (integer stored values) as one DICOM file per k; returns sorted paths.

    ImageOrientationPatient, ImagePositionPatient and PixelSpacing come from the RAS ``affine``. With
    ``shuffle`` (the default) file names and InstanceNumbers are permutations that are NOT in geometric
    order, so a reader must sort slices by position. ``slice_thickness`` (default: the slice step) is
    written as SliceThickness only; a reader should not use it.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or not np.issubdtype(volume.dtype, np.integer):
        raise ValueError("volume must be a 3D integer array of stored values")
    geometry = dicom_geometry(affine)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    n = volume.shape[2]
    rng = np.random.default_rng(seed)
    name_order = _scrambled(n, rng) if shuffle else np.arange(n)
    instance_order = _scrambled(n, rng) if shuffle else np.arange(n)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = generate_uid()
    iop = ds_values([*geometry["row_cosine"], *geometry["col_cosine"]])
    thickness = slice_thickness if slice_thickness is not None else np.linalg.norm(geometry["slice_step"])
    extra = {}
    if rescale_slope is not None or rescale_intercept is not None:
        extra["RescaleSlope"] = DSfloat(rescale_slope if rescale_slope is not None else 1.0, auto_format=True)
        extra["RescaleIntercept"] = DSfloat(rescale_intercept or 0.0, auto_format=True)
        extra["RescaleType"] = "US"
    paths = []
    for k in range(n):
        position = geometry["origin"] + k * geometry["slice_step"]
        ds = make_image_dataset(
            volume[:, :, k].T,
            modality=modality,
            sop_class_uid=sop_class_uid,
            bits_stored=bits_stored,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            ImageOrientationPatient=iop,
            ImagePositionPatient=ds_values(position),
            PixelSpacing=ds_values([geometry["row_spacing"], geometry["col_spacing"]]),
            SliceThickness=DSfloat(float(thickness), auto_format=True),
            InstanceNumber=int(instance_order[k]) + 1,
            FrameOfReferenceUID=frame_of_reference_uid,
            **extra,
        )
        path = out / f"IM{int(name_order[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


def _scrambled(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) that is neither ascending nor descending (when n >= 3)."""
    order = rng.permutation(n)
    monotonic = np.all(np.diff(order) > 0) or np.all(np.diff(order) < 0)
    if n >= 3 and monotonic:
        order = np.roll(order, 1)
        order[[0, 1]] = order[[1, 0]]
    return order

"""Where exported pixels sit in space: one convention shared by the DICOM and NIfTI writers.

2D images: a slice plane (ImageOrientationPatient, LPS) and in-plane spacing; the image centre is placed
at the origin of a synthetic frame of reference. Slices of MRI volumes use the plane recorded in the
checkpoint (``geometry.slice_iop``); images without one (X-ray, JPEG sources) get a nominal coronal
plane, the way a PA radiograph is displayed (rows to the patient's left, columns to the feet).

3D volumes are RAS arrays ``[i, j, k]`` (as trained); their affine is diagonal with the training
spacing and the volume centre at the origin. They are written as axial DICOM slices in the
radiological convention of ``medsynth.data.transforms.slice_volume``: slice ``k`` is
``volume[::-1, ::-1, k].T`` (rows anterior->posterior, columns right->left), ImageOrientationPatient
1\\0\\0\\0\\1\\0, ImagePositionPatient stepping along +z (LPS, superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
CORONAL_IOP = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class PlaneGeometry:
    """A 2D image of ``rows`` x ``columns`` pixels in a plane."""

    rows: int
    columns: int
    spacing: tuple[float, float]          # (between rows, between columns), mm
    iop: tuple[float, ...]                # row cosine (along a row), column cosine (down a column); LPS
    thickness: float                      # mm along the normal (NIfTI's third pixdim); nominal for 2D

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.iop[:3]), np.asarray(self.iop[3:]))

    def position(self) -> np.ndarray:
        """ImagePositionPatient (LPS) of the first pixel so that the image centre is at the origin."""
        row_cos, col_cos = np.asarray(self.iop[:3]), np.asarray(self.iop[3:])
        return -(row_cos * (self.columns - 1) / 2 * self.spacing[1] + col_cos * (self.rows - 1) / 2 * self.spacing[0])

    def affine_ras(self) -> np.ndarray:
        """NIfTI affine of ``data[i, j, 0] = image[j, i]`` (i = column, j = row), in RAS."""
        row_cos, col_cos = np.asarray(self.iop[:3]), np.asarray(self.iop[3:])
        lps = np.eye(4)
        lps[:3, 0] = row_cos * self.spacing[1]
        lps[:3, 1] = col_cos * self.spacing[0]
        lps[:3, 2] = self.normal * self.thickness
        lps[:3, 3] = self.position()
        return RAS_TO_LPS @ lps


def volume_affine(shape, spacing) -> np.ndarray:
    """RAS affine of a trained volume: diagonal spacing, centre at the origin."""
    sp = np.asarray(spacing, dtype=np.float64)
    a = np.diag([*sp, 1.0])
    a[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2 * sp
    return a


def volume_slices(volume: np.ndarray, affine: np.ndarray):
    """Axial DICOM slices of a RAS volume: (pixels per slice, ImagePositionPatient per slice, PlaneGeometry).

    Pixel (r, c) of slice k is voxel (X-1-c, Y-1-r, k)."""
    x, y, z = volume.shape
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    col_step, row_step = -lps[:3, 0], -lps[:3, 1]          # one column right, one row down
    col_spacing, row_spacing = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = tuple(float(v) for v in (*(col_step / col_spacing), *(row_step / row_spacing)))
    thickness = float(np.linalg.norm(lps[:3, 2]))
    geo = PlaneGeometry(y, x, (row_spacing, col_spacing), iop, thickness)
    pixels = [np.ascontiguousarray(volume[::-1, ::-1, k].T) for k in range(z)]
    positions = [(lps @ np.array([x - 1, y - 1, k, 1.0]))[:3] for k in range(z)]
    return pixels, positions, geo

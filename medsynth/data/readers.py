"""Read one image file (PNG, JPEG, DICOM, NIfTI) or one DICOM series into ``(float32 array, ImageMeta)``.

This is the only module of medsynth that touches image file formats. Every reader is strict: a file that
cannot be used raises :class:`UnreadableFile` with a short, stable ``reason`` (used to count skips).

Array conventions
-----------------
* PNG / JPEG / single-frame DICOM: 2D ``array[row, col]``. PNG/JPEG values keep their native scale
  (0..255 or 0..65535); DICOM values are in modality units (Modality LUT / rescale applied, e.g. HU for CT).
  ``meta.spacing`` is ``(row spacing, column spacing)`` in mm (DICOM only), ``meta.affine`` is None.
* NIfTI: 3D ``array[i, j, k]`` in the file's voxel order, ``meta.affine`` is nibabel's ``img.affine``
  (voxel -> world RAS+ mm, sform preferred over qform). Nothing is reoriented here. A 2D NIfTI is returned
  as 3D with ``k == 1``. ``meta.spacing`` is the column norms of the affine.
* DICOM series: 3D ``array[i, j, k]`` with ``i`` = column index, ``j`` = row index, ``k`` = slice index
  after sorting slices along the slice normal ``n = row_cosine x col_cosine`` (``row_cosine`` =
  ImageOrientationPatient[:3], the direction of increasing column index; ``col_cosine`` = IOP[3:]).
  Slices are ordered by ``dot(ImagePositionPatient, n)``, never by InstanceNumber. The LPS affine has
  columns ``(row_cosine * col_spacing, col_cosine * row_spacing, n * slice_spacing)`` and translation =
  IPP of the first sorted slice; ``meta.affine`` is that affine converted to RAS+ (first two rows negated),
  the same convention as NIfTI above. ``slice_spacing`` is the mean distance between consecutive slice
  positions along ``n`` (SliceThickness is ignored). ``meta.spacing = (col_spacing, row_spacing,
  slice_spacing)``. Because ``k`` always runs along ``+n`` the affine is always right-handed in LPS
  (positive determinant); a volume exported from a left-handed NIfTI comes back with ``k`` reversed.

MONOCHROME1 is inverted *after* the Modality LUT as ``lo + hi - x`` where ``[lo, hi]`` is the range of
values the stored bits can hold (BitsStored, PixelRepresentation) mapped through the Modality LUT. This
mapping depends only on the header, not on image content, so equal stored values give equal outputs in
every image of a dataset (``x.max() + x.min() - x`` would shift intensities from image to image). Float
pixel data (no BitsStored range) falls back to ``x.max() + x.min() - x``.

Colour (RGB, YBR after pydicom's conversion to RGB, PALETTE COLOR, PIL colour modes) becomes grayscale by
ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``; images whose three channels are identical keep that
channel exactly. VOI LUT / windowing is never applied.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pydicom
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from PIL import Image
from pydicom import uid as dicom_uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

__all__ = [
    "ImageMeta",
    "UnreadableFile",
    "detect_format",
    "read_dicom_header",
    "read_dicom_series",
    "read_image",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_GZIP_MAGIC = b"\x1f\x8b"
_HEAD_BYTES = 544  # covers the NIfTI-2 header (540 bytes) and the DICOM preamble + "DICM"
_DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic", ".ima")
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_VR_NAMES = (
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
)
_DICOM_VRS = frozenset(_VR_NAMES.encode().split())
_LUMA = (0.299, 0.587, 0.114)
_MAX_CAUSE_CHARS = 160
_HEADER_DEFER_BYTES = 4096  # read_dicom_header: longer values (pixel data) are left on disk
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Series geometry tolerances.
_IOP_TOLERANCE = 1e-4  # max abs difference between the slices' ImageOrientationPatient values
_SPACING_TOLERANCE = 1e-4  # mm, max abs difference between the slices' PixelSpacing values
_ORTHONORMAL_TOLERANCE = 1e-3  # cosines must be unit length and orthogonal to this precision
_DUPLICATE_POSITION_MM = 1e-3  # slices closer than this along the normal share a position
_MAX_GAP_DEVIATION = 0.01  # slice gaps may deviate from their mean by at most 1 %
_MAX_IN_PLANE_OFFSET = 0.1  # slice origins may drift off the normal by at most 0.1 pixel


class UnreadableFile(Exception):
    """A file that cannot be used; ``reason`` is a short, stable, human string (used to count skips)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable (DataLoader workers) despite the two-argument __init__
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageMeta:
    """What a reader learnt about the file besides its pixels (see the module docstring for axes)."""

    path: str
    format: str  # "png" | "jpeg" | "dicom" | "nifti" | "dicom-series"
    modality: str | None
    patient_id: str | None
    series_uid: str | None
    spacing: tuple[float, ...] | None
    affine: tuple[tuple[float, ...], ...] | None
    bit_depth: int | None
    n_files: int = 1
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str | None:
    """Return "png", "jpeg", "dicom" or "nifti", or None when not an image file we know.

    Magic bytes first (DICOM "DICM" at 128, PNG signature, JPEG SOI, NIfTI-1/2 header, also gzipped);
    then a raw (preamble-less) DICOM data set starting with group 0002/0008; the extension (.dcm, .nii,
    .nii.gz, ...) is only a last resort so that broken files of those types get a precise reason later.
    OSError (missing file, directory) propagates.
    """
    p = os.fspath(path)
    with open(p, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_SOI):
        return "jpeg"
    if _is_nifti_header(head) or (head.startswith(_GZIP_MAGIC) and _is_nifti_header(_gunzip_head(p))):
        return "nifti"
    if _looks_like_raw_dicom(head):
        return "dicom"
    name = p.lower()
    if name.endswith(_DICOM_EXTENSIONS):
        return "dicom"
    if name.endswith(_NIFTI_EXTENSIONS):
        return "nifti"
    return None


def _gunzip_head(path: str) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        return b""


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
        return 348 in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    if len(head) >= 540 and head[4:8] in (b"n+2\0", b"ni2\0"):
        return 540 in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    return False


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A data set without preamble: first tag in group 0002/0008 with an explicit VR or sane length."""
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        if int.from_bytes(head[:2], order) not in (0x0002, 0x0008):
            continue
        if head[4:6] in _DICOM_VRS:
            return True
        length = int.from_bytes(head[4:8], "little")
        if order == "little" and (length <= 0xFFFF or length == _UNDEFINED_LENGTH):
            return True  # implicit VR little endian
    return False


# --------------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, *, volume_index: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """One file -> float32 array and meta; raises UnreadableFile.

    PNG/JPEG/single-frame DICOM -> 2D (rows, cols); NIfTI -> 3D (i, j, k) with its affine, not
    reoriented. ``volume_index`` picks the volume of a 4D NIfTI with more than one volume and is ignored
    for every other file.
    """
    p = _check_regular_file(path)
    fmt = detect_format(p)
    if fmt != "dicom" and p.lower().endswith(_DICOM_EXTENSIONS):
        raise UnreadableFile(p, "not a DICOM file")  # e.g. a PNG renamed to .dcm: a mistake, not data
    if fmt in ("png", "jpeg"):
        array, meta = _read_pil(p, fmt)
    elif fmt == "dicom":
        array, meta = _read_dicom_image(p)
    elif fmt == "nifti":
        array, meta = _read_nifti(p, volume_index)
    else:
        raise UnreadableFile(p, _unknown_format_reason(p))
    _require_finite(p, array)
    return array, meta


def read_dicom_header(path: str | os.PathLike) -> Dataset:
    """Header for grouping files into series: pixels are neither decoded nor (when large) loaded.

    Values longer than 4 KiB, Pixel Data above all, are deferred (pydicom ``defer_size``: read from the
    file only if accessed), so unlike ``stop_before_pixels=True`` the data set still tells whether the
    file has pixel data (``"PixelData" in ds``) and a file cut short inside its pixel data is caught here.
    Raises UnreadableFile for missing, non-DICOM and truncated files.
    """
    p = _check_regular_file(path)
    ds, _ = _load_dicom(p, header_only=True)
    return ds


def read_dicom_series(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, ImageMeta]:
    """Files of ONE series (same SeriesInstanceUID; the caller groups) -> 3D float32 volume, RAS affine.

    Slices are sorted geometrically (see the module docstring). Raises UnreadableFile: for a problem of
    one file its ``path`` is that file, for a problem of the series as a whole it is ``paths[0]``.
    """
    files = [os.fspath(p) for p in paths]
    if not files:
        raise ValueError("read_dicom_series needs at least one path")
    if len(files) < 2:
        raise UnreadableFile(files[0], "series has 1 slice; at least 2 are needed")
    slices = [_load_series_slice(_check_regular_file(p)) for p in files]
    _check_same_geometry(files[0], slices)
    row_cos, col_cos, normal = _slice_axes(files[0], slices[0].orientation)
    ordered, notes = _sort_along_normal(files[0], slices, normal)
    slice_spacing = _uniform_slice_spacing(files[0], ordered, normal)
    volume, pixel_notes = _stack_slices(ordered)
    _require_finite(ordered[0].path, volume)

    row_spacing, col_spacing = ordered[0].pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = ordered[0].position
    first = ordered[0].ds
    meta = ImageMeta(
        path=ordered[0].path,
        format="dicom-series",
        modality=_text_or_none(first, "Modality"),
        patient_id=_text_or_none(first, "PatientID"),
        series_uid=_text_or_none(first, "SeriesInstanceUID"),
        spacing=(float(col_spacing), float(row_spacing), float(slice_spacing)),
        affine=_affine_tuple(_lps_to_ras(lps)),
        bit_depth=_int_or_none(first, "BitsStored"),
        n_files=len(ordered),
        notes=_unique(notes + pixel_notes),
    )
    return volume, meta


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _check_regular_file(path: str | os.PathLike) -> str:
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UnreadableFile(p, "file not found") from None
    except OSError as e:
        raise UnreadableFile(p, f"cannot open file ({e.strerror})") from None
    if os.path.isdir(p):
        raise UnreadableFile(p, "is a directory")
    if st.st_size == 0:
        raise UnreadableFile(p, "empty file")
    return p


def _unknown_format_reason(path: str) -> str:
    name = path.lower()
    if name.endswith(".png"):
        return "not a PNG file"
    if name.endswith((".jpg", ".jpeg")):
        return "not a JPEG file"
    return "unsupported format"


def _require_finite(path: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise UnreadableFile(path, "contains NaN or Inf values")


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(..., >=3) -> float32 BT.601 luma of the first three channels (exact when R == G == B)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return r.astype(np.float32)
    weighted = _LUMA[0] * r.astype(np.float64) + _LUMA[1] * g + _LUMA[2] * b
    return weighted.astype(np.float32)


def _short_cause(exc: BaseException) -> str:
    """First informative line of an exception message, at most _MAX_CAUSE_CHARS characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if len(lines) > 1 and text.endswith(":"):
        text = lines[1] if "missing dependencies" not in text else f"no decoder installed ({lines[1]})"
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[: _MAX_CAUSE_CHARS - 3] + "..."
    return text


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _affine_tuple(affine: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in affine)


def _lps_to_ras(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


# --------------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------------

_PIL_GRAY_MODES = {"L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_PIL_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


def _read_pil(path: str, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    try:
        with Image.open(path, formats=[fmt.upper()]) as im:
            im.load()
            notes = _pil_notes(im, fmt)
            bit_depth, depth_notes = _pil_bit_depth(path, im, fmt)
            array, mode_notes = _pil_to_gray(im)
    except Image.DecompressionBombError:
        raise UnreadableFile(path, "image too large (Pillow decompression bomb limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnreadableFile(path, "truncated or corrupt image file") from e
    meta = ImageMeta(
        path=path,
        format=fmt,
        modality=None,
        patient_id=None,
        series_uid=None,
        spacing=None,
        affine=None,
        bit_depth=bit_depth,
        notes=_unique(notes + depth_notes + mode_notes),
    )
    return array, meta


def _pil_to_gray(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    mode = im.mode
    if mode in _PIL_GRAY_MODES:
        return np.asarray(im).astype(np.float32), []
    if mode == "1":
        return np.asarray(im.convert("L")).astype(np.float32), []
    if mode in ("LA", "La"):
        return np.asarray(im)[..., 0].astype(np.float32), [f"{mode} converted to grayscale (alpha ignored)"]
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode not in ("RGB", "RGBA", "RGBa", "RGBX", "PA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    elif mode == "PA":
        im = im.convert("RGBA")
    note = f"{mode} converted to grayscale"
    if mode in _PIL_ALPHA_MODES or im.mode == "RGBA":
        note += " (alpha ignored)"
    return _luma(np.asarray(im)), [note]


def _pil_notes(im: Image.Image, fmt: str) -> list[str]:
    notes = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        notes.append(f"first of {frames} frames used")
    if fmt == "jpeg" and im.getexif().get(0x0112, 1) not in (1, None):
        notes.append("EXIF orientation ignored")
    return notes


def _pil_bit_depth(path: str, im: Image.Image, fmt: str) -> tuple[int, list[str]]:
    """Bits per sample of the array returned (PNG: from IHDR), with a note when Pillow dropped bits."""
    if fmt == "jpeg":
        return int(getattr(im, "bits", 8)), []
    with open(path, "rb") as f:
        ihdr = f.read(26)
    depth, colour_type = ihdr[24], ihdr[25]
    if colour_type == 3:
        return 8, []  # palette: 8-bit entries whatever the index depth
    if depth == 16 and im.mode not in _PIL_GRAY_MODES:  # Pillow reads 16-bit colour/alpha PNG as 8-bit
        return 8, [f"16-bit {im.mode} PNG reduced to 8 bits by Pillow"]
    return int(depth), []


# --------------------------------------------------------------------------------------------------
# DICOM: one file
# --------------------------------------------------------------------------------------------------


def _load_dicom(path: str, *, header_only: bool) -> tuple[Dataset, list[str]]:
    """dcmread with strict checks; force=True only for raw data sets that parse with a group 0008.

    ``header_only`` defers long values (pixel data) instead of reading them.
    """
    notes: list[str] = []
    try:
        ds = pydicom.dcmread(path, defer_size=_HEADER_DEFER_BYTES if header_only else None)
    except InvalidDicomError:
        ds = _load_raw_dicom(path, header_only)
        notes.append("no DICOM file meta (read with force=True)")
    except (EOFError, struct.error) as e:
        raise UnreadableFile(path, "truncated file") from e
    except Exception as e:  # pydicom raises many types (struct.error, ValueError, KeyError, ...)
        raise UnreadableFile(path, f"corrupt DICOM file: {_short_cause(e)}") from e
    if _looks_truncated(ds, os.path.getsize(path)):
        raise UnreadableFile(path, "truncated file")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _transfer_syntax_from_encoding(ds)
        notes.append("transfer syntax missing: inferred from the encoding")
    return ds, notes


def _load_raw_dicom(path: str, header_only: bool) -> Dataset:
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not _looks_like_raw_dicom(head):
        raise UnreadableFile(path, "not a DICOM file")
    try:
        ds = pydicom.dcmread(path, force=True, defer_size=_HEADER_DEFER_BYTES if header_only else None)
    except (EOFError, OSError, struct.error) as e:  # pydicom: OSError("No tag to read at ...")
        raise UnreadableFile(path, "truncated file") from e
    except Exception as e:
        raise UnreadableFile(path, "not a DICOM file") from e
    # Dataset.keys() gives tags without converting raw elements (iterating the Dataset would convert them)
    if not any(tag.group == 0x0008 for tag in ds.keys()):  # noqa: SIM118
        raise UnreadableFile(path, "not a DICOM file")
    return ds


def _looks_truncated(ds: Dataset, file_size: int) -> bool:
    """Signs that the file ends early; pydicom itself only warns, or silently stops.

    * no data set elements at all: pydicom drops everything when EOF interrupts an undefined-length value;
    * a top-level element whose value (read, or deferred) extends past the end of the file;
    * 1..7 bytes left after the last element: an element header cut short.
    """
    tags = list(ds.keys())
    if not tags:
        return True
    if any(_value_end(ds, tag) > file_size for tag in tags):
        return True
    return 0 < file_size - _value_end(ds, tags[-1]) < 8


def _value_end(ds: Dataset, tag) -> int:
    """File offset where an element's value should end as declared (0 when unknown)."""
    elem = ds.get_item(tag, keep_deferred=True)
    if not isinstance(elem, RawDataElement) or not elem.value_tell:
        return 0
    if elem.length != _UNDEFINED_LENGTH:
        return elem.value_tell + elem.length
    if elem.value is not None:  # encapsulated pixel data: fragments + 8-byte sequence delimiter item
        return elem.value_tell + len(elem.value) + 8
    return 0


def _transfer_syntax_from_encoding(ds: Dataset) -> dicom_uid.UID:
    implicit, little = ds.original_encoding
    if implicit in (True, None):
        return dicom_uid.ImplicitVRLittleEndian
    return dicom_uid.ExplicitVRLittleEndian if little in (True, None) else dicom_uid.ExplicitVRBigEndian


def _read_dicom_image(path: str) -> tuple[np.ndarray, ImageMeta]:
    ds, notes = _load_dicom(path, header_only=False)
    _require_single_frame_image(path, ds)
    array, pixel_notes = _dicom_pixels(path, ds)
    spacing, spacing_notes = _pixel_spacing_2d(ds)
    meta = ImageMeta(
        path=path,
        format="dicom",
        modality=_text_or_none(ds, "Modality"),
        patient_id=_text_or_none(ds, "PatientID"),
        series_uid=_text_or_none(ds, "SeriesInstanceUID"),
        spacing=spacing,
        affine=None,
        bit_depth=_int_or_none(ds, "BitsStored"),
        notes=_unique(notes + pixel_notes + spacing_notes),
    )
    return array, meta


def _require_single_frame_image(path: str, ds: Dataset) -> None:
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise UnreadableFile(path, f"DICOM without pixel data ({_sop_class_name(ds)})")
    frames = _int_or_none(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise UnreadableFile(path, f"multi-frame DICOM ({frames} frames) is not supported yet")


def _sop_class_name(ds: Dataset) -> str:
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if not sop:
        return "unknown SOP class"
    return dicom_uid.UID(str(sop)).name


def _dicom_pixels(path: str, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Decode, then colour -> luma or Modality LUT (+ MONOCHROME1 inversion) -> float32 2D array."""
    try:
        raw = pixel_array(ds)  # unlike ds.pixel_array, does not keep a copy on the data set
    except Exception as e:
        raise UnreadableFile(path, _decode_failure_reason(ds, e)) from e
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        array, notes = _luma(apply_color_lut(raw, ds)), ["PALETTE COLOR converted to grayscale"]
    elif raw.ndim == 3:
        array, notes = _luma(raw), [f"{photometric or 'colour'} converted to grayscale"]
    else:
        array, notes = _apply_modality_lut(raw, ds)
        if photometric == "MONOCHROME1":
            lo, hi = _output_range(ds, array)
            array = (lo + hi) - array
            notes.append("MONOCHROME1 inverted")
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise UnreadableFile(path, f"unexpected pixel array shape {array.shape}")
    return array, notes


def _decode_failure_reason(ds: Dataset, exc: BaseException) -> str:
    message = str(exc)
    if re.search(r"less than expected|shorter than expected|truncated", message, re.IGNORECASE):
        return "truncated file"
    ts = dicom_uid.UID(str(ds.file_meta.TransferSyntaxUID))
    if not ts.is_transfer_syntax:
        return f"unsupported transfer syntax {ts}"
    if ts.is_compressed:
        return f"compressed transfer syntax {ts.name} cannot be decoded: {_short_cause(exc)}"
    return f"pixel data cannot be decoded: {_short_cause(exc)}"


def _apply_modality_lut(raw: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(raw, ds), ["modality LUT applied"]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return raw, []
    return raw * slope + intercept, ["rescale slope/intercept applied"]


def _output_range(ds: Dataset, array: np.ndarray) -> tuple[float, float]:
    """Range of the stored bits after the Modality LUT (falls back to the data range for float data)."""
    bits = _int_or_none(ds, "BitsStored")
    if not bits or "PixelData" not in ds:
        return float(array.min()), float(array.max())
    if _int_or_none(ds, "PixelRepresentation") == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    stored = np.arange(lo, hi + 1) if bits <= 16 else np.array([lo, hi])
    mapped, _ = _apply_modality_lut(stored, ds)
    return float(np.min(mapped)), float(np.max(mapped))


def _pixel_spacing_2d(ds: Dataset) -> tuple[tuple[float, float] | None, list[str]]:
    """PixelSpacing, else ImagerPixelSpacing (detector plane, DX/CR/MG...), as (row, col) spacing."""
    notes = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword not in ds:
            continue
        values = _floats(ds, keyword, 2)
        if values is None or min(values) <= 0:
            notes.append(f"invalid {keyword} ignored")
            continue
        if keyword == "ImagerPixelSpacing":
            notes.append("spacing from ImagerPixelSpacing (detector plane)")
        return (values[0], values[1]), notes
    return None, notes


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """`count` finite floats from a multi-valued element, or None when missing or malformed."""
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        items = value if isinstance(value, (MultiValue, list, tuple, np.ndarray)) else [value]
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _text_or_none(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except (ValueError, TypeError, KeyError):  # malformed value that pydicom cannot convert
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# DICOM: series
# --------------------------------------------------------------------------------------------------


@dataclass
class _Slice:
    path: str
    ds: Dataset
    notes: list[str]
    position: np.ndarray  # ImagePositionPatient (LPS mm)
    orientation: np.ndarray  # ImageOrientationPatient (6 cosines)
    pixel_spacing: tuple[float, float]  # (row spacing, col spacing)
    size: tuple[int, int]  # (Rows, Columns)


def _load_series_slice(path: str) -> _Slice:
    """Header (pixel data deferred: read when decoded) and geometry of one slice."""
    ds, notes = _load_dicom(path, header_only=True)
    _require_single_frame_image(path, ds)
    position = _floats(ds, "ImagePositionPatient", 3)
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    if position is None or orientation is None:
        raise UnreadableFile(path, "series slice without ImagePositionPatient/ImageOrientationPatient")
    spacing = _floats(ds, "PixelSpacing", 2)
    if spacing is None or min(spacing) <= 0:
        raise UnreadableFile(path, "series slice without valid PixelSpacing")
    size = (_int_or_none(ds, "Rows") or 0, _int_or_none(ds, "Columns") or 0)
    return _Slice(path, ds, notes, np.array(position), np.array(orientation), spacing, size)


def _check_same_geometry(series_path: str, slices: list[_Slice]) -> None:
    uids = {_text_or_none(s.ds, "SeriesInstanceUID") for s in slices}
    if len(uids) > 1:
        raise UnreadableFile(series_path, f"files from {len(uids)} different series (SeriesInstanceUID)")
    sizes = sorted({s.size for s in slices})
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sizes)
        raise UnreadableFile(series_path, f"slices differ in size (Rows x Columns: {listed})")
    first = slices[0]
    if any(np.abs(s.orientation - first.orientation).max() > _IOP_TOLERANCE for s in slices):
        raise UnreadableFile(series_path, "slices differ in ImageOrientationPatient")
    if any(
        np.abs(np.subtract(s.pixel_spacing, first.pixel_spacing)).max() > _SPACING_TOLERANCE for s in slices
    ):
        raise UnreadableFile(series_path, "slices differ in PixelSpacing")


def _slice_axes(series_path: str, iop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row cosine, column cosine, normal), unit length; rejects a non-orthonormal orientation."""
    row_cos, col_cos = iop[:3], iop[3:]
    norms_ok = all(abs(np.linalg.norm(v) - 1) < _ORTHONORMAL_TOLERANCE for v in (row_cos, col_cos))
    if not norms_ok or abs(float(np.dot(row_cos, col_cos))) > _ORTHONORMAL_TOLERANCE:
        raise UnreadableFile(series_path, "invalid ImageOrientationPatient (not orthonormal)")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    return row_cos, col_cos, normal / np.linalg.norm(normal)


def _sort_along_normal(
    series_path: str, slices: list[_Slice], normal: np.ndarray
) -> tuple[list[_Slice], list[str]]:
    """Slices sorted by position along the normal; repeated files of one instance are dropped."""
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    groups: list[list[_Slice]] = [[ordered[0]]]
    for s in ordered[1:]:
        gap = float(np.dot(s.position - groups[-1][0].position, normal))
        if gap < _DUPLICATE_POSITION_MM:
            groups[-1].append(s)
        else:
            groups.append([s])
    notes = []
    kept = []
    n_at_duplicates = 0
    n_repeated_files = 0
    for group in groups:
        instances = {_text_or_none(s.ds, "SOPInstanceUID") or s.path for s in group}
        if len(instances) > 1:
            n_at_duplicates += len(group)
        n_repeated_files += len(group) - 1
        kept.append(group[0])
    if n_at_duplicates:
        raise UnreadableFile(series_path, f"series has {n_at_duplicates} slices at duplicate positions")
    if n_repeated_files:
        notes.append(f"{n_repeated_files} repeated files of the same instance ignored")
    if len(kept) < 2:
        raise UnreadableFile(series_path, "series has 1 distinct slice position; at least 2 are needed")
    return kept, notes


def _uniform_slice_spacing(series_path: str, ordered: list[_Slice], normal: np.ndarray) -> float:
    """Mean gap along the normal; rejects uneven gaps and origins that drift off the normal."""
    positions = np.array([s.position for s in ordered])
    along = positions @ normal
    gaps = np.diff(along)
    mean_gap = float(gaps.mean())
    if np.abs(gaps - mean_gap).max() > _MAX_GAP_DEVIATION * mean_gap:
        raise UnreadableFile(
            series_path,
            f"non-uniform slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm between slices)",
        )
    offsets = positions - positions[0] - np.outer(along - along[0], normal)
    if np.linalg.norm(offsets, axis=1).max() > _MAX_IN_PLANE_OFFSET * min(ordered[0].pixel_spacing):
        raise UnreadableFile(
            series_path, "slice positions are not along the slice normal (gantry tilt or sheared stack)"
        )
    return mean_gap


def _stack_slices(ordered: list[_Slice]) -> tuple[np.ndarray, list[str]]:
    """Decode each slice into volume[:, :, k] = pixels.T, so that volume[i=col, j=row, k]."""
    rows, cols = ordered[0].size
    volume = np.empty((cols, rows, len(ordered)), dtype=np.float32)
    notes: list[str] = []
    for k, s in enumerate(ordered):
        pixels, pixel_notes = _dicom_pixels(s.path, s.ds)
        if pixels.shape != (rows, cols):
            raise UnreadableFile(s.path, f"pixel array shape {pixels.shape} does not match Rows x Columns")
        volume[:, :, k] = pixels.T
        for keyword in _PIXEL_DATA_KEYWORDS:  # free the encoded bytes read on demand
            if keyword in s.ds:
                delattr(s.ds, keyword)
        notes += s.notes + pixel_notes
    return volume, notes


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------


def _read_nifti(path: str, volume_index: int | None) -> tuple[np.ndarray, ImageMeta]:
    img = _load_nifti_image(path)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise UnreadableFile(path, f"unsupported NIfTI data type {dtype}")
    array, notes = _nifti_volume(path, img, volume_index)
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.isfinite(affine).all() or (zooms <= 0).any():
        raise UnreadableFile(path, "invalid affine (zero or non-finite voxel size)")
    directions = affine[:3, :3] / zooms
    if np.abs(directions.T @ directions - np.eye(3)).max() > 1e-4:
        notes.append("affine has shear")
    if int(img.header["sform_code"]) == 0 and int(img.header["qform_code"]) == 0:
        notes.append("no sform/qform: affine from voxel sizes only (orientation unknown)")
    meta = ImageMeta(
        path=path,
        format="nifti",
        modality=None,
        patient_id=None,
        series_uid=None,
        spacing=tuple(float(z) for z in zooms),
        affine=_affine_tuple(affine),
        bit_depth=int(dtype.itemsize * 8),
        notes=_unique(notes),
    )
    return array, meta


def _load_nifti_image(path: str) -> nib.Nifti1Pair:
    try:
        img = nib.load(path, mmap=False)
    except ImageFileError as e:
        if not path.lower().endswith(_NIFTI_EXTENSIONS + (".hdr", ".img", ".hdr.gz", ".img.gz")):
            raise UnreadableFile(path, "NIfTI file without a .nii or .nii.gz extension") from e
        raise UnreadableFile(path, "truncated or corrupt NIfTI file") from e
    except (OSError, EOFError, ValueError, zlib.error, HeaderDataError) as e:
        raise UnreadableFile(path, "truncated or corrupt NIfTI file") from e
    if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and the .hdr/.img pairs
        raise UnreadableFile(path, "unsupported format")
    return img


def _nifti_volume(path: str, img: nib.Nifti1Pair, volume_index: int | None) -> tuple[np.ndarray, list[str]]:
    """3D float32 (i, j, k): 2D -> k == 1, trailing singleton dims dropped, 4D -> one volume."""
    shape = tuple(int(n) for n in img.shape)
    ndim = len(shape)
    while ndim > 3 and shape[ndim - 1] == 1:
        ndim -= 1
    notes = []
    if ndim < 2 or ndim > 4:
        raise UnreadableFile(path, f"{ndim}D NIfTI is not supported")
    spatial = (shape + (1,))[:3]
    if ndim == 2:
        notes.append("2D NIfTI returned as 3D with k=1")
    if len(shape) > 3 and ndim == 3:
        notes.append("singleton dimensions after the third dropped")
    try:
        if ndim < 4:
            return img.get_fdata(dtype=np.float32).reshape(spatial), notes
        n_volumes = shape[3]
        if volume_index is None:
            raise UnreadableFile(path, f"4D NIfTI with {n_volumes} volumes: set data.volume_index")
        if not 0 <= volume_index < n_volumes:
            raise UnreadableFile(
                path, f"volume_index {volume_index} out of range: 4D NIfTI has volumes 0..{n_volumes - 1}"
            )
        index = (slice(None), slice(None), slice(None), volume_index)
        volume = np.asarray(img.dataobj[index], dtype=np.float32).reshape(spatial)
        return volume, notes + [f"volume {volume_index} of {n_volumes} used"]
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise UnreadableFile(path, "truncated or corrupt NIfTI file") from e

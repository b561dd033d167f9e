"""Tests for medsynth.data.readers on real files: MedNIST JPEGs, IXI NIfTI volumes, pydicom's and nibabel's
own test files, and DICOM files / series written here from those (nothing is downloaded).

``shared_data`` (the real data folder, /work/shared/data next to the repository) comes from tests/conftest.py.
"""

from __future__ import annotations

import pickle
import random
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders import RLELosslessDecoder
from pydicom.uid import DigitalXRayImageStorageForPresentation, ImplicitVRLittleEndian

from medsynth.data.readers import (
    ImageMeta,
    UnreadableFile,
    detect_format,
    read_dicom_header,
    read_dicom_series,
    read_image,
)
from tests.data.dicom_helpers import make_image_dataset, write_dicom_series

IXI_NAME = "IXI012-HH-1211_T1.nii.gz"


@pytest.fixture(scope="session")
def ixi_path(shared_data: Path) -> Path:
    return shared_data / "ixi_t1" / IXI_NAME


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not installed"
    return path


def nibabel_file(name: str) -> str:
    return str(Path(NIBABEL_DATA) / name)


def write_raw_dicom(source: str, path: Path) -> Path:
    """Copy a DICOM file as a bare implicit-VR data set: no preamble, no "DICM", no file meta."""
    ds = pydicom.dcmread(source)
    ds.preamble = None
    del ds.file_meta
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    return path


def reason_of(path, **kwargs) -> str:
    with pytest.raises(UnreadableFile) as info:
        read_image(path, **kwargs)
    assert str(info.value) == f"{info.value.path}: {info.value.reason}"
    return info.value.reason


# --------------------------------------------------------------------------------------------------
# UnreadableFile, detect_format, generic failures
# --------------------------------------------------------------------------------------------------


def test_unreadable_file_str_and_pickle(tmp_path):
    exc = UnreadableFile(tmp_path / "a.dcm", "truncated file")
    assert exc.path == str(tmp_path / "a.dcm")
    assert str(exc) == f"{tmp_path / 'a.dcm'}: truncated file"
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.path, copy.reason, str(copy)) == (exc.path, exc.reason, str(exc))


def test_detect_format(tmp_path, shared_data, ixi_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    renamed_png = tmp_path / "image.dat"
    shutil.copy(png, renamed_png)
    raw_dicom = write_raw_dicom(pydicom_file("MR_small.dcm"), tmp_path / "IM0001")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image\n" * 20)
    text_dcm = tmp_path / "x.dcm"
    text_dcm.write_text("hello, not an image\n" * 20)

    assert detect_format(next((shared_data / "mednist64" / "CXR").glob("*.jpg"))) == "jpeg"
    assert detect_format(png) == "png"
    assert detect_format(renamed_png) == "png"  # magic bytes win over the extension
    assert detect_format(pydicom_file("MR_small.dcm")) == "dicom"
    assert detect_format(raw_dicom) == "dicom"
    assert detect_format(ixi_path) == "nifti"  # gzipped NIfTI-1
    assert detect_format(nibabel_file("anatomical.nii")) == "nifti"
    assert detect_format(nibabel_file("example_nifti2.nii.gz")) == "nifti"
    assert detect_format(text) is None
    assert detect_format(text_dcm) == "dicom"  # extension fallback, reading then says why not


def test_missing_empty_and_unknown_files(tmp_path):
    assert reason_of(tmp_path / "missing.png") == "file not found"
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert reason_of(empty) == "empty file"
    assert reason_of(tmp_path) == "is a directory"
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert reason_of(text) == "unsupported format"
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("not an image")
    assert reason_of(fake_png) == "not a PNG file"


# --------------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------------


def test_mednist_jpeg_matches_pil(shared_data):
    path = min((shared_data / "mednist64" / "CXR").glob("*.jpg"))
    array, meta = read_image(path)
    expected = np.asarray(Image.open(path))
    assert array.shape == (64, 64) and array.dtype == np.float32
    assert np.array_equal(array, expected.astype(np.float32))
    assert 0 <= array.min() and array.max() <= 255 and array.max() > array.min()
    assert meta == ImageMeta(
        path=str(path),
        format="jpeg",
        modality=None,
        patient_id=None,
        series_uid=None,
        spacing=None,
        affine=None,
        bit_depth=8,
    )


def test_png_16bit_round_trip(tmp_path):
    values = (np.arange(48 * 40, dtype=np.uint32).reshape(48, 40) * 33 % 65536).astype(np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    array, meta = read_image(path)
    assert values.max() > 255
    assert array.dtype == np.float32 and np.array_equal(array, values.astype(np.float32))
    assert meta.format == "png" and meta.bit_depth == 16 and meta.notes == ()


def test_png_rgb_to_gray_by_luma(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    array, meta = read_image(path)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert array.shape == (20, 30)
    np.testing.assert_allclose(array, luma, atol=1e-3)
    pil_gray = np.asarray(Image.open(path).convert("L"), dtype=np.float32)  # PIL rounds to integers
    assert np.abs(array - pil_gray).max() <= 0.5 + 1e-3
    assert meta.notes == ("RGB converted to grayscale",) and meta.bit_depth == 8


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_png_gray_content_in_colour_modes_is_exact(tmp_path, mode):
    gray = np.random.default_rng(1).integers(0, 256, (16, 12), dtype=np.uint8)
    path = tmp_path / f"{mode}.png"
    Image.fromarray(gray).convert(mode).save(path)
    array, meta = read_image(path)
    assert np.array_equal(array, gray.astype(np.float32))
    assert meta.notes[0].startswith(f"{mode} converted to grayscale")
    assert ("alpha ignored" in meta.notes[0]) == (mode in ("RGBA", "LA"))


def test_png_16bit_colour_is_reported_as_8bit(tmp_path):
    """Pillow reads 16-bit RGB PNGs as 8-bit RGB: the reader says so instead of claiming 16 bits."""
    rgb16 = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(">u2")
    scanlines = b"".join(b"\x00" + row.tobytes() for row in rgb16)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 (RGB)
    path = tmp_path / "rgb16.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )
    array, meta = read_image(path)
    assert array.shape == (4, 5) and array.max() <= 255
    assert meta.bit_depth == 8
    assert meta.notes == ("16-bit RGB PNG reduced to 8 bits by Pillow", "RGB converted to grayscale")


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    assert reason_of(path) == "truncated or corrupt image file"


# --------------------------------------------------------------------------------------------------
# DICOM single images
# --------------------------------------------------------------------------------------------------


def test_mr_small_values_and_meta():
    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    array, meta = read_image(path)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    assert array.dtype == np.float32 and array.shape == (64, 64)
    assert np.array_equal(array, ds.pixel_array * slope + intercept)
    assert meta.format == "dicom" and meta.modality == "MR" and meta.affine is None
    assert meta.patient_id == str(ds.PatientID) and meta.series_uid == str(ds.SeriesInstanceUID)
    assert meta.spacing == tuple(float(v) for v in ds.PixelSpacing) and meta.bit_depth == 16


def test_ct_small_in_hounsfield_units():
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    array, meta = read_image(path)
    assert float(ds.RescaleIntercept) == -1024
    assert np.array_equal(array, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert array.min() < 0  # air and fat are negative HU
    assert meta.modality == "CT" and "rescale slope/intercept applied" in meta.notes


@pytest.mark.parametrize(
    "name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"]
)
def test_lossless_compressed_equal_uncompressed(name):
    reference, _ = read_image(pydicom_file("MR_small.dcm"))
    array, meta = read_image(pydicom_file(name))
    assert np.array_equal(array, reference)
    assert meta.modality == "MR"


def test_undecodable_jpeg_names_transfer_syntax():
    reason = reason_of(pydicom_file("JPEG-lossy.dcm"))
    assert reason.startswith("compressed transfer syntax JPEG Extended (Process 2 and 4) cannot be decoded: ")
    assert len(reason) < 260


def test_missing_decoder_gives_skip_reason(monkeypatch):
    monkeypatch.setattr(RLELosslessDecoder, "_available", {})
    reason = reason_of(pydicom_file("MR_small_RLE.dcm"))
    assert reason.startswith(
        "compressed transfer syntax RLE Lossless cannot be decoded: no decoder installed"
    )


def test_failing_decoder_gives_skip_reason(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    ds.PixelData = encapsulate([bytes(200)])  # a fragment that is not an RLE stream
    path = tmp_path / "bad_rle.dcm"
    ds.save_as(path)
    assert reason_of(path).startswith("compressed transfer syntax RLE Lossless cannot be decoded: ")


def test_unknown_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"  # private: pydicom has no decoder for it
    path = tmp_path / "private_ts.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    assert reason_of(path) == "unsupported transfer syntax 1.2.3.4.5"


def test_monochrome1_real_file_is_inverted(tmp_path):
    original, _ = read_image(pydicom_file("MR_small.dcm"))
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 16
    assert ds.PixelRepresentation == 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    inverted, meta = read_image(path)
    # signed 16 bits hold -32768..32767, so the inversion is (-32768 + 32767) - x
    assert np.array_equal(inverted, -1.0 - original)
    assert "MONOCHROME1 inverted" in meta.notes


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dx_imager_pixel_spacing_and_rescale(tmp_path, photometric):
    stored = np.random.default_rng(3).integers(0, 4096, (30, 40), dtype=np.uint16)
    ds = make_image_dataset(
        stored,
        modality="DX",
        sop_class_uid=DigitalXRayImageStorageForPresentation,
        photometric=photometric,
        bits_stored=12,
        ImagerPixelSpacing=[0.139, 0.143],
        RescaleSlope=2,
        RescaleIntercept=-1024,
        PatientID="",
    )
    path = tmp_path / "dx.dcm"
    ds.save_as(path, enforce_file_format=True)
    array, meta = read_image(path)
    hu = stored.astype(np.float64) * 2 - 1024
    if photometric == "MONOCHROME1":  # 12-bit stored range 0..4095 -> -1024..7166 after rescale
        expected = (-1024 + 7166) - hu
    else:
        expected = hu
    assert np.array_equal(array, expected.astype(np.float32))
    assert meta.spacing == (0.139, 0.143) and meta.modality == "DX" and meta.bit_depth == 12
    assert meta.patient_id is None  # empty PatientID
    assert "rescale slope/intercept applied" in meta.notes
    assert "spacing from ImagerPixelSpacing (detector plane)" in meta.notes


def test_colour_dicom_to_grayscale():
    rgb = pydicom.dcmread(pydicom_file("SC_rgb_rle.dcm")).pixel_array.astype(np.float64)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    array, meta = read_image(pydicom_file("SC_rgb_rle.dcm"))
    np.testing.assert_allclose(array, luma, atol=1e-3)
    assert meta.notes == ("RGB converted to grayscale",)
    # the same picture stored as uncompressed YBR_FULL_422: pydicom converts to RGB, then luma
    ybr, meta = read_image(pydicom_file("SC_ybr_full_422_uncompressed.dcm"))
    assert np.abs(ybr - luma).max() < 8
    assert meta.notes == ("YBR_FULL_422 converted to grayscale",)


def test_not_dicom_named_dcm(tmp_path):
    text = tmp_path / "x.dcm"
    text.write_bytes(b"this is a text file, not DICOM\n" * 10)
    assert reason_of(text) == "not a DICOM file"
    png = tmp_path / "y.dcm"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    assert reason_of(png) == "not a DICOM file"
    with pytest.raises(UnreadableFile, match="not a DICOM file"):
        read_dicom_header(text)


def test_truncated_dicom(tmp_path):
    assert reason_of(pydicom_file("MR_truncated.dcm")) == "truncated file"  # pixel data cut short
    assert reason_of(pydicom_file("rtplan_truncated.dcm")) == "truncated file"  # a sequence cut short
    data = Path(pydicom_file("CT_small.dcm")).read_bytes()
    for cut in (700, 1003, 5000, len(data) - 3):  # inside header values, element headers, pixel data
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        assert reason_of(path) == "truncated file", cut
    with pytest.raises(UnreadableFile, match="truncated file"):
        read_dicom_header(tmp_path / "cut700.dcm")


@pytest.mark.parametrize(
    ("name", "sop_class"),
    [
        ("rtplan.dcm", "RT Plan Storage"),
        ("test-SR.dcm", "Comprehensive SR Storage"),
        ("rtstruct.dcm", "RT Structure Set Storage"),  # also has no file meta: read with force=True
    ],
)
def test_dicom_without_pixel_data(name, sop_class):
    assert reason_of(pydicom_file(name)) == f"DICOM without pixel data ({sop_class})"


def test_multiframe_is_rejected():
    assert reason_of(pydicom_file("examples_ybr_color.dcm")) == (
        "multi-frame DICOM (30 frames) is not supported yet"
    )


def test_preamble_less_dicom_is_read_with_force(tmp_path):
    reference, _ = read_image(pydicom_file("MR_small.dcm"))
    path = write_raw_dicom(pydicom_file("MR_small.dcm"), tmp_path / "IM0001")
    assert path.read_bytes()[:2] == b"\x08\x00"
    array, meta = read_image(path)
    assert np.array_equal(array, reference)
    assert "no DICOM file meta (read with force=True)" in meta.notes
    assert read_dicom_header(path).Modality == "MR"


def test_pydicom_no_meta_file_is_not_dicom():
    # pydicom 3.0.2 ships no_meta.dcm with a stray leading byte (0x20): force=True parses it into a
    # single bogus element, so it is rejected rather than misread.
    assert reason_of(pydicom_file("no_meta.dcm")) == "not a DICOM file"


def test_read_dicom_header():
    ds = read_dicom_header(pydicom_file("MR_small.dcm"))
    assert ds.SeriesInstanceUID and ds.Modality == "MR"
    assert "PixelData" in ds  # present, so callers can tell images from RT plans / SR ...
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None  # ... but not loaded
    assert "PixelData" not in read_dicom_header(pydicom_file("rtplan.dcm"))
    # compressed files need no decoder for the header
    assert read_dicom_header(pydicom_file("JPEG-lossy.dcm")).Modality == "NM"
    # a file cut inside its pixel data is caught without reading the pixels
    with pytest.raises(UnreadableFile, match="truncated file"):
        read_dicom_header(pydicom_file("MR_truncated.dcm"))


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------


def test_ixi_volume(ixi_path):
    img = nib.load(ixi_path)
    array, meta = read_image(ixi_path)
    assert array.shape == (120, 120, 90) and array.dtype == np.float32
    assert np.array_equal(array, img.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(meta.spacing, (2.0, 2.0, 2.0), atol=1e-6)
    assert np.array_equal(np.array(meta.affine), img.affine)
    assert meta.format == "nifti" and meta.modality is None and meta.bit_depth == 8
    assert nib.aff2axcodes(np.array(meta.affine)) == ("P", "S", "R")  # not reoriented
    canonical = nib.as_closest_canonical(nib.Nifti1Image(array, np.array(meta.affine)))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")


def test_nifti_anisotropic_and_big_endian():
    array, meta = read_image(nibabel_file("standard.nii.gz"))
    assert array.shape == (4, 5, 7) and meta.spacing == (1.0, 3.0, 2.0)
    array, meta = read_image(nibabel_file("anatomical.nii"))  # big-endian int16
    assert np.array_equal(array, nib.load(nibabel_file("anatomical.nii")).get_fdata(dtype=np.float32))


def test_nifti_4d_needs_volume_index():
    path = nibabel_file("example4d.nii.gz")
    assert reason_of(path) == "4D NIfTI with 2 volumes: set data.volume_index"
    array, meta = read_image(path, volume_index=1)
    img = nib.load(path)
    assert np.array_equal(array, img.get_fdata()[..., 1].astype(np.float32))
    assert not np.array_equal(array, img.get_fdata()[..., 0].astype(np.float32))
    assert np.array_equal(np.array(meta.affine), img.affine)
    assert "volume 1 of 2 used" in meta.notes
    assert reason_of(path, volume_index=2) == "volume_index 2 out of range: 4D NIfTI has volumes 0..1"


def test_nifti2(tmp_path, ixi_path):
    path = nibabel_file("example_nifti2.nii.gz")
    img = nib.load(path)
    assert isinstance(img, nib.Nifti2Image)
    array, meta = read_image(path, volume_index=0)
    assert array.shape == (32, 20, 12)
    assert np.array_equal(array, img.get_fdata()[..., 0].astype(np.float32))
    ixi = nib.load(ixi_path)
    nifti2 = tmp_path / "ixi2.nii"
    nib.save(nib.Nifti2Image(ixi.get_fdata(dtype=np.float32), ixi.affine), nifti2)
    array, meta = read_image(nifti2)
    assert np.array_equal(array, ixi.get_fdata(dtype=np.float32))
    assert np.allclose(np.array(meta.affine), ixi.affine) and meta.bit_depth == 32


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nifti_nan_or_inf_rejected(tmp_path, bad):
    data = np.ones((6, 5, 4), np.float32)
    data[2, 3, 1] = bad
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    assert reason_of(path) == "contains NaN or Inf values"


def test_nifti_2d_singleton_and_shear(tmp_path):
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    flat = np.arange(12, dtype=np.int16).reshape(4, 3)
    nib.save(nib.Nifti1Image(flat, affine), tmp_path / "flat.nii")
    array, meta = read_image(tmp_path / "flat.nii")
    assert array.shape == (4, 3, 1) and np.array_equal(array[..., 0], flat)
    np.testing.assert_allclose(meta.spacing, (0.5, 0.7, 3.0), rtol=1e-6)  # pixdim is float32
    assert "2D NIfTI returned as 3D with k=1" in meta.notes

    single = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    sheared = affine.copy()
    sheared[0, 1] = 0.2
    nib.save(nib.Nifti1Image(single, sheared), tmp_path / "single.nii.gz")
    array, meta = read_image(tmp_path / "single.nii.gz")
    assert array.shape == (2, 3, 4) and np.array_equal(array, single[..., 0])
    assert "affine has shear" in meta.notes


def test_truncated_nifti(tmp_path, ixi_path):
    data = ixi_path.read_bytes()
    for cut in (200, len(data) // 2):
        path = tmp_path / f"cut{cut}.nii.gz"
        path.write_bytes(data[:cut])
        assert reason_of(path) == "truncated or corrupt NIfTI file", cut


# --------------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ixi_image(ixi_path) -> nib.Nifti1Image:
    return nib.load(ixi_path)


def shuffled(paths: list[Path], seed: int = 0) -> list[Path]:
    paths = list(paths)
    random.Random(seed).shuffle(paths)
    return paths


def test_series_from_axial_ixi_volume(tmp_path, ixi_image):
    """Axial slices of the RAS-canonical IXI volume, files named and numbered out of geometric order."""
    sub = nib.as_closest_canonical(ixi_image).slicer[:, :, 30:50]
    volume = np.rint(sub.get_fdata()).astype(np.uint16)  # 0..~3500, a 12-bit-like MR range
    paths = write_dicom_series(volume, sub.affine, tmp_path, slice_thickness=5.0)
    instance_numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]
    assert instance_numbers != sorted(instance_numbers)

    array, meta = read_dicom_series(shuffled(paths))
    assert array.shape == volume.shape == (90, 120, 20) and array.dtype == np.float32
    assert np.array_equal(array, volume.astype(np.float32))
    np.testing.assert_allclose(np.array(meta.affine), sub.affine, atol=1e-4)
    np.testing.assert_allclose(meta.spacing, (2.0, 2.0, 2.0), atol=1e-6)  # not SliceThickness (5)
    first = pydicom.dcmread(meta.path)
    np.testing.assert_allclose(
        [float(v) for v in first.ImagePositionPatient],
        (np.diag([-1, -1, 1, 1]) @ sub.affine)[:3, 3],
        atol=1e-6,
    )
    assert meta.format == "dicom-series" and meta.modality == "MR" and meta.n_files == 20
    assert meta.patient_id == "MEDSYNTH-TEST" and meta.series_uid == str(first.SeriesInstanceUID)
    assert meta.bit_depth == 16 and meta.notes == ()


def test_series_from_left_handed_volume_is_reversed(tmp_path, ixi_image):
    """IXI's own P,S,R voxel order has a negative determinant: k comes back along +n (reversed)."""
    sub = ixi_image.slicer[:, :, 40:52]
    volume = np.rint(sub.get_fdata()).astype(np.uint16)
    paths = write_dicom_series(volume, sub.affine, tmp_path, seed=1)
    array, meta = read_dicom_series(paths)
    flip_k = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, volume.shape[2] - 1], [0, 0, 0, 1]])
    reversed_affine = sub.affine @ flip_k  # the same physical image, voxel order along +n
    assert np.linalg.det(sub.affine[:3, :3]) < 0 < np.linalg.det(np.array(meta.affine)[:3, :3])
    assert np.array_equal(array, volume[:, :, ::-1].astype(np.float32))
    np.testing.assert_allclose(np.array(meta.affine), reversed_affine, atol=1e-4)


def test_series_geometry_agrees_with_nibabel_dicom_wrapper(tmp_path, ixi_image):
    """Independent check of the convention: nibabel.nicom maps pixel (row, col) of each file to LPS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The DICOM readers are highly experimental ..."
        from nibabel.nicom import dicomwrappers
    sub = ixi_image.slicer[10:50, 20:80, 40:44]  # non-square, oblique-free but not axial
    paths = write_dicom_series(np.rint(sub.get_fdata()).astype(np.uint16), sub.affine, tmp_path)
    array, meta = read_dicom_series(paths)
    ours_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(meta.affine)
    for path in paths:
        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(path))
        i, j, k, _ = np.linalg.solve(ours_lps, wrapper.affine @ [0, 0, 0, 1])  # this file's voxel origin
        assert np.allclose([i, j], 0, atol=1e-6) and abs(k - round(k)) < 1e-6
        k = round(k)
        for row, col in [(0, 0), (7, 13), (39, 59)]:
            np.testing.assert_allclose(
                ours_lps @ [col, row, k, 1], wrapper.affine @ [row, col, 0, 1], atol=1e-4
            )
        assert np.array_equal(array[:, :, k].T, wrapper.get_data())


def test_series_with_rescale(tmp_path, ixi_image):
    """IXI stores uint8 with scl_slope; written as RescaleSlope the series gives the scaled values."""
    stored = np.asarray(ixi_image.dataobj.get_unscaled())[:, :, 40:46].astype(np.uint16)
    affine = ixi_image.slicer[:, :, 40:46].affine
    slope, intercept = float(ixi_image.dataobj.slope), -50.0
    assert slope != 1
    paths = write_dicom_series(stored, affine, tmp_path, rescale_slope=slope, rescale_intercept=intercept)
    array, meta = read_dicom_series(paths)
    expected = stored[:, :, ::-1] * slope + intercept  # left-handed source: k comes back reversed
    np.testing.assert_allclose(array, expected, rtol=1e-6, atol=1e-3)
    assert "rescale slope/intercept applied" in meta.notes


@pytest.fixture
def small_series(tmp_path, ixi_image) -> list[Path]:
    sub = nib.as_closest_canonical(ixi_image).slicer[20:60, 30:70, 40:46]
    return write_dicom_series(np.rint(sub.get_fdata()).astype(np.uint16), sub.affine, tmp_path / "series")


def edit(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def series_reason(paths) -> str:
    with pytest.raises(UnreadableFile) as info:
        read_dicom_series(paths)
    return info.value.reason


def test_series_slice_without_position(small_series):
    edit(small_series[2], ImagePositionPatient=None)
    assert series_reason(small_series) == "series slice without ImagePositionPatient/ImageOrientationPatient"


def test_series_missing_slice(small_series):
    positions = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in small_series]
    middle = small_series[int(np.argsort(positions)[3])]
    remaining = [p for p in small_series if p != middle]
    assert series_reason(remaining).startswith("non-uniform slice spacing (2 to 4 mm")


def test_series_mismatched_rows(small_series):
    ds = pydicom.dcmread(small_series[1])
    ds.set_pixel_data(ds.pixel_array[:-1], "MONOCHROME2", 16, generate_instance_uid=False)
    ds.save_as(small_series[1])
    assert series_reason(small_series) == "slices differ in size (Rows x Columns: 39x40, 40x40)"


def test_series_duplicate_positions(small_series):
    position = pydicom.dcmread(small_series[0]).ImagePositionPatient
    edit(small_series[1], ImagePositionPatient=position)
    assert series_reason(small_series) == "series has 2 slices at duplicate positions"


def test_series_repeated_file_of_same_instance_is_ignored(small_series, tmp_path):
    copy = tmp_path / "copy.dcm"
    shutil.copy(small_series[0], copy)
    array, meta = read_dicom_series([*small_series, copy])
    assert array.shape[2] == 6 and meta.n_files == 6
    assert "1 repeated files of the same instance ignored" in meta.notes


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"SeriesInstanceUID": "1.2.3.4"}, "files from 2 different series (SeriesInstanceUID)"),
        ({"ImageOrientationPatient": [1, 0, 0, 0, 0.9998, 0.02]}, "slices differ in ImageOrientationPatient"),
        ({"PixelSpacing": [2.0, 2.1]}, "slices differ in PixelSpacing"),
        ({"NumberOfFrames": 2}, "multi-frame DICOM (2 frames) is not supported yet"),
    ],
)
def test_series_inconsistent_slice(small_series, change, reason):
    edit(small_series[3], **change)
    assert series_reason(small_series) == reason


def test_series_tilted_stack_rejected(small_series):
    for path in small_series:  # axial slices; shift each sideways by 0.5 mm per mm of z (a tilt)
        x, y, z = (float(v) for v in pydicom.dcmread(path).ImagePositionPatient)
        edit(path, ImagePositionPatient=[x + 0.5 * z, y, z])
    assert series_reason(small_series) == (
        "slice positions are not along the slice normal (gantry tilt or sheared stack)"
    )


def test_series_needs_two_slices(small_series):
    assert series_reason(small_series[:1]) == "series has 1 slice; at least 2 are needed"
    with pytest.raises(ValueError):
        read_dicom_series([])


def test_series_slice_error_names_the_file(small_series):
    small_series[4].write_bytes(small_series[4].read_bytes()[:-100])  # cut inside the pixel data
    with pytest.raises(UnreadableFile) as info:
        read_dicom_series(small_series)
    assert info.value.path == str(small_series[4]) and info.value.reason == "truncated file"


def test_series_implicit_vr_monochrome1(tmp_path, ixi_image):
    """Slices in another transfer syntax and MONOCHROME1 go through the same per-slice pipeline."""
    sub = nib.as_closest_canonical(ixi_image).slicer[30:50, 40:60, 45:48]
    volume = np.rint(sub.get_fdata()).astype(np.uint16)
    paths = write_dicom_series(volume, sub.affine, tmp_path, bits_stored=12)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    array, meta = read_dicom_series(paths)
    assert np.array_equal(array, 4095 - volume.astype(np.float32))
    assert meta.notes == ("MONOCHROME1 inverted",) and meta.bit_depth == 12

"""DICOM export: conformance of every IOD (DX, SC, MR image, MR series), synthetic marking, identity,
pixel values in source units, series geometry, the fast encoder's byte equality, and negative tests
proving the conformance helpers can fail."""

from __future__ import annotations

import csv
import re

import numpy as np
import pydicom
import pytest

import medsynth
from medsynth.export.dicom import (
    MANUFACTURER,
    DicomEncoder,
    DicomItem,
    DicomSpec,
    build_dataset,
    make_uid,
    save_dataset,
    synthetic_identity,
)
from medsynth.sampling import read_sample
from tests.export.conformance import (
    assert_conformant,
    dcentvfy_errors,
    dciodvfy_errors,
    dcmftest_ok,
    strict_read,
)
from tests.export.conftest import export


def _rows(out):
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dx_sc_export(run2d, tmp_path_factory):
    return export(run2d, "dicom", tmp_path_factory.mktemp("dx") / "out")


@pytest.fixture(scope="module")
def mr_slices_export(run_mr_slices, tmp_path_factory):
    return export(run_mr_slices, "dicom", tmp_path_factory.mktemp("mr2d") / "out", n=3)


@pytest.fixture(scope="module")
def mr_series_export(run3d, tmp_path_factory):
    return export(run3d, "dicom", tmp_path_factory.mktemp("mr3d") / "out", n=2)


def _spec(kind, **kw):
    base = dict(kind=kind, rows=8, columns=6, pixel_spacing=(0.5, 0.75), nominal_spacing=False, signed=False,
                window=(100.0, 200.0), model_name="resgan", checkpoint_sha256="ab" * 32,
                modality="MR" if kind == "SC" else "", orientation=(1, 0, 0, 0, 1, 0) if kind == "MR" else None,
                slice_thickness=2.5 if kind == "MR" else None, label="CXR")
    base.update(kw)
    return DicomSpec(**base)


def _item(i, rows=8, cols=6, dtype=np.uint16):
    name, pid = synthetic_identity("ab" * 32, 3, i)
    px = (np.arange(rows * cols).reshape(rows, cols) * (i + 1) % 200).astype(dtype)
    return DicomItem(pixels=px, patient_name=name, patient_id=pid, study_uid=make_uid(False),
                     series_uid=make_uid(False), instance_uid=make_uid(False), frame_of_reference_uid=make_uid(False),
                     seed=3, index=i, instance_number=i + 1, position=(-1.25, 2.0, 0.5 * i), slice_location=0.5 * i)


@pytest.mark.parametrize("kind", ["DX", "MR", "SC"])
def test_fast_encoder_is_byte_identical_to_pydicom(kind):
    spec = _spec(kind)
    enc = DicomEncoder(spec, _item(0))
    for i in range(3):     # items other than the template one: every variable element really varies
        item = _item(i)
        assert enc.encode(item) == save_dataset(build_dataset(spec, item))
    signed = _spec(kind, signed=True) if kind != "DX" else None
    if signed:
        item = _item(1, dtype=np.int16)
        item.pixels[0, 0] = -5
        assert DicomEncoder(signed, item).encode(item) == save_dataset(build_dataset(signed, item))


def test_every_iod_passes_the_validators(dx_sc_export, mr_slices_export, mr_series_export):
    files = {out: sorted(out.rglob("*.dcm")) for out in (dx_sc_export, mr_slices_export, mr_series_export)}
    sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID for fs in files.values() for f in fs}
    assert sop == {"1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.4"}
    for fs in files.values():
        assert_conformant(fs)
    for series in sorted(p for p in mr_series_export.iterdir() if p.is_dir() and p.name != "samples"):
        assert dcentvfy_errors(sorted(series.glob("*.dcm"))) == []


def test_modality_rule_dx_for_xray_sc_for_mr_jpegs(dx_sc_export):
    rows = _rows(dx_sc_export)
    by_label = {r["label"]: r["modality"] for r in rows}
    assert by_label == {"CXR": "DX", "MRBrain": "SC/MR"}
    for r in rows:
        ds = pydicom.dcmread(dx_sc_export / r["file"])
        if r["label"] == "CXR":
            assert ds.Modality == "DX" and ds.PresentationIntentType == "FOR PRESENTATION"
            assert [float(v) for v in ds.ImagerPixelSpacing] == [1.0, 1.0]     # nominal: JPEGs had no spacing
            assert ds.RescaleSlope == 1 and ds.RescaleIntercept == 0
        else:
            assert ds.Modality == "MR" and ds.ConversionType == "SYN" and "ImageOrientationPatient" not in ds


def test_files_say_they_are_synthetic_and_carry_provenance(dx_sc_export, run2d):
    loaded = medsynth.load_generator(run2d, device="cpu")
    for r in _rows(dx_sc_export):
        ds = pydicom.dcmread(dx_sc_export / r["file"])
        assert ds.SyntheticData == "YES"
        eq = ds.ContributingEquipmentSequence[0]
        code = eq.PurposeOfReferenceCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == \
            ("109100", "DCM", "Synthesizing Equipment")
        assert eq.Manufacturer == MANUFACTURER and eq.SoftwareVersions == medsynth.__version__
        assert eq.ManufacturerModelName == "resgan"
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert ds.BurnedInAnnotation == "NO" and ds.RecognizableVisualFeatures == "NO"
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert ds.ContentQualification == "RESEARCH"
        assert loaded.checkpoint_sha256 in ds.DerivationDescription
        assert f"seed {r['seed']} index {r['index']}" in ds.DerivationDescription
        assert ds.Manufacturer[:2].upper() not in {"SI", "GE", "HI", "ME", "PH", "TO", "CA", "CP", "UI", "BR",
                                                   "MR", "HY"}   # dcm2niix's vendor prefixes
        assert str(ds.PatientName) == f"SYNTHETIC^MEDSYNTH {loaded.checkpoint_sha256[:8]}-0-{int(r['index']):06d}"
        assert ds.PatientID == r["patient_id"] and ds.PatientID.startswith("SYN-")
        assert ds.StudyDate == "" and ds.PatientBirthDate == ""


def test_one_study_per_synthetic_patient_and_fresh_or_deterministic_uids(run2d, tmp_path):
    a = export(run2d, "dicom", tmp_path / "a", "--deterministic-uids", n=3)
    b = export(run2d, "dicom", tmp_path / "b", "--deterministic-uids", n=3)
    c = export(run2d, "dicom", tmp_path / "c", n=3)

    def uids(out):
        out_ = []
        for f in sorted(out.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            out_.append((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PatientID))
        return out_

    ua, ub, uc = uids(a), uids(b), uids(c)
    assert ua == ub                                          # same checkpoint, seed, index -> same UIDs
    assert {u[0] for u in ua}.isdisjoint({u[0] for u in uc})  # fresh UIDs by default
    assert [u[3] for u in ua] == [u[3] for u in uc]           # patient identity depends on the seed only
    assert len({u[0] for u in ua}) == len({u[3] for u in ua}) == 3
    assert all(re.fullmatch(r"2\.25\.\d+", u) for row in ua for u in row[:3])


def test_pixels_are_source_units_of_the_checked_samples(dx_sc_export, run2d):
    loaded = medsynth.load_generator(run2d, device="cpu")
    m = loaded.mapping
    for r in _rows(dx_sc_export):
        ds = pydicom.dcmread(dx_sc_export / r["file"])
        expected = np.rint(m.inverse(read_sample(dx_sc_export / "samples" / r["sample_file"]).astype(np.float64)))
        np.testing.assert_array_equal(ds.pixel_array, expected.astype(np.uint16))
        assert ds.pixel_array.max() <= 255                     # MedNIST JPEG units 0..255 (window [0, 255])
        assert float(ds.WindowCenter) == 127.5 and float(ds.WindowWidth) == 255


def test_mr_slices_use_the_training_plane_and_spacing(mr_slices_export, run_mr_slices):
    geo = medsynth.load_generator(run_mr_slices, device="cpu").state["geometry"]
    for f in sorted(mr_slices_export.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
        assert [float(v) for v in ds.ImageOrientationPatient] == geo["slice_iop"]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(geo["spacing"], abs=1e-9)
        assert ds.ScanningSequence == "RM" and ds.MRAcquisitionType == "2D"


def test_mr_series_geometry_steps_along_the_normal(mr_series_export, run3d):
    geo = medsynth.load_generator(run3d, device="cpu").state["geometry"]
    sx, sy, sz = geo["spacing"]
    series = sorted(p for p in mr_series_export.iterdir() if p.is_dir() and p.name != "samples")
    assert len(series) == 2
    seen_series = set()
    for folder in series:
        dss = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
        assert len(dss) == 16
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
            assert len({getattr(d, key) for d in dss}) == 1, key
        seen_series.add(dss[0].SeriesInstanceUID)
        assert len({d.SOPInstanceUID for d in dss}) == 16
        iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        pos = np.array([[float(v) for v in d.ImagePositionPatient] for d in dss])
        steps = np.diff(pos, axis=0)
        np.testing.assert_allclose(steps, np.tile(normal * sz, (15, 1)), atol=1e-6)
        assert [int(d.InstanceNumber) for d in dss] == list(range(1, 17))
        loc = [float(d.SliceLocation) for d in dss]
        np.testing.assert_allclose(loc, pos @ normal, atol=1e-6)
        assert all(np.diff(loc) > 0)
        assert [float(v) for v in dss[0].PixelSpacing] == pytest.approx([sy, sx])
        assert float(dss[0].SliceThickness) == pytest.approx(sz)
        assert dss[0].MRAcquisitionType == "3D"
    assert len(seen_series) == 2


def test_narrow_or_negative_windows_are_refused_clearly():
    from medsynth.data.transforms import IntensityMapping
    from medsynth.export import ExportError, stored_values

    x = np.zeros((2, 2), np.float32)
    with pytest.raises(ExportError, match="spans fewer than 64 source units"):
        stored_values(x, IntensityMapping(0.0, 1.0), signed_ok=True)
    with pytest.raises(ExportError, match="DX pixels cannot hold"):
        stored_values(x, IntensityMapping(-1000.0, 1000.0), signed_ok=False)
    vals, signed = stored_values(np.array([[-1.0, 1.0]], np.float32), IntensityMapping(-1000.0, 1000.0), True)
    assert signed and vals.dtype == np.int16 and vals.tolist() == [[-1000, 1000]]


# --------------------------------------------------------------------------------------------
# negative tests: the helpers catch broken files


@pytest.fixture(scope="module")
def good_mr(mr_series_export):
    series = sorted(p for p in mr_series_export.iterdir() if p.is_dir() and p.name != "samples")[0]
    return sorted(series.glob("*.dcm"))


def test_helpers_fail_on_a_missing_attribute(good_mr, tmp_path):
    ds = pydicom.dcmread(good_mr[3])
    del ds.PixelSpacing
    ds.save_as(tmp_path / "x.dcm")
    assert any("PixelSpacing" in e for e in dciodvfy_errors(tmp_path / "x.dcm"))
    assert dciodvfy_errors(good_mr[3]) == []


@pytest.mark.parametrize("iop, words", [([1, 0, 0, 1, 0, 0], "not orthogonal"), ([2, 0, 0, 0, 1, 0], "not unit")])
def test_helpers_fail_on_a_bad_orientation(good_mr, tmp_path, iop, words):
    ds = pydicom.dcmread(good_mr[3])
    ds.ImageOrientationPatient = iop
    ds.save_as(tmp_path / "x.dcm")
    assert any(words in e for e in dciodvfy_errors(tmp_path / "x.dcm"))


def test_helpers_fail_on_an_inconsistent_series(good_mr, tmp_path):
    ds = pydicom.dcmread(good_mr[4])
    ds.PatientName = "Other^Name"
    ds.save_as(tmp_path / "x.dcm")
    errors = dcentvfy_errors([good_mr[3], tmp_path / "x.dcm"])
    assert any("PatientName" in e for e in errors)
    assert dcentvfy_errors(good_mr[3:5]) == []


def test_helpers_fail_on_a_file_without_preamble_or_a_bad_value(good_mr, tmp_path):
    raw = good_mr[0].read_bytes()
    (tmp_path / "nopreamble.dcm").write_bytes(raw[132:])
    assert not dcmftest_ok(tmp_path / "nopreamble.dcm")
    assert dcmftest_ok(good_mr[0])
    ds = pydicom.dcmread(good_mr[0])
    ds["SOPInstanceUID"].value = "not-a-uid!"
    ds.save_as(tmp_path / "baduid.dcm")
    with pytest.raises(ValueError):
        strict_read(tmp_path / "baduid.dcm")


def test_a_jpeg_output_model_exports_files_marked_lossy(tmp_path, shared_data):
    """model.jpeg_output images went through a lossy JPEG round trip: DICOM says so (LossyImageCompression 01,
    method ISO_10918_1, the training files' ratio), the files still pass the validators, and provenance.json
    records the codec."""
    import json
    import shutil

    from medsynth.training.checkpoint import load_checkpoint
    from medsynth.training.loop import train
    from tests.conftest import MEDNIST
    from tests.training.conftest import tiny_config

    (tmp_path / "data" / "CXR").mkdir(parents=True)
    for f in sorted((MEDNIST / "CXR").iterdir())[:24]:
        shutil.copy(f, tmp_path / "data" / "CXR" / f.name)
    res = train(tiny_config(tmp_path / "data", **{"data.image_size": [64, 64], "model.jpeg_output": True,
                                                  "train.steps": 1}), tmp_path / "run", progress=False)
    codec = load_checkpoint(res.checkpoint)["jpeg_output"]
    train_keys = json.loads((tmp_path / "run" / "split.json").read_text())["train"]
    assert codec["files"] == len(train_keys) and 2 < codec["ratio"] < 8       # ~1 KB files of 64x64 pixels
    out = export(tmp_path / "run", "dicom", tmp_path / "out", n=2)
    files = sorted(out.glob("*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(codec["ratio"], abs=0.01)
    assert_conformant(files)
    assert json.loads((out / "provenance.json").read_text())["jpeg_output"] == codec
    spec = _spec("DX", lossy_jpeg_ratio=codec["ratio"])
    item = _item(1)
    assert DicomEncoder(spec, _item(0)).encode(item) == save_dataset(build_dataset(spec, item))

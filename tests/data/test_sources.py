import csv
import shutil
from collections import Counter

import pytest

from medsynth.data.sources import (
    DataError,
    Split,
    discover,
    patient_hash,
    require_usable,
    resolve_data_path,
    split_by_patient,
)
from tests.conftest import IXI, MEDNIST, tree_state

MEDNIST_COUNTS = {"CXR": 400, "MRBrain": 400, "MRBreast": 500, "CTAbd": 500, "CTChest": 500, "CTHead": 500}


def test_mednist_class_folders_match_the_real_counts(shared_data):
    disc = discover(MEDNIST)
    assert disc.layout == "class-folders"
    assert Counter(r.label for r in disc.records) == MEDNIST_COUNTS
    assert not disc.skipped
    assert {r.kind for r in disc.records} == {"image"} and {r.format for r in disc.records} == {"jpeg"}
    # MedNIST has no patient IDs: one patient per file, and said so
    assert {r.patient_source for r in disc.records} == {"file"}


def test_ixi_is_flat_with_patient_ids_from_file_names(shared_data):
    disc = discover(IXI)
    assert disc.layout == "flat"
    assert len(disc.records) == 150 and {r.kind for r in disc.records} == {"volume"}
    assert disc.ignored == 1          # demographics.csv
    r = next(r for r in disc.records if r.key == "IXI012-HH-1211_T1.nii.gz")
    assert (r.patient_id, r.patient_source, r.label) == ("IXI012", "filename", None)


def test_label_filter_and_unknown_label(shared_data):
    disc = discover(MEDNIST, labels=["CXR"])
    assert len(disc.records) == 400 and disc.labels == ["CXR"]
    with pytest.raises(DataError, match="label\\(s\\) Knee not found; the dataset has CTAbd"):
        discover(MEDNIST, labels=["Knee"])


def test_bundled_sample_resolves():
    disc = discover("sample:mednist")
    assert Counter(r.label for r in disc.records) == {"CXR": 300, "MRBrain": 300}
    assert len(discover("sample:ixi").records) == 8
    with pytest.raises(DataError, match="unknown bundled sample 'knee'"):
        resolve_data_path("sample:knee")


def test_empty_missing_and_unreadable_folders(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder is empty"):
        discover(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.dcm").write_bytes(b"this is not DICOM at all" * 10)
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)   # a truncated PNG: found, read later
    (bad / "c.bin").write_bytes(b"\0\1\2")
    disc = discover(bad)
    reasons = dict(disc.skipped)
    assert reasons["a.dcm"] == "not a DICOM file"
    assert reasons["c.bin"] == "not an image file"
    assert [r.key for r in disc.records] == ["b.png"]
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(bad / "a.dcm", only_bad / "a.dcm")
    with pytest.raises(DataError, match=r"no readable image: 1 file\(s\) skipped \(1 not a DICOM file\)"):
        require_usable(discover(only_bad))


def test_dicom_without_pixel_data_is_skipped_with_its_sop_class(tmp_path):
    from pydicom.data import get_testdata_file

    for name in ("rtplan.dcm", "test-SR.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    disc = discover(tmp_path)
    reasons = dict(disc.skipped)
    assert reasons["rtplan.dcm"] == "DICOM without pixel data (RT Plan Storage)"
    assert reasons["test-SR.dcm"].startswith("DICOM without pixel data (")
    assert [r.key for r in disc.records] == ["MR_small.dcm"]
    assert disc.records[0].patient_source == "dicom"


def test_duplicate_files_are_skipped_and_named(tmp_path, shared_data):
    src = sorted((MEDNIST / "CXR").iterdir())[:3]
    for lab in ("A", "B"):
        (tmp_path / lab).mkdir()
    for f in src:
        shutil.copy(f, tmp_path / "A" / f.name)
    shutil.copy(src[0], tmp_path / "B" / "copy.jpg")
    disc = discover(tmp_path)
    assert dict(disc.skipped) == {"B/copy.jpg": f"duplicate of A/{src[0].name}"}
    assert len(disc.records) == 3


def _manifest(tmp_path, rows, header=("path", "label", "patient_id", "split")):
    p = tmp_path / "manifest.csv"
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return p


def test_manifest_labels_patients_and_missing_files(tmp_path, shared_data):
    files = sorted((MEDNIST / "CXR").iterdir())[:12]
    rows = [(str(f), "normal" if i % 2 else "pneumonia", f"P{i // 3}", "") for i, f in enumerate(files)]
    rows.append(("does/not/exist.png", "normal", "P9", ""))
    disc = discover("", manifest=_manifest(tmp_path, rows))
    assert disc.layout == "manifest"
    assert len(disc.records) == 12
    assert dict(disc.skipped) == {"does/not/exist.png": "listed in the manifest but missing"}
    assert {r.patient_id for r in disc.records} == {"P0", "P1", "P2", "P3"}
    assert {r.patient_source for r in disc.records} == {"manifest"}
    assert disc.labels == ["normal", "pneumonia"]


def test_manifest_paths_are_relative_to_the_manifest(tmp_path, shared_data):
    f = sorted((MEDNIST / "CXR").iterdir())[0]
    (tmp_path / "img").mkdir()
    shutil.copy(f, tmp_path / "img" / "x.jpg")
    disc = discover("", manifest=_manifest(tmp_path, [("img/x.jpg", "a", "p", "")]))
    assert disc.records[0].files == (str(tmp_path / "img" / "x.jpg"),)


@pytest.mark.parametrize("rows, header, expect", [
    ([("a.jpg",)], ("file",), "needs a 'path' column"),
    ([], ("path", "label"), "lists no files"),
    ([("{f}", "a", "p", "test")], None, "split must be one of train, holdout; got 'test'"),
    ([("{f}", "a", "p", "train"), ("{g}", "a", "p", "holdout")], None, "patient 'p' is listed in both"),
])
def test_bad_manifests(tmp_path, shared_data, rows, header, expect):
    f, g = sorted((MEDNIST / "CXR").iterdir())[:2]
    rows = [tuple(c.format(f=f, g=g) for c in r) for r in rows]
    p = _manifest(tmp_path, rows, header or ("path", "label", "patient_id", "split"))
    with pytest.raises(DataError, match=expect):
        discover("", manifest=p)


def test_patient_pattern_overrides_other_sources(shared_data):
    disc = discover(IXI, patient_pattern=r"-(HH)-")
    assert {r.patient_id for r in disc.records} == {"HH"}
    assert {r.patient_source for r in disc.records} == {"pattern"}


# --------------------------------------------------------------------------------------------
# split


def _records_with_several_per_patient(tmp_path):
    files = sorted((MEDNIST / "CXR").iterdir())[:60] + sorted((MEDNIST / "MRBrain").iterdir())[:60]
    rows = [(str(f), f.parent.name, f"P{i // 4}", "") for i, f in enumerate(files)]   # 4 images a patient
    return discover("", manifest=_manifest(tmp_path, rows)).records


def test_split_is_patient_level_deterministic_and_stratified(tmp_path, shared_data):
    records = _records_with_several_per_patient(tmp_path)
    s = split_by_patient(records, 0.25, seed=3)
    pid = {r.key: r.patient_id for r in records}
    train_p = {pid[k] for k in s.train}
    hold_p = {pid[k] for k in s.holdout}
    assert train_p and hold_p and not train_p & hold_p
    assert sorted(s.train + s.holdout) == sorted(pid)
    assert len(hold_p) == round(0.25 * 15) * 2   # 15 patients per label, stratified
    assert {patient_hash(p) for p in hold_p} == set(s.holdout_patients)
    # order of the records does not matter; the seed does
    assert split_by_patient(list(reversed(records)), 0.25, seed=3) == s
    assert split_by_patient(records, 0.25, seed=4).holdout != s.holdout


def test_split_never_writes_patient_ids(tmp_path, shared_data):
    records = _records_with_several_per_patient(tmp_path)
    s = split_by_patient(records, 0.2, seed=0)
    text = s.to_json()
    assert '"P1"' not in text and "P1" not in s.train_patients
    s.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == s


def test_manifest_fixed_splits_are_honoured(tmp_path, shared_data):
    files = sorted((MEDNIST / "CXR").iterdir())[:10]
    rows = [(str(f), "a", f"P{i}", "holdout" if i < 2 else "") for i, f in enumerate(files)]
    records = discover("", manifest=_manifest(tmp_path, rows)).records
    s = split_by_patient(records, 0.0, seed=0)
    assert sorted(s.holdout) == sorted(r.key for r in records if r.patient_id in ("P0", "P1"))


def test_discovery_never_modifies_the_data_folder(tmp_path, shared_data):
    before = tree_state(IXI)
    discover(IXI)
    assert tree_state(IXI) == before

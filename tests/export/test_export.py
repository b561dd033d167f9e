"""The export command: modality rule, output folder rules, interrupted exports, bad input, and the leak
test (nothing from training DICOM headers reaches any exported byte)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medsynth.cli import main
from medsynth.export import ExportError, decide_modality
from tests.export.conftest import export


def _state(mode="2d", iop=None):
    return {"geometry": {"mode": mode, "slice_iop": iop, "spacing": None}}


@pytest.mark.parametrize("label, state, override, expected", [
    ("CXR", _state(), None, ("DX", "DX")),
    ("Hand", _state(), None, ("DX", "DX")),
    ("", _state(), None, ("DX", "DX")),
    ("MRBrain", _state(), None, ("SC", "MR")),
    ("BreastMRI", _state(), None, ("SC", "MR")),
    ("HeadCT", _state(), None, ("SC", "CT")),
    ("ct_chest", _state(), None, ("SC", "CT")),
    ("Abdomen", _state(), None, ("DX", "DX")),                    # "ct" inside a word is not a modality
    ("", _state(iop=[1, 0, 0, 0, 1, 0]), None, ("MR", "MR")),
    ("", _state("3d"), None, ("MR", "MR")),
    ("CXR", _state(), "SC", ("SC", "OT")),
    ("MRBrain", _state(), "MR", ("MR", "MR")),
])
def test_modality_rule(label, state, override, expected):
    assert decide_modality(state, label, override) == expected


def test_dx_override_refused_for_volumes():
    with pytest.raises(ExportError, match="--modality DX is for 2D images"):
        decide_modality(_state("3d"), "", "DX")


def test_secondary_capture_and_modality_options(run2d, tmp_path):
    import pydicom

    out = export(run2d, "dicom", tmp_path / "sc", "--secondary-capture", n=2)
    assert {pydicom.dcmread(f).SOPClassUID for f in out.glob("*.dcm")} == {"1.2.840.10008.5.1.4.1.1.7"}
    out = export(run2d, "dicom", tmp_path / "mr", "--modality", "MR", n=2)
    dss = [pydicom.dcmread(f) for f in sorted(out.glob("*.dcm"))]
    assert {d.Modality for d in dss} == {"MR"} and [float(v) for v in dss[0].ImageOrientationPatient] == \
        [1, 0, 0, 0, 1, 0]
    assert json.loads((out / "provenance.json").read_text())["geometry"]["orientation_nominal"] is True


def test_output_folder_rules(run2d, tmp_path, capsys):
    out = export(run2d, "png", tmp_path / "out", n=1)
    base = ["export", str(run2d), "--format", "png", "-n", "1", "--skip-privacy-check", "--out", str(out)]
    assert main(base) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    (out / "stale.png").write_bytes(b"old")
    assert main([*base, "--overwrite"]) == 0
    assert not (out / "stale.png").exists()                       # a previous export is replaced whole
    assert not (tmp_path / ".out.previous-export").exists()      # and the copy kept while it ran is gone
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert main([*base[:-1], str(foreign), "--overwrite"]) == 2
    assert "holds no medsynth export" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert main([*base[:-1], str(run2d)]) == 2                    # would overwrite the run's checkpoints
    assert (run2d / "checkpoints").is_dir()


def test_a_bad_label_is_refused_before_overwrite_clears_the_previous_export(run2d, tmp_path, capsys):
    out = export(run2d, "png", tmp_path / "out", n=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["export", str(run2d), "--format", "png", "-n", "1", "--skip-privacy-check", "--out", str(out),
                 "--overwrite", "--label", "Hand"]) == 2
    err = capsys.readouterr().err
    assert "--label: unknown label 'Hand'" in err and "Traceback" not in err, err[-1000:]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _aside(out):
    return out.parent / f".{out.name}.previous-export"


def test_overwrite_keeps_the_previous_export_when_the_privacy_check_cannot_run(run2d, tmp_path, capsys,
                                                                               monkeypatch):
    import medsynth.privacy as privacy

    out = export(run2d, "png", tmp_path / "out", n=2)
    before = _files(out)

    def cannot_run(run_dir, samples_dir, **kw):
        raise privacy.PrivacyError("the training images are gone")

    monkeypatch.setattr(privacy, "check_run", cannot_run)
    assert main(["export", str(run2d), "--format", "png", "-n", "1", "--out", str(out), "--overwrite"]) != 0
    err = capsys.readouterr().err
    assert "the privacy check could not run" in err and "previous export is back" in err, err[-1000:]
    assert _files(out) == before and not _aside(out).exists()


def test_overwrite_keeps_the_previous_export_when_interrupted(run2d, tmp_path, monkeypatch):
    from medsynth.export import png

    out = export(run2d, "png", tmp_path / "out", n=2)
    before = _files(out)
    monkeypatch.setattr(png, "encode_png", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["export", str(run2d), "--format", "png", "-n", "3", "--skip-privacy-check", "--out", str(out),
                 "--overwrite"]) == 130
    assert _files(out) == before and not _aside(out).exists()


def test_a_killed_overwrite_is_undone_by_the_next_export(run2d, tmp_path, capsys):
    out = export(run2d, "png", tmp_path / "out", n=2)
    before = _files(out)
    # what a process killed mid-export leaves: the previous export aside, a partial new one in place
    out.rename(_aside(out))
    out.mkdir()
    (out / ".export-incomplete").write_text("in progress")
    (out / "sample_0_000000.png").write_bytes(b"half")
    base = ["export", str(run2d), "--format", "png", "-n", "1", "--skip-privacy-check", "--out", str(out)]
    assert main(base) == 2                                        # the previous export is back, so not empty
    assert "putting the previous export back" in capsys.readouterr().err
    assert _files(out) == before and not _aside(out).exists()
    # killed after the new export completed, while deleting the old one: the old one goes
    shutil.copytree(out, _aside(out))
    assert main([*base, "--overwrite"]) == 0
    assert not _aside(out).exists() and len(list(out.glob("*.png"))) == 1


def test_default_output_is_run_export(run2d, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run2d, run, ignore=shutil.ignore_patterns("export", "privacy.json"))
    assert main(["export", str(run), "--format", "png", "-n", "1", "--skip-privacy-check"]) == 0
    assert (run / "export" / "manifest.csv").is_file() and (run / "export" / "sample_0_000000.png").is_file()


def test_interrupted_export_leaves_no_partial_file_and_reruns(run2d, tmp_path, monkeypatch):
    from medsynth.export import dicom

    out = tmp_path / "out"
    real = dicom.DicomEncoder.encode
    calls = {"n": 0}

    def dying(self, item):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, item)

    monkeypatch.setattr(dicom.DicomEncoder, "encode", dying)
    rc = main(["export", str(run2d), "--format", "dicom", "-n", "4", "--skip-privacy-check", "--out", str(out)])
    assert rc == 130
    assert (out / ".export-incomplete").exists() and not (out / "manifest.csv").exists()
    assert sorted(p.name for p in out.glob("*.dcm")) == ["sample_0_000000.dcm", "sample_0_000001.dcm"]
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(dicom.DicomEncoder, "encode", real)
    rc = main(["export", str(run2d), "--format", "dicom", "-n", "4", "--skip-privacy-check", "--out", str(out)])
    assert rc == 0                                                # no --overwrite needed to redo it
    assert len(list(out.glob("*.dcm"))) == 4 and not (out / ".export-incomplete").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "png"], "give either -n N"),
    (["--format", "png", "-n", "0"], "-n must be at least 1"),
    (["--format", "png", "-n", "1", "--from-samples", "x"], "not both or neither"),
    (["--format", "dicom", "-n", "1", "--bids"], "--bids applies to --format nifti only"),
    (["--format", "dicom", "-n", "1", "--secondary-capture", "--modality", "DX"], "contradict"),
    (["--format", "png", "--from-samples", "/nonexistent/dir"], "no such folder"),
    (["--format", "nifti", "-n", "1", "--bids", "--bids-suffix", "T1w!"], "alphanumeric"),
])
def test_bad_input_is_one_clear_error(run2d, tmp_path, capsys, args, message):
    assert main(["export", str(run2d), *args, "--skip-privacy-check", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_not_a_run_and_foreign_samples(tmp_path, run2d, run3d, capsys):
    assert main(["export", str(tmp_path), "--format", "png", "-n", "1"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    samples = export(run3d, "nifti", tmp_path / "n", n=1) / "samples"
    assert main(["export", str(run2d), "--format", "png", "--from-samples", str(samples), "--skip-privacy-check",
                 "--out", str(tmp_path / "o")]) == 2
    assert "which is not in" in capsys.readouterr().err


def test_json_prints_one_object(run2d, tmp_path, capsys):
    assert main(["export", str(run2d), "--format", "png", "-n", "2", "--skip-privacy-check", "--json",
                 "--out", str(tmp_path / "o")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 2 and summary["format"] == "png"


# --------------------------------------------------------------------------------------------
# leak test

SECRETS = {
    "PatientName": "Quillfeather^Zenobia", "PatientID": "PID-83749261", "PatientBirthDate": "19470311",
    "StudyDate": "20190817", "SeriesDate": "20190818", "AcquisitionDate": "20190819",
    "InstitutionName": "Saint Ophelia Memorial Hospital", "ReferringPhysicianName": "Drumblewick^Horatio",
    "AccessionNumber": "ACC99317755", "StudyID": "STUDY55123", "OperatorsName": "Pemberton^Ursula",
    "InstitutionAddress": "17 Larkspur Lane, Glimmerton",
}


@pytest.fixture(scope="module")
def dicom_trained_run(tmp_path_factory, shared_data):
    """A tiny model trained on DX DICOM files whose headers carry made-up identities and dates."""
    from PIL import Image
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    from medsynth.training.loop import train
    from tests.conftest import MEDNIST
    from tests.data.dicom_helpers import make_image_dataset
    from tests.training.conftest import tiny_config

    root = tmp_path_factory.mktemp("dicom_src")
    (root / "CXR").mkdir()
    jpgs = sorted((MEDNIST / "CXR").iterdir())[:30]
    for i, jpg in enumerate(jpgs):
        px = np.asarray(Image.open(jpg).convert("L"), dtype=np.uint16)
        patient = i % 5
        attrs = dict(SECRETS, PatientID=f"{SECRETS['PatientID']}{patient}",
                     PatientName=f"{SECRETS['PatientName']}{patient}")
        ds = make_image_dataset(px, modality="DX", sop_class_uid=DigitalXRayImageStorageForPresentation,
                                bits_stored=8, **{k: v for k, v in attrs.items() if k != "PatientID"},
                                patient_id=attrs["PatientID"], ImagerPixelSpacing=[0.5, 0.5],
                                PixelSpacing=[0.5, 0.5])
        ds.save_as(root / "CXR" / f"img{i:03d}.dcm", enforce_file_format=True)
    run = tmp_path_factory.mktemp("runs") / "dicomrun"
    train(tiny_config(root, **{"train.steps": 2}), run, progress=False)
    return run


def test_nothing_from_training_headers_reaches_any_exported_byte(dicom_trained_run, tmp_path):
    outs = [export(dicom_trained_run, "dicom", tmp_path / "dcm", n=3),
            export(dicom_trained_run, "nifti", tmp_path / "nii", "--bids", n=3),
            export(dicom_trained_run, "png", tmp_path / "png", "--bits", 8, n=3)]
    needles = set()
    for v in SECRETS.values():
        for form in (v, v.replace("^", " "), v.upper(), v.lower()):
            needles.add(form.encode())
            needles.add(form.encode("utf-16-le"))
    needles |= {v.split("^")[0].encode() for v in SECRETS.values()}     # family names alone
    files = [p for out in outs for p in out.rglob("*") if p.is_file()]
    assert len(files) > 20
    for p in files:
        data = p.read_bytes()
        if p.suffix == ".gz":
            import gzip

            data += gzip.decompress(data)
        for needle in needles:
            assert needle not in data, (p, needle)
    # the spacing of the training files does reach the export (geometry is not identity)
    prov = json.loads((tmp_path / "dcm" / "provenance.json").read_text())
    assert prov["geometry"]["spacing_nominal"] is False


def test_provenance_says_which_checkpoint_a_fine_tuned_model_started_from(run2d, tmp_path, mednist_small):
    from medsynth.training.checkpoint import file_sha256, load_checkpoint
    from medsynth.training.loop import train
    from tests.training.conftest import tiny_config

    src = train(tiny_config(mednist_small, **{"data.labels": ["MRBrain"], "train.steps": 2}), tmp_path / "src",
                progress=False)
    tuned = tmp_path / "tuned"
    train(tiny_config(mednist_small, **{"data.labels": ["CXR"], "train.steps": 1,
                                        "train.init_from": str(tmp_path / "src")}), tuned, progress=False)
    prov = json.loads((export(tuned, "png", tmp_path / "png", n=1) / "provenance.json").read_text())
    assert prov["fine_tuned_from"] == {"checkpoint_sha256": file_sha256(src.checkpoint), "training_step": 2,
                                       "data_fingerprint": load_checkpoint(src.checkpoint)["data_fingerprint"]}
    assert prov["fine_tuned_from"]["data_fingerprint"] != prov["data_fingerprint"]
    assert "MRBrain" not in json.dumps(prov["fine_tuned_from"])         # no label names or paths of the source
    plain = json.loads((export(run2d, "png", tmp_path / "plain", n=1) / "provenance.json").read_text())
    assert plain["fine_tuned_from"] is None

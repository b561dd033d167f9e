"""The privacy gate, with hand-written privacy.json files following the medsynth-privacy/1 schema:
pass, one sample flagged, fail verdict, no file, another folder, sha256 mismatch, --skip-privacy-check,
and export -n calling medsynth.privacy.check_run (present, or missing)."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import types

import pytest

from medsynth.cli import main
from medsynth.sampling import load_generator, write_samples


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_privacy(run, samples_dir, verdict="pass", flagged=(), skip=(), tamper=()):
    """RUN/privacy.json as medsynth privacy writes it (schema keys export relies on)."""
    samples = []
    for p in sorted(samples_dir.glob("sample_*")):
        if p.name in skip:
            continue
        digest = "0" * 64 if p.name in tamper else _sha(p)
        samples.append({"file": p.name, "sha256": digest, "passed": p.name not in flagged,
                        "memorized": p.name in flagged, "nn_similarity": 0.5})
    report = {"schema": "medsynth-privacy/1", "verdict": verdict, "checkpoint_sha256": None,
              "synthetic_dir": str(samples_dir.resolve()), "samples": samples, "limits": {}, "memorization": {},
              "membership": {}}
    (run / "privacy.json").write_text(json.dumps(report))
    return report


@pytest.fixture
def gated(run2d, tmp_path):
    """A run copy-free setup: samples generated into tmp, privacy.json removed after the test."""
    samples = tmp_path / "samples"
    write_samples(load_generator(run2d, device="cpu"), samples, 4, seed=5)
    yield run2d, samples
    (run2d / "privacy.json").unlink(missing_ok=True)


def _export(run, samples, out, *extra):
    return main(["export", str(run), "--format", "png", "--from-samples", str(samples), "--out", str(out), *extra])


def _manifest(out):
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_pass_exports_every_sample_marked_passed(gated, tmp_path):
    run, samples = gated
    write_privacy(run, samples)
    assert _export(run, samples, tmp_path / "out") == 0
    rows = _manifest(tmp_path / "out")
    assert [r["privacy"] for r in rows] == ["passed"] * 4
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["privacy"]["verdict"] == "pass" and prov["privacy"]["skip_privacy_check"] is False
    assert prov["privacy"]["privacy_json_sha256"] == _sha(run / "privacy.json")


def test_flagged_samples_are_left_out_and_counted(gated, tmp_path, capsys):
    run, samples = gated
    write_privacy(run, samples, flagged={"sample_5_000001.png"})
    assert _export(run, samples, tmp_path / "out") == 0
    rows = _manifest(tmp_path / "out")
    assert [r["sample_file"] for r in rows] == ["sample_5_000000.png", "sample_5_000002.png", "sample_5_000003.png"]
    assert "1 flagged sample(s) left out" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["privacy"]["left_out_failed"] == 1


@pytest.mark.parametrize("case, message", [
    ("missing", r"4 sample\(s\) in .* have not passed a privacy check: .*privacy.json does not exist"),
    ("fail", r"privacy check of .* failed \(verdict 'fail'"),
    ("other_dir", r"checked another folder"),
    ("tampered", r"1 of 4 sample\(s\) .* were not checked \(1 changed since the check \(sha256 differs\)"),
    ("unlisted", r"2 of 4 sample\(s\) .* were not checked \(2 not listed in"),
])
def test_refusals_say_which_and_how_to_check(gated, tmp_path, capsys, case, message):
    run, samples = gated
    if case == "fail":
        write_privacy(run, samples, verdict="fail")
    elif case == "other_dir":
        write_privacy(run, samples)
        report = json.loads((run / "privacy.json").read_text())
        report["synthetic_dir"] = str(tmp_path / "elsewhere")
        (run / "privacy.json").write_text(json.dumps(report))
    elif case == "tampered":
        write_privacy(run, samples, tamper={"sample_5_000002.png"})
    elif case == "unlisted":
        write_privacy(run, samples, skip={"sample_5_000000.png", "sample_5_000003.png"})
    assert _export(run, samples, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("medsynth: error: ") and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert "--skip-privacy-check" in err
    if case != "fail":
        assert f"medsynth privacy {run} --synthetic {samples}" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_sample_changed_after_the_check_is_caught(gated, tmp_path):
    run, samples = gated
    write_privacy(run, samples)
    victim = samples / "sample_5_000002.png"
    victim.write_bytes(victim.read_bytes() + b"\0")     # bytes differ from what was checked
    assert _export(run, samples, tmp_path / "out") == 2


def test_skip_flag_exports_and_records_unchecked_and_failed(gated, tmp_path):
    run, samples = gated
    assert _export(run, samples, tmp_path / "a", "--skip-privacy-check") == 0
    assert [r["privacy"] for r in _manifest(tmp_path / "a")] == ["unchecked"] * 4
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert prov["privacy"]["skip_privacy_check"] is True and prov["options"]["skip_privacy_check"] is True
    assert prov["privacy"]["per_file"] == {f"sample_5_00000{i}.png": "unchecked" for i in range(4)}
    write_privacy(run, samples, verdict="fail")
    assert _export(run, samples, tmp_path / "b", "--skip-privacy-check") == 0
    assert [r["privacy"] for r in _manifest(tmp_path / "b")] == ["failed"] * 4


def test_export_n_refuses_without_the_privacy_module(run2d, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "medsynth.privacy", None)     # import raises ImportError
    rc = main(["export", str(run2d), "--format", "png", "-n", "2", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "medsynth.privacy cannot be imported" in capsys.readouterr().err
    assert main(["export", str(run2d), "--format", "png", "-n", "2", "--out", str(tmp_path / "out2"),
                 "--skip-privacy-check"]) == 0


def test_export_n_calls_check_run_on_its_staging_folder(run2d, tmp_path, monkeypatch):
    calls = []

    class PrivacyError(ValueError):
        pass

    def check_run(run_dir, synthetic_dir=None, **kw):
        calls.append((str(run_dir), str(synthetic_dir)))
        return write_privacy(run_dir, synthetic_dir, flagged={"sample_0_000000.png"})

    fake = types.ModuleType("medsynth.privacy")
    fake.check_run, fake.PrivacyError = check_run, PrivacyError
    monkeypatch.setitem(sys.modules, "medsynth.privacy", fake)
    out = tmp_path / "out"
    try:
        assert main(["export", str(run2d), "--format", "dicom", "-n", "3", "--out", str(out)]) == 0
    finally:
        (run2d / "privacy.json").unlink(missing_ok=True)
    assert calls == [(str(run2d), str(out / "samples"))]
    rows = _manifest(out)
    assert [r["sample_file"] for r in rows] == ["sample_0_000001.png", "sample_0_000002.png"]
    assert {r["privacy"] for r in rows} == {"passed"}

    def broken(run_dir, synthetic_dir=None, **kw):
        raise PrivacyError("no holdout split in this run")

    fake.check_run = broken
    assert main(["export", str(run2d), "--format", "dicom", "-n", "1", "--out", str(tmp_path / "o2")]) == 2


def test_export_n_with_the_real_privacy_check(run2d, tmp_path):
    """End to end with medsynth.privacy itself: the staged samples are checked, privacy.json names them
    with their hashes, and the export carries the check's per-file outcome (or refuses on a fail verdict)."""
    out = tmp_path / "real_gate"
    try:
        rc = main(["export", str(run2d), "--format", "dicom", "-n", "6", "--seed", "2", "--out", str(out)])
        report = json.loads((run2d / "privacy.json").read_text())
    finally:
        (run2d / "privacy.json").unlink(missing_ok=True)
    assert report["schema"] == "medsynth-privacy/1" and report["synthetic_dir"] == str((out / "samples").resolve())
    staged = sorted(p.name for p in (out / "samples").glob("sample_*"))
    assert [s["file"] for s in report["samples"]] == staged and len(staged) == 6
    assert all(s["sha256"] == _sha(out / "samples" / s["file"]) for s in report["samples"])
    if report["verdict"] == "pass":
        assert rc == 0
        passed = [s["file"] for s in report["samples"] if s["passed"]]
        rows = _manifest(out)
        assert [r["sample_file"] for r in rows] == passed and {r["privacy"] for r in rows} == {"passed"}
        assert len(list(out.rglob("*.dcm"))) == len(passed)
    else:
        assert rc == 2 and not list(out.rglob("*.dcm"))

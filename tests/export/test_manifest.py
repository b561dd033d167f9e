"""manifest.csv and provenance.json: one row per file with path, label, seed, checkpoint, privacy, format;
the run's metrics summary."""

from __future__ import annotations

import csv
import json

import medsynth
from medsynth.export.manifest import COLUMNS, metrics_summary
from tests.export.conftest import export


def test_manifest_rows_and_provenance(run3d, tmp_path):
    (run3d / "metrics.jsonl").write_text(json.dumps({"step": 1, "fid": 123.4}) + "\n"
                                         + json.dumps({"step": 1, "fid": 99.5, "kid": 0.01}) + "\n")
    try:
        out = export(run3d, "dicom", tmp_path / "out", "--seed", 7, n=2)
    finally:
        (run3d / "metrics.jsonl").unlink()
    loaded = medsynth.load_generator(run3d, device="cpu")
    with open(out / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert len(rows) == 32                                         # 2 volumes x 16 slices
    assert {r["format"] for r in rows} == {"dicom"} and {r["modality"] for r in rows} == {"MR"}
    assert {r["seed"] for r in rows} == {"7"} and {r["index"] for r in rows} == {"0", "1"}
    assert {r["checkpoint_sha256"] for r in rows} == {loaded.checkpoint_sha256}
    assert {r["privacy"] for r in rows} == {"unchecked"}
    assert all((out / r["file"]).is_file() for r in rows)
    assert rows[0]["file"] == "sample_7_000000/slice_0000.dcm" and rows[0]["sample_file"] == "sample_7_000000.npy"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["schema"] == "medsynth-export/1" and prov["files"] == 32 and prov["samples"] == 2
    assert prov["checkpoint_sha256"] == loaded.checkpoint_sha256 and prov["model_name"] == "resgan"
    assert prov["metrics"]["records"] == 2 and prov["metrics"]["latest"]["fid"] == 99.5
    assert prov["geometry"]["spacing"] == loaded.state["geometry"]["spacing"]
    assert prov["geometry"]["spacing_nominal"] is False
    assert prov["intensity"]["source_max"] == loaded.mapping.source_max
    assert not (out / ".export-incomplete").exists()


def test_metrics_summary_absent_or_empty(tmp_path):
    assert metrics_summary(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("\n")
    assert metrics_summary(tmp_path)["records"] == 0

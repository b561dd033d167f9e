"""``manifest.csv`` (one row per exported file) and ``provenance.json`` (the export as a whole)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path


def write_file(path: Path, data: bytes) -> None:
    """Write under a temporary name in the same folder, then rename: never a half-written file under the
    final name. No fsync per file (thousands of files): an interrupted export is recognised by
    OUT/.export-incomplete and redone; the manifest, written last, marks a complete export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


COLUMNS = ["file", "format", "modality", "label", "seed", "index", "sample_file", "sample_sha256",
           "checkpoint_sha256", "privacy", "patient_id", "series_uid"]


def write_manifest(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in COLUMNS})
    write_file(path, buf.getvalue().encode("utf-8"))


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def metrics_summary(run_dir: Path) -> dict | None:
    """The run's metrics.jsonl: how many records and the newest one (None when the file is absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return {"path": str(path), "records": len(records), "latest": records[-1] if records else None}


def write_provenance(path: Path, provenance: dict) -> None:
    write_file(path, (json.dumps(provenance, indent=2, default=str) + "\n").encode("utf-8"))

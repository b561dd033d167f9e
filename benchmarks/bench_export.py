"""DICOM export speed: medsynth's template encoder against straightforward per-file pydicom construction.

Two cases, as the export writes them: 64x64 DX (digital X-ray) images and 128x128 MR slices, one
synthetic patient/study/series per file (fresh UIDs, identity, ImagePositionPatient per file).

* **pydicom per file** (the baseline): build the data set from scratch with pydicom
  (``medsynth.export.dicom.build_dataset``: ~50 attributes, the equipment sequence, pixels) and
  ``save_as(path, enforce_file_format=True)``.
* **medsynth** (``DicomEncoder``): the constant elements serialised once; per file only the UIDs, patient
  name/ID, numbers, position and pixel data are encoded and joined with the constant bytes, then
  written under a temporary name and renamed (what the export does).

Both write the same items (same UIDs, same pixels) into a temporary folder; afterwards every file pair is
compared byte for byte, and a sample is read back with pydicom, so the speed-up changes nothing in the
output. Files/s over the whole batch, best of ``--repeats`` interleaved rounds.

Run by hand:  .venv/bin/python benchmarks/bench_export.py [--files 2000] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from medsynth.export.dicom import (
    DicomEncoder,
    DicomItem,
    DicomSpec,
    build_dataset,
    make_uid,
    synthetic_identity,
)
from medsynth.export.manifest import write_file

SHA = "5" * 64


def cases():
    dx = DicomSpec(kind="DX", rows=64, columns=64, pixel_spacing=(1.0, 1.0), nominal_spacing=True, signed=False,
                   window=(127.5, 255.0), model_name="resgan", checkpoint_sha256=SHA, label="CXR")
    mr = DicomSpec(kind="MR", rows=128, columns=128, pixel_spacing=(1.875, 1.875), nominal_spacing=False,
                   signed=False, window=(600.0, 1200.0), model_name="resgan", checkpoint_sha256=SHA,
                   orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), label="")
    return {"dx64": dx, "mr128": mr}


def items(spec: DicomSpec, n: int, seed: int = 0) -> list[DicomItem]:
    rng = np.random.default_rng(seed)
    top = 255 if spec.kind == "DX" else 1200
    out = []
    for i in range(n):
        name, pid = synthetic_identity(SHA, seed, i)
        out.append(DicomItem(pixels=rng.integers(0, top, (spec.rows, spec.columns), dtype=np.uint16),
                             patient_name=name, patient_id=pid, study_uid=make_uid(False), series_uid=make_uid(False),
                             instance_uid=make_uid(False), frame_of_reference_uid=make_uid(False), seed=seed, index=i,
                             position=(-119.0625, -119.0625, 0.5 * i), slice_location=0.5 * i))
    return out


def run_pydicom(spec, batch, folder: Path) -> float:
    t0 = time.perf_counter()
    for i, item in enumerate(batch):
        build_dataset(spec, item).save_as(folder / f"{i:06d}.dcm", enforce_file_format=True)
    return len(batch) / (time.perf_counter() - t0)


def run_medsynth(spec, batch, folder: Path) -> float:
    t0 = time.perf_counter()
    enc = DicomEncoder(spec, batch[0])      # template built inside the timed region
    for i, item in enumerate(batch):
        write_file(folder / f"{i:06d}.dcm", enc.encode(item))
    return len(batch) / (time.perf_counter() - t0)


def verify(a: Path, b: Path, n: int) -> None:
    import pydicom

    for i in range(n):
        x, y = (a / f"{i:06d}.dcm").read_bytes(), (b / f"{i:06d}.dcm").read_bytes()
        if x != y:
            raise SystemExit(f"file {i}: medsynth and pydicom outputs differ")
    ds = pydicom.dcmread(b / f"{n - 1:06d}.dcm")
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.SyntheticData == "YES"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    results = {}
    root = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        for name, spec in cases().items():
            batch = items(spec, args.files)
            best = {"pydicom": 0.0, "medsynth": 0.0}
            for r in range(args.repeats):
                for side, fn in (("pydicom", run_pydicom), ("medsynth", run_medsynth)):
                    folder = root / f"{name}_{side}_{r}"
                    folder.mkdir()
                    best[side] = max(best[side], fn(spec, batch, folder))
                verify(root / f"{name}_pydicom_{r}", root / f"{name}_medsynth_{r}", args.files)
                for side in best:
                    shutil.rmtree(root / f"{name}_{side}_{r}")
            results[name] = {**{k: round(v, 1) for k, v in best.items()},
                             "ratio": round(best["medsynth"] / best["pydicom"], 2), "files": args.files}
            print(f"{name}: pydicom per file {best['pydicom']:.0f} files/s, medsynth {best['medsynth']:.0f} files/s, "
                  f"{results[name]['ratio']:.2f}x (outputs byte-identical)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

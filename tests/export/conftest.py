"""Tiny trained runs to export from (seconds each): 2D X-ray + MRI JPEGs, 2D MRI slices, 3D MRI volumes."""

from __future__ import annotations

import shutil

import pytest

from medsynth.training.loop import train
from tests.training.conftest import tiny_config


@pytest.fixture(scope="session")
def run2d(tmp_path_factory, mednist_small):
    """Conditional on MedNIST CXR and MRBrain JPEGs (no spacing, no orientation): DX and SC (MR)."""
    run = tmp_path_factory.mktemp("runs") / "xray"
    train(tiny_config(mednist_small, **{"model.conditional": True, "train.steps": 2}), run, progress=False)
    return run


@pytest.fixture(scope="session")
def run_mr_slices(tmp_path_factory, shared_data):
    """Axial slices of 4 real IXI T1 volumes at 32x32 (spacing and plane known): MR images."""
    from tests.conftest import IXI

    sub = tmp_path_factory.mktemp("ixi4")
    for f in sorted(IXI.glob("*.nii.gz"))[:4]:
        shutil.copy(f, sub / f.name)
    run = tmp_path_factory.mktemp("runs") / "mr2d"
    cfg = tiny_config(sub, **{"data.slice_range": [0.45, 0.55], "data.min_foreground": 0.0,
                              "data.intensity.mode": "percentile", "train.steps": 1, "data.holdout_fraction": 0.25})
    train(cfg, run, progress=False)
    return run


@pytest.fixture(scope="session")
def run3d(tmp_path_factory):
    """3D resgan on the bundled IXI sample at 16^3: MR series / NIfTI volumes."""
    run = tmp_path_factory.mktemp("runs") / "mr3d"
    cfg = tiny_config("sample:ixi", **{"data.mode": "3d", "data.image_size": [16, 16, 16],
                                       "data.intensity.mode": "percentile", "train.steps": 1,
                                       "train.batch_size": 2})
    train(cfg, run, progress=False)
    return run


def export(run, fmt, out, *extra, n=4):
    """``medsynth export RUN --format FMT -n N --out OUT --skip-privacy-check ...`` in-process (no -n with
    --from-samples); returns out."""
    from medsynth.cli import main

    if "--from-samples" in extra:
        n = None
    rc = main(["export", str(run), "--format", fmt, *(["-n", str(n)] if n else []), "--out", str(out),
               "--skip-privacy-check", *map(str, extra)])
    assert rc == 0
    return out

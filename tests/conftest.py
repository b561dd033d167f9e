"""Shared fixtures: where the real data lives, and an isolated tensor cache for every test."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def _threads_per_xdist_worker() -> int | None:
    """CPU threads each pytest-xdist worker may use: the cores divided among the workers; None outside
    xdist or when OMP_NUM_THREADS is already set."""
    if "PYTEST_XDIST_WORKER" not in os.environ or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


# `make test` runs two xdist workers on CI's two cores. Each worker's torch (and every subprocess it
# starts: CLI runs, notebook kernels) would otherwise use a thread per core, four busy threads on two cores,
# and oversubscribed OpenMP threads spin against each other: the two notebook tests took 174 s together
# instead of 90 s. Set before torch is imported, so torch and child processes pick it up.
_THREADS = _threads_per_xdist_worker()
if _THREADS is not None:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    os.environ.setdefault("MKL_NUM_THREADS", str(_THREADS))
    if "torch" in sys.modules:          # imported before this conftest (by a plugin): tell it directly
        sys.modules["torch"].set_num_threads(_THREADS)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MEDNIST = SHARED_DATA / "mednist64"
IXI = SHARED_DATA / "ixi_t1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert MEDNIST.is_dir() and IXI.is_dir(), f"real test data missing: expected {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def mednist_small(tmp_path_factory, shared_data):
    """48 real MedNIST images each of CXR and MRBrain (class folders)."""
    root = tmp_path_factory.mktemp("mednist_small")
    for lab in ("CXR", "MRBrain"):
        (root / lab).mkdir()
        for f in sorted((MEDNIST / lab).iterdir())[:48]:
            shutil.copy(f, root / lab / f.name)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own tensor cache folder, never ~/.cache."""
    monkeypatch.setenv("MEDSYNTH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def tree_state(root: Path) -> dict:
    """Path -> (size, mtime_ns, bytes hash) for every file below root: proves nothing was modified."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out

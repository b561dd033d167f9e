"""Shared fixtures: where the real data lives, and an isolated tensor cache for every test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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

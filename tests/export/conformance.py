"""Conformance helpers for the tests: :mod:`medsynth.export.conformance` behind :func:`require`.

The validators are installed by ``make tools`` (a dependency of ``make test``). Without them a test
fails when the CI environment variable is set, and is skipped (with the reason) otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medsynth.export import conformance as _c
from medsynth.export.conformance import UNKNOWN_SYNTHETIC_TAG, strict_read  # noqa: F401  (re-exported)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} is not installed (run 'make tools': Debian packages dicom3tools, dcmtk, dcm2niix)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def dcmftest_ok(path) -> bool:
    """dcmtk's dcmftest: a DICOM Part 10 file (preamble + DICM)."""
    require("dcmftest")
    return _c.dcmftest_ok(path)


def dciodvfy_errors(path) -> list[str]:
    """dciodvfy's 'Error' lines, except the allowed unknown-tag error for SyntheticData."""
    require("dciodvfy")
    return _c.dciodvfy_errors(path)


def dcentvfy_errors(paths) -> list[str]:
    """dcentvfy over the files of a series/study: entity attributes must agree across files."""
    require("dcentvfy")
    return _c.dcentvfy_errors(paths)


def assert_conformant(files) -> None:
    files = [Path(f) for f in files]
    assert files
    for f in files:
        assert dcmftest_ok(f), f
        assert dciodvfy_errors(f) == [], f
        strict_read(f)

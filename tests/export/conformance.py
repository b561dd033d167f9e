"""Conformance helpers over the Debian validators (dicom3tools, dcmtk, dcm2niix) and pydicom.

The validators are installed by ``make tools`` (a dependency of ``make test``). Without them a test
fails when the CI environment variable is set, and is skipped (with the reason) otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

# dicom3tools older than 2023 does not know SyntheticData (0008,001C): the only error allowed
UNKNOWN_SYNTHETIC_TAG = "(0x0008,0x001c)"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} is not installed (run 'make tools': Debian packages dicom3tools, dcmtk, dcm2niix)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _run(args) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def dcmftest_ok(path) -> bool:
    """dcmtk's dcmftest: a DICOM Part 10 file (preamble + DICM)."""
    p = _run([require("dcmftest"), str(path)])
    return p.returncode == 0 and p.stdout.startswith("yes:")


@cache
def _dciodvfy_new_flag() -> list[str]:
    usage = _run([require("dciodvfy"), "-h"])
    return ["-new"] if "-new" in (usage.stdout + usage.stderr) else []


def dciodvfy_errors(path) -> list[str]:
    """Lines beginning with 'Error' from dciodvfy (with -new where this dicom3tools has it), except the
    unknown-tag error for SyntheticData that dicom3tools before 2023 reports."""
    p = _run([require("dciodvfy"), *_dciodvfy_new_flag(), str(path)])
    lines = (p.stdout + p.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error") and UNKNOWN_SYNTHETIC_TAG not in ln]


def dcentvfy_errors(paths) -> list[str]:
    """dcentvfy over the files of a series/study: entity attributes must agree across files."""
    p = _run([require("dcentvfy"), *map(str, paths)])
    lines = (p.stdout + p.stderr).splitlines()
    return [ln for ln in lines if "Error" in ln] + ([f"dcentvfy exit {p.returncode}"] if p.returncode else [])


def strict_read(path):
    """pydicom with reading validation set to raise; every element's value and the pixels decoded."""
    import pydicom
    from pydicom import config

    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        ds = pydicom.dcmread(path)
        for elem in ds.iterall():
            _ = elem.value
        _ = ds.pixel_array
        return ds
    finally:
        config.settings.reading_validation_mode = old


def assert_conformant(files) -> None:
    files = [Path(f) for f in files]
    assert files
    for f in files:
        assert dcmftest_ok(f), f
        assert dciodvfy_errors(f) == [], f
        strict_read(f)

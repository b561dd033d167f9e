"""DICOM conformance checks over the Debian validators (dicom3tools' dciodvfy/dcentvfy, dcmtk's dcmftest)
and strict pydicom reading; used by ``medsynth report`` and the export tests.

The validators are external programs found on PATH (``make tools`` installs them). Each helper raises
:class:`ValidatorMissing` when its program is absent; :func:`check_files` reports that instead.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

VALIDATORS = ("dciodvfy", "dcentvfy", "dcmftest")
# dicom3tools older than 2023 does not know SyntheticData (0008,001C): the only error allowed
UNKNOWN_SYNTHETIC_TAG = "(0x0008,0x001c)"
TIMEOUT_S = 120
CONFORMANCE_TOOLS_NOTE = "Debian packages dicom3tools and dcmtk; 'make tools' installs them"


class ValidatorMissing(RuntimeError):
    """A validator program is not on PATH."""


def missing_validators(tools=VALIDATORS) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def _exe(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise ValidatorMissing(f"{tool} is not installed ({CONFORMANCE_TOOLS_NOTE})")
    return path


def _run(args) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)


def dcmftest_ok(path) -> bool:
    """dcmtk's dcmftest: a DICOM Part 10 file (preamble + DICM)."""
    p = _run([_exe("dcmftest"), str(path)])
    return p.returncode == 0 and p.stdout.startswith("yes:")


@cache
def _dciodvfy_new_flag(exe: str) -> tuple[str, ...]:
    usage = _run([exe, "-h"])
    return ("-new",) if "-new" in (usage.stdout + usage.stderr) else ()


def dciodvfy_errors(path) -> list[str]:
    """Lines beginning with 'Error' from dciodvfy (with -new where this dicom3tools has it), except the
    unknown-tag error for SyntheticData that dicom3tools before 2023 reports."""
    exe = _exe("dciodvfy")
    p = _run([exe, *_dciodvfy_new_flag(exe), str(path)])
    lines = (p.stdout + p.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error") and UNKNOWN_SYNTHETIC_TAG not in ln]


def dcentvfy_errors(paths) -> list[str]:
    """dcentvfy over the files of a series/study: entity attributes must agree across files."""
    p = _run([_exe("dcentvfy"), *map(str, paths)])
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


def check_files(files, limit: int = 20) -> dict:
    """Validate up to ``limit`` DICOM files: dcmftest and dciodvfy per file, dcentvfy over them together.

    Returns ``{"checked", "passed", "failed", "files": [{"file", "dcmftest", "dciodvfy_errors", "passed"}],
    "dcentvfy_errors", "total"}``, or ``{"missing": [tools], ...}`` when a validator is not installed.
    """
    files = [Path(f) for f in files]
    chosen = files[:limit]
    missing = missing_validators()
    if missing:
        return {"missing": missing, "checked": 0, "total": len(files)}
    rows = []
    for f in chosen:
        ftest = dcmftest_ok(f)
        errors = dciodvfy_errors(f)
        rows.append({"file": f.name, "dcmftest": ftest, "dciodvfy_errors": errors, "passed": ftest and not errors})
    ent = dcentvfy_errors(chosen) if chosen else []
    passed = sum(r["passed"] for r in rows)
    return {"checked": len(rows), "passed": passed, "failed": len(rows) - passed, "files": rows,
            "dcentvfy_errors": ent, "total": len(files)}

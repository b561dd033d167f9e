"""The privacy gate: which samples may be exported, per ``RUN/privacy.json`` (schema medsynth-privacy/1).

A sample passes only if ``RUN/privacy.json`` exists, its ``synthetic_dir`` is the samples folder being
exported, the sample's file name AND sha256 are listed with ``passed: true``, and the overall verdict
is ``pass``. Per sample the result is one of:

* ``passed``    - exported;
* ``failed``    - listed but flagged (or the whole set failed): left out and counted when the verdict is
  pass; the verdict fail refuses the export;
* ``unchecked`` - no privacy.json, another folder checked, file not listed, or its bytes changed since
  the check (sha256 mismatch): refuses the export.

``--skip-privacy-check`` exports everything and records each sample's status instead of refusing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

PASSED, FAILED, UNCHECKED = "passed", "failed", "unchecked"


class PrivacyGateError(ValueError):
    """The export would include samples the privacy check did not pass; the message says how to fix it."""


@dataclass
class GateResult:
    status: dict[str, str]                 # sample file name -> passed / failed / unchecked
    verdict: str | None                    # privacy.json's verdict, None without a usable privacy.json
    privacy_json: str | None
    privacy_json_sha256: str | None
    reason: str | None                     # why nothing could be checked (no file, other folder, bad JSON)
    skipped: bool                          # --skip-privacy-check
    export: list[str] = field(default_factory=list)     # names to export, in input order
    left_out: list[str] = field(default_factory=list)   # failed samples left out under a pass verdict

    def counts(self) -> dict[str, int]:
        out = {PASSED: 0, FAILED: 0, UNCHECKED: 0}
        for s in self.status.values():
            out[s] += 1
        return out

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "privacy_json": self.privacy_json,
                "privacy_json_sha256": self.privacy_json_sha256, "skip_privacy_check": self.skipped,
                "reason": self.reason, "counts": self.counts(), "left_out_failed": len(self.left_out)}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_report(path: Path, samples_dir: Path):
    """(report, reason): the report when it applies to ``samples_dir``, else None and why not."""
    if not path.is_file():
        return None, f"{path} does not exist"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"{path} is not readable JSON ({e})"
    if not isinstance(report, dict) or report.get("schema") != "medsynth-privacy/1":
        return None, f"{path} is not a medsynth-privacy/1 report"
    checked = report.get("synthetic_dir")
    if not checked or Path(checked).resolve() != samples_dir.resolve():
        return None, f"{path} checked another folder ({checked}), not {samples_dir.resolve()}"
    if report.get("verdict") not in ("pass", "fail") or not isinstance(report.get("samples"), list):
        return None, f"{path} has no verdict or sample list"
    return report, None


def apply_gate(run_dir: Path, samples_dir: Path, sample_sha256: dict[str, str], skip: bool) -> GateResult:
    """Decide per sample (name -> sha256 of its bytes, in export order); raise PrivacyGateError to refuse."""
    path = Path(run_dir) / "privacy.json"
    report, reason = _read_report(path, Path(samples_dir))
    status: dict[str, str] = {}
    verdict = None
    if report is None:
        status = dict.fromkeys(sample_sha256, UNCHECKED)
    else:
        verdict = report["verdict"]
        listed = {}
        for s in report["samples"]:
            if isinstance(s, dict) and "file" in s:
                listed[str(s["file"])] = s
        for name, digest in sample_sha256.items():
            entry = listed.get(name)
            if entry is None or entry.get("sha256") != digest:
                status[name] = UNCHECKED
            elif verdict == "fail" or entry.get("passed") is not True:
                status[name] = FAILED
            else:
                status[name] = PASSED
    result = GateResult(status, verdict, str(path) if report is not None else None,
                        sha256_bytes(path.read_bytes()) if report is not None else None, reason, skip)
    if skip:
        result.export = list(sample_sha256)
        return result
    unchecked = [n for n, s in status.items() if s == UNCHECKED]
    how = f"check them with: medsynth privacy {run_dir} --synthetic {samples_dir}"
    skip_hint = "or pass --skip-privacy-check to export them anyway (recorded in provenance.json)"
    if report is None:
        raise PrivacyGateError(f"the {len(sample_sha256)} sample(s) in {samples_dir} have not passed a privacy "
                               f"check: {reason}; {how}, {skip_hint}")
    if verdict == "fail":
        raise PrivacyGateError(f"the privacy check of {samples_dir} failed (verdict 'fail' in {path}); not "
                               f"exporting its {len(sample_sha256)} sample(s); {skip_hint}")
    if unchecked:
        mismatched = [n for n in unchecked if n in {str(s.get('file')) for s in report['samples']
                                                     if isinstance(s, dict)}]
        detail = (f"{len(mismatched)} changed since the check (sha256 differs)" if mismatched else "")
        missing = len(unchecked) - len(mismatched)
        detail = ", ".join(x for x in (f"{missing} not listed in {path}" if missing else "", detail) if x)
        raise PrivacyGateError(f"{len(unchecked)} of {len(sample_sha256)} sample(s) in {samples_dir} were not "
                               f"checked ({detail}; first: {unchecked[0]}); {how}, {skip_hint}")
    result.export = [n for n, s in status.items() if s == PASSED]
    result.left_out = [n for n, s in status.items() if s == FAILED]
    if not result.export:
        raise PrivacyGateError(f"all {len(sample_sha256)} sample(s) in {samples_dir} were flagged by the privacy "
                               f"check ({path}); nothing to export")
    return result

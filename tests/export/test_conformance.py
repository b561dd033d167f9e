"""The validator helpers themselves: a missing tool fails the test under CI and skips it locally."""

from __future__ import annotations

import pytest

from tests.export import conformance


def test_missing_tool_fails_under_ci_and_skips_locally(monkeypatch):
    monkeypatch.setattr(conformance.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="dciodvfy is not installed"):
        conformance.require("dciodvfy")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make tools"):
        conformance.require("dciodvfy")

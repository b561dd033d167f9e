"""The documentation site: `mkdocs build --strict` passes, every page in docs/ is in the nav, and a broken
internal link or anchor would fail the build."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mkdocs")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CONFIG = REPO / "mkdocs.yml"


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    # the venv's mkdocs: the interpreter running the tests
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300)


def _nav_pages(nav) -> list[str]:
    out = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            out += _nav_pages(value)
        elif not re.match(r"[a-z]+://", value):
            out.append(value)
    return out


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    r = _mkdocs_build(CONFIG, site)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    for page in _nav_pages(_config()["nav"]):
        assert (site / page).with_suffix(".html").is_file(), page
    # self-contained: no script or stylesheet is loaded from elsewhere
    html = (site / "index.html").read_text()
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', html)


def test_every_docs_page_is_in_the_nav():
    cfg = _config()
    assert cfg.get("docs_dir", "docs") == "docs"
    nav = _nav_pages(cfg["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages, "mkdocs.yml nav and the pages in docs/ differ"
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    assert nav[0] == "index.md"


@pytest.mark.parametrize("bad", ["[gone](no-such-page.md)", "[gone](metrics.md#no-such-heading)",
                                 "[out](../README.md)"], ids=["page", "anchor", "outside-docs"])
def test_strict_build_fails_on_a_broken_link(tmp_path, bad):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + f"\n\nSee {bad}.\n")
    cfg = _config()
    cfg["docs_dir"] = str(docs)
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = _mkdocs_build(config, tmp_path / "site")
    assert r.returncode != 0, f"mkdocs build --strict accepted a broken link {bad}:\n{r.stderr}"
    target = bad[bad.index("(") + 1:-1]
    assert f"contains a link '{target}'" in r.stderr, r.stderr

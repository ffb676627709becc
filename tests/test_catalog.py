"""The Snakemake workflow catalog's files: present, parseable, consistent with pyproject.toml."""

from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_and_citation_agree_with_pyproject():
    assert PYPROJECT["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == "MIT" and cff["version"] == PYPROJECT["version"]
    paper = cff["preferred-citation"]
    assert [a["family-names"] for a in paper["authors"]] == ["Gupta", "Kumar"]
    assert "Null-Calibrated Polysemanticity Index" in paper["title"]


def test_catalog_usage_file():
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert usage["mandatory-flags"]["flags"] and usage["mandatory-flags"]["desc"]
    assert usage["software-stack-deployment"]["conda"] is True


def test_config_readme_names_every_config_file():
    text = (ROOT / "config" / "README.md").read_text()
    files = [p.relative_to(ROOT / "config").as_posix() for p in (ROOT / "config").rglob("*.yaml")]
    missing = [f for f in files if f not in text]
    assert not missing, f"config/README.md does not describe {missing}"

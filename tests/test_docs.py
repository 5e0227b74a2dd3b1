"""The documentation site: it builds with ``mkdocs build --strict``, its configuration reference
lists every config key, and every page the docs must have is in the nav."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from kdistill import RunConfig

ROOT = Path(__file__).resolve().parent.parent

# The pages the site must have, in nav order: title -> file under docs/.
PAGES = {
    "Home": "index.md",
    "Getting started": "getting-started.md",
    "Your own data": "data.md",
    "Your own models and teachers": "models.md",
    "Objectives": "objectives.md",
    "Presets and published results": "presets.md",
    "Configuration reference": "configuration.md",
    "Run directory and metrics schema": "run-directory.md",
    "Performance": "performance.md",
    "Distributed and GPU": "distributed.md",
    "Reproducing Hinton et al. (2015)": "hinton.md",
    "Reliability and trust": "reliability.md",
    "The MNIST tutorial": "mnist-tutorial.md",
    "Python API": "api.md",
    "Contributing": "contributing.md",
}
PLACEHOLDERS = ("<!-- config-reference -->", "<!-- presets -->", "<!-- models -->",
                "<!-- losses -->")


def leaf_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config (sections are walked, not listed)."""
    keys = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys += leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _flatten(nav: list) -> list[tuple[str, str]]:
    out = []
    for item in nav:
        for title, target in item.items():
            out += _flatten(target) if isinstance(target, list) else [(title, target)]
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def test_site_builds_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    for page in PAGES.values():
        built = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        html = built.read_text(encoding="utf-8")
        assert not [p for p in PLACEHOLDERS if p in html], f"{page}: a placeholder was not replaced"


def test_configuration_reference_lists_every_key(site: Path) -> None:
    html = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    keys = leaf_keys(RunConfig())
    assert len(keys) > 40 and "teacher.weights" in keys and "distill.temperature" in keys
    missing = [key for key in keys if f"<code>{key}</code>" not in html]
    assert not missing, f"configuration page lacks {missing}"


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _flatten(config["nav"])
    assert [entry for entry in nav if entry in PAGES.items()] == list(PAGES.items())
    for page in PAGES.values():
        assert (ROOT / "docs" / page).is_file(), page

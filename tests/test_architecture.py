"""The architecture holds: the import contracts pass, and docs/architecture.md names exactly the
modules and config keys that exist, and the README's config table every key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megagpt.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "docs/architecture.md"
PACKAGES = ("megagpt", "pipelines")
SECTIONS = [f.name for f in dataclasses.fields(RunConfig)]


def modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.add(".".join(parts))
    return found - set(PACKAGES)


def config_keys() -> set[str]:
    keys = {"model.preset"}  # read by ModelConfig.from_preset, not a field
    for section in dataclasses.fields(RunConfig):
        keys |= {f"{section.name}.{f.name}" for f in dataclasses.fields(section.default_factory())}
    return keys


def test_import_contracts_hold():
    """import-linter's contracts (pyproject.toml): the layers, the forbidden arrows, no circles."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout or "broken" not in done.stdout


def test_the_map_names_every_module_and_only_modules_that_exist():
    text = MAP.read_text()
    named = set(re.findall(r"`((?:megagpt|pipelines)(?:\.\w+)+)`", text))
    assert modules() - named == set(), "modules docs/architecture.md does not name"
    assert named - modules() == set(), "docs/architecture.md names modules that do not exist"


def test_the_map_names_every_config_key_and_only_keys_that_exist():
    text = MAP.read_text()
    named = set(re.findall(rf"`((?:{'|'.join(SECTIONS)})\.\w+)`", text))
    assert config_keys() - named == set(), "config keys docs/architecture.md does not name"
    assert named - config_keys() == set(), "docs/architecture.md names config keys that do not exist"


@pytest.mark.parametrize("section", SECTIONS)
def test_the_readme_config_table_names_every_key(section):
    row = re.search(rf"^\| `{section}` \|(.*)\|$", (ROOT / "README.md").read_text(), re.M)
    assert row, f"the README's config table has no row for `{section}`"
    keys = {k.split(".", 1)[1] for k in config_keys() if k.startswith(f"{section}.")}
    missing = {k for k in keys if f"`{k}`" not in row.group(1)}
    assert missing == set(), f"README's `{section}` row misses {sorted(missing)}"


def test_the_readme_names_every_model_preset():
    from megagpt.config import MODEL_PRESETS

    row = re.search(r"^\| `model` \|(.*)\|$", (ROOT / "README.md").read_text(), re.M).group(1)
    assert {p for p in MODEL_PRESETS if p not in row} == set()


def test_no_issue_numbers_or_history_in_code_and_docs():
    """Code and docs say why, not which ticket: no 'issue 12', '#12' references to work history."""
    pattern = re.compile(r"\b[Ii]ssue\s*#?\d+|\(#\d+\)|\bstop \d+\b")
    files = [p for package in (*PACKAGES, "bench", "docs", "cluster") for p in (ROOT / package).rglob("*")
             if p.suffix in {".py", ".md", ".sh", ".slurm"}] + [ROOT / "README.md"]
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in pattern.finditer(p.read_text())]
    assert hits == []

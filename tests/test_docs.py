"""The docs cannot drift from the code: the environment table in docs/operating.md is the one
service/configdoc.py generates from service/config.py, every default it derives is what
load_settings() derives, every IM_* variable the docs name exists, and every link between
the documents lands on a file and heading that exist."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from service import configdoc
from service.config import ENV_VARS, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [ROOT / "README.md", *DOCS]
OPERATING = ROOT / "docs" / "operating.md"


def test_the_docs_folder_has_the_documents_the_readme_promises():
    names = {p.name for p in DOCS}
    expected = {"operating.md", "api.md", "security.md", "design.md", "benchmarks.md", "testing.md"}
    assert expected <= names, f"missing: {expected - names}"


def test_the_environment_table_in_operating_md_is_the_generated_one():
    text = OPERATING.read_text()
    start, end = text.find(configdoc.BEGIN), text.find(configdoc.END)
    assert start >= 0 and end > start, "docs/operating.md lost its table markers"
    documented = text[start : end + len(configdoc.END)]
    assert documented == configdoc.generated_block(), (
        "docs/operating.md's environment table differs from service/config.py; "
        "regenerate it: python -m service.configdoc --write docs/operating.md"
    )


def test_the_table_has_one_row_per_setting_with_its_default():
    rows = [line for line in configdoc.markdown_table().splitlines() if line.startswith("| `IM_")]
    assert len(rows) == len(fields(Settings))
    assert "| `IM_API_PORT` | `8080` |" in rows[1]
    assert any(r.startswith("| `IM_API_TOKEN` | unset |") for r in rows)
    assert any(r.startswith("| `IM_CODECS` | `opus,pcm16` |") for r in rows)
    assert any(r.startswith("| `IM_HTTP_IDLE_TIMEOUT_S` | `10` |") for r in rows)


def test_derived_defaults_are_what_load_settings_derives(tmp_path):
    data = tmp_path / "somewhere"
    settings = load_settings({"IM_DATA_DIR": str(data)})
    for name, documented in configdoc.DERIVED_DEFAULTS.items():
        assert str(getattr(settings, name)) == documented.replace("DATA", str(data.resolve()))
    for name in configdoc.DESCRIBED_DEFAULTS:
        assert getattr(Settings(), name) == "", f"{name} has a default the docs could state"


def test_splice_replaces_only_the_table_and_refuses_a_document_without_markers():
    doc = f"before\n{configdoc.BEGIN}\nstale\n{configdoc.END}\nafter\n"
    assert configdoc.splice(doc) == f"before\n{configdoc.generated_block()}\nafter\n"
    with pytest.raises(ValueError):
        configdoc.splice("no markers here")


def _used_outside_the_node() -> set[str]:
    """IM_* names the tests, scripts and CI read (the speech set, PostgreSQL, the rig...)."""
    names: set[str] = set()
    for folder in ("tests", "scripts", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in ("", ".py", ".sh") and path.stat().st_size < 2**20:
                names |= set(re.findall(r"IM_[A-Z0-9_]+", path.read_text(errors="replace")))
    return names


def test_every_variable_the_docs_name_exists():
    settings = {variable for variable, _ in ENV_VARS.values()}
    known = settings | _used_outside_the_node()
    for doc in DOCUMENTS:
        named = set(re.findall(r"\bIM_[A-Z0-9_]+", doc.read_text()))
        assert named <= known, f"{doc.name} names variables nothing reads: {named - known}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_lands_on_a_file_and_heading_that_exist(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        assert linked.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(linked), f"{doc.name} links to a missing heading: {target}"


def test_the_readme_stays_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"

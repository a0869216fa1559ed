"""Provenance knowledge base: lookups, citations, and validation errors that point at file, line and key."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml

from quaywatch.assets.provenance import (
    KnowledgeBase,
    ProvenanceError,
    load_knowledge_base,
    normalise,
    shipped_data_dir,
)


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load_knowledge_base()


def lists_of(kb: KnowledgeBase, name: str) -> set[str]:
    found = kb.lookup(name)
    assert found is not None, name
    return {m.list_id for m in found.memberships}


def test_hikvision_china_covered_and_889(kb: KnowledgeBase) -> None:
    found = kb.lookup("Hikvision")
    assert found is not None and found.country == "CN"
    assert {"fcc_covered_list", "ndaa_889"} <= lists_of(kb, "Hikvision")
    assert all(m.sources and m.sources[0].url.startswith(("https://", "http://")) for m in found.memberships)


def test_oui_registry_spelling_resolves(kb: KnowledgeBase) -> None:
    found = kb.lookup_oui("Hangzhou Hikvision Digital Technology Co.,Ltd.")
    assert found is not None and found.maker is not None and found.maker.id == "hikvision"


def test_oem_brand_resolves_to_maker(kb: KnowledgeBase) -> None:
    found = kb.lookup("ezviz")
    assert found is not None and found.brand is not None
    assert found.matched_by == "brand" and found.maker is not None and found.maker.id == "hikvision"
    lorex = kb.lookup("LOREX")
    assert lorex is not None and lorex.maker is not None and lorex.maker.id == "dahua"


def test_zpmc_parent_cccc_on_1260h(kb: KnowledgeBase) -> None:
    found = kb.lookup("ZPMC")
    assert found is not None
    assert [org.id for org in found.chain] == ["zpmc", "cccc"]
    assert found.country == "CN"
    dod = [m for m in found.memberships if m.list_id == "dod_1260h"]
    assert dod and dod[0].via == "cccc"


def test_quectel_cellular_module_maker_china(kb: KnowledgeBase) -> None:
    found = kb.lookup("Quectel Wireless Solutions Co., Ltd")
    assert found is not None and found.maker is not None
    assert "cellular_module" in found.maker.roles and found.country == "CN"
    assert "dod_1260h" in lists_of(kb, "Quectel")


def test_western_contrast_not_listed(kb: KnowledgeBase) -> None:
    sierra = kb.lookup("Sierra Wireless")
    assert sierra is not None and [o.id for o in sierra.chain] == ["sierra_wireless", "semtech"]
    assert sierra.memberships == ()
    cradlepoint = kb.lookup("Cradlepoint")
    assert cradlepoint is not None and cradlepoint.chain[-1].country == "SE"


def test_abb_is_crane_automation_supplier(kb: KnowledgeBase) -> None:
    found = kb.lookup("ABB")
    assert found is not None and found.maker is not None and "crane_automation" in found.maker.roles


def test_unknown_name(kb: KnowledgeBase) -> None:
    assert kb.lookup("Acme Widgets") is None


def test_normalise_ignores_case_punctuation_and_suffixes() -> None:
    assert normalise("Quectel Wireless Solutions Co.,Ltd.") == normalise("QUECTEL wireless solutions co., ltd")
    assert normalise("CCCC Dredging (Group) Co., Ltd.") == normalise("CCCC Dredging Group")


def _walk(node: object, path: str) -> list[str]:
    """Every mapping that has a name, brand or id is an entry: it must cite a source with url and date."""
    problems: list[str] = []
    if isinstance(node, dict):
        is_entry = (any(key in node for key in ("name", "brand")) and "url" not in node) or "members" in node
        if is_entry and not node.get("sources"):
            problems.append(f"{path}: no sources")
        for key, value in node.items():
            problems += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            problems += _walk(value, f"{path}[{index}]")
    return problems


def test_every_entry_has_source_url_and_date() -> None:
    catalogue = yaml.safe_load((shipped_data_dir() / "sources.yaml").read_text())["sources"]
    for source in catalogue:
        assert re.match(r"^https?://", source["url"]), source
        assert isinstance(source["date"], dt.date | int) or re.match(r"^\d{4}(-\d{2})?$", str(source["date"])), source
    files = sorted(shipped_data_dir().glob("*.yaml"))
    assert {f.name for f in files} == {"sources.yaml", "organisations.yaml", "brands.yaml", "lists.yaml"}
    for path in files:
        assert _walk(yaml.safe_load(path.read_text()), path.name) == []


def _copy_shipped(tmp_path: Path) -> Path:
    for path in shipped_data_dir().glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    return tmp_path


def test_missing_source_names_file_line_and_key(tmp_path: Path) -> None:
    directory = _copy_shipped(tmp_path)
    (directory / "brands.yaml").write_text(
        "version: 1\nbrands:\n  - brand: EZVIZ\n    maker: hikvision\n    relation: own_brand\n"
        "  - brand: Nameless\n    maker: hikvision\n    relation: own_brand\n"
    )
    with pytest.raises(ProvenanceError) as error:
        load_knowledge_base(directory)
    assert error.value.file.endswith("brands.yaml")
    assert error.value.line == 3 and error.value.key == "brands[0].sources"
    assert "brands.yaml:3: brands[0].sources" in str(error.value)


def test_unknown_key_and_bad_date_are_pointed_at(tmp_path: Path) -> None:
    directory = _copy_shipped(tmp_path)
    text = (directory / "lists.yaml").read_text().replace("date: 2018-08-13\n", "date: last summer\n", 1)
    (directory / "lists.yaml").write_text(text)
    with pytest.raises(ProvenanceError, match=r"lists\.yaml:\d+: lists\[1\]\.date: 'last summer' is not a date"):
        load_knowledge_base(directory)
    (directory / "lists.yaml").write_text((shipped_data_dir() / "lists.yaml").read_text())
    orgs = (directory / "organisations.yaml").read_text().replace("    roles: [camera]\n", "    role: [camera]\n", 1)
    (directory / "organisations.yaml").write_text(orgs)
    with pytest.raises(ProvenanceError) as error:
        load_knowledge_base(directory)
    assert error.value.key == "organisations[0].role" and "unknown key" in str(error.value)
    expected_line = orgs.splitlines().index("    role: [camera]") + 1
    assert error.value.line == expected_line


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    directory = _copy_shipped(tmp_path)
    (directory / "brands.yaml").write_text("version: 1\nbrands:\n  - brand: [unclosed\n")
    with pytest.raises(ProvenanceError) as error:
        load_knowledge_base(directory)
    assert error.value.file.endswith("brands.yaml") and error.value.line is not None

"""The ATT&CK data file: every catalogue technique present, unknown ids raise, and the offline rebuild from STIX."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect import attack

BRIEF = Path(__file__).parents[2].parent / "shared" / "BRIEF.md"


def test_every_catalogue_technique_is_named() -> None:
    if not BRIEF.is_file():
        pytest.skip(f"{BRIEF} not found: the catalogue lives in ../shared/BRIEF.md")
    catalogue = BRIEF.read_text(encoding="utf-8").split("## Detection catalogue", 1)[1].split("\n## ", 1)[0]
    ids = set(re.findall(r"\bT[01]\d{3}\b", catalogue))
    assert {"T0812", "T0883", "T1011", "T0869"} <= ids  # the parse found the table
    data = attack.load()
    assert sorted(ids - set(data.techniques)) == []
    assert data.version.startswith("ics-v") and data.source.endswith("ics-attack.json") and data.retrieved


def test_names_tactics_and_unknown_ids() -> None:
    assert attack.technique_name("T0812") == "Default Credentials"
    assert attack.technique_name("T0883") == "Internet Accessible Device"
    assert attack.technique("T0886").tactics == ("initial-access", "lateral-movement")
    assert attack.technique("T1071").domain == "enterprise"
    ics = [t for t in attack.load().techniques.values() if t.domain == "ics"]
    assert len(ics) >= 80 and all(re.fullmatch(r"T08\d\d", t.id) and t.name and t.tactics for t in ics)
    with pytest.raises(attack.UnknownTechniqueError):
        attack.technique_name("T0999")


def _pattern(technique_id: str, name: str, phases: list[str], **extra: object) -> dict[str, object]:
    return {
        "type": "attack-pattern",
        "id": f"attack-pattern--{technique_id}",
        "name": name,
        "external_references": [
            {
                "source_name": "mitre-attack",
                "external_id": technique_id,
                "url": f"https://attack.mitre.org/{technique_id}",
            }
        ],
        "kill_chain_phases": [{"kill_chain_name": "mitre-ics-attack", "phase_name": phase} for phase in phases],
        **extra,
    }


def test_update_rebuilds_from_a_stix_bundle(tmp_path: Path) -> None:
    bundle = {
        "type": "bundle",
        "id": "bundle--1",
        "objects": [
            {"type": "x-mitre-collection", "id": "x-mitre-collection--1", "x_mitre_version": "17.0"},
            _pattern("T0812", "Default Credentials", ["lateral-movement"]),
            _pattern("T0886", "Remote Services", ["lateral-movement", "initial-access"]),
            _pattern("T0896", "A Newer Technique", ["collection"]),
            _pattern("T0810", "Data Historian Compromise", ["initial-access"], x_mitre_deprecated=True),
            _pattern("T0818", "Engineering Workstation Compromise", ["initial-access"], revoked=True),
            {"type": "malware", "id": "malware--1", "name": "Industroyer"},
        ],
    }
    source = tmp_path / "ics-attack.json"
    source.write_text(json.dumps(bundle), encoding="utf-8")
    out = tmp_path / "attack_ics.yaml"
    result = CliRunner().invoke(main, ["attack", "update", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 ICS techniques (ics-v17.0)" in result.output
    rebuilt = attack.parse(out.read_text(encoding="utf-8"))
    assert rebuilt.version == "ics-v17.0"
    ics = {t.id: t for t in rebuilt.techniques.values() if t.domain == "ics"}
    assert set(ics) == {"T0812", "T0886", "T0896"}  # deprecated and revoked ones dropped
    assert ics["T0886"].tactics == ("initial-access", "lateral-movement")
    assert {"T1011", "T1048", "T1071"} <= set(rebuilt.techniques)  # the Enterprise part is kept


def test_update_rejects_what_is_not_a_bundle(tmp_path: Path) -> None:
    source = tmp_path / "x.json"
    source.write_text('{"type": "indicator"}', encoding="utf-8")
    result = CliRunner().invoke(main, ["attack", "update", str(source), "--out", str(tmp_path / "o.yaml")])
    assert result.exit_code == 1 and "not a STIX bundle" in result.output
    assert not (tmp_path / "o.yaml").exists()


def test_update_into_the_user_data_dir_takes_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = {"type": "bundle", "id": "bundle--2", "objects": [_pattern("T0812", "Default Credentials (renamed)", [])]}
    source = tmp_path / "ics-attack.json"
    source.write_text(json.dumps(bundle), encoding="utf-8")
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(main, ["attack", "update", str(source), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert (data_dir / "attack_ics.yaml").is_file()
    monkeypatch.setenv("QUAYWATCH_DATA_DIR", str(data_dir))
    attack.load.cache_clear()
    try:
        assert attack.technique_name("T0812") == "Default Credentials (renamed)"
        assert attack.load().version == "ics-unknown"  # the bundle named no collection version
        with pytest.raises(attack.UnknownTechniqueError):
            attack.technique_name("T0883")  # not in that bundle
    finally:
        monkeypatch.delenv("QUAYWATCH_DATA_DIR")
        attack.load.cache_clear()
    assert attack.technique_name("T0883") == "Internet Accessible Device"

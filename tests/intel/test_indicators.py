"""Indicator import: STIX 2.1 bundles built with stix2, CSV files, errors located, idempotent re-import, removal."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import stix2
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.intel.indicators import import_file, list_indicators, remove_source


def _bundle(path: Path) -> dict[str, str]:
    """A bundle with supported, partly supported and unsupported patterns; returns the indicator ids by role."""
    author = stix2.Identity(name="Port CERT", identity_class="organization")
    made = {
        "or": stix2.Indicator(
            name="crane C2", pattern_type="stix", created_by_ref=author.id, confidence=90,
            pattern="[ipv4-addr:value = '47.103.24.117'] OR [domain-name:value = 'Example-Cloud.CN.']",
            indicator_types=["malicious-activity"], labels=["crane"],
            kill_chain_phases=[{"kill_chain_name": "mitre-ics-attack", "phase_name": "command-and-control"}],
        ),
        "in": stix2.Indicator(pattern_type="stix", pattern="[ipv4-addr:value IN ('10.0.0.1', '192.0.2.0/24')]"),
        "hashes": stix2.Indicator(
            pattern_type="stix",
            pattern="[x509-certificate:hashes.'SHA-1' = '1370EA5D89B4C365E4CCAAD9E5832E90754B0CBD' AND "
            "x509-certificate:serial_number = '00:98:b4'] AND [file:hashes.'SHA-256' = '" + "ab" * 32 + "']",
        ),
        "partial": stix2.Indicator(
            pattern_type="stix", pattern="[domain-name:value = 'a.example'] OR [process:name = 'implant.exe']"
        ),
        "matches": stix2.Indicator(pattern_type="stix", pattern="[domain-name:value MATCHES '^evil']"),
        "sigma": stix2.Indicator(pattern_type="sigma", pattern="title: x"),
    }  # fmt: skip
    path.write_text(stix2.Bundle(author, *made.values()).serialize(), encoding="utf-8")
    return {role: indicator.id for role, indicator in made.items()}


def test_stix_bundle_patterns_become_terms_and_unsupported_ones_are_named(tmp_path: Path) -> None:
    ids = _bundle(tmp_path / "feed.json")
    con = duckdb.connect()
    result = import_file(con, tmp_path / "feed.json")
    assert result.problems == []
    assert result.indicators == 4  # or, in, hashes, partial
    unsupported = {problem.path: problem for problem in result.unsupported}
    assert {ids["matches"], ids["sigma"], ids["partial"]} <= set(unsupported)
    assert "MATCHES" in unsupported[ids["matches"]].message
    assert "process:name" in unsupported[ids["partial"]].message and unsupported[ids["partial"]].severity == "warning"
    rows = con.execute("SELECT indicator_id, conjunction, terms, type, value FROM indicators").fetchall()
    by_id: dict[str, set[tuple[int, int, str, str]]] = {}
    for identifier, conjunction, terms, kind, value in rows:
        by_id.setdefault(identifier, set()).add((conjunction, terms, kind, value))
    assert by_id[ids["or"]] == {(0, 1, "ip", "47.103.24.117"), (1, 1, "domain", "example-cloud.cn")}
    assert by_id[ids["in"]] == {(0, 1, "ip", "10.0.0.1"), (1, 1, "cidr", "192.0.2.0/24")}
    assert by_id[ids["hashes"]] == {
        (0, 3, "sha1", "1370ea5d89b4c365e4ccaad9e5832e90754b0cbd"),
        (0, 3, "certificate_serial", "98b4"),
        (0, 3, "sha256", "ab" * 32),
    }
    listed = {row["indicator_id"]: row for row in list_indicators(con)}
    first = listed[ids["or"]]
    assert (first["source"], first["confidence"]) == ("Port CERT", 90)
    assert first["kill_chain_phases"] == ["mitre-ics-attack:command-and-control"]
    assert first["indicator_types"] == ["malicious-activity"] and first["labels"] == ["crane"]


def test_csv_errors_name_file_line_and_column_and_valid_rows_are_kept(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text(
        "type,value,description,source,confidence,valid_until\n"
        "ip,203.0.113.77,beacon,cert,high,2030-01-01\n"
        "ip,not-an-ip,x,cert,50,\n"
        "colour,blue,x,cert,50,\n"
        "domain,evil.example,x,cert,250,\n"
        "ja4s,T120100_C02F_BC98F8E001B5,x,cert,0.7,yesterday\n",
        encoding="utf-8",
    )
    con = duckdb.connect()
    result = import_file(con, feed)
    located = {(problem.file, problem.line, problem.path) for problem in result.problems}
    assert located == {("feed.csv", 3, "value"), ("feed.csv", 4, "type"), ("feed.csv", 5, "confidence"),
                       ("feed.csv", 6, "valid_until")}  # fmt: skip
    assert result.indicators == 1
    row = con.execute("SELECT type, value, confidence, valid_until::VARCHAR, line FROM indicators").fetchone()
    assert row == ("ip", "203.0.113.77", 85, "2030-01-01 23:59:59.999999+00", 2)


def test_reimport_replaces_rows_and_remove_deletes_them(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("type,value\nip,198.51.100.7\ndomain,a.example\n", encoding="utf-8")
    database = tmp_path / "intel.duckdb"
    runner = CliRunner()
    for _ in range(2):
        outcome = runner.invoke(main, ["intel", "import", str(feed), "--db", str(database)])
        assert outcome.exit_code == 0, outcome.output
    con = duckdb.connect(str(database))
    assert con.execute("SELECT count(*) FROM indicators").fetchone() == (2,)
    con.close()
    feed.write_text("type,value\nip,198.51.100.8\n", encoding="utf-8")  # a newer version of the same feed
    assert runner.invoke(main, ["intel", "import", str(feed), "--db", str(database)]).exit_code == 0
    listed = runner.invoke(main, ["intel", "list", "--db", str(database), "--json"])
    assert [line for line in listed.output.splitlines() if line] and "198.51.100.8" in listed.output
    assert "198.51.100.7" not in listed.output
    removed = runner.invoke(main, ["intel", "remove", "feed.csv", "--db", str(database)])
    assert removed.exit_code == 0 and "1 indicator value(s) removed" in removed.output
    con = duckdb.connect(str(database))
    assert remove_source(con, "feed.csv") == 0
    assert con.execute("SELECT count(*) FROM indicators").fetchone() == (0,)


@pytest.mark.parametrize("text", ["{not json", "type,value\nip,\n"])
def test_bad_file_is_reported_not_raised(tmp_path: Path, text: str) -> None:
    feed = tmp_path / ("feed.json" if text.startswith("{") else "feed.csv")
    feed.write_text(text, encoding="utf-8")
    outcome = CliRunner().invoke(main, ["intel", "import", str(feed), "--db", str(tmp_path / "x.duckdb")])
    assert outcome.exit_code == 1
    assert f"{feed.name}:" in outcome.output

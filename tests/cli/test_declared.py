"""``quaywatch assets --inventory``, ``assets findings`` and ``analyze --inventory``: errors, output safety, reruns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from quaywatch.analysis import Analyzer
from quaywatch.cli.main import main
from quaywatch.store.database import Store
from tests.assets.test_declared import DECLARED_CSV, HOSTILE_TAG, declared_site


def database(tmp_path: Path) -> tuple[Path, Path]:
    capture, declared = declared_site(tmp_path)
    path = tmp_path / "site.duckdb"
    store = Store(path)
    Analyzer(store).analyze(capture)
    store.close()
    return path, declared


def test_import_reports_bad_rows_and_lists_findings(tmp_path: Path) -> None:
    db, declared = database(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["assets", "--db", str(db), "--inventory", str(declared)])
    assert result.exit_code == 1, result.output  # bad rows: reported, the valid rows imported anyway
    assert "declared.csv:7: column 4 (MAC Address): bad MAC address 'zz:zz:zz:zz:zz:zz'" in result.stderr
    assert "6 rows imported, 3 rejected" in result.stderr
    assert "inventory findings" in result.stdout and "undeclared_device" in result.stdout
    listed = runner.invoke(main, ["assets", "findings", "--db", str(db), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 5 and rows[0]["severity"] == "high" and rows[0]["kind"] == "undeclared_device"
    assert rows[0]["evidence"] and rows[0]["evidence"][0]["source_table"]
    again = runner.invoke(main, ["assets", "--db", str(db), "--inventory", str(declared)])
    assert again.exit_code == 1
    rerun = runner.invoke(main, ["assets", "findings", "--db", str(db), "--json"]).stdout.splitlines()
    assert [json.loads(line) for line in rerun] == rows  # replaced, never duplicated
    only = runner.invoke(main, ["assets", "findings", "--db", str(db), "--json", "--kind", "maker_mismatch"])
    assert [json.loads(line)["declared_tag"] for line in only.stdout.splitlines()] == ["DRV-50"]
    plain = runner.invoke(main, ["assets", "--db", str(db), "--json"])  # existing options still work
    assert plain.exit_code == 0 and len(plain.stdout.splitlines()) == 6


def test_hostile_tag_is_formula_safe_and_escaped(tmp_path: Path) -> None:
    db, declared = database(tmp_path)
    declared.write_text(DECLARED_CSV + '"[bold]x\x1b[2J",,,,10.0.0.98,,,\n', encoding="utf-8")
    runner = CliRunner()
    runner.invoke(main, ["assets", "--db", str(db), "--inventory", str(declared)])
    target = tmp_path / "findings.csv"
    result = runner.invoke(main, ["assets", "findings", "--db", str(db), "--csv", str(target)])
    assert result.exit_code == 0, result.output
    with target.open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    tags = {row["declared_tag"] for row in table}
    assert "'" + HOSTILE_TAG in tags and HOSTILE_TAG not in tags
    assert not any(cell.startswith(("=", "+", "@", "-")) for row in table for cell in row.values())
    assert "[bold]x\\x1b[2J" in tags
    shown = runner.invoke(main, ["assets", "findings", "--db", str(db)])
    assert shown.exit_code == 0 and "\x1b" not in shown.output
    assert "[bold]x\\x1b[2J" in shown.output  # literal, never rich markup
    assert HOSTILE_TAG in shown.output.replace("\n", "")


def test_findings_without_an_inventory_and_analyze_with_one(tmp_path: Path) -> None:
    capture, _ = declared_site(tmp_path)
    clean = tmp_path / "clean.csv"
    clean.write_text("tag,maker,mac\nCAM-01,Hikvision,44:19:b6:00:00:10\n", encoding="utf-8")
    db = tmp_path / "analyzed.duckdb"
    runner = CliRunner()
    assert runner.invoke(main, ["analyze", str(capture), "--db", str(db), "--quiet"]).exit_code == 0
    missing = runner.invoke(main, ["assets", "findings", "--db", str(db)])
    assert missing.exit_code == 1 and "no declared inventory" in missing.stderr
    result = runner.invoke(main, ["analyze", str(capture), "--db", str(db), "--quiet", "--inventory", str(clean)])
    assert result.exit_code == 0, result.output
    store = Store(db, read_only=True)
    kinds = store.connection.execute("SELECT kind, count(*) FROM inventory_findings GROUP BY kind").fetchall()
    store.close()
    assert dict(kinds) == {"undeclared_device": 5}  # the camera matched; the other five observed are undeclared

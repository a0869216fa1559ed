"""``quaywatch assets``: table, JSON lines, CSV safe against formula injection, and ``show`` with evidence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from quaywatch.analysis import Analyzer
from quaywatch.cli.assets import csv_safe
from quaywatch.cli.main import main
from quaywatch.store.database import Store
from tests.assets.test_inventory import HOSTILE_NAME, synthetic_capture


def database(tmp_path: Path) -> Path:
    path = tmp_path / "site.duckdb"
    store = Store(path)
    Analyzer(store).analyze(synthetic_capture(tmp_path / "site.pcap"))
    store.close()
    return path


def test_csv_cells_are_neutralised() -> None:
    assert csv_safe('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    for start in ("+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_safe(start).startswith("'")
    assert csv_safe("a\x1b[31mb") == "a\\x1b[31mb"
    assert csv_safe(["a", "b"]) == "a;b" and csv_safe(None) == ""


def test_list_json_csv_and_filters(tmp_path: Path) -> None:
    db = database(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["assets", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == len({row["mac"] for row in rows}) == 5
    listed = runner.invoke(main, ["assets", "--db", str(db), "--json", "--listed"])
    listed_rows = {row["role"]: row for row in map(json.loads, listed.output.splitlines())}
    assert set(listed_rows) == {"camera", "cellular router or modem"}  # Hikvision; Quectel (DoD 1260H)
    camera = listed_rows["camera"]
    assert camera["role"] == "camera" and "FCC Covered List" in camera["listed"]
    by_role = runner.invoke(main, ["assets", "--db", str(db), "--json", "--role", "camera"])
    assert [json.loads(line)["asset_id"] for line in by_role.output.splitlines()] == [camera["asset_id"]]
    by_vendor = runner.invoke(main, ["assets", "--db", str(db), "--json", "--vendor", "quectel"])
    assert len(by_vendor.output.splitlines()) == 1
    target = tmp_path / "assets.csv"
    assert runner.invoke(main, ["assets", "--db", str(db), "--csv", str(target)]).exit_code == 0
    with target.open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    (hostile,) = [row for row in table if row["mac"] == "00:1b:1b:00:00:99"]
    assert hostile["hostname"] == "'" + HOSTILE_NAME.replace("\x1b", "\\x1b")
    assert not any(cell.startswith(("=", "+", "@")) for row in table for cell in row.values())
    plain = runner.invoke(main, ["assets", "--db", str(db)])
    assert plain.exit_code == 0 and "\x1b" not in plain.output


def test_show_escapes_packet_strings_and_lists_evidence(tmp_path: Path) -> None:
    db = database(tmp_path)
    runner = CliRunner()
    rows = [json.loads(line) for line in runner.invoke(main, ["assets", "--db", str(db), "--json"]).output.splitlines()]
    (hostile,) = [row for row in rows if row["mac"] == "00:1b:1b:00:00:99"]
    result = runner.invoke(main, ["assets", "show", hostile["asset_id"], "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b[31m" in result.output
    assert '=HYPERLINK("http://x")<script>' in result.output  # shown literally, never as rich markup
    assert "dhcp_option_12_host_name" in result.output and "evidence:" in result.output
    missing = runner.invoke(main, ["assets", "show", "nope", "--db", str(db)])
    assert missing.exit_code == 1
    assert runner.invoke(main, ["assets", "--db", str(tmp_path / "none.duckdb")]).exit_code == 3

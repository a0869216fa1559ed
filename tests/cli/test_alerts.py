"""``quaywatch detect`` / ``alerts``: table, filters, EVE JSON, ``show``, suppressions at read time, hostile strings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from tests.detect.captures import credentials_capture, http_basic
from tests.factories import write_pcap

HOSTILE_USER = "\x1b[31m[bold]evil[/bold]\u202e"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Analysed and detected once per module; each test works on its own copy."""
    tmp_path = tmp_path_factory.mktemp("alerts")
    path = tmp_path / "site.duckdb"
    capture = credentials_capture(tmp_path / "site.pcap")
    hostile = write_pcap(
        tmp_path / "hostile.pcap",
        [
            (1_700_000_100 + i * 0.01, f)
            for i, f in enumerate(http_basic("10.0.0.21", "10.0.0.41", 50100, HOSTILE_USER))
        ],
    )
    runner = CliRunner()
    for pcap in (capture, hostile):
        assert runner.invoke(main, ["analyze", str(pcap), "--db", str(path), "--quiet"]).exit_code == 0
    result = runner.invoke(main, ["detect", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "D11.cleartext-login" in result.output and "skipped" in result.output
    return path


@pytest.fixture
def db(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(built, tmp_path / "site.duckdb"))


def eve(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_list_filters_json_and_escaping(db: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["alerts", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    records = eve(result.output)
    assert len(records) == 4 and {r["event_type"] for r in records} == {"alert"}
    basic = [r for r in records if r["alert"]["key"] == {"client_ip": "10.0.0.21", "server_ip": "10.0.0.41"}]  # type: ignore[index]
    assert basic[0]["evidence"]["values"]["username"] == [HOSTILE_USER]  # type: ignore[index]
    wide = runner.invoke(main, ["alerts", "--db", str(db)], env={"COLUMNS": "250"})
    assert wide.exit_code == 0 and "\x1b" not in wide.output and "\u202e" not in wide.output
    only = eve(
        runner.invoke(main, ["alerts", "--db", str(db), "--json", "--detection", "D11.snmp-default-community"]).output
    )
    assert [r["alert"]["detection"] for r in only] == ["D11.snmp-default-community"]  # type: ignore[index]
    by_host = eve(runner.invoke(main, ["alerts", "--db", str(db), "--json", "--host", "10.0.0.40"]).output)
    assert [r["alert"]["detection"] for r in by_host] == ["D11.cleartext-login"]  # type: ignore[index]
    assert eve(runner.invoke(main, ["alerts", "--db", str(db), "--json", "--severity", "critical"]).output) == []
    assert len(eve(runner.invoke(main, ["alerts", "--db", str(db), "--json", "--since", "2023-11-14"]).output)) == 4
    assert eve(runner.invoke(main, ["alerts", "--db", str(db), "--json", "--since", "24h"]).output) == []


def test_show_prints_evidence_escaped(db: Path) -> None:
    runner = CliRunner()
    records = eve(runner.invoke(main, ["alerts", "--db", str(db), "--json", "--host", "10.0.0.21"]).output)
    shown = runner.invoke(
        main, ["alerts", "show", str(records[0]["alert_id"]), "--db", str(db)], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 0, shown.output
    assert "T0859 Valid Accounts" in shown.output and "packets     5" in shown.output
    assert "\\x1b[31m" in shown.output and "\x1b" not in shown.output and "\\u202e" in shown.output
    assert "[bold]evil" in shown.output  # rich markup shown literally, not interpreted
    grouped = runner.invoke(main, ["alerts", "--db", str(db), "show", str(records[0]["occurrence_id"]), "--json"])
    assert grouped.exit_code == 0 and len(eve(grouped.output)) == 1  # --db given to the group reaches `show`
    missing = runner.invoke(main, ["alerts", "show", "0000000000000000", "--db", str(db)])
    assert missing.exit_code == 1 and "no alert" in missing.output


def test_suppressions_apply_when_read(db: Path, tmp_path: Path) -> None:
    rules = tmp_path / "accepted.yaml"
    rules.write_text(
        "suppressions:\n"
        "  - detection: D11.snmp-*\n"
        "    host: 10.0.0.0/24\n"
        "    reason: lab SNMP simulator, ticket OT-42\n"
        "  - key: {protocol: ftp}\n"
        "    until: 2020-01-01\n"
        "    reason: expired, must not hide anything\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    stored = runner.invoke(main, ["alerts", "suppress", str(rules), "--db", str(db)])
    assert stored.exit_code == 0 and "2 suppression(s)" in stored.output
    shown = runner.invoke(main, ["alerts", "--db", str(db)], env={"COLUMNS": "250"})
    assert "1 suppressed alert(s) not shown" in shown.output and "SNMP default" not in shown.output
    assert "Cleartext ftp login" in shown.output  # the expired entry hides nothing
    every = eve(runner.invoke(main, ["alerts", "--db", str(db), "--json", "--all"]).output)
    marked = [r for r in every if r["suppressed"]]
    assert len(every) == 4 and len(marked) == 1
    assert marked[0]["suppressed"] == {"reason": "lab SNMP simulator, ticket OT-42", "file": "accepted.yaml", "line": 2}
    # Re-importing the same file replaces its entries; a --suppressions file adds to them for one read.
    runner.invoke(main, ["alerts", "suppress", str(rules), "--db", str(db)])
    extra = tmp_path / "extra.yaml"
    extra.write_text("suppressions:\n  - {detection: D11.http-basic-auth, reason: vendor web UI}\n", encoding="utf-8")
    result = runner.invoke(main, ["alerts", "--db", str(db), "--json", "--suppressions", str(extra)])
    assert len(eve(result.output)) == 1 and "3 suppressed" in result.output
    # The site's configuration file names the suppressions file once, for every read; paths relative to it.
    config = tmp_path / "site.toml"
    config.write_text(f'database = "{db}"\nsuppressions = "{extra.name}"\n', encoding="utf-8")
    configured = runner.invoke(main, ["--config", str(config), "alerts", "--json"])
    assert configured.exit_code == 0 and len(eve(configured.output)) == 1 and "3 suppressed" in configured.output
    shown = runner.invoke(main, ["--config", str(config), "alerts", "show", marked[0]["occurrence_id"], "--json"])
    assert shown.exit_code == 0 and eve(shown.output)[0]["suppressed"]["reason"] == "lab SNMP simulator, ticket OT-42"


def test_bad_suppression_file_is_located(db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("suppressions:\n  - reason: everything\n  - detection: D11.*\n    hots: 10.0.0.1\n    reason: x\n")
    result = CliRunner().invoke(main, ["alerts", "suppress", str(bad), "--db", str(db)])
    assert result.exit_code == 1
    assert "bad.yaml:2: suppressions[0]: give at least one of detection, key, host" in result.output
    assert "bad.yaml:4: suppressions[1].hots: unknown key 'hots' (did you mean 'host'?)" in result.output


def test_exit_codes(db: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["detect", "--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 3 and "no such database" in missing.output
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "x.yaml").write_text("id: D11.x\ntitle: t\n", encoding="utf-8")
    bad = runner.invoke(main, ["detect", "--db", str(db), "--rules", str(rules)])
    assert bad.exit_code == 1 and "x.yaml:1: (top level): missing required key 'explanation'" in bad.output
    policy = tmp_path / "policy.yaml"
    policy.write_text("zones: {ot: {cidrs: [10.0.0.0/33]}}\n", encoding="utf-8")
    wrong = runner.invoke(main, ["detect", "--db", str(db), "--policy", str(policy)])
    assert wrong.exit_code == 1 and "policy.yaml:1" in wrong.output

"""The CLI of policy evaluation and risk: analyze --policy, policy evaluate, assets --risk and assets show."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from quaywatch.cli.main import main
from tests.policy.test_evaluate import POLICY, site_capture


def site(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(capture, policy, declared inventory) of the evaluation tests' site."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    declared = tmp_path / "declared.csv"
    declared.write_text("tag,maker,ip\nCRANE-PLC,Siemens,10.10.1.10\n", encoding="utf-8")
    return site_capture(tmp_path / "site.pcap"), policy_file, declared


def test_analyze_with_policy_and_inventory_counts_everything(tmp_path: Path) -> None:
    capture, policy_file, declared = site(tmp_path)
    db = tmp_path / "port.duckdb"
    result = CliRunner().invoke(main, ["analyze", str(capture), "--db", str(db), "--policy", str(policy_file),
                                       "--inventory", str(declared), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["policy_verdicts"]["violation"] == 3
    assert summary["policy_verdicts"]["external_allowed"] == 2
    assert summary["inventory_findings"]["undeclared_device"] >= 2
    assert summary["assets_by_risk"]["critical"] >= 2  # the Hikvision camera and the Quectel module


def test_policy_evaluate_prints_counts_and_escaped_violations(tmp_path: Path) -> None:
    capture, policy_file, _ = site(tmp_path)
    db = tmp_path / "port.duckdb"
    assert CliRunner().invoke(main, ["analyze", str(capture), "--db", str(db), "-q"]).exit_code == 0
    result = CliRunner(env={"COLUMNS": "300"}).invoke(
        main, ["policy", "evaluate", "--db", str(db), "--policy", str(policy_file)]
    )
    assert result.exit_code == 0, result.output
    assert "external_unapproved" in result.output and "Initiator reversed" in result.output
    document = json.loads(
        CliRunner().invoke(main, ["policy", "evaluate", "--db", str(db), "--policy", str(policy_file), "--json"]).output
    )
    assert document["verdicts"]["intra_zone"] == 3 and len(document["violations"]) == 6
    bad = tmp_path / "bad.yaml"
    bad.write_text("zones:\n  - {name: a, cidrs: [10.0.0.1/24]}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["policy", "evaluate", "--db", str(db), "--policy", str(bad)])
    assert result.exit_code == 1 and "bad.yaml:2: zones[0].cidrs[0]" in result.output


def test_assets_risk_column_filter_and_reasons(tmp_path: Path) -> None:
    capture, policy_file, _ = site(tmp_path)
    db = tmp_path / "port.duckdb"
    CliRunner().invoke(main, ["analyze", str(capture), "--db", str(db), "--policy", str(policy_file), "-q"])
    lines = CliRunner().invoke(main, ["assets", "--db", str(db), "--risk", "critical", "--json"]).output.splitlines()
    macs = {json.loads(line)["mac"] for line in lines}
    assert macs == {"44:19:b6:00:00:10", "50:80:4a:00:00:30"}
    assert {json.loads(line)["risk_level"] for line in lines} == {"critical"}
    table = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["assets", "--db", str(db)]).output
    assert "critical 100" in table
    shown = CliRunner().invoke(main, ["assets", "show", "44:19:b6:00:00:10", "--db", str(db)]).output
    assert "risk: critical (100/100)" in shown and "FCC Covered List" in shown and "internet" in shown

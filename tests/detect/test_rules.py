"""Rule files: validation with file, line and key path; SQL with bound values only; context joins; skipping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.detect.rules import RuleError, compile_rule, evaluate, load_rule_text, load_rules, parse_duration

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

RULE = """\
id: D1.external-unapproved
title: "OT host {client_ip} talks to {server_ip}"
explanation: "{count} flow(s) from OT host {client_ip} to {server_ip} outside the policy ({reason})."
from: flows
join:
  - {table: flow_policy, as: policy, on: {capture_id: capture_id, flow_id: flow_id}}
  - {table: host_context, as: client, on: {client_ip: ip}}
where:
  - {field: policy.verdict, eq: external_unapproved}
  - {field: client.ot, eq: true}
group_by: [client_ip, server_ip]
collect: [policy.reason]
evidence: {flow_ids: flow_id}
severity: high
confidence: 0.9
techniques: [T0883, T0869]
suppression: 1h
time: first_ts
"""


def test_every_shipped_rule_loads() -> None:
    rules = load_rules()
    assert {r.id for r in rules} >= {
        "D11.cleartext-login",
        "D11.http-basic-auth",
        "D11.snmp-default-community",
        "D12.listed-vendor",
        "D12.undeclared-device",
        "D12.undeclared-cellular",
    }


def test_problems_name_file_line_and_key_path() -> None:
    text = RULE.replace("group_by:", "gruop_by:").replace("T0869", "T0896").replace("eq: true}", "equals: true}")
    text = text.replace("suppression: 1h", "suppression: soon")
    rule, problems = load_rule_text(text, "bad.yaml")
    assert rule is None
    shown = [str(p) for p in problems]
    assert any(s.startswith("bad.yaml:11: gruop_by: unknown key 'gruop_by' (did you mean 'group_by'?)") for s in shown)
    assert any(s.startswith("bad.yaml:16: techniques[1]: unknown ATT&CK technique 'T0896'") for s in shown)
    assert any(s.startswith("bad.yaml:10: where[1].equals: unknown key") for s in shown)
    assert any(s.startswith("bad.yaml:17: suppression:") for s in shown)
    assert any("missing required key 'group_by'" in s for s in shown)


def test_template_fields_must_exist() -> None:
    _, problems = load_rule_text(RULE.replace("{reason}", "{password}"), "t.yaml")
    assert [p.path for p in problems] == ["explanation"] and "{password}" in problems[0].message


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30s", "15m", "1h", "2d", "1w", "1 h", "h", "-1h")] == [
        30,
        900,
        3600,
        172800,
        604800,
        3600,
        None,
        None,
    ]


def policy_store() -> duckdb.DuckDBPyConnection:
    """Flows with flow_policy and host_zones as the policy evaluation writes them."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE flows (capture_id VARCHAR, flow_id VARCHAR, community_id VARCHAR, client_ip VARCHAR, "
        "server_ip VARCHAR, first_ts TIMESTAMPTZ)"
    )
    con.execute(
        "CREATE TABLE flow_policy (capture_id VARCHAR, flow_id VARCHAR, client_zone VARCHAR, server_zone VARCHAR, "
        "conduit VARCHAR, verdict VARCHAR, reason VARCHAR)"
    )
    con.execute("CREATE TABLE host_zones (ip VARCHAR, zone VARCHAR, purdue DOUBLE, ot BOOLEAN, source VARCHAR)")
    con.execute(
        "INSERT INTO host_zones VALUES ('10.1.0.5', 'crane', 1, true, 'policy'), "
        "('10.9.0.7', 'office', 4, false, 'policy')"
    )
    flows = [
        ("f1", "10.1.0.5", "203.0.113.9", "00:00:00", "external_unapproved"),
        ("f2", "10.1.0.5", "203.0.113.9", "00:20:00", "external_unapproved"),  # within 1 h of f1: same occurrence
        ("f3", "10.1.0.5", "203.0.113.9", "05:00:00", "external_unapproved"),  # hours later: a new occurrence
        ("f4", "10.9.0.7", "203.0.113.9", "00:00:00", "external_unapproved"),  # an office PC: not OT
        ("f5", "10.1.0.5", "10.1.0.6", "00:00:00", "intra_zone"),
    ]
    for flow_id, client, server, time, verdict in flows:
        con.execute(
            "INSERT INTO flows VALUES ('c1', ?, ?, ?, ?, ?)",
            [flow_id, f"1:{flow_id}", client, server, f"2026-01-01 {time}+00"],
        )
        con.execute(
            "INSERT INTO flow_policy VALUES ('c1', ?, NULL, NULL, NULL, ?, ?)",
            [flow_id, verdict, "no conduit to external"],
        )
    return con


def test_d1_is_expressible_with_policy_and_host_context() -> None:
    con = policy_store()
    rule, problems = load_rule_text(RULE)
    assert rule is not None, problems
    summary = run_detections(con, DetectionContext(now=NOW), rules=[rule], modules=[])
    assert {name: count for name, count in summary.alerts.items() if count} == {
        "D1.external-unapproved": 2
    } and not summary.failed
    rows = con.execute(
        "SELECT key_json, count, flow_ids, first_seen, last_seen, techniques FROM alerts ORDER BY first_seen"
    ).fetchall()
    first, second = rows
    assert first[0] == '{"client_ip": "10.1.0.5", "server_ip": "203.0.113.9"}'
    assert first[1] == 2 and first[2] == ["f1", "f2"] and second[1] == 1 and second[2] == ["f3"]
    assert first[5] == [
        {"id": "T0883", "name": "Internet Accessible Device"},
        {"id": "T0869", "name": "Standard Application Layer Protocol"},
    ]


def test_values_are_bound_never_spliced() -> None:
    con = policy_store()
    hostile = "x'); DROP TABLE flows; --"
    rule, problems = load_rule_text(RULE.replace("external_unapproved", f'"{hostile}"'))
    assert rule is not None, problems
    from quaywatch.detect.registry import build_context_views

    build_context_views(con)
    compiled = compile_rule(con, rule)
    assert hostile not in compiled.sql and hostile in compiled.parameters
    assert evaluate(con, rule, NOW) == []
    assert con.execute("SELECT count(*) FROM flows").fetchone() == (5,)


def test_unknown_column_and_missing_table() -> None:
    con = policy_store()
    rule, _ = load_rule_text(RULE.replace("policy.verdict", "policy.verdikt"))
    assert rule is not None
    summary = run_detections(con, DetectionContext(now=NOW), rules=[rule], modules=[])
    assert (
        summary.failed["D1.external-unapproved"]
        == "rule.yaml:9: policy.verdikt: flow_policy (policy) has no column 'verdikt'"
    )
    con.execute("DROP TABLE flow_policy")
    summary = run_detections(con, DetectionContext(now=NOW), rules=[rule], modules=[])
    assert summary.skipped == {"D1.external-unapproved": "no table flow_policy in the store"} and not summary.failed


def test_bad_rule_folder_raises_with_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(RULE.replace("severity: high", "severity: urgent"), encoding="utf-8")
    (tmp_path / "b.yaml").write_text("id: [", encoding="utf-8")
    with pytest.raises(RuleError) as raised:
        load_rules(tmp_path)
    files = {Path(p.file).name for p in raised.value.problems}
    assert files == {"a.yaml", "b.yaml"}

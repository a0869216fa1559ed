"""D7 on the simulator: the sabotage scenario's write, STOP and download are caught, engineering work is not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.detect import catalog, ics_commands, registry, rollups
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.policy.load import load_policy, load_policy_text
from quaywatch.policy.model import Policy
from quaywatch.store.database import Store
from tests.conftest import RESEARCH_DATA
from tests.detect.simulated_d6_d7 import analysed, connect, labels

OFFICE_ENGINEER = """
- name: office-engineer
  hosts: [172.16.1.13]
  zones: [weather]
  operations: [write]
"""
WIND_BOUNDS = """
setpoints:
- name: high-wind-alarm-threshold
  targets: [10.70.0.10]
  protocol: modbus
  address: 41
  min: 0
  max: 400
  description: 0.1 m/s; above 40 m/s the wind stop never trips
"""


@pytest.fixture(scope="module")
def sabotage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sabotage")
    analysed(directory, seed=11, duration=100, scenarios=[("sabotage", {})])
    return directory


def _policy(directory: Path, extra_engineers: str = "", extra: str = "") -> Policy:
    text = (directory / "policy.yaml").read_text()
    if extra_engineers:
        text = text.replace("engineering_hosts:\n", "engineering_hosts:" + extra_engineers, 1)
    policy, problems = load_policy_text(text + extra)
    assert not [problem for problem in problems if problem.severity == "error"], problems
    return policy


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_every_sabotage_action_is_one_alert_on_its_hosts_and_time(sabotage: Path) -> None:
    policy, _ = load_policy(sabotage / "policy.yaml")
    alerts = ics_commands.detect(connect(sabotage / "db.duckdb"), DetectionContext(policy=policy))
    by_operation = {alert.key["operation"]: alert for alert in alerts}
    assert set(by_operation) == {"write", "stop", "download"}
    expected = {"sabotage/modbus-write": "write", "sabotage/plc-stop": "stop", "sabotage/download": "download"}
    for label in labels(sabotage):
        alert = by_operation[expected[label["instance"]]]
        assert alert.key["client"] == label["expect"]["source"]
        assert alert.key["server"] == label["expect"]["destination"]
        assert _time(label["start"]) <= alert.first_seen <= _time(label["end"])
        assert {flow["community_id"] for flow in label["flows"]} <= set(alert.evidence.community_ids)
        assert all(label["first_packet"] <= n <= label["last_packet"] for n in alert.evidence.packet_numbers)
    write, stop, download = by_operation["write"], by_operation["stop"], by_operation["download"]
    assert write.severity == "high" and write.evidence.values["function_codes"] == [6, 16]
    assert 9990 in write.evidence.values["values"]  # the out-of-bounds alarm threshold is in the evidence
    assert stop.severity == "critical" and "T0858" in stop.techniques and "T0816" in stop.techniques
    assert download.severity == "critical" and "T0843" in download.techniques
    assert set(download.evidence.values["function_codes"]) == {0x1A, 0x1B, 0x1C}
    assert all(alert.score_components[1].name == "authorisation" for alert in alerts)


def test_an_authorised_writer_is_quiet_until_it_writes_outside_the_setpoint_bounds(sabotage: Path) -> None:
    con = connect(sabotage / "db.duckdb")
    authorised = _policy(sabotage, OFFICE_ENGINEER)
    alerts = ics_commands.detect(con, DetectionContext(policy=authorised))
    assert {alert.key["operation"] for alert in alerts} == {"stop", "download"}  # the write is now allowed
    bounded = _policy(sabotage, OFFICE_ENGINEER, WIND_BOUNDS)
    write = next(a for a in ics_commands.detect(con, DetectionContext(policy=bounded)) if a.key["operation"] == "write")
    assert write.severity == "critical"
    assert [c.name for c in write.score_components] == ["operation", "setpoint bounds"]
    violation = write.evidence.values["setpoint_violations"][0]
    assert (violation["register"], violation["value"], violation["max"]) == (41, 9990, 400.0)
    assert write.count == 1  # only the FC16 threshold write; the FC6 enable write was authorised and in bounds


def test_without_a_policy_the_learned_baseline_judges_and_without_one_it_is_silent(sabotage: Path) -> None:
    con = connect(sabotage / "db.duckdb")
    assert ics_commands.detect(con, DetectionContext()) == []
    learned = ics_commands.detect(con, DetectionContext(options={"learning_until": "2025-11-25T08:55:30+00:00"}))
    operations = {alert.key["operation"]: alert for alert in learned if alert.key["client"] == "172.16.1.13"}
    assert set(operations) == {"stop", "download"}  # the Modbus write fell in the learning period
    assert operations["stop"].confidence < 0.9 and operations["stop"].evidence.values["judged_by"] == "baseline"


def test_the_engine_runs_it_and_writes_its_alerts(sabotage: Path, tmp_path: Path) -> None:
    assert ics_commands in registry.MODULES
    database = tmp_path / "copy.duckdb"
    database.write_bytes((sabotage / "db.duckdb").read_bytes())
    import duckdb

    con = duckdb.connect(str(database))
    policy, _ = load_policy(sabotage / "policy.yaml")
    summary = run_detections(con, DetectionContext(policy=policy), rules=[], modules=[ics_commands])
    assert summary.alerts[ics_commands.DETECTION] == 3
    rows = con.execute("SELECT severity, count(*) FROM alerts GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("critical", 2), ("high", 1)]


@pytest.mark.parametrize(
    ("protocol", "code", "detail", "name", "action"),
    [
        ("modbus", 6, None, None, "write"),
        ("modbus", 22, None, None, "write"),
        ("s7comm", 0x29, "P_PROGRAM", None, "stop"),
        ("s7comm", 0x28, "P_PROGRAM", None, "start"),
        ("s7comm", 0x1B, None, None, "download"),
        ("s7comm", 0x1E, None, None, "upload"),
        ("cip", 0x05, None, None, "reset"),
        ("cip", 0x07, None, None, "stop"),
        ("cip", 0x4D, None, None, "write"),
        ("dnp3", 0x0D, None, None, "reset"),
        ("dnp3", 0x05, None, None, "control"),
        ("iec104", 105, None, None, "reset"),
        ("iec104", 50, None, None, "write"),
        ("opcua", 712, None, "CallRequest", "control"),
        ("opcua", 673, None, "WriteRequest", "write"),
        ("bacnet", 20, None, None, "reset"),
        ("profinet_dcp", 4, "Reset to Factory", None, "reset"),
    ],
)
def test_each_protocol_command_maps_to_the_action_its_severity_follows(
    protocol: str, code: int, detail: str | None, name: str | None, action: str
) -> None:
    assert ics_commands.action_of(protocol, code, detail, name) == action


# -- setpoints beyond Modbus, on real captures -----------------------------------------------------------------

SETPOINT_CAPTURES = {
    # IEC 104 C_SE_NC_1 (type 50, short float) set-point commands in activation to IOA 5020: 12, 12, -43.5, -43.5.
    "iec104": ("iti-ics-security-tools/pcaps/IEC60870-5-104/090813_diverse.pcap", "address: 5020"),
    # opendnp3 conformance: group 41 analog output blocks, value 10, by SELECT, OPERATE and DIRECT_OPERATE.
    "dnp3": ("iti-ics-security-tools/pcaps/dnp3/opendnp3-3/conformance/8.4.4.2/dump.pcap", "address: 19"),
    # open62541's client writes Int32 2 to the variable ns=1;s=the.answer.
    "opcua": ("icsnpp-opcua-binary/pcaps/open62541_client-server_mainloop.pcap", "node: 'ns=1;s=the.answer'"),
}


def _setpoint_store(tmp_path: Path, relative: str) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    path = RESEARCH_DATA / relative
    if not path.exists():
        pytest.skip(f"research capture {path} not found")
    store = Store(tmp_path / "q.duckdb")
    Analyzer(store).analyze(path)
    store.flush()
    servers = [row[0] for row in store.connection.execute("SELECT DISTINCT server_ip FROM flows").fetchall()]
    return store.connection, servers


def _bounded_policy(servers: list[str], protocol: str, where: str, bounds: str) -> Policy:
    """Every server is an engineering host's target, so only a bound can make the writes an alert."""
    targets = ", ".join(f'"{server}"' for server in servers)
    text = f"""zones:
- {{name: plant, cidrs: ["0.0.0.0/0", "::/0"]}}
engineering_hosts:
- name: everyone
  hosts: ["0.0.0.0/0", "::/0"]
  zones: [plant]
  operations: [read, write, download, upload, stop, start, control, diagnostics, identify]
setpoints:
- {{name: bounded, targets: [{targets}], protocol: {protocol}, {where}, {bounds}}}
"""
    policy, problems = load_policy_text(text)
    assert not [problem for problem in problems if problem.severity == "error"], problems
    assert len(policy.setpoints) == 1
    return policy


@pytest.mark.oracle
@pytest.mark.parametrize("protocol", sorted(SETPOINT_CAPTURES))
def test_setpoints_bound_iec104_dnp3_and_opcua_writes(protocol: str, tmp_path: Path) -> None:
    relative, where = SETPOINT_CAPTURES[protocol]
    con, servers = _setpoint_store(tmp_path, relative)
    inside = ics_commands.detect(
        con, DetectionContext(policy=_bounded_policy(servers, protocol, where, "min: -1000, max: 1000"))
    )
    assert inside == []  # authorised and in bounds: quiet
    tight = _bounded_policy(servers, protocol, where, "min: 0, max: 1")
    alerts = [a for a in ics_commands.detect(con, DetectionContext(policy=tight)) if a.key["protocol"] == protocol]
    assert alerts, f"no {protocol} setpoint alert"
    violations = [v for alert in alerts for v in alert.evidence.values["setpoint_violations"]]
    expected = {"iec104": "IOA 5020", "dnp3": "analog output 19", "opcua": "node ns=1;s=the.answer"}[protocol]
    assert violations and {v["object"] for v in violations} == {expected}
    assert all(v["value"] < 0 or v["value"] > 1 for v in violations)
    for alert in alerts:
        assert alert.severity == "critical" and "outside setpoint bounds" in alert.title
        assert [c.name for c in alert.score_components] == ["operation", "setpoint bounds"]  # authorised writer
        assert expected in alert.score_components[1].explanation
    # Every violation belongs to one command of its alert: as many as the commands that carried a bounded value.
    counted = {
        "iec104": "SELECT count(*) FROM iec104 WHERE is_command AND cause = 6 "
        "AND information_object_addresses[1] = 5020 AND (setpoint < 0 OR setpoint > 1)",
        "dnp3": 'SELECT count(*) FROM dnp3_control WHERE direction = \'to_server\' AND "group" = 41 AND "index" = 19 '
        "AND function_code IN (4, 5, 6)",
        "opcua": "SELECT count(*) FROM opcua_item WHERE service = 'WriteRequest' AND node_id = 'ns=1;s=the.answer' "
        "AND attribute_id = 13 AND TRY_CAST(value AS DOUBLE) > 1",
    }[protocol]
    (rows,) = con.execute(counted).fetchone() or (0,)
    assert len(violations) == rows > 0


def _commands_row_by_row(con: duckdb.DuckDBPyConnection) -> list[ics_commands.Command]:
    """The commands as read before the Arrow fetch: the decoder tables' rows one by one through fetchall()."""
    selects = ics_commands.command_sources(catalog.tables(con))
    rows = con.execute(" UNION ALL ".join(selects) + " ORDER BY ts, packet_number").fetchall()
    return [
        ics_commands.Command(str(protocol), str(capture_id), flow_id, community_id, ts, packet, str(client),
                             str(server), code, name, base_code, unit_id, address, list(written or []), detail or None)
        for (protocol, capture_id, flow_id, community_id, ts, packet, client, server, code, name, base_code, unit_id,
             address, written, detail) in rows
        if client is not None and server is not None
    ]  # fmt: skip


def test_the_arrow_fetch_gives_the_commands_of_the_row_by_row_fetch(sabotage: Path) -> None:
    """Same commands, times (to the microsecond, in UTC) and order, from the decoder tables and from the summaries."""
    con = connect(sabotage / "db.duckdb")
    assert rollups.COMMAND_EVENTS in catalog.tables(con)  # the analysis summarised the capture
    expected = _commands_row_by_row(con)
    raw = duckdb.connect()  # the decoder tables only: no summary, so commands() reads them
    raw.execute(f"ATTACH '{sabotage / 'db.duckdb'}' AS source (READ_ONLY)")
    for table in sorted(catalog.tables(con) & {source for source, _ in ics_commands.SOURCES.values()}):
        raw.execute(f"CREATE TABLE {table} AS SELECT * FROM source.{table}")
    raw.execute("DETACH source")
    found = {"summaries": ics_commands.commands(con), "decoder tables": ics_commands.commands(raw)}
    assert expected and any(command.written for command in expected)
    for where, commands in found.items():
        assert commands == expected, where
        assert all(command.ts.utcoffset() == dt.timedelta(0) for command in commands), where

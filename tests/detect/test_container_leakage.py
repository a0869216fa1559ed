"""D6 on the simulator: container ids and EDIFACT leaving for a non-partner are caught, the OCR/EDI flows are not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from quaywatch.detect import container_leakage, ics_commands, registry
from quaywatch.detect.alert import Alert, EventReference
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.policy.load import load_policy
from tests.detect.simulated_d6_d7 import analysed, connect, labels

EXFILTRATION_HOST, DROP = "10.20.0.7", "45.142.212.61"


@pytest.fixture(scope="module")
def exfiltration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("exfiltration")
    analysed(directory, seed=12, duration=100, scenarios=[("container-exfiltration", {})])
    return directory


def test_cleartext_and_mqtt_exfiltration_is_one_alert_per_kind_family(exfiltration: Path) -> None:
    policy, _ = load_policy(exfiltration / "policy.yaml")
    alerts = container_leakage.detect(connect(exfiltration / "db.duckdb"), DetectionContext(policy=policy))
    assert {(a.key["source"], a.key["destination"], a.key["family"]) for a in alerts} == {
        (EXFILTRATION_HOST, DROP, "container_ids"),
        (EXFILTRATION_HOST, DROP, "edifact"),
    }  # every normal OCR, TOS and EDI flow stays on its allowed conduit, zone or partner
    ids = next(a for a in alerts if a.key["family"] == "container_ids")
    visible = [label for label in labels(exfiltration) if label["expect"]["details"].get("content_visible")]
    assert {label["expect"]["details"]["variant"] for label in visible} == {"cleartext", "mqtt"}
    truth = {value for label in visible for value in label["expect"]["details"]["container_id_list"]}
    found = set(ids.evidence.values["container_ids"])
    assert len(found) >= container_leakage.MIN_DISTINCT_IDS and found <= truth
    assert ids.evidence.values["distinct_valid_ids"] == len(found)
    assert ids.severity == "high" and ids.confidence == 0.9
    assert "one time in ten" in ids.score_components[0].explanation
    assert "external" in ids.evidence.values["destination"]
    assert min(dt.datetime.fromisoformat(label["start"]) for label in visible) <= ids.first_seen
    assert ids.last_seen <= max(dt.datetime.fromisoformat(label["end"]) for label in visible)
    ports = {port for label in visible for port in [label["expect"]["details"]["server_port"]]}
    assert ports <= set(ids.evidence.values["server_ports"])  # both variants: the TCP upload and MQTT
    uploads = {flow["community_id"] for label in visible for flow in label["flows"]}
    assert set(ids.evidence.community_ids) <= uploads  # only the exfiltration flows, no normal OCR/EDI one
    edifact = next(a for a in alerts if a.key["family"] == "edifact")
    assert any(message.startswith("COARRI") for message in edifact.evidence.values["edifact_messages"])
    assert edifact.evidence.values["ports_of_loading"] and edifact.evidence.packet_numbers
    assert [event.packet_number for event in ids.evidence.events] == ids.evidence.packet_numbers  # no duplicates


def test_without_a_policy_only_public_destinations_alert_with_lower_confidence(exfiltration: Path) -> None:
    alerts = container_leakage.detect(connect(exfiltration / "db.duckdb"), DetectionContext())
    assert {a.key["destination"] for a in alerts} == {DROP}
    assert all(a.confidence == 0.6 and a.severity == "medium" for a in alerts)
    assert "No container_data policy" in alerts[0].score_components[-1].explanation


def _cargo_table(rows: list[tuple[str, str, bool]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE cargo_content (capture_id VARCHAR, flow_id VARCHAR, community_id VARCHAR, client_ip VARCHAR, "
        "server_ip VARCHAR, server_port INTEGER, direction VARCHAR, ts TIMESTAMPTZ, packet_number BIGINT, "
        "kind VARCHAR, value VARCHAR, valid BOOLEAN)"
    )
    for number, (kind, value, valid) in enumerate(rows, start=1):
        con.execute(
            "INSERT INTO cargo_content VALUES ('c', 'f1', '1:x', '10.0.0.5', '203.0.113.9', 80, 'to_server', "
            "TIMESTAMPTZ '2025-01-01 10:00:00+00' + to_seconds(?), ?, ?, ?, ?)",
            [number, number, kind, value, valid],
        )
    return con


def test_one_valid_id_may_be_chance_two_are_not() -> None:
    con = _cargo_table([("container_id", "CSQU3054383", True), ("container_id", "ABCU1234560", False)])
    con.execute("UPDATE cargo_content SET server_ip = '45.142.212.61'")  # public (documentation ranges are not)
    assert container_leakage.detect(con, DetectionContext()) == []
    con.execute(
        "INSERT INTO cargo_content SELECT * REPLACE ('MSKU6695549' AS value, 3 AS packet_number) FROM cargo_content "
        "WHERE valid"
    )
    alerts = container_leakage.detect(con, DetectionContext())
    assert len(alerts) == 1 and alerts[0].evidence.values["distinct_valid_ids"] == 2
    assert alerts[0].evidence.values["invalid_id_matches"] == 1
    assert sorted(alerts[0].evidence.packet_numbers) == [1, 2, 3]


def test_a_clean_working_day_gives_no_d6_or_d7_alert(tmp_path: Path) -> None:
    assert container_leakage in registry.MODULES and ics_commands in registry.MODULES
    database = analysed(tmp_path, seed=3, duration=180, scenarios=[])
    policy, _ = load_policy(tmp_path / "policy.yaml")
    con = duckdb.connect(str(database))
    summary = run_detections(con, DetectionContext(policy=policy), rules=[], modules=[container_leakage, ics_commands])
    assert summary.alerts == {container_leakage.DETECTION: 0, ics_commands.DETECTION: 0}
    assert con.execute("SELECT count(*) FROM cargo_content WHERE valid").fetchone() != (0,)  # there was cargo data
    assert {command.client for command in ics_commands.commands(con)} == {"10.40.0.5"}  # eng-ws-01 wrote a setpoint


def _reference(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """D6 as it was computed before the aggregation moved to SQL: every row in order, grouped in Python."""
    rules = context.policy.container_data if context.policy is not None else ()
    present = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    judged = bool(rules) and "flow_policy" in present
    policy = "p.verdict, p.conduit, p.client_zone, p.server_zone" if judged else "NULL, NULL, NULL, NULL"
    join = "LEFT JOIN flow_policy AS p ON p.capture_id = c.capture_id AND p.flow_id = c.flow_id" if judged else ""
    rows = con.execute(
        f"SELECT c.capture_id, c.flow_id, c.community_id, c.client_ip, c.server_ip, c.server_port, c.direction, c.ts, "
        f"c.packet_number, c.kind, c.value, c.valid, {policy} FROM cargo_content AS c {join} "
        "WHERE c.kind IN ('container_id', 'edifact_message', 'edifact_location') "
        "ORDER BY c.ts, c.packet_number, c.kind, c.value"
    ).fetchall()
    groups: dict[tuple[str, str, str], tuple[container_leakage._Group, dict[str, str]]] = {}
    for (capture_id, flow_id, community_id, client, server, server_port, direction, ts, packet, kind, value, valid,
         verdict, conduit, client_zone, server_zone) in rows:  # fmt: skip
        family = container_leakage._family(kind)
        to_client = direction == "to_client"
        source, destination = (server, client) if to_client else (client, server)
        source_zone, destination_zone = (server_zone, client_zone) if to_client else (client_zone, server_zone)
        if source is None or destination is None:
            continue
        if judged:
            if container_leakage._allowed_by(rules, family, verdict, conduit, source_zone, destination_zone):
                continue
            reason = f"no container_data rule allows {family} on this flow (verdict {verdict or 'unknown'})"
        else:
            if not container_leakage._public(destination):
                continue
            reason = "sent to a public address (no container_data policy to judge against)"
        if (source, destination, family) not in groups:
            group = container_leakage._Group(source, destination, family, source_zone, destination_zone)
            group.where = container_leakage._where(verdict, conduit, destination_zone, destination)
            groups[(source, destination, family)] = (group, {})
        group, flows = groups[(source, destination, family)]
        container_leakage._add(group.reasons, reason)
        group.rows += 1
        group.first = ts if group.first is None else min(group.first, ts)
        group.last = ts if group.last is None else max(group.last, ts)
        if flow_id:
            flows.setdefault(flow_id, community_id or "")
        container_leakage._add(group.ports, server_port)
        if (
            packet is not None
            and len(group.packets) < container_leakage.EVIDENCE_PACKETS
            and packet not in group.packets
        ):
            group.packets.append(packet)
            group.events.append(EventReference("cargo_content", capture_id, packet, flow_id))
        if kind == "container_id":
            if valid:
                container_leakage._add(group.ids, value)
            else:
                group.invalid_ids += 1
        elif kind == "edifact_message":
            container_leakage._add(group.messages, value)
        else:
            qualifier, _, location = value.partition(":")
            if qualifier == container_leakage.LOADING:
                container_leakage._add(group.loading, location)
            elif qualifier == container_leakage.DISCHARGE:
                container_leakage._add(group.discharge, location)
    alerts = []
    for group, flows in groups.values():
        group.distinct_ids, group.ids = len(group.ids), group.ids[: container_leakage.LISTED_IDS]
        group.ports = group.ports[: container_leakage.LISTED_IDS]
        group.flow_count = len(flows)
        group.flow_ids = list(flows)[: container_leakage.EVIDENCE_PACKETS]
        group.community_ids = [c for c in dict.fromkeys(flows.values()) if c][: container_leakage.EVIDENCE_PACKETS]
        if group.family == "container_ids" and group.distinct_ids < container_leakage.MIN_DISTINCT_IDS:
            continue
        if group.family == "edifact" and not group.messages:
            continue
        alerts.append(container_leakage._alert(group, judged))
    return alerts


@pytest.mark.parametrize("with_policy", [True, False])
def test_sql_aggregation_gives_the_alerts_of_the_row_by_row_grouping(exfiltration: Path, with_policy: bool) -> None:
    """Same alerts, evidence order included, as grouping every row in Python; also with matches in many captures."""
    policy, _ = load_policy(exfiltration / "policy.yaml")
    context = DetectionContext(policy=policy if with_policy else None)
    con = duckdb.connect()
    con.execute(f"ATTACH '{exfiltration / 'db.duckdb'}' AS source (READ_ONLY)")
    for table in ("cargo_content", "flow_policy"):  # a second capture of the same traffic, its packets renumbered
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM source.{table}")
        con.execute(f"INSERT INTO {table} SELECT * REPLACE (capture_id || '-again' AS capture_id) FROM source.{table}")
    con.execute("UPDATE cargo_content SET packet_number = packet_number + 7 WHERE capture_id LIKE '%-again'")
    alerts = container_leakage.detect(con, context)
    assert alerts and alerts == _reference(con, context)

"""Scenario 1: the undeclared Quectel module on crane 2, seen by tshark and by quaywatch's own analysis."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pytest

from quaywatch.sim.simulate import INVENTORY, TRUTH
from tests.sim.scenarios.checks import analyse, check_capture, fields, labels, run

PARAMETERS = {"start": 4, "period": 12, "upload_every": 2, "plc_start": 3, "plc_period": 8, "dhcp_at": 6}
MODEM_IP = "10.10.2.99"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-modem"), [("cellular-modem", PARAMETERS)])


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def test_capture_is_clean_labelled_and_leaves_normal_traffic_alone(attacked: Path, clean_run: Path) -> None:
    check_capture(attacked, clean_run)


def test_labels_name_the_modem_the_cloud_and_the_techniques(attacked: Path) -> None:
    found = labels(attacked)
    beacon = found["cellular-modem/beacon"]
    assert beacon["hosts"] == [MODEM_IP, "47.103.24.117"]
    assert {"T0883", "T0884"} <= set(beacon["techniques"])
    assert {"D3", "D4", "D12"} <= set(beacon["expect"]["detections"])
    assert beacon["expect"]["details"]["period_seconds"] == 12
    assert all(flow["destination_port"] == 443 for flow in beacon["flows"])
    upload = found["cellular-modem/upload"]
    assert upload["expect"]["detections"][0] == "D6"
    assert upload["expect"]["details"]["container_ids"] >= 1
    assert found["cellular-modem/dhcp-server"]["packets"] == 4
    assert found["cellular-modem/plc-read"]["expect"]["destination"] == "10.10.2.10"


def test_the_modem_is_in_the_truth_but_not_in_the_declared_inventory(attacked: Path) -> None:
    devices = {device["name"]: device for device in json.loads((attacked / TRUTH).read_text())["devices"]}
    modem = devices["sts02-cellular-modem"]
    assert (modem["maker"], modem["declared"], modem["ip"]) == ("Quectel", False, MODEM_IP)
    with (attacked / INVENTORY).open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(MODEM_IP not in row["ip"] and row["mac"] != modem["mac"] for row in rows)


def test_the_modem_is_its_own_gateway_with_carrier_ttls(attacked: Path) -> None:
    rows = fields(attacked / "capture.pcapng", "eth.src", "eth.dst", "ip.src", "ip.ttl",
                  display_filter="ip.addr == 47.103.24.117")  # fmt: skip
    assert rows
    macs = {row[0] for row in rows} | {row[1] for row in rows}
    assert len(macs) == 1 and next(iter(macs)).startswith("c4:a6:4e")  # Quectel OUI both ways, no firewall MAC
    assert {row[3] for row in rows if row[2] == "47.103.24.117"} == {"46"}


def test_analysis_shows_the_evidence_in_the_right_tables(store: duckdb.DuckDBPyConnection, attacked: Path) -> None:
    query = "SELECT server_name FROM tls WHERE client_ip = ? AND handshake_type = 1"
    names = {row[0] for row in store.execute(query, [MODEM_IP]).fetchall()}
    assert names == {"iot-telemetry.example-cloud.cn"}
    posts = store.execute(
        "SELECT host, uri, request_body_head FROM http WHERE client_ip = ? AND method = 'POST'", [MODEM_IP]
    ).fetchall()
    expected = labels(attacked)["cellular-modem/upload"]["expect"]["details"]["container_id_list"]
    assert posts and posts[0][:2] == ("iot-telemetry.example-cloud.cn", "/api/v2/crane/lift-report")
    assert expected[0].encode() in b"".join(bytes(row[2]) for row in posts) or len(posts[0][2]) == 256
    offers = store.execute(
        "SELECT server_id, routers, client_mac FROM dhcp WHERE message_type_name = 'OFFER'"
    ).fetchall()
    assert offers and offers[0][0] == MODEM_IP and offers[0][1] == [MODEM_IP]
    queries = {row[0] for row in store.execute("SELECT query_name FROM dns WHERE client_ip = ?", [MODEM_IP]).fetchall()}
    assert "epdg.epc.mnc008.mcc204.pub.3gppnetwork.org" in queries
    reads = store.execute("SELECT count(*) FROM enip WHERE client_ip = ? AND server_ip = '10.10.2.10'", [MODEM_IP])
    assert reads.fetchone()[0] > 0  # type: ignore[index]


def test_asset_inventory_finds_an_undeclared_quectel_modem(attacked: Path, store: duckdb.DuckDBPyConnection) -> None:
    from quaywatch.assets.inventory import build_inventory
    from quaywatch.store.database import Store

    store.close()
    writable = Store(attacked / "quaywatch.duckdb")
    build_inventory(writable)
    row = writable.connection.execute(
        "SELECT role, maker FROM assets WHERE list_contains(ips, ?)", [MODEM_IP]
    ).fetchone()
    writable.close()
    assert row is not None and row[0] == "cellular router or modem" and row[1].startswith("Quectel")

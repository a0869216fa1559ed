"""Scenario 3: container ids and their ports leave the OCR zone for a non-partner, in three variants."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from quaywatch.sim import edifact
from quaywatch.sim.physics import check_digit
from tests.sim.scenarios.checks import analyse, check_capture, fields, labels, run

OCR_IP = "10.20.0.7"
SINK_IP = "45.142.212.61"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-exfil"), [("container-exfiltration", {"start": 2, "period": 12})])


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def test_capture_is_clean_labelled_and_leaves_normal_traffic_alone(attacked: Path, clean_run: Path) -> None:
    check_capture(attacked, clean_run)


def test_one_label_per_variant_with_the_moved_container_ids(attacked: Path) -> None:
    found = labels(attacked)
    assert set(found) == {f"container-exfiltration/{name}" for name in ("cleartext", "mqtt", "https")}
    for record in found.values():
        assert record["hosts"] == [OCR_IP, SINK_IP] and record["packets"] > 0
        ids = record["expect"]["details"]["container_id_list"]
        assert ids and all(check_digit(box[:10]) == int(box[10]) for box in ids)
    assert found["container-exfiltration/https"]["expect"]["details"]["content_visible"] is False
    assert found["container-exfiltration/https"]["expect"]["detections"] == ["D1"]
    assert "D6" in found["container-exfiltration/mqtt"]["expect"]["detections"]


def test_cleartext_carries_edifact_loc_pairs(attacked: Path) -> None:
    payloads = fields(attacked / "capture.pcapng", "tcp.payload", display_filter="tcp.dstport == 7070 && tcp.len > 0")
    text = b"".join(bytes.fromhex(row[0].replace(":", "")) for row in payloads).decode()
    ids = labels(attacked)["container-exfiltration/cleartext"]["expect"]["details"]["container_id_list"]
    for box in ids:
        assert f"EQD+CN+{box}+" in text
    assert text.count("LOC+9+") == text.count("LOC+11+") >= len(ids)
    interchanges = ["UNA" + part for part in text.split("UNA")[1:]]  # one per batch (connection)
    assert interchanges and all(edifact.problems(interchange) == [] for interchange in interchanges)


def test_analysis_shows_mqtt_publishes_and_the_tls_server_name(
    attacked: Path, store: duckdb.DuckDBPyConnection
) -> None:
    publishes = store.execute(
        "SELECT topic, client_ip, server_ip FROM mqtt WHERE packet_type = 'PUBLISH' ORDER BY ts"
    ).fetchall()
    ids = labels(attacked)["container-exfiltration/mqtt"]["expect"]["details"]["container_id_list"]
    assert len(publishes) >= len(ids)
    assert {row[1:] for row in publishes} == {(OCR_IP, SINK_IP)}
    assert publishes[0][0] == "terminal/terminal/ocr/reads"
    names = store.execute(
        "SELECT server_name FROM tls WHERE client_ip = ? AND server_ip = ? AND handshake_type = 1", [OCR_IP, SINK_IP]
    )
    assert {row[0] for row in names.fetchall()} == {"sync.cargo-insight.example.net"}
    payloads = fields(attacked / "capture.pcapng", "mqtt.msg", display_filter="mqtt.msgtype == 3")
    first = json.loads(bytes.fromhex(payloads[0][0].replace(":", "")))
    assert first["container"] in ids and {"pol", "pod"} <= set(first)

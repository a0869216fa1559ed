"""MQTT against Zeek's btest baselines, byte-at-a-time equivalence, fuzzing, probing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Direction
from quaywatch.decode.mqtt import QOS_NAMES, MqttDecoder, MqttSession
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH, Agreement, Row, read_log, replay, tcp_streams

ZEEK = RESEARCH / "zeek-btest/testing/btest"
TRACE = ZEEK / "Traces/mqtt.pcap"
BASELINE = ZEEK / "Baseline/scripts.base.protocols.mqtt.mqtt"
EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def packets(tmp_path: Path) -> list[Row]:
    store = Store(tmp_path / "mqtt.duckdb")
    Analyzer(store, decoders=[MqttDecoder()]).analyze(require(TRACE))
    cursor = store.connection.execute("SELECT * FROM mqtt ORDER BY packet_number")
    names = [c[0] for c in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    store.close()
    return rows


def check(agreement: Agreement, title: str) -> None:
    print("\n" + agreement.report(title))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    assert all(agreement.ratio(name) == 1.0 for name in agreement.fields)


@pytest.mark.oracle
def test_connect_agrees_with_zeek(tmp_path: Path) -> None:
    rows = packets(tmp_path)
    status = {r["flow_id"]: r["return_status"] for r in rows if r["packet_type"] == "CONNACK"}
    ours = [
        {
            "proto_name": r["protocol_name"],
            "proto_version": r["protocol_version"],
            "client_id": r["client_id"],
            "connect_status": status.get(r["flow_id"]),
            "will_topic": r["will_topic"],
        }
        for r in rows
        if r["packet_type"] == "CONNECT"
    ]
    agreement = Agreement(list(ours[0]))
    agreement.score(ours, read_log(BASELINE / "mqtt_connect.log"), key=lambda r: r["client_id"])
    check(agreement, "zeek mqtt_connect")


@pytest.mark.oracle
def test_publish_agrees_with_zeek(tmp_path: Path) -> None:
    ours = [
        {
            "from_client": "T" if r["direction"] == "to_server" else "F",
            "retain": "T" if r["retain"] else "F",
            "qos": QOS_NAMES[r["qos"]],
            "topic": r["topic"],
            "payload": r["payload_head"].decode("utf-8", "backslashreplace"),
            "payload_len": str(r["payload_length"]),
        }
        for r in packets(tmp_path)
        if r["packet_type"] == "PUBLISH"
    ]
    theirs = read_log(BASELINE / "mqtt_publish.log")
    agreement = Agreement(list(ours[0]))
    agreement.score(ours, theirs, key=lambda r: (r["from_client"], r["payload"]))
    check(agreement, "zeek mqtt_publish")


@pytest.mark.oracle
def test_subscribe_agrees_with_zeek(tmp_path: Path) -> None:
    rows = packets(tmp_path)
    granted = {r["flow_id"]: r["granted_qos"] for r in rows if r["packet_type"] == "SUBACK"}
    ours = [
        {
            "action": "MQTT::SUBSCRIBE",
            "topics": ",".join(r["topics"]),
            "qos_levels": ",".join(map(str, r["requested_qos"])),
            "granted_qos_level": ",".join(map(str, granted.get(r["flow_id"]) or [])),
            "ack": "T" if r["flow_id"] in granted else "F",
        }
        for r in rows
        if r["packet_type"] == "SUBSCRIBE"
    ]
    agreement = Agreement(list(ours[0]))
    agreement.score(ours, read_log(BASELINE / "mqtt_subscribe.log"), key=lambda r: r["topics"])
    check(agreement, "zeek mqtt_subscribe")


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    total = 0
    for chunks in tcp_streams(require(TRACE), 1883):
        whole = replay(MqttSession(), chunks, one_byte=False)
        assert replay(MqttSession(), chunks, one_byte=True) == whole
        total += len(whole)
    assert total >= 20


def test_mqtt5_connect_with_credentials_keeps_no_password() -> None:
    properties = b"\x00"
    payload = b"\x00\x06crane4" + b"\x00\x05admin" + b"\x00\x08s3cr3t!!"
    variable = b"\x00\x04MQTT\x05\xc2\x00\x3c" + properties
    body = variable + payload
    packet = b"\x10" + bytes([len(body)]) + body
    assert MqttDecoder().probe(packet, Direction.TO_SERVER, 1883)
    (event,) = MqttSession().feed(packet, Direction.TO_SERVER, 0.0)
    assert (event.fields["protocol_version"], event.fields["client_id"], event.fields["user_name"]) == (
        "5.0",
        "crane4",
        "admin",
    )
    assert event.fields["password_present"] is True and event.fields["password_length"] == 8
    assert b"s3cr3t" not in repr(event.fields).encode()


def test_probe_rejects_other_protocols() -> None:
    assert not MqttDecoder().probe(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n", Direction.TO_SERVER, 1883)
    assert not MqttDecoder().probe(bytes.fromhex("000100000006010300000001"), Direction.TO_SERVER, 1883)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(chunks=st.lists(st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=300)), max_size=20))
def test_random_streams_never_raise(chunks: list[tuple[Direction, bytes]]) -> None:
    session = MqttSession()
    for direction, data in chunks:
        session.feed(data, direction, 0.0)
    session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    kind=st.integers(1, 15), flags=st.integers(0, 15), body=st.binary(max_size=120), version=st.sampled_from([3, 4, 5])
)
def test_well_framed_random_packets_never_raise(kind: int, flags: int, body: bytes, version: int) -> None:
    session = MqttSession()
    session.version = version
    events = session.feed(bytes([kind << 4 | flags, len(body)]) + body, Direction.TO_SERVER, 0.0)
    assert events and events[0].table == "mqtt"

"""DHCPv4 decoder: hand-built messages, probing, datagram-alone equivalence with the pipeline, truncation at every
length and fuzzing. The tshark comparison is in test_dhcp_tshark.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.dhcp import TABLES, DhcpDecoder, DhcpSession
from tests.decode.dhcp.common import CLIENT, analyse_frames, ip4, message, option, synthetic_frames
from tests.decode.oracles import replay

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
TABLE_NAMES = (*TABLES, "anomaly")


def decode(datagram: bytes) -> list[Event]:
    return DhcpSession().feed(datagram, Direction.TO_SERVER, 0.0)


def rows(events: list[Event], table: str = "dhcp") -> list[dict[str, object]]:
    return [event.fields for event in events if event.table == table]


def test_discover_gives_the_fingerprint() -> None:
    discover = message(
        1,
        0xDEADBEEF,
        option(53, b"\x01")
        + option(12, b"cam-\xff01")
        + option(60, b"udhcp 1.30.1")
        + option(61, b"\x01" + CLIENT)
        + option(55, bytes([1, 3, 6, 12, 15, 28, 42])),
    )
    events = decode(discover)
    (row,) = rows(events)
    assert events[0].event_type == "discover" and not rows(events, "anomaly")
    assert (row["op_name"], row["xid"], row["client_mac"]) == ("request", 0xDEADBEEF, "00:a0:45:1c:2d:3e")
    assert row["hostname"] == "cam-\\xff01"  # attacker-controlled text is kept, never interpreted
    assert row["vendor_class_id"] == "udhcp 1.30.1"
    assert row["client_id"] == b"\x01" + CLIENT and row["client_id_mac"] == "00:a0:45:1c:2d:3e"
    assert row["parameter_request_list"] == [1, 3, 6, 12, 15, 28, 42]
    assert row["parameter_request_string"] == "1,3,6,12,15,28,42"
    assert row["options"] == [53, 12, 60, 61, 55, 255]


def test_offer_names_the_server_and_its_gateways() -> None:
    offer = message(
        2,
        7,
        option(53, b"\x02")
        + option(54, ip4("192.168.8.1"))
        + option(3, ip4("192.168.8.1") + ip4("192.168.8.2"))
        + option(6, ip4("192.168.8.1"))
        + option(1, ip4("255.255.255.0"))
        + option(51, struct.pack(">I", 0xFFFFFFFF)),
        yiaddr="192.168.8.100",
    )
    (row,) = rows(decode(offer))
    assert (row["message_type"], row["message_type_name"]) == (2, "OFFER")
    assert row["server_id"] == "192.168.8.1" and row["routers"] == ["192.168.8.1", "192.168.8.2"]
    assert (row["yiaddr"], row["subnet_mask"], row["lease_time"]) == ("192.168.8.100", "255.255.255.0", 0xFFFFFFFF)


def test_split_option_is_concatenated_rfc_3396() -> None:
    (row,) = rows(decode(message(1, 1, option(53, b"\x01") + option(12, b"crane-") + option(12, b"07"))))
    assert row["hostname"] == "crane-07" and row["options"] == [53, 12, 12, 255]


def test_option_overload_reads_file_and_sname() -> None:
    data = message(
        2,
        1,
        option(53, b"\x05") + option(52, b"\x03"),
        file=option(15, b"port.example") + b"\xff",
        sname=option(12, b"from-sname") + b"\xff",
    )
    (row,) = rows(decode(data))
    assert (row["overload"], row["domain_name"], row["hostname"]) == (3, "port.example", "from-sname")
    assert row.get("server_name") is None and row.get("boot_file") is None


def test_plain_bootp_and_damage_become_anomalies() -> None:
    bootp = message(1, 1, b"")[:236] + b"\x00" * 64
    events = decode(bootp)
    assert events[0].event_type == "bootp"
    assert [e["code"] for e in rows(events, "anomaly")] == ["bad_magic_cookie"]
    assert [e["code"] for e in rows(decode(bootp[:100]), "anomaly")] == ["truncated_header"]
    cut = message(1, 1, option(53, b"\x01") + b"\x0c\x10abc", end=False)
    assert {e["code"] for e in rows(decode(cut), "anomaly")} == {"truncated_option"}
    assert {e["code"] for e in rows(decode(message(1, 1, option(53, b"\x01"), end=False)), "anomaly")} == {
        "missing_end"
    }
    wrong = message(2, 1, option(53, b"\x02") + option(54, b"\x01\x02") + option(51, b"\x00"))
    assert [e["code"] for e in rows(decode(wrong), "anomaly")] == ["bad_option_length", "bad_option_length"]


def test_probe_needs_the_cookie_and_a_bootp_header() -> None:
    decoder = DhcpDecoder()
    good = message(1, 1, option(53, b"\x01"))
    assert decoder.probe(good, Direction.TO_SERVER, 67)
    assert decoder.probe(good, Direction.TO_SERVER, 5000)  # content decides, not the port
    assert not decoder.probe(good[:239], Direction.TO_SERVER, 67)
    assert not decoder.probe(b"\x03" + good[1:], Direction.TO_SERVER, 67)
    assert not decoder.probe(good[:2] + b"\x20" + good[3:], Direction.TO_SERVER, 67)  # hlen 32
    assert not decoder.probe(good[:236] + b"\x63\x82\x53\x64" + good[240:], Direction.TO_SERVER, 67)


def test_pipeline_rows_equal_each_datagram_decoded_alone(tmp_path: Path) -> None:
    """A datagram is one message: the pipeline's rows equal a fresh session's, datagram by datagram."""
    frames = synthetic_frames()
    pipeline, anomalies = analyse_frames(tmp_path, frames)
    assert not anomalies
    alone = []
    for frame in frames:
        payload = frame[14 + 20 + 8 :]
        session = DhcpSession()
        alone += rows(replay(session, [(Direction.TO_SERVER, payload, 0.0)], one_byte=False))
    assert len(pipeline) == len(alone) == len(frames)
    for ours, expected in zip(pipeline, alone, strict=True):
        assert {k: ours[k] for k in expected} == expected


def test_truncation_at_every_length_never_raises() -> None:
    data = synthetic_frames()[0][42:]
    for length in range(len(data)):
        for event in decode(data[:length]):
            assert event.table in TABLE_NAMES
        if length < 236:
            assert rows(decode(data[:length]), "anomaly")


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(body=st.binary(max_size=120), op=st.integers(0, 3), prefix=st.booleans())
def test_random_options_never_raise(body: bytes, op: int, prefix: bool) -> None:
    data = message(op, 1, body, end=False) if prefix else body
    for event in decode(data):
        assert event.table in TABLE_NAMES

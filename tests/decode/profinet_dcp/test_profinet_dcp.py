"""Profinet DCP on hand-built frames: identification, Set requests, the link envelope, VLANs, damage, fuzzing."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.profinet_dcp import FRAME_IDS, PROTOCOL, DcpSession, ProfinetDcpDecoder
from tests.decode.profinet_dcp.common import (
    CONTROLLER,
    DEVICE,
    MULTICAST,
    analyse_frames,
    block,
    dcp,
    frame,
    identify_response,
    ip4,
    set_request,
)

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))


def feed(payload: bytes) -> list[Event]:
    return DcpSession().feed(payload, Direction.TO_SERVER, 0.0)


def rows_and_anomalies(payload: bytes) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    events = feed(payload)
    return [e.fields for e in events if e.table == PROTOCOL], [e.fields for e in events if e.table == "anomaly"]


def test_identify_response_gives_station_name_vendor_and_address(tmp_path: Path) -> None:
    rows, anomalies = analyse_frames(tmp_path, [identify_response(0x0300BF9A, b"crane-07-hoist", "10.20.0.7")])
    assert anomalies == []
    (row,) = rows
    assert (row["event_type"], row["frame_name"], row["service"], row["service_type_name"], row["xid"]) == (
        "identify_response",
        "Identify response",
        "Identify",
        "response success",
        0x0300BF9A,
    )
    assert (row["station_name"], row["type_of_station"], row["vendor_id"], row["device_id"]) == (
        "crane-07-hoist",
        "ET200SP",
        0x002A,
        0x0313,
    )
    assert (row["ip"], row["netmask"], row["gateway"], row["ip_block_info_name"]) == (
        "10.20.0.7",
        "255.255.255.0",
        "10.20.0.1",
        "IP set",
    )
    assert row["device_role_name"] == "IO-Device" and row["controls_device"] is False
    assert row["blocks"] == [
        "Device/Type of Station",
        "Device/Name of Station",
        "Device/Device ID",
        "Device/Device Role",
        "IP/IP parameter",
    ]
    # The link envelope: MACs and VLAN instead of a 5-tuple.
    assert (row["source_mac"], row["destination_mac"], row["vlan"]) == ("08:00:06:9f:cf:32", "00:1b:1b:02:99:c3", None)
    assert row["flow_id"] is None and row["client_ip"] is None and row["direction"] is None


def test_set_request_with_ip_and_qualifier_controls_the_device() -> None:
    body = b"\x00\x01" + ip4("6.6.6.6") + ip4("255.0.0.0") + ip4("6.6.6.1")
    payload = set_request(7, block(5, 1, b"\x00\x00") + block(1, 2, body) + block(5, 2, b"\x00\x00"))[14:]
    (row,), anomalies = rows_and_anomalies(payload)
    assert anomalies == []
    assert (row["service"], row["service_type_name"], row["controls_device"]) == ("Set", "request", True)
    assert (row["ip"], row["netmask"], row["gateway"]) == ("6.6.6.6", "255.0.0.0", "6.6.6.1")
    assert (row["block_qualifier"], row["permanent"], row["block_qualifiers"]) == (1, True, [0, 1, 0])
    assert row.get("control") is None
    temporary = set_request(8, block(2, 2, b"\x00\x00plc-renamed"))[14:]
    (row,), _ = rows_and_anomalies(temporary)
    assert (row["station_name"], row["permanent"], row["controls_device"]) == ("plc-renamed", False, True)


def test_signal_and_reset_to_factory_are_controls() -> None:
    (signal,), _ = rows_and_anomalies(set_request(9, block(5, 3, b"\x00\x00\x01\x00"))[14:])
    assert (signal["control"], signal["signal_value"], signal["controls_device"]) == ("Signal", 0x0100, True)
    (reset,), _ = rows_and_anomalies(set_request(10, block(5, 6, b"\x00\x04"))[14:])
    assert (reset["control"], reset["reset_qualifier"], reset["reset_mode"]) == (
        "Reset to Factory",
        4,
        "reset communication parameter",
    )
    (factory,), _ = rows_and_anomalies(set_request(11, block(5, 5, b"\x00\x00"))[14:])
    assert factory["control"] == "Reset Factory Settings" and factory["controls_device"] is True


def test_set_response_errors_are_kept_per_block() -> None:
    blocks = block(5, 4, b"\x02\x02\x00") + block(5, 4, b"\x01\x02\x06")
    (row,), _ = rows_and_anomalies(dcp(0xFEFD, 4, 1, 12, blocks))
    assert row["response_blocks"] == ["Device/Name of Station", "IP/IP parameter"]
    assert (row["block_errors"], row["failed"], row["controls_device"]) == ([0, 6], True, False)


def test_truncated_block_gives_an_anomaly_with_its_offset_and_keeps_the_blocks_before() -> None:
    good = block(2, 2, b"\x00\x00station-a") + block(2, 3, b"\x00\x00\x00\x2a\x01\x01")
    cut = struct.pack(">BBH", 1, 2, 14) + b"\x00\x01" + ip4("10.0.0.1")  # declares 14 bytes, 6 follow
    payload = dcp(0xFEFF, 5, 1, 1, good + cut)
    (row,), (fault,) = rows_and_anomalies(payload)
    assert row["blocks"] == ["Device/Name of Station", "Device/Device ID"]
    assert (row["station_name"], row["vendor_id"], row.get("ip")) == ("station-a", 0x2A, None)
    assert fault["code"] == "truncated_block"
    assert f"at offset {12 + len(good)}" in str(fault["detail"]) and "IP/IP parameter" in str(fault["detail"])
    # A block header cut short, and a DCPDataLength beyond the frame (the bytes that are there are decoded).
    (row,), (fault,) = rows_and_anomalies(dcp(0xFEFF, 5, 1, 1, good + b"\x01\x02"))
    assert fault["code"] == "truncated_block" and f"offset {12 + len(good)}" in str(fault["detail"])
    whole = dcp(0xFEFF, 5, 1, 1, good)
    (row,), (fault,) = rows_and_anomalies(whole[:10] + struct.pack(">H", len(good) + 20) + whole[12:])
    assert fault["code"] == "truncated_data" and row["station_name"] == "station-a"


def test_short_header_short_block_and_unknown_service_are_anomalies() -> None:
    (row,), (fault,) = rows_and_anomalies(bytes.fromhex("fefe0500"))
    assert (row["frame_name"], fault["code"]) == ("Identify request", "truncated_header")
    (fault_event,) = feed(b"\xfe")
    assert fault_event.fields["code"] == "truncated_header"
    (row,), (fault,) = rows_and_anomalies(dcp(0xFEFF, 5, 1, 1, block(1, 2, b"\x00\x01" + ip4("10.0.0.1"))))
    assert fault["code"] == "short_block" and "offset 12" in str(fault["detail"]) and "ip" not in row
    unknown, fault_event = feed(dcp(0xFEFD, 9, 0, 1, block(2, 2, b"x")))
    assert (unknown.event_type, unknown.fields["blocks"]) == ("service_9", [])
    assert fault_event.fields["code"] == "unknown_service"
    (row,), (fault,) = rows_and_anomalies(dcp(0xFEFD, 3, 0, 1, bytes([1, 2, 2])))
    assert row["blocks"] == ["IP/IP parameter"] and fault["code"] == "truncated_block"


def test_strings_are_kept_as_received() -> None:
    name = b"%n%n%n \xae\x00hidden" + b"\x00" * 40  # a format-string probe, a non-UTF-8 byte, NUL padding
    (row,), _ = rows_and_anomalies(dcp(0xFEFF, 5, 1, 1, block(2, 2, b"\x00\x00" + name)))
    assert row["station_name"] == "%n%n%n \\xae\x00hidden"  # only the trailing NUL padding goes


def test_other_profinet_rt_frames_are_ignored() -> None:
    for frame_id in (0x8000, 0xBFFF, 0xC000, 0xFC01, 0xFE01, 0x0000, 0xFF40):
        assert feed(struct.pack(">H", frame_id) + bytes(40)) == []
    assert not ProfinetDcpDecoder().probe(bytes.fromhex("8001") + bytes(40), Direction.TO_SERVER, 0)
    assert ProfinetDcpDecoder().probe(dcp(0xFEFC, 6, 0, 1, b""), Direction.TO_SERVER, 0)


def test_dcp_in_vlan_tagged_frames_is_decoded(tmp_path: Path) -> None:
    frames = [
        identify_response(1, b"tagged", "10.0.0.1", vlans=(100,)),
        identify_response(2, b"priority-tagged", "10.0.0.2", vlans=(0,)),
        identify_response(3, b"qinq", "10.0.0.3", vlans=(200, 30)),
        frame(CONTROLLER, MULTICAST, dcp(0xFEFE, 5, 0, 4, block(0xFF, 0xFF), delay=1), vlans=(100,)),
    ]
    rows, anomalies = analyse_frames(tmp_path, frames)
    assert anomalies == []
    assert [(r["station_name"], r["vlan"]) for r in rows] == [
        ("tagged", 100),
        ("priority-tagged", 0),
        ("qinq", 200),
        (None, 100),
    ]
    assert rows[3]["blocks"] == ["All/All"] and rows[3]["response_delay"] == 1
    assert rows[3]["destination_mac"] == "01:0e:cf:00:00:00"


def test_anomalies_of_frames_reach_the_store(tmp_path: Path) -> None:
    cut = frame(DEVICE, CONTROLLER, dcp(0xFEFF, 5, 1, 1, struct.pack(">BBH", 2, 2, 200)))
    rows, anomalies = analyse_frames(tmp_path, [cut])
    assert len(rows) == 1 and rows[0]["blocks"] == []
    (fault,) = anomalies
    assert (fault["protocol"], fault["code"], fault["packet_number"]) == (PROTOCOL, "truncated_block", 1)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(frame_id=st.sampled_from(sorted(FRAME_IDS)), rest=st.binary(max_size=300))
def test_random_payloads_never_raise(frame_id: int, rest: bytes) -> None:
    events = feed(struct.pack(">H", frame_id) + rest)
    assert all(e.event_type != "anomaly" or e.fields["code"] != "malformed" for e in events)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    frame_id=st.sampled_from(sorted(FRAME_IDS)),
    service=st.sampled_from([3, 4, 5, 6, 0, 7]),
    service_type=st.sampled_from([0, 1, 5, 2]),
    blocks=st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 5, 6, 7, 0x80, 0xFF, 0]), st.integers(0, 255), st.binary(max_size=40)),
        max_size=8,
    ),
    cut=st.integers(0, 400),
)
def test_random_blocks_never_raise(
    frame_id: int, service: int, service_type: int, blocks: list[tuple[int, int, bytes]], cut: int
) -> None:
    payload = dcp(frame_id, service, service_type, 1, b"".join(block(o, s, b) for o, s, b in blocks))
    events = feed(payload[:cut] if cut < len(payload) else payload)
    assert all(e.event_type != "anomaly" or e.fields["code"] != "malformed" for e in events)
    rows = [e for e in events if e.table == PROTOCOL]
    assert len(rows) == 1 or (cut < 2 and not rows)

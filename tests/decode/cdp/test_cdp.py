"""CDP decoder: hand-built packets, the checksum rule, LLC filtering, frame-alone equivalence with the pipeline,
truncation at every length and fuzzing. The tshark comparison is in test_cdp_tshark.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.cdp import LLC_SNAP_CDP, TABLES, CdpDecoder, CdpSession, cdp_checksum_valid
from tests.decode.cdp.common import addresses, analyse_frames, cdp, ipv4_address, synthetic_frames, tlv
from tests.decode.oracles import replay

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
TABLE_NAMES = (*TABLES, "anomaly")


def decode(payload: bytes) -> list[Event]:
    return CdpSession().feed(payload, Direction.TO_SERVER, 0.0)


def rows(events: list[Event], table: str = "cdp") -> list[dict[str, object]]:
    return [event.fields for event in events if event.table == table]


def test_switch_announcement_gives_every_field() -> None:
    events = decode(synthetic_frames()[0][14:])
    (row,) = rows(events)
    assert not rows(events, "anomaly") and events[0].event_type == "cdp_v2"
    assert (row["version"], row["ttl"], row["checksum_valid"]) == (2, 180, True)
    assert row["device_id"] == "yard-sw-01.port.example" and row["port_id"] == "FastEthernet0/7"
    assert row["addresses"] == ["10.20.0.2", "fe80::1"] and row["management_addresses"] == ["10.20.0.2"]
    assert row["capabilities"] == ["Switch", "IGMP capable"] and row["platform"] == "cisco WS-C2960-24TT-L"
    assert (row["vtp_domain"], row["native_vlan"], row["duplex"], row["mtu"]) == ("CRANES", 20, "full", 1500)
    assert str(row["software_version"]).startswith("Cisco IOS Software")


def test_phone_voice_vlan_and_capabilities() -> None:
    (row,) = rows(decode(synthetic_frames()[1][14:]))
    assert row["capabilities"] == ["Host", "VoIP Phone", "Two Port Mac Relay"]
    assert (row["voice_vlan"], row["duplex"]) == (100, "half")


def test_checksum_rule_for_odd_lengths() -> None:
    for last in (0x00, 0x41, 0x7F, 0x80, 0xE9, 0xFF):
        packet = cdp(tlv(1, b"sw") + tlv(6, bytes([0x41, last])) + b"")
        odd = cdp(tlv(1, b"sw") + tlv(6, bytes([last])))
        assert cdp_checksum_valid(packet) and cdp_checksum_valid(odd)
        assert not cdp_checksum_valid(odd[:2] + bytes([odd[2] ^ 1]) + odd[3:])
    (row,) = rows(decode(synthetic_frames()[3][14:]))
    assert row["checksum_valid"] is False


def test_other_llc_frames_give_nothing() -> None:
    assert decode(synthetic_frames()[4][14:]) == []
    assert decode(b"\xaa\xaa\x03\x00\x00\x0c\x20\x04" + bytes(20)) == []  # Cisco SNAP but not CDP (e.g. DTP)
    assert not CdpDecoder().probe(b"\x42\x42\x03", Direction.TO_SERVER, 0)
    assert CdpDecoder().probe(LLC_SNAP_CDP + cdp(b""), Direction.TO_SERVER, 0)


def test_damage_becomes_anomalies() -> None:
    codes = lambda packet: [e["code"] for e in rows(decode(LLC_SNAP_CDP + packet), "anomaly")]  # noqa: E731
    assert codes(b"\x02\xb4") == ["truncated_header"]
    assert codes(cdp(tlv(1, b"sw"))[:-1]) == ["truncated_tlv"]
    assert codes(cdp(tlv(4, b"\x00"))) == ["bad_tlv_length"]
    assert codes(cdp(b"", version=9)) == ["unknown_version"]
    assert codes(cdp(tlv(2, struct.pack(">I", 2) + ipv4_address("10.0.0.1")))) == ["truncated_address"]
    assert codes(cdp(tlv(2, addresses(ipv4_address("10.0.0.1"))) + bytes(6))) == []  # Ethernet padding


def test_pipeline_rows_equal_each_frame_decoded_alone(tmp_path: Path) -> None:
    frames = synthetic_frames()
    pipeline, anomalies = analyse_frames(tmp_path, frames)
    assert not anomalies
    alone = []
    for frame in frames:
        alone += rows(replay(CdpSession(), [(Direction.TO_SERVER, frame[14:], 0.0)], one_byte=False))
    assert len(pipeline) == len(alone) == 4
    for ours, expected in zip(pipeline, alone, strict=True):
        assert {k: ours[k] for k in expected} == expected
    assert {r["destination_mac"] for r in pipeline} == {"01:00:0c:cc:cc:cc"}


def test_truncation_at_every_length_never_raises() -> None:
    data = synthetic_frames()[0][14:]
    for length in range(len(data)):
        for event in decode(data[:length]):
            assert event.table in TABLE_NAMES


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(items=st.lists(st.tuples(st.integers(0, 0x20), st.binary(max_size=40)), max_size=10), raw=st.binary(max_size=60))
def test_random_tlvs_never_raise(items: list[tuple[int, bytes]], raw: bytes) -> None:
    packet = cdp(b"".join(tlv(kind, value) for kind, value in items) + raw)
    for event in decode(LLC_SNAP_CDP + packet) + decode(LLC_SNAP_CDP + raw):
        assert event.table in TABLE_NAMES

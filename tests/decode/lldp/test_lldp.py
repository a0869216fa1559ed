"""LLDP decoder: hand-built LLDPDUs, frame-alone equivalence with the pipeline, truncation at every length and
fuzzing. The tshark comparison is in test_lldp_tshark.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.lldp import TABLES, LldpDecoder, LldpSession
from tests.decode.lldp.common import MODEM, SWITCH, analyse_frames, lldpdu, management, org, synthetic_frames, tlv
from tests.decode.oracles import replay

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
TABLE_NAMES = (*TABLES, "anomaly")


def decode(payload: bytes) -> list[Event]:
    return LldpSession().feed(payload, Direction.TO_SERVER, 0.0)


def rows(events: list[Event], table: str = "lldp") -> list[dict[str, object]]:
    return [event.fields for event in events if event.table == table]


def test_switch_lldpdu_gives_every_field() -> None:
    events = decode(synthetic_frames()[0][14:])
    (row,) = rows(events)
    assert not rows(events, "anomaly") and events[0].event_type == "lldpdu"
    assert (row["chassis_id_subtype_name"], row["chassis_id"]) == ("MAC address", "00:1b:1b:02:e6:1f")
    assert (row["port_id_subtype_name"], row["port_id"], row["ttl"]) == ("interface name", "GigabitEthernet1/0/7", 120)
    assert row["system_name"] == "yard-sw-01" and row["port_description"] == "uplink to crane 7"
    assert row["system_capabilities"] == ["Bridge", "Router"] and row["enabled_capabilities"] == ["Bridge"]
    assert row["management_addresses"] == ["10.20.0.2", "fe80::1"] and row["management_interfaces"] == [7, 7]
    assert (row["port_vlan_id"], row["vlan_names"], row["max_frame_size"]) == (20, ["20:ot20"], 1522)
    assert (row["autoneg_supported"], row["autoneg_enabled"], row["mau_type"]) == (True, True, 16)
    assert [t["oui"] for t in row["org_tlvs"]] == ["00:80:c2", "00:80:c2", "00:12:0f", "00:12:0f", "00:0e:cf"]  # type: ignore[attr-defined]
    assert row["org_tlvs"][-1] == {"oui": "00:0e:cf", "subtype": 5, "value": SWITCH.hex()}  # type: ignore[index]
    assert row["tlv_types"] == [1, 2, 3, 4, 5, 6, 7, 8, 8, 127, 127, 127, 127, 127, 0]


def test_network_address_chassis_and_mac_port_are_rendered() -> None:
    (row,) = rows(decode(synthetic_frames()[1][14:]))
    assert (row["chassis_id"], row["port_id"]) == ("192.168.8.1", ":".join(f"{b:02x}" for b in MODEM))
    assert row["system_capabilities"] == ["WLAN Access Point", "Router"]  # the modem nobody ordered


def test_shutdown_and_strings_as_received() -> None:
    events = decode(lldpdu(tlv(1, b"\x07cam\xff"), tlv(2, b"\x07p1"), tlv(3, b"\x00\x00")))
    assert events[0].event_type == "shutdown"
    (row,) = rows(events)
    assert row["chassis_id"] == "cam\\xff" and row["chassis_id_raw"] == b"cam\xff"


def test_damage_becomes_anomalies() -> None:
    codes = lambda payload: [e["code"] for e in rows(decode(payload), "anomaly")]  # noqa: E731
    assert codes(lldpdu(tlv(2, b"\x07p1"), tlv(1, b"\x07c"), tlv(3, b"\x00\x14"))) == ["missing_mandatory_tlv"]
    assert codes(tlv(1, b"\x07abc")[:-1]) == ["truncated_tlv", "missing_mandatory_tlv"]
    assert "bad_tlv_length" in codes(lldpdu(tlv(1, b"\x07c"), tlv(2, b"\x07p"), tlv(3, b"\x00"), tlv(7, b"\x00")))
    assert "bad_tlv_length" in codes(lldpdu(tlv(1, b"\x07c"), tlv(2, b"\x07p"), tlv(3, b"\x00\x01"), tlv(8, b"\x09")))
    assert "reserved_tlv" in codes(lldpdu(tlv(1, b"\x07c"), tlv(2, b"\x07p"), tlv(3, b"\x00\x01"), tlv(42, b"")))
    assert "bad_tlv_length" in codes(
        lldpdu(tlv(1, b"\x07c"), tlv(2, b"\x07p"), tlv(3, b"\x00\x01"), org("00:12:0f", 1, b"\x03"))
    )


def test_probe_wants_a_chassis_id_first() -> None:
    decoder = LldpDecoder()
    assert decoder.probe(tlv(1, b"\x04" + SWITCH), Direction.TO_SERVER, 0)
    assert not decoder.probe(tlv(2, b"\x07p"), Direction.TO_SERVER, 0)
    assert not decoder.probe(b"\x02", Direction.TO_SERVER, 0)


def test_pipeline_rows_equal_each_frame_decoded_alone(tmp_path: Path) -> None:
    """A frame is one LLDPDU: the pipeline's rows (tagged frames too) equal a fresh session's, frame by frame."""
    frames = synthetic_frames()
    pipeline, anomalies = analyse_frames(tmp_path, frames)
    assert not anomalies
    alone = []
    for frame in frames:
        payload = frame[18:] if frame[12:14] == b"\x81\x00" else frame[14:]
        alone += rows(replay(LldpSession(), [(Direction.TO_SERVER, payload, 0.0)], one_byte=False))
    assert len(pipeline) == len(alone) == len(frames)
    for ours, expected in zip(pipeline, alone, strict=True):
        assert {k: ours[k] for k in expected} == expected
    assert [r["vlan"] for r in pipeline] == [None, None, 20, None]


def test_truncation_at_every_length_never_raises() -> None:
    data = synthetic_frames()[0][14:]
    for length in range(len(data)):
        for event in decode(data[:length]):
            assert event.table in TABLE_NAMES


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(kinds=st.lists(st.tuples(st.integers(0, 127), st.binary(max_size=40)), max_size=12), raw=st.binary(max_size=80))
def test_random_tlvs_never_raise(kinds: list[tuple[int, bytes]], raw: bytes) -> None:
    payload = b"".join(tlv(kind, value) for kind, value in kinds) + raw
    for event in decode(payload) + decode(raw):
        assert event.table in TABLE_NAMES


def test_management_helper_builds_a_valid_tlv() -> None:
    (row,) = rows(decode(lldpdu(tlv(1, b"\x07c"), tlv(2, b"\x07p"), tlv(3, b"\x00\x01"), management(SWITCH, 6))))
    assert row["management_addresses"] == ["00:1b:1b:02:e6:1f"]
    assert struct.unpack(">H", tlv(3, b"\x00\x01")[:2])[0] >> 9 == 3

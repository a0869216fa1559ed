"""Profinet DCP against tshark's pn_dcp dissector (the oracle), field by field, through the real pipeline.

Run with ``-s`` to see the agreement table. The inputs are every research capture with EtherType 0x8892 (the
ITI Profinet captures and one Modbus capture that also carries DCP Identify requests) and a synthetic capture
covering every service, service type and block kind (``common.synthetic_frames``), tagged and untagged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.decode.oracles import RESEARCH, Agreement, Row, compare_by_packet, presence, tshark_values
from tests.decode.profinet_dcp.common import Record, analyse, synthetic_frames
from tests.factories import write_pcap

pytestmark = pytest.mark.oracle

ITI = RESEARCH / "iti-ics-security-tools/pcaps"
#: Every research capture holding EtherType 0x8892 frames (found by scanning the whole corpus with tshark).
CAPTURES = [
    ITI / "profinet/PROFINET-RT-DCP/ChangeIPUsingDCP.pcap",
    ITI / "profinet/PROFINET-RT-DCP/PROFINET-RT.pcap",
    ITI / "profinet/profinet-wireshark-bug.pcap",
    ITI / "ModbusTCP/mb2.pcap",
]
#: tshark field -> our comparison column; tshark prints each field's occurrences joined by ",".
TSHARK = {
    "frame.number": "packet",
    "eth.src": "source_mac",
    "eth.dst": "destination_mac",
    "vlan.id": "vlan",
    "ieee8021ad.id": "outer_vlan",  # a QinQ service tag (TPID 0x88A8) is not a vlan.id to tshark
    "pn_rt.frame_id": "frame_id",
    "pn_dcp.service_id": "service_id",
    "pn_dcp.service_type": "service_type",
    "pn_dcp.xid": "xid",
    "pn_dcp.response_delay": "response_delay",
    "pn_dcp.data_length": "data_length",
    "pn_dcp.block_length": "block_count",
    "pn_dcp.suboption_device_nameofstation": "station_name",
    "pn_dcp.suboption_device_devicevendorvalue": "type_of_station",
    "pn_dcp.suboption_vendor_id": "vendor_id",
    "pn_dcp.suboption_device_id": "device_id",
    "pn_dcp.suboption_device_role": "device_role",
    "pn_dcp.suboption_device_aliasname": "alias_name",
    "pn_dcp.suboption_device_instance": "device_instance_high",
    "pn_dcp.suboption_device_oem_ven_id": "oem_vendor_id",
    "pn_dcp.suboption_device_oem_dev_id": "oem_device_id",
    "pn_dcp.suboption_ip_mac_address": "mac_address",
    "pn_dcp.suboption_ip_ip": "ip",
    "pn_dcp.suboption_ip_subnetmask": "netmask",
    "pn_dcp.suboption_ip_standard_gateway": "gateway",
    "pn_dcp.suboption_ip_block_info": "ip_block_info",
    "pn_dcp.block_qualifier": "block_qualifier",
    "pn_dcp.block_qualifier_reset": "reset_qualifier",
    "pn_dcp.suboption_control_signal_value": "signal_value",
    "pn_dcp.block_error": "block_errors",
    "pn_dcp.deviceinitiative_value": "device_initiative",
}
FIELDS = [name for name in TSHARK.values() if name not in ("packet", "outer_vlan")] + ["defined"]
#: The oracle's Agreement compares a field only where both sides define it; ``defined`` (the names of the fields a
#: row fills) catches a field that only one side fills. ip_block_info is left out of it: tshark files a Full IP
#: suite block's BlockInfo under the generic pn_dcp.block_info, we keep it as the IP block info it is (IEC
#: 61158-6-10 gives both IP suboptions the same IPBlockInfo coding).
PRESENCE = [name for name in FIELDS if name not in ("defined", "ip_block_info")]
#: Numbers tshark prints in hex or with names: compared as integers.
NUMERIC = {
    "vlan", "outer_vlan", "frame_id", "service_id", "service_type", "xid", "response_delay", "data_length", "vendor_id",
    "device_id", "device_role", "device_instance_high", "oem_vendor_id", "oem_device_id", "ip_block_info",
    "signal_value", "device_initiative", "reset_qualifier",
}  # fmt: skip
#: Fields where every occurrence counts (the rest: the first occurrence, as our flattened columns keep).
LISTS = {"block_qualifier", "block_errors", "reset_qualifier"}


def tshark_rows(capture: Path) -> list[Row]:
    rows = []
    for values in tshark_values(capture, "pn_dcp", TSHARK):
        row: Row = {}
        for name, items in values.items():
            if name == "block_count":
                row[name] = str(len(items))
            elif name in LISTS:
                row[name] = ",".join(str(int(v, 0)) for v in items) if items else None
            elif not items:
                row[name] = None
            else:
                row[name] = str(int(items[0], 0)) if name in NUMERIC else items[0]
        row["vlan"] = row.pop("outer_vlan") or row["vlan"] or "untagged"
        row["defined"] = presence(row, PRESENCE)
        rows.append(row)
    return rows


def our_rows(rows: list[Record]) -> list[Row]:
    """Our rows in tshark's terms: first occurrences, lists joined, qualifiers split as tshark files them."""
    result = []
    for r in rows:
        row: Row = {"packet": str(r["packet_number"])}
        for name in FIELDS:
            value = r.get(name)
            row[name] = None if value is None else str(value)
        blocks = r["blocks"] or []
        get_request = r["service_id"] == 3 and r["service_type"] == 0
        row["block_count"] = "0" if get_request else str(len(blocks))  # selectors carry no DCPBlockLength
        instance = r["device_instance"]
        row["device_instance_high"] = None if instance is None else str(int(instance) >> 8)  # type: ignore[call-overload]
        # tshark files the qualifier of Reset Factory Settings and Reset to Factory under block_qualifier_reset.
        plain = list(r["block_qualifiers"] or [])  # type: ignore[call-overload]
        if r["reset_qualifier"] is not None:
            plain.remove(r["reset_qualifier"])
        row["block_qualifier"] = ",".join(map(str, plain)) or None
        row["block_errors"] = ",".join(map(str, r["block_errors"])) if r["block_errors"] else None  # type: ignore[call-overload]
        row["vlan"] = row["vlan"] or "untagged"
        row["defined"] = presence(row, PRESENCE)
        result.append(row)
    return result


def compare(tmp_path: Path, captures: list[Path], title: str) -> Agreement:
    return compare_by_packet(FIELDS, captures, title, lambda capture: analyse(tmp_path, capture), our_rows, tshark_rows)


def test_real_captures_agree_with_tshark(tmp_path: Path) -> None:
    for capture in CAPTURES:
        if not capture.exists():
            pytest.skip(f"research data missing: {capture}")
    agreement = compare(tmp_path, CAPTURES, "tshark pn_dcp, research captures")
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    assert sum(agreement.compared.values()) > 250
    for name in FIELDS:
        assert agreement.ratio(name) >= 0.99, agreement.report(name)


def test_every_block_kind_agrees_with_tshark(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "synthetic.pcap", [(1.0 + i, f) for i, f in enumerate(synthetic_frames())])
    agreement = compare(tmp_path, [capture], "tshark pn_dcp, synthetic blocks")
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in FIELDS:
        assert agreement.compared.get(name), f"{name}: the synthetic capture should exercise it"
        assert agreement.ratio(name) == 1.0, agreement.report(name)

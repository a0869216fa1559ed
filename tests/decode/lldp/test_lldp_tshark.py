"""LLDP against tshark's lldp dissector (the oracle), field by field, through the real pipeline.

Run with ``-s`` to see the agreement table. The inputs are every research capture holding LLDP (``CAPTURES``: 72 frames;
Profinet and Modbus captures whose devices send Profinet LLDP, and an EtherNet/IP capture with switch LLDP) and
a synthetic capture (``common.synthetic_frames``) covering every id rendering, capabilities, both management
address families and the IEEE 802.1/802.3 organisationally specific TLVs, tagged and untagged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.decode.lldp.common import CAPTURES, Record, analyse, synthetic_frames
from tests.decode.oracles import Agreement, Row, compare_by_packet, presence, tshark_values
from tests.factories import write_pcap

pytestmark = pytest.mark.oracle

SEPARATOR = "\x1f"  # occurrences joined by a character no string in these captures holds (descriptions hold ",")
#: tshark field -> our comparison column.
TSHARK = {
    "frame.number": "packet",
    "eth.src": "source_mac",
    "vlan.id": "vlan",
    "lldp.chassis.subtype": "chassis_id_subtype",
    "lldp.chassis.id": "chassis_bytes",
    "lldp.chassis.id.mac": "chassis_mac",
    "lldp.chassis.id.ip4": "chassis_ip4",
    "lldp.chassis.id.ip6": "chassis_ip6",
    "lldp.port.subtype": "port_id_subtype",
    "lldp.port.id": "port_text",
    "lldp.port.id.mac": "port_mac",
    "lldp.port.id.ip4": "port_ip4",
    "lldp.port.id.ip6": "port_ip6",
    "lldp.time_to_live": "ttl",
    "lldp.port.desc": "port_description",
    "lldp.tlv.system.name": "system_name",
    "lldp.tlv.system.desc": "system_description",
    "lldp.tlv.system_cap": "system_capabilities_bits",
    "lldp.tlv.enable_system_cap": "enabled_capabilities_bits",
    "lldp.mgn.addr.ip4": "mgmt_ip4",
    "lldp.mgn.addr.ip6": "mgmt_ip6",
    "lldp.mgn.interface.number": "management_interfaces",
    "lldp.ieee.802_1.port_vlan.id": "port_vlan_id",
    "lldp.ieee.802_1.vlan.id": "vlan_name_ids",
    "lldp.ieee.802_1.vlan.name": "vlan_name_texts",
    "lldp.ieee.802_3.mac_phy_auto_neg_status.supported": "autoneg_supported",
    "lldp.ieee.802_3.mac_phy_auto_neg_status.enabled": "autoneg_enabled",
    "lldp.ieee.802_3.pmd_auto_neg_advertised_caps": "autoneg_advertised",
    "lldp.ieee.802_3.pmd_mau_type": "mau_type",
    "lldp.ieee.802_3.max_frame_size": "max_frame_size",
    "lldp.orgtlv.oui": "org_ouis",
    "lldp.tlv.type": "tlv_types",
}
FIELDS = [
    "source_mac", "vlan", "chassis_id_subtype", "chassis_id", "port_id_subtype", "port_id", "ttl",
    "port_description", "system_name", "system_description", "system_capabilities_bits",
    "enabled_capabilities_bits", "management_addresses", "management_interfaces", "port_vlan_id", "vlan_names",
    "autoneg_supported", "autoneg_enabled", "autoneg_advertised", "mau_type", "max_frame_size", "org_ouis",
    "tlv_types", "defined",
]  # fmt: skip
PRESENCE = [name for name in FIELDS if name != "defined"]
NUMERIC = {
    "vlan", "chassis_id_subtype", "port_id_subtype", "ttl", "system_capabilities_bits", "enabled_capabilities_bits",
    "port_vlan_id", "autoneg_advertised", "mau_type", "max_frame_size",
}  # fmt: skip
BOOLEAN = {"autoneg_supported", "autoneg_enabled"}


def tshark_rows(capture: Path) -> list[Row]:
    rows = []
    for values in tshark_values(capture, "lldp", TSHARK, SEPARATOR):
        first = {k: (v[0] if v else None) for k, v in values.items()}
        row: Row = {"packet": first["packet"], "source_mac": first["source_mac"]}
        for name in NUMERIC:
            row[name] = str(int(first[name], 0)) if first[name] is not None else None  # type: ignore[arg-type]
        for name in BOOLEAN:
            row[name] = {"1": "True", "0": "False"}.get(first[name] or "")
        row["vlan"] = row["vlan"] or "untagged"
        # lldp.chassis.id is FT_BYTES (hex) for every subtype but MAC and network address, which have their own.
        row["chassis_id"] = (
            first["chassis_mac"] or first["chassis_ip4"] or first["chassis_ip6"] or first["chassis_bytes"]
        )
        row["port_id"] = first["port_mac"] or first["port_ip4"] or first["port_ip6"] or first["port_text"]
        for name in ("ttl", "port_description", "system_name", "system_description"):
            row[name] = row.get(name) if name in NUMERIC else first[name]
        row["management_addresses"] = ",".join(values["mgmt_ip4"] + values["mgmt_ip6"]) or None
        row["management_interfaces"] = ",".join(values["management_interfaces"]) or None
        names = [f"{i}:{n}" for i, n in zip(values["vlan_name_ids"], values["vlan_name_texts"], strict=False)]
        row["vlan_names"] = ",".join(names) or None
        row["org_ouis"] = ",".join(f"{int(v):06x}" for v in values["org_ouis"]) or None
        row["tlv_types"] = ",".join(values["tlv_types"]) or None
        row["defined"] = presence(row, PRESENCE)
        rows.append(row)
    return rows


def our_rows(rows: list[Record]) -> list[Row]:
    result = []
    for r in rows:
        row: Row = {"packet": str(r["packet_number"])}
        for name in FIELDS:
            value = r.get(name)
            row[name] = None if value is None else str(value)
        row["vlan"] = row["vlan"] or "untagged"
        if r["chassis_id_subtype"] not in (4, 5):
            row["chassis_id"] = bytes(r["chassis_id_raw"]).hex()  # type: ignore[arg-type]
        # tshark lists IPv4 management addresses before IPv6 ones only because they are separate fields.
        addresses = list(r["management_addresses"] or [])  # type: ignore[call-overload]
        addresses.sort(key=lambda a: ":" in a)
        row["management_addresses"] = ",".join(addresses) or None
        for name in ("management_interfaces", "vlan_names", "tlv_types"):
            row[name] = ",".join(map(str, r[name])) if r[name] else None  # type: ignore[call-overload]
        ouis = [str(t["oui"]).replace(":", "") for t in r["org_tlvs"] or []]  # type: ignore[attr-defined]
        row["org_ouis"] = ",".join(ouis) or None
        row["defined"] = presence(row, PRESENCE)
        result.append(row)
    return result


def compare(tmp_path: Path, captures: list[Path], title: str) -> Agreement:
    return compare_by_packet(FIELDS, captures, title, lambda capture: analyse(tmp_path, capture), our_rows, tshark_rows)


def test_research_captures_agree_with_tshark(tmp_path: Path) -> None:
    for capture in CAPTURES:
        if not capture.exists():
            pytest.skip(f"research data missing: {capture}")
    agreement = compare(tmp_path, CAPTURES, "tshark lldp, research captures")
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    assert agreement.compared["chassis_id"] == 72
    for name in FIELDS:
        assert agreement.ratio(name) >= 0.99, agreement.report(name)


def test_synthetic_lldpdus_agree_with_tshark(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "synthetic.pcap", [(1.0 + i, f) for i, f in enumerate(synthetic_frames())])
    agreement = compare(tmp_path, [capture], "tshark lldp, synthetic LLDPDUs")
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in FIELDS:
        assert agreement.compared.get(name), f"{name}: the synthetic capture should exercise it"
        assert agreement.ratio(name) == 1.0, agreement.report(name)

"""CDP against tshark's cdp dissector (the oracle), field by field, through the real pipeline.

Run with ``-s`` to see the agreement table. The research corpus holds no CDP: a bounded tshark scan (``-Y cdp``)
of every capture under 3 MB in research-data found none. The input is therefore a synthetic capture
(``common.synthetic_frames``): a switch with every TLV decoded here (IPv4 and IPv6 addresses), an IP phone with
a voice VLAN, a version 1 packet of odd length ending in a byte >= 0x80 (Cisco's checksum quirk), a packet with a
wrong checksum, and a spanning-tree LLC frame that must give no row.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.decode.cdp.common import Record, analyse, synthetic_frames
from tests.decode.oracles import Agreement, Row, presence, tshark_values
from tests.factories import write_pcap

pytestmark = pytest.mark.oracle

SEPARATOR = "\x1f"  # occurrences joined by a character no string here holds (software versions hold ",")
TSHARK = {
    "frame.number": "packet",
    "eth.src": "source_mac",
    "cdp.version": "version",
    "cdp.ttl": "ttl",
    "cdp.checksum": "checksum",
    "cdp.checksum.status": "checksum_valid",
    "cdp.deviceid": "device_id",
    "cdp.nrgyz.ip_address": "ip4",
    "cdp.nrgyz.ipv6_address": "ip6",
    "cdp.portid": "port_id",
    "cdp.capabilities": "capabilities_bits",
    "cdp.software_version": "software_version",
    "cdp.platform": "platform",
    "cdp.vtp_management_domain": "vtp_domain",
    "cdp.native_vlan": "native_vlan",
    "cdp.duplex": "duplex",
    "cdp.voice_vlan": "voice_vlan",
    "cdp.mtu": "mtu",
    "cdp.system_name": "system_name",
    "cdp.tlv.type": "tlv_types",
}
FIELDS = [
    "source_mac", "version", "ttl", "checksum", "checksum_valid", "device_id", "all_addresses", "port_id",
    "capabilities_bits", "software_version", "platform", "vtp_domain", "native_vlan", "duplex", "voice_vlan", "mtu",
    "system_name", "tlv_types", "defined",
]  # fmt: skip
PRESENCE = [name for name in FIELDS if name != "defined"]
NUMERIC = {"version", "ttl", "checksum", "capabilities_bits", "native_vlan", "voice_vlan", "mtu"}


def tshark_rows(capture: Path) -> list[Row]:
    rows = []
    for values in tshark_values(capture, "cdp", TSHARK, SEPARATOR):
        row: Row = {k: (v[0] if v else None) for k, v in values.items()}
        for name in NUMERIC:
            row[name] = str(int(row[name], 0)) if row[name] is not None else None  # type: ignore[arg-type]
        # checksum status: 1 good, 0 bad (tshark's PROTO_CHECKSUM_E_GOOD / _BAD).
        row["checksum_valid"] = {"1": "True", "0": "False"}.get(row["checksum_valid"] or "")
        row["duplex"] = {"1": "full", "0": "half"}.get(row["duplex"] or "")
        # tshark files the Addresses and Management Addresses TLVs' entries under the same fields, IPv4 and IPv6
        # apart: compare the union, IPv4 first.
        row["all_addresses"] = ",".join(values["ip4"] + values["ip6"]) or None
        row["tlv_types"] = ",".join(str(int(t, 0)) for t in values["tlv_types"]) or None
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
            if isinstance(value, str):  # we keep invalid UTF-8 as \\xNN escapes, tshark shows U+FFFD
                row[name] = re.sub(r"\\x[0-9a-f]{2}", "\ufffd", value)
        addresses = list(r["addresses"] or []) + list(r["management_addresses"] or [])  # type: ignore[call-overload]
        addresses.sort(key=lambda a: ":" in a)
        row["all_addresses"] = ",".join(addresses) or None
        row["tlv_types"] = ",".join(map(str, r["tlv_types"])) if r["tlv_types"] else None  # type: ignore[call-overload]
        row["defined"] = presence(row, PRESENCE)
        result.append(row)
    return result


def test_synthetic_cdp_agrees_with_tshark(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "synthetic.pcap", [(1.0 + i, f) for i, f in enumerate(synthetic_frames())])
    rows, anomalies = analyse(tmp_path, capture)
    assert not anomalies, anomalies
    agreement = Agreement(FIELDS)
    agreement.score(our_rows(rows), tshark_rows(capture), key=lambda r: r["packet"])
    print("\n" + agreement.report("tshark cdp, synthetic packets"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in FIELDS:
        assert agreement.compared.get(name), f"{name}: the synthetic capture should exercise it"
        assert agreement.ratio(name) == 1.0, agreement.report(name)

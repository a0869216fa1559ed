"""Shared pieces of the LLDP tests: TLV builders and running the analyser on a capture."""

from __future__ import annotations

import struct
from pathlib import Path

from quaywatch.decode.lldp import LldpDecoder
from tests.decode.oracles import RESEARCH, analysed_tables
from tests.factories import write_pcap

Record = dict[str, object]
SWITCH = bytes.fromhex("001b1b02e61f")
MODEM = bytes.fromhex("0c1efa000001")
NEAREST_BRIDGE = bytes.fromhex("0180c200000e")
ITI = RESEARCH / "iti-ics-security-tools/pcaps"
#: Every research capture holding LLDP: a bounded tshark scan (-Y lldp) of every capture under 3 MB in research-data
#: (suricata-verify enip-keywords holds a copy of the EtherNet/IP capture and is left out).
CAPTURES = [
    ITI / "profinet/Profinet_Failed.pcap",
    ITI / "ModbusTCP/mb2.pcap",
    ITI / "s7/S7Comm/wrapup.pcapng",
    ITI / "beckoff/addrouteuse444444444.pcapng",
    ITI / "beckoff/addroute1.pcapng",
    ITI / "beckoff/invokeid12.pcapng",
    ITI / "C37.118/C37118/c37_pmu_unclean.pcap",
    RESEARCH / "icsnpp-enip/tests/traces/enip_cip_example.pcap",
]


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">H", kind << 9 | len(value)) + value


def org(oui: str, subtype: int, info: bytes) -> bytes:
    return tlv(127, bytes.fromhex(oui.replace(":", "")) + bytes([subtype]) + info)


def frame(source: bytes, payload: bytes, vlan: int | None = None, ethertype: int = 0x88CC) -> bytes:
    header = NEAREST_BRIDGE + source
    if vlan is not None:
        header += struct.pack(">HH", 0x8100, vlan)
    data = header + struct.pack(">H", ethertype) + payload
    return data + b"\x00" * max(0, 60 - len(data))


def lldpdu(*tlvs: bytes, end: bool = True) -> bytes:
    return b"".join(tlvs) + (tlv(0, b"") if end else b"")


def management(address: bytes, family: int, interface: int = 1, oid: bytes = b"") -> bytes:
    body = bytes([len(address) + 1, family]) + address + b"\x02" + struct.pack(">I", interface)
    return tlv(8, body + bytes([len(oid)]) + oid)


def synthetic_frames() -> list[bytes]:
    """LLDPDUs covering every chassis and port id rendering, capabilities, management addresses and org TLVs."""
    switch = lldpdu(
        tlv(1, b"\x04" + SWITCH),
        tlv(2, b"\x05" + b"GigabitEthernet1/0/7"),
        tlv(3, struct.pack(">H", 120)),
        tlv(4, b"uplink to crane 7"),
        tlv(5, b"yard-sw-01"),
        tlv(6, b"Cisco IOS Software, C2960 Version 15.0(2)SE11"),
        tlv(7, struct.pack(">HH", 0x0014, 0x0004)),
        management(bytes([10, 20, 0, 2]), 1, 7, b"\x2b\x06\x01\x04\x01\x09"),
        management(bytes.fromhex("fe800000000000000000000000000001"), 2, 7),
        org("00:80:c2", 1, struct.pack(">H", 20)),
        org("00:80:c2", 3, struct.pack(">HB", 20, 4) + b"ot20"),
        org("00:12:0f", 1, b"\x03\x6c\x00\x00\x10"),
        org("00:12:0f", 4, struct.pack(">H", 1522)),
        org("00:0e:cf", 5, SWITCH),
    )
    modem = lldpdu(
        tlv(1, b"\x05\x01" + bytes([192, 168, 8, 1])),
        tlv(2, b"\x03" + MODEM),
        tlv(3, struct.pack(">H", 3600)),
        tlv(5, b"LTE-ROUTER"),
        tlv(7, struct.pack(">HH", 0x0018, 0x0018)),
        org("00:12:bb", 1, b"\x00\x01\x01"),
    )
    local = lldpdu(tlv(1, b"\x07crane-07-plc"), tlv(2, b"\x07port-001"), tlv(3, b"\x00\x14"))
    shutdown = lldpdu(tlv(1, b"\x04" + SWITCH), tlv(2, b"\x05" + b"Gi1/0/7"), tlv(3, b"\x00\x00"))
    return [
        frame(SWITCH, switch),
        frame(MODEM, modem),
        frame(SWITCH, local, vlan=20),
        frame(SWITCH, shutdown),
    ]


def analyse(tmp_path: Path, capture: Path) -> tuple[list[Record], list[Record]]:
    """The lldp rows and the anomalies of one capture, in packet order."""
    tables = analysed_tables(tmp_path, capture, [LldpDecoder()], ["lldp", "anomaly"])
    return tables["lldp"], tables["anomaly"]


def analyse_frames(tmp_path: Path, frames: list[bytes], name: str = "lldp") -> tuple[list[Record], list[Record]]:
    capture = write_pcap(tmp_path / f"{name}.pcap", [(1_700_000_000.0 + i / 10, f) for i, f in enumerate(frames)])
    return analyse(tmp_path, capture)

"""Shared pieces of the CDP tests: frame builders and running the analyser on a capture."""

from __future__ import annotations

import struct
from pathlib import Path

from quaywatch.decode.cdp import LLC_SNAP_CDP, CdpDecoder
from tests.decode.oracles import analysed_tables
from tests.factories import write_pcap

Record = dict[str, object]
SWITCH = bytes.fromhex("001b1b02e61f")
PHONE = bytes.fromhex("00a0451c2d3e")
CDP_MULTICAST = bytes.fromhex("01000ccccccc")


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">HH", kind, 4 + len(value)) + value


def checksum(data: bytes) -> int:
    """The checksum that makes ``data`` (with its checksum field zero) verify, Cisco's odd-length rule included."""
    if len(data) % 2:
        last = data[-1]
        data = data[:-1] + (bytes([0xFF, last - 1]) if last & 0x80 else bytes([0, last]))
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def cdp(tlvs: bytes, version: int = 2, ttl: int = 180, good: bool = True) -> bytes:
    body = bytes([version, ttl, 0, 0]) + tlvs
    value = checksum(body) ^ (0 if good else 0x1234)
    return body[:2] + struct.pack(">H", value) + body[4:]


def frame(source: bytes, packet: bytes, llc: bytes = LLC_SNAP_CDP) -> bytes:
    """An IEEE 802.3 length frame: the length field counts the LLC header and the data; padded to 60 bytes."""
    data = llc + packet
    raw = CDP_MULTICAST + source + struct.pack(">H", len(data)) + data
    return raw + b"\x00" * max(0, 60 - len(raw))


def ipv4_address(text: str) -> bytes:
    return b"\x01\x01\xcc\x00\x04" + bytes(int(p) for p in text.split("."))


def ipv6_address(raw: bytes) -> bytes:
    return b"\x02\x08" + bytes.fromhex("aaaa0300000086dd") + b"\x00\x10" + raw


def addresses(*items: bytes) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(items)


def synthetic_frames() -> list[bytes]:
    switch = cdp(
        tlv(0x01, b"yard-sw-01.port.example")
        + tlv(0x05, b"Cisco IOS Software, C2960 Software (C2960-LANBASEK9-M), Version 15.0(2)SE11")
        + tlv(0x06, b"cisco WS-C2960-24TT-L")
        + tlv(0x02, addresses(ipv4_address("10.20.0.2"), ipv6_address(bytes.fromhex("fe80" + "00" * 13 + "01"))))
        + tlv(0x03, b"FastEthernet0/7")
        + tlv(0x04, struct.pack(">I", 0x28))
        + tlv(0x09, b"CRANES")
        + tlv(0x0A, struct.pack(">H", 20))
        + tlv(0x0B, b"\x01")
        + tlv(0x11, struct.pack(">I", 1500))
        + tlv(0x14, b"yard-sw-01")
        + tlv(0x16, addresses(ipv4_address("10.20.0.2")))
    )
    phone = cdp(
        tlv(0x01, b"SEP00A0451C2D3E")
        + tlv(0x02, addresses(ipv4_address("10.20.5.9")))
        + tlv(0x03, b"Port 1")
        + tlv(0x04, struct.pack(">I", 0x490))
        + tlv(0x06, b"Cisco IP Phone 7945")
        + tlv(0x0B, b"\x00")
        + tlv(0x0E, b"\x01\x00\x64"),
        ttl=120,
    )
    odd = cdp(tlv(0x01, b"crane7") + tlv(0x03, b"Gi0/1") + tlv(0x06, b"IE-3400\xe9"), version=1)
    bad = cdp(tlv(0x01, b"rogue") + tlv(0x03, b"eth0"), good=False)
    spanning_tree = frame(SWITCH, bytes(36), llc=b"\x42\x42\x03")
    return [frame(SWITCH, switch), frame(PHONE, phone), frame(SWITCH, odd), frame(SWITCH, bad), spanning_tree]


def analyse(tmp_path: Path, capture: Path) -> tuple[list[Record], list[Record]]:
    """The cdp rows and the anomalies of one capture, in packet order."""
    tables = analysed_tables(tmp_path, capture, [CdpDecoder()], ["cdp", "anomaly"])
    return tables["cdp"], tables["anomaly"]


def analyse_frames(tmp_path: Path, frames: list[bytes], name: str = "cdp") -> tuple[list[Record], list[Record]]:
    capture = write_pcap(tmp_path / f"{name}.pcap", [(1_700_000_000.0 + i / 10, f) for i, f in enumerate(frames)])
    return analyse(tmp_path, capture)

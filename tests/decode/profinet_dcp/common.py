"""Shared pieces of the Profinet DCP tests: frame builders and running the analyser on a capture."""

from __future__ import annotations

import struct
from pathlib import Path

from quaywatch.decode.profinet_dcp import ProfinetDcpDecoder
from tests.decode.oracles import analysed_tables
from tests.factories import write_pcap

CONTROLLER = bytes.fromhex("001b1b0299c3")
DEVICE = bytes.fromhex("0800069fcf32")
MULTICAST = bytes.fromhex("010ecf000000")

Record = dict[str, object]


def block(option: int, suboption: int, body: bytes = b"") -> bytes:
    """One DCP block, padded to an even length as the standard requires."""
    data = struct.pack(">BBH", option, suboption, len(body)) + body
    return data + b"\x00" * (len(body) & 1)


def ip4(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def dcp(frame_id: int, service_id: int, service_type: int, xid: int, blocks: bytes, delay: int = 0) -> bytes:
    """The Profinet payload after the EtherType: FrameID, DCP header, blocks."""
    return struct.pack(">HBBIHH", frame_id, service_id, service_type, xid, delay, len(blocks)) + blocks


def frame(
    source: bytes, destination: bytes, payload: bytes, vlans: tuple[int, ...] = (), ethertype: int = 0x8892
) -> bytes:
    """An Ethernet frame (optionally 802.1Q / QinQ tagged), padded to the 60-byte minimum like a real NIC."""
    header = destination + source
    for index, vlan in enumerate(vlans):
        tpid = 0x88A8 if index == 0 and len(vlans) > 1 else 0x8100
        header += struct.pack(">HH", tpid, (6 << 13) | vlan)  # priority 6, as Profinet uses
    data = header + struct.pack(">H", ethertype) + payload
    return data + b"\x00" * max(0, 60 - len(data))


def analyse(tmp_path: Path, capture: Path) -> tuple[list[Record], list[Record]]:
    """The profinet_dcp rows and the anomalies of one capture, in packet order."""
    tables = analysed_tables(tmp_path, capture, [ProfinetDcpDecoder()], ["profinet_dcp", "anomaly"])
    return tables["profinet_dcp"], tables["anomaly"]


def analyse_frames(tmp_path: Path, frames: list[bytes]) -> tuple[list[Record], list[Record]]:
    capture = write_pcap(tmp_path / "dcp.pcap", [(1_700_000_000.0 + i / 10, f) for i, f in enumerate(frames)])
    return analyse(tmp_path, capture)


def set_request(xid: int, blocks: bytes) -> bytes:
    return frame(CONTROLLER, DEVICE, dcp(0xFEFD, 4, 0, xid, blocks))


def identify_response(xid: int, name: bytes, ip: str, vlans: tuple[int, ...] = ()) -> bytes:
    blocks = (
        block(2, 1, b"\x00\x00" + b"ET200SP")
        + block(2, 2, b"\x00\x00" + name)
        + block(2, 3, b"\x00\x00" + struct.pack(">HH", 0x002A, 0x0313))
        + block(2, 4, b"\x00\x00\x01\x00")
        + block(1, 2, b"\x00\x01" + ip4(ip) + ip4("255.255.255.0") + ip4("10.20.0.1"))
    )
    return frame(DEVICE, CONTROLLER, dcp(0xFEFF, 5, 1, xid, blocks), vlans)


def synthetic_frames() -> list[bytes]:
    """DCP PDUs covering every service, service type and block kind the decoder knows, for the tshark oracle."""
    name = b"crane-07-hoist"
    suite = b"".join(ip4(a) for a in ("10.20.0.7", "255.255.0.0", "10.20.0.1", "10.20.0.53", "10.20.0.54"))
    suite += ip4("0.0.0.0") * 2
    return [
        frame(
            DEVICE,
            MULTICAST,
            dcp(0xFEFC, 6, 0, 0x11, block(2, 2, b"\x00\x00" + name) + block(6, 1, b"\x00\x00\x00\x01")),
        ),
        frame(
            CONTROLLER,
            MULTICAST,
            dcp(0xFEFE, 5, 0, 0x12, block(2, 2, name) + block(2, 6, b"port-001.crane-07"), delay=128),
        ),
        identify_response(0x12, name, "10.20.0.7"),
        frame(
            DEVICE,
            CONTROLLER,
            dcp(
                0xFEFF,
                5,
                1,
                0x13,
                block(1, 1, b"\x00\x00" + DEVICE)
                + block(1, 2, b"\x00\x81" + ip4("10.20.0.8") + ip4("255.255.255.0") + ip4("10.20.0.1"))
                + block(2, 6, b"\x00\x00port-002.crane-07")
                + block(2, 7, b"\x00\x00\x00\x64")
                + block(2, 8, b"\x00\x00" + struct.pack(">HH", 0x011E, 0x0A01))
                + block(0x80, 0x01, b"\x01\x02\x03"),
            ),
        ),
        frame(CONTROLLER, DEVICE, dcp(0xFEFD, 3, 0, 0x14, bytes([1, 2, 2, 2, 1, 3]))),
        frame(DEVICE, CONTROLLER, dcp(0xFEFD, 3, 1, 0x14, block(1, 3, b"\x00\x02" + suite))),
        set_request(
            0x15,
            block(5, 1, b"\x00\x00")
            + block(2, 2, b"\x00\x01" + b"pwned")
            + block(1, 2, b"\x00\x00" + ip4("6.6.6.6") + ip4("255.0.0.0") + ip4("6.6.6.1"))
            + block(5, 2, b"\x00\x00"),
        ),
        frame(
            DEVICE,
            CONTROLLER,
            dcp(
                0xFEFD,
                4,
                1,
                0x15,
                block(5, 4, b"\x02\x02\x00") + block(5, 4, b"\x01\x02\x06") + block(5, 4, b"\x05\x02\x00"),
            ),
        ),
        set_request(0x16, block(5, 3, b"\x00\x00\x01\x00")),
        set_request(0x17, block(5, 6, b"\x00\x10")),
        set_request(0x18, block(5, 5, b"\x00\x00")),
        set_request(0x19, block(3, 61, b"\x00\x01" + b"\x3d\x01\x01")),
        frame(DEVICE, CONTROLLER, dcp(0xFEFD, 4, 5, 0x19, b"")),
        identify_response(0x1A, b"crane-08-trolley", "10.20.0.9", vlans=(100,)),
        identify_response(0x1B, b"crane-09-spreader", "10.20.0.10", vlans=(200, 30)),
        frame(DEVICE, CONTROLLER, bytes.fromhex("8001") + bytes(40)),  # cyclic IO data: no row
    ]

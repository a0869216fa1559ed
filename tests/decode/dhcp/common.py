"""Shared pieces of the DHCP tests: message builders and running the analyser on a capture."""

from __future__ import annotations

import struct
from pathlib import Path

from quaywatch.decode.dhcp import DhcpDecoder
from tests.decode.oracles import analysed_tables
from tests.factories import udp_frame, write_pcap

Record = dict[str, object]
CLIENT = bytes.fromhex("00a0451c2d3e")
COOKIE = b"\x63\x82\x53\x63"


def ip4(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def option(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def message(
    op: int,
    xid: int,
    options: bytes,
    *,
    mac: bytes = CLIENT,
    ciaddr: str = "0.0.0.0",
    yiaddr: str = "0.0.0.0",
    siaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    hops: int = 0,
    secs: int = 0,
    broadcast: bool = False,
    sname: bytes = b"",
    file: bytes = b"",
    end: bool = True,
) -> bytes:
    """A BOOTP/DHCP message: fixed header, magic cookie, options (END appended unless ``end`` is false)."""
    header = struct.pack(">BBBBIHH", op, 1, 6, hops, xid, secs, 0x8000 if broadcast else 0)
    header += ip4(ciaddr) + ip4(yiaddr) + ip4(siaddr) + ip4(giaddr)
    header += mac.ljust(16, b"\x00") + sname.ljust(64, b"\x00") + file.ljust(128, b"\x00")
    return header + COOKIE + options + (b"\xff" if end else b"")


def client_frame(payload: bytes, source: str = "0.0.0.0", destination: str = "255.255.255.255") -> bytes:
    return udp_frame(source, destination, 68, 67, payload)


def server_frame(payload: bytes, source: str = "10.20.0.1", destination: str = "255.255.255.255") -> bytes:
    return udp_frame(source, destination, 67, 68, payload)


def analyse(tmp_path: Path, capture: Path) -> tuple[list[Record], list[Record]]:
    """The dhcp rows and the anomalies of one capture, in packet order."""
    tables = analysed_tables(tmp_path, capture, [DhcpDecoder()], ["dhcp", "anomaly"])
    return tables["dhcp"], tables["anomaly"]


def analyse_frames(tmp_path: Path, frames: list[bytes], name: str = "dhcp") -> tuple[list[Record], list[Record]]:
    capture = write_pcap(tmp_path / f"{name}.pcap", [(1_700_000_000.0 + i / 10, f) for i, f in enumerate(frames)])
    return analyse(tmp_path, capture)


PRL = bytes([1, 121, 3, 6, 15, 119, 252, 95, 44, 46])
OFFER_OPTIONS = (
    option(54, ip4("10.20.0.1"))
    + option(51, struct.pack(">I", 86400))
    + option(58, struct.pack(">I", 43200))
    + option(59, struct.pack(">I", 75600))
    + option(1, ip4("255.255.255.0"))
    + option(3, ip4("10.20.0.1") + ip4("10.20.0.2"))
    + option(6, ip4("10.20.0.53") + ip4("8.8.8.8"))
    + option(15, b"crane.port.example")
)


def synthetic_frames() -> list[bytes]:
    """A full DORA exchange, a rogue modem's offer, relay, NAK, INFORM, RELEASE, DECLINE and option overload."""
    discover = (
        option(53, b"\x01")
        + option(61, b"\x01" + CLIENT)
        + option(50, ip4("10.20.0.77"))
        + option(12, b"crane-07-plc")
        + option(60, b"MSFT 5.0")
        + option(57, struct.pack(">H", 1500))
        + option(55, PRL)
    )
    request = (
        option(53, b"\x03")
        + option(61, b"\x01" + CLIENT)
        + option(50, ip4("10.20.0.77"))
        + option(54, ip4("10.20.0.1"))
        + option(12, b"crane-07-plc")
        + option(81, b"\x00\x00\x00crane-07-plc")
        + option(55, PRL)
    )
    modem = bytes.fromhex("0c1efa000001")
    return [
        client_frame(message(1, 0x3903F326, discover, secs=3, broadcast=True)),
        server_frame(message(2, 0x3903F326, option(53, b"\x02") + OFFER_OPTIONS, yiaddr="10.20.0.77")),
        udp_frame(
            "192.168.8.1",
            "255.255.255.255",
            67,
            68,
            message(
                2,
                0x3903F326,
                option(53, b"\x02")
                + option(54, ip4("192.168.8.1"))
                + option(51, struct.pack(">I", 3600))
                + option(3, ip4("192.168.8.1"))
                + option(1, ip4("255.255.255.0"))
                + option(6, ip4("192.168.8.1")),
                yiaddr="192.168.8.100",
                mac=CLIENT,
            ),
        ),
        client_frame(message(1, 0x3903F326, request, broadcast=True)),
        server_frame(message(2, 0x3903F326, option(53, b"\x05") + OFFER_OPTIONS, yiaddr="10.20.0.77")),
        client_frame(
            message(1, 0x11223344, option(53, b"\x08") + option(55, bytes([1, 3, 6])), ciaddr="10.20.0.9"),
            source="10.20.0.9",
            destination="10.20.0.1",
        ),
        server_frame(
            message(2, 0x55667788, option(53, b"\x06") + option(54, ip4("10.20.0.1")) + option(56, b"wrong net"))
        ),
        udp_frame(
            "10.30.0.1",
            "10.20.0.1",
            67,
            67,
            message(
                1, 0x0A0B0C0D, option(53, b"\x01") + option(82, b"\x01\x04eth0"), giaddr="10.30.0.1", hops=1, mac=modem
            ),
        ),
        client_frame(
            message(1, 0x99, option(53, b"\x07") + option(54, ip4("10.20.0.1")), ciaddr="10.20.0.77"),
            source="10.20.0.77",
            destination="10.20.0.1",
        ),
        client_frame(
            message(1, 0x9A, option(53, b"\x04") + option(50, ip4("10.20.0.78")) + option(54, ip4("10.20.0.1")))
        ),
        server_frame(
            message(
                2,
                0x9B,
                option(53, b"\x05") + option(52, b"\x01"),
                yiaddr="10.20.0.80",
                file=option(12, b"overloaded-host") + option(3, ip4("10.20.0.1")) + b"\xff",
            )
        ),
        server_frame(
            message(2, 0x9C, option(53, b"\x02"), sname=b"boot-server", file=b"pxelinux.0", siaddr="10.20.0.5")
        ),
    ]

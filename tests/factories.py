"""Builders of small real captures for tests (dpkt writes the frames)."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import dpkt

CLIENT_MAC = b"\x00\x1b\x1b\x00\x00\x01"  # Siemens OUI
SERVER_MAC = b"\x00\x80\xf4\x00\x00\x02"  # Schneider OUI


def _address(text: str) -> tuple[int, bytes]:
    if ":" in text:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text)
    return socket.AF_INET, socket.inet_aton(text)


def tcp_frame(
    source: str,
    destination: str,
    source_port: int,
    destination_port: int,
    flags: int = dpkt.tcp.TH_ACK,
    payload: bytes = b"",
    sequence: int = 1000,
    acknowledgement: int = 0,
    vlan: int | None = None,
) -> bytes:
    segment = dpkt.tcp.TCP(
        sport=source_port, dport=destination_port, flags=flags, seq=sequence, ack=acknowledgement, data=payload
    )
    return _ip_frame(source, destination, dpkt.ip.IP_PROTO_TCP, segment, vlan)


def udp_frame(source: str, destination: str, source_port: int, destination_port: int, payload: bytes = b"") -> bytes:
    datagram = dpkt.udp.UDP(sport=source_port, dport=destination_port, data=payload)
    datagram.ulen = 8 + len(payload)
    return _ip_frame(source, destination, dpkt.ip.IP_PROTO_UDP, datagram, None)


def icmp_frame(source: str, destination: str, icmp_type: int, code: int = 0) -> bytes:
    message = dpkt.icmp.ICMP(type=icmp_type, code=code, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping"))
    return _ip_frame(source, destination, dpkt.ip.IP_PROTO_ICMP, message, None)


def _ip_frame(source: str, destination: str, protocol: int, body: dpkt.Packet, vlan: int | None) -> bytes:
    family, source_bytes = _address(source)
    _, destination_bytes = _address(destination)
    if family == socket.AF_INET:
        packet: dpkt.Packet = dpkt.ip.IP(src=source_bytes, dst=destination_bytes, p=protocol, ttl=64, data=body)
        packet.len = 20 + len(bytes(body))
        ether_type = dpkt.ethernet.ETH_TYPE_IP
    else:
        packet = dpkt.ip6.IP6(src=source_bytes, dst=destination_bytes, nxt=protocol, hlim=64, data=body)
        packet.plen = len(bytes(body))
        ether_type = dpkt.ethernet.ETH_TYPE_IP6
    frame = dpkt.ethernet.Ethernet(src=CLIENT_MAC, dst=SERVER_MAC, type=ether_type, data=packet)
    if vlan is not None:
        raw = bytes(frame)
        return raw[:12] + b"\x81\x00" + vlan.to_bytes(2, "big") + raw[12:]
    return bytes(frame)


def write_pcap(path: Path, frames: Iterable[tuple[float, bytes]]) -> Path:
    """Write (timestamp, frame) pairs as a microsecond Ethernet pcap."""
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for timestamp, frame in frames:
            writer.writepkt(frame, ts=timestamp)
    return path


def pcapng_bytes(
    frames: Iterable[tuple[float, bytes]], link_type: int = 1, big_endian: bool = False, extra_interfaces: int = 0
) -> bytes:
    """A pcapng section: SHB, IDB(s) with microsecond resolution, one EPB per frame, and a comment block."""
    import struct

    order = ">" if big_endian else "<"

    def block(kind: int, body: bytes) -> bytes:
        body += b"\x00" * ((4 - len(body) % 4) % 4)
        length = 12 + len(body)
        return struct.pack(order + "II", kind, length) + body + struct.pack(order + "I", length)

    data = block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    for _ in range(1 + extra_interfaces):
        data += block(1, struct.pack(order + "HHI", link_type, 0, 65535))
    data += block(0x00000BAD, b"custom block that readers must skip")
    for timestamp, frame in frames:
        stamp = round(timestamp * 1_000_000)
        data += block(
            6, struct.pack(order + "IIIII", 0, stamp >> 32, stamp & 0xFFFFFFFF, len(frame), len(frame)) + frame
        )
    return data

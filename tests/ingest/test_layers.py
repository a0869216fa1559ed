"""Header extraction: ARP rows, malformed packets, link types decoded in the compiled walker."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import numpy as np

from quaywatch.analysis import Analyzer
from quaywatch.ingest import layers
from quaywatch.store.database import Store
from tests.factories import CLIENT_MAC, SERVER_MAC, udp_frame, write_pcap


def arp_frame(operation: int, sender_ip: str, target_ip: str, sender_mac: bytes, target_mac: bytes) -> bytes:
    import socket

    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, operation,
        sender_mac, socket.inet_aton(sender_ip), target_mac, socket.inet_aton(target_ip),
    )  # fmt: skip
    destination = b"\xff" * 6 if operation == 1 else target_mac
    return destination + sender_mac + b"\x08\x06" + body


def test_arp_requests_replies_and_gratuitous(tmp_path: Path) -> None:
    frames = [
        (1.0, arp_frame(1, "10.10.1.20", "10.10.1.10", CLIENT_MAC, b"\x00" * 6)),
        (1.1, arp_frame(2, "10.10.1.10", "10.10.1.20", SERVER_MAC, CLIENT_MAC)),
        (2.0, arp_frame(1, "10.10.1.99", "10.10.1.99", b"\x02\x00\x00\x00\x00\x99", b"\x00" * 6)),
    ]
    store = Store(tmp_path / "q.duckdb")
    Analyzer(store, decoders=[]).analyze(write_pcap(tmp_path / "arp.pcap", frames))
    rows = store.connection.execute(
        "SELECT operation, sender_mac, sender_ip, target_ip, gratuitous, packet_number FROM arp ORDER BY packet_number"
    ).fetchall()
    assert rows == [
        ("request", "00:1b:1b:00:00:01", "10.10.1.20", "10.10.1.10", False, 1),
        ("reply", "00:80:f4:00:00:02", "10.10.1.10", "10.10.1.20", False, 2),
        ("request", "02:00:00:00:00:99", "10.10.1.99", "10.10.1.99", True, 3),
    ]
    assert store.connection.execute("SELECT count(*) FROM flows").fetchone() == (0,)


def test_malformed_packets_are_counted_with_packet_numbers(tmp_path: Path) -> None:
    good = udp_frame("10.0.0.1", "10.0.0.2", 1000, 53, b"x")
    cut = good[: 14 + 10]  # IPv4 header cut short
    bad_version = good[:14] + b"\x55" + good[15:]
    store = Store(tmp_path / "q.duckdb")
    result = Analyzer(store, decoders=[]).analyze(
        write_pcap(tmp_path / "m.pcap", [(1.0, good), (1.1, cut), (1.2, bad_version), (1.3, good)])
    )
    assert result.malformed_packets == 2 and result.packets == 4
    rows = store.connection.execute("SELECT packet_number, code, detail FROM anomaly ORDER BY 1").fetchall()
    assert [(r[0], r[2]) for r in rows] == [(2, "network-layer header cut short"), (3, "network-layer header invalid")]
    assert store.connection.execute("SELECT packets_to_server FROM flows").fetchone() == (2,)


def parse(frame: bytes, link_type: int) -> np.void:
    buffer = np.frombuffer(frame, np.uint8)
    packets = np.zeros(1, layers.PACKET_DTYPE)
    layers.parse_packets(
        buffer, np.zeros(1, np.int64), np.array([len(frame)], np.int32), np.array([link_type], np.int32), packets
    )
    return packets[0]


def test_every_supported_link_type_reaches_the_same_transport_header() -> None:
    ethernet = udp_frame("192.168.0.1", "192.168.0.2", 1234, 502, b"payload")
    ip = ethernet[14:]
    variants = {
        1: ethernet,
        101: ip,
        228: ip,
        0: struct.pack("<I", 2) + ip,  # BSD null, host byte order
        108: struct.pack(">I", 2) + ip,  # OpenBSD loop, network byte order
        113: struct.pack("!HHH8sH", 0, 1, 6, CLIENT_MAC + b"\0\0", 0x0800) + ip,
        276: struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, CLIENT_MAC + b"\0\0") + ip,
    }
    for link_type, frame in variants.items():
        row = parse(frame, link_type)
        assert row["status"] == layers.STATUS_OK, link_type
        assert (row["network"], row["transport"], row["source_port"], row["destination_port"]) == (4, 17, 1234, 502)
        assert row["payload_captured"] == 7, link_type


def test_qinq_tags_and_ipv6_extension_headers() -> None:
    ethernet = udp_frame("10.0.0.1", "10.0.0.2", 1, 2, b"")
    tagged = ethernet[:12] + b"\x88\xa8\x00\x64" + b"\x81\x00\x00\xc8" + ethernet[12:]
    row = parse(tagged, 1)
    assert (row["vlan_outer"], row["vlan_inner"], row["transport"]) == (100, 200, 17)
    udp = dpkt.udp.UDP(sport=5, dport=6, data=b"abc")
    udp.ulen = 11
    hop_by_hop = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"  # next: destination options
    destination_options = bytes([17, 0]) + b"\x01\x04\x00\x00\x00\x00"  # next: UDP
    body = hop_by_hop + destination_options + bytes(udp)
    header = struct.pack(
        "!IHBB16s16s", 0x60000000, len(body), 0, 64, b"\xfd" + b"\0" * 14 + b"\1", b"\xfd" + b"\0" * 14 + b"\2"
    )
    row = parse(header + body, 229)
    assert (row["network"], row["transport"], row["source_port"], row["destination_port"], row["payload_captured"]) == (
        6, 17, 5, 6, 3,
    )  # fmt: skip


def test_pppoe_and_mpls_shims_reach_ip() -> None:
    ethernet = udp_frame("10.0.0.1", "10.0.0.2", 514, 514, b"<13>crane 3 fault")
    ip = ethernet[14:]
    pppoe = ethernet[:12] + b"\x88\x64" + b"\x11\x00\x00\x01" + (len(ip) + 2).to_bytes(2, "big") + b"\x00\x21" + ip
    mpls = ethernet[:12] + b"\x88\x47" + b"\x00\x01\x40\x40" + b"\x00\x02\x01\x40" + ip  # two labels, S on the last
    for frame in (pppoe, mpls):
        row = parse(frame, 1)
        assert (row["status"], row["network"], row["source_port"], row["payload_captured"]) == (0, 4, 514, 17)

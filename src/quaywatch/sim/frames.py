"""Vectorised frame building for the simulator.

Packets are not built one by one when they need not be: a traffic source with
many messages of one shape (a PLC poll loop) has a template frame, and the
fields that change per message (timestamps, sequence numbers, transaction ids,
register values) are written into whole arrays of frames at once. Sources with
few messages (a TCP session carrying an EDI file) use ``tcp_session``, which
builds correct handshakes, sequence numbers, segmentation and teardown.

IPv4 header checksums are correct. TCP and UDP checksums are left zero over
IPv4 (UDP: "no checksum", valid; TCP: not verified by tshark or Zeek by
default); UDP over IPv6 gets its mandatory checksum.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from quaywatch.yaml_files import load_yaml

MSS = 1448
TO_SERVER = 0
TO_CLIENT = 1


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a frame: the address and the link-layer identity it is seen with on the capture point."""

    name: str
    ip: str
    mac: bytes
    vlan: int | None = None
    ttl: int = 64

    @property
    def ip_bytes(self) -> bytes:
        family = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        return socket.inet_pton(family, self.ip)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = int(np.frombuffer(data, ">u2").astype(np.int64).sum())
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def u16(values: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit fields, one row per frame."""
    return (np.asarray(values) & 0xFFFF).astype(">u2").view(np.uint8).reshape(-1, 2)


def u32(values: np.ndarray) -> np.ndarray:
    return (np.asarray(values) % (1 << 32)).astype(">u4").view(np.uint8).reshape(-1, 4)


@dataclass(slots=True)
class FrameBlock:
    """Many frames of one length built from one template.

    ``protocol`` names the generator's accounting bucket (compared with tshark's
    counts by the tests); ``label`` is the scenario instance the frames belong
    to, 0 for normal operations.
    """

    timestamps: np.ndarray  # float64 epoch seconds
    frames: np.ndarray  # (count, length) uint8
    protocol: str
    label: int = 0


class Template:
    """An Ethernet frame and where its variable fields sit."""

    def __init__(
        self,
        source: Endpoint,
        destination: Endpoint,
        transport: int,
        source_port: int,
        destination_port: int,
        payload: bytes,
        tcp_flags: int = 0x18,
        window: int = 64240,
    ) -> None:
        vlan = source.vlan if source.vlan is not None else destination.vlan
        ipv6 = ":" in source.ip
        ether_type = 0x86DD if ipv6 else 0x0800
        link = destination.mac + source.mac
        if vlan is not None:
            link += struct.pack("!HH", 0x8100, vlan)
        link += struct.pack("!H", ether_type)
        if transport == 6:
            transport_header = struct.pack(
                "!HHIIBBHHH", source_port, destination_port, 0, 0, 0x50, tcp_flags, window, 0, 0
            )
        elif transport == 17:
            transport_header = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0)
        else:  # ICMP: the payload carries its own header
            transport_header = b""
        body = transport_header + payload
        if ipv6:
            if transport == 17:  # a zero UDP checksum is illegal over IPv6 (RFC 8200 section 8.1)
                pseudo = source.ip_bytes + destination.ip_bytes + struct.pack("!IxxxB", len(body), 17)
                checksum = internet_checksum(pseudo + body) or 0xFFFF
                body = body[:6] + struct.pack("!H", checksum) + body[8:]
            network = (
                struct.pack("!IHBB", 0x60000000, len(body), transport, source.ttl)
                + source.ip_bytes
                + destination.ip_bytes
            )
        else:
            network = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, source.ttl, transport, 0,
                source.ip_bytes, destination.ip_bytes,
            )  # fmt: skip
        self.frame = np.frombuffer(link + network + body, np.uint8)
        self.network_offset = len(link)
        self.transport_offset = len(link) + len(network)
        self.payload_offset = self.transport_offset + len(transport_header)
        self.payload_length = len(payload)
        self.ipv6 = ipv6
        words = np.frombuffer(network, ">u2").astype(np.int64) if not ipv6 else np.zeros(1, np.int64)
        self.checksum_base = int(words.sum()) if not ipv6 else 0

    def build(
        self, timestamps: np.ndarray, protocol: str, identification: np.ndarray | None = None, label: int = 0
    ) -> FrameBlock:
        """Frames at ``timestamps`` with IPv4 ids (and so header checksums) set per frame."""
        timestamps = np.asarray(timestamps, np.float64)
        count = timestamps.shape[0]
        frames = np.tile(self.frame, (count, 1))
        if not self.ipv6:
            ids = (identification if identification is not None else np.arange(count, dtype=np.int64)) & 0xFFFF
            frames[:, self.network_offset + 4 : self.network_offset + 6] = u16(ids)
            total = self.checksum_base + ids
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            frames[:, self.network_offset + 10 : self.network_offset + 12] = u16(~total & 0xFFFF)
        return FrameBlock(timestamps, frames, protocol, label)

    def set_sequence(self, block: FrameBlock, sequence: np.ndarray, acknowledgement: np.ndarray) -> None:
        block.frames[:, self.transport_offset + 4 : self.transport_offset + 8] = u32(sequence)
        block.frames[:, self.transport_offset + 8 : self.transport_offset + 12] = u32(acknowledgement)

    def set_payload(self, block: FrameBlock, offset: int, values: np.ndarray) -> None:
        start = self.payload_offset + offset
        block.frames[:, start : start + values.shape[1]] = values


def raw_frame(timestamp: float, frame: bytes, protocol: str, label: int = 0) -> FrameBlock:
    """A layer-2 frame given whole (ARP, LLDP, Profinet DCP)."""
    return FrameBlock(np.array([timestamp]), np.frombuffer(frame, np.uint8).reshape(1, -1).copy(), protocol, label)


def udp_datagram(
    timestamp: float,
    source: Endpoint,
    destination: Endpoint,
    source_port: int,
    destination_port: int,
    payload: bytes,
    protocol: str,
    label: int = 0,
) -> FrameBlock:
    template = Template(source, destination, 17, source_port, destination_port, payload)
    return template.build(np.array([timestamp]), protocol, np.array([_ip_id(timestamp, source_port)]), label)


def _ip_id(timestamp: float, port: int) -> int:
    return (int(timestamp * 1000) * 31 + port) & 0xFFFF


def tcp_session(
    client: Endpoint,
    server: Endpoint,
    client_port: int,
    server_port: int,
    start: float,
    exchanges: Sequence[tuple[int, bytes, float]],
    protocol: str,
    label: int = 0,
    round_trip: float = 0.0008,
    handshake: bool = True,
    close: bool = True,
    initial_sequence: tuple[int, int] = (1_000, 50_000),
) -> tuple[list[FrameBlock], float]:
    """A whole TCP connection: handshake, the exchanges, teardown.

    ``exchanges`` are (direction, payload, delay before it) with direction
    TO_SERVER or TO_CLIENT; ``protocol`` is the accounting bucket of the
    frames that complete a message (the others count as "tcp"). Payloads longer than the MSS are segmented, and
    the receiver acknowledges each message. Returns the blocks and the time
    of the last packet.
    """
    blocks: list[FrameBlock] = []
    sides = (client, server)
    ports = ((client_port, server_port), (server_port, client_port))
    sequence = [initial_sequence[0], initial_sequence[1]]
    now = start

    def emit(direction: int, flags: int, payload: bytes = b"", final: bool = True) -> None:
        source, destination = sides[direction], sides[1 - direction]
        template = Template(source, destination, 6, *ports[direction], payload, flags)
        # Accounting follows tshark with TCP reassembly on: segments without payload, and every segment of a
        # message but its last, count as "tcp"; the last segment counts as the application protocol.
        bucket = protocol if payload and final else "tcp"
        block = template.build(np.array([now]), bucket, np.array([_ip_id(now, ports[direction][0])]), label)
        acknowledgement = sequence[1 - direction] if flags & 0x10 else 0
        template.set_sequence(block, np.array([sequence[direction]]), np.array([acknowledgement]))
        blocks.append(block)
        sequence[direction] += len(payload) + (1 if flags & 0x03 else 0)

    if handshake:
        emit(TO_SERVER, 0x02)
        now += round_trip / 2
        emit(TO_CLIENT, 0x12)
        now += round_trip / 2
        emit(TO_SERVER, 0x10)
    for direction, payload, delay in exchanges:
        now += delay
        for offset in range(0, len(payload), MSS):
            last = offset + MSS >= len(payload)
            emit(direction, 0x18 if last else 0x10, payload[offset : offset + MSS], final=last)
            now += 0.00002
        now += round_trip / 2
        emit(1 - direction, 0x10)
    if close:
        now += 0.001
        emit(TO_SERVER, 0x11)
        now += round_trip / 2
        emit(TO_CLIENT, 0x11)
        now += round_trip / 2
        emit(TO_SERVER, 0x10)
    return blocks, now


def tls_record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", content_type, version, len(body)) + body


@dataclass(frozen=True, slots=True)
class TlsClientProfile:
    """The ClientHello shape of one client family (data/sim/tls_clients.yaml): what JA3 and JA4 see."""

    name: str
    cipher_suites: tuple[int, ...]
    extensions: tuple[str, ...]
    groups: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    alpn: tuple[str, ...]
    versions: tuple[int, ...]


@cache
def _tls_clients() -> dict[str, Any]:
    text = resources.files("quaywatch.data").joinpath("sim", "tls_clients.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = load_yaml(text)
    return document


@cache
def tls_client(name: str) -> TlsClientProfile:
    """A client profile by name; the file's ``scenario_clients`` and ``office_browsers`` name them."""
    entry = _tls_clients()["profiles"][name]
    return TlsClientProfile(
        name, tuple(entry["cipher_suites"]), tuple(entry["extensions"]), tuple(entry["groups"]),
        tuple(entry["signature_algorithms"]), tuple(entry["alpn"]), tuple(entry["versions"]),
    )  # fmt: skip


def scenario_tls_client(scenario: str) -> TlsClientProfile:
    """The TLS stack an attack scenario's client uses (its implant or device), so JA4 can single it out."""
    return tls_client(str(_tls_clients()["scenario_clients"][scenario]))


def office_tls_client(mac: bytes | str) -> TlsClientProfile:
    """A laptop's browser, the same for the whole run: picked from its MAC address in the file's shares."""
    shares: dict[str, float] = _tls_clients()["office_browsers"]
    point = (zlib.crc32(mac if isinstance(mac, bytes) else mac.encode()) % 10_000) / 10_000 * sum(shares.values())
    for name, share in shares.items():
        if point < share:
            return tls_client(name)
        point -= share
    return tls_client(next(reversed(shares)))


def _u16_list(values: Sequence[int], length_bytes: int = 2) -> bytes:
    body = b"".join(value.to_bytes(2, "big") for value in values)
    return len(body).to_bytes(length_bytes, "big") + body


def _extension(name: str, server_name: bytes, random: bytes, profile: TlsClientProfile) -> bytes:
    """One extension's code point and body (RFC 8446 section 4.2 and the RFCs the data file cites)."""
    if name == "server_name":
        entry = b"\x00" + len(server_name).to_bytes(2, "big") + server_name
        code, body = 0x0000, len(entry).to_bytes(2, "big") + entry
    elif name == "supported_groups":
        code, body = 0x000A, _u16_list(profile.groups)
    elif name == "ec_point_formats":
        code, body = 0x000B, b"\x01\x00"
    elif name == "signature_algorithms":
        code, body = 0x000D, _u16_list(profile.signature_algorithms)
    elif name == "alpn":
        protocols = b"".join(len(p).to_bytes(1, "big") + p.encode() for p in profile.alpn)
        code, body = 0x0010, len(protocols).to_bytes(2, "big") + protocols
    elif name == "supported_versions":
        code, body = 0x002B, _u16_list(profile.versions, 1)
    elif name == "key_share":
        share = b"\x00\x1d" + (32).to_bytes(2, "big") + hashlib.sha256(random).digest()  # x25519
        code, body = 0x0033, len(share).to_bytes(2, "big") + share
    else:
        code, body = _FIXED_EXTENSIONS[name]
    return code.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


#: Extensions whose body does not depend on the profile.
_FIXED_EXTENSIONS = {
    "status_request": (0x0005, b"\x01\x00\x00\x00\x00"),
    "heartbeat": (0x000F, b"\x01"),
    "signed_certificate_timestamp": (0x0012, b""),
    "encrypt_then_mac": (0x0016, b""),
    "extended_master_secret": (0x0017, b""),
    "compress_certificate": (0x001B, b"\x02\x00\x02"),
    "record_size_limit": (0x001C, b"\x40\x01"),
    "session_ticket": (0x0023, b""),
    "psk_key_exchange_modes": (0x002D, b"\x01\x01"),
    "renegotiation_info": (0xFF01, b"\x00"),
}


def client_hello(server_name: str, random: bytes = bytes(32), profile: TlsClientProfile | None = None) -> bytes:
    """A ClientHello handshake message with SNI, in the shape of ``profile`` (the minimal generic client if None)."""
    profile = profile or tls_client("generic")
    name = server_name.encode()
    extensions = b"".join(_extension(extension, name, random, profile) for extension in profile.extensions)
    ciphers = b"".join(suite.to_bytes(2, "big") for suite in profile.cipher_suites)
    body = (
        b"\x03\x03" + random + b"\x20" + random + len(ciphers).to_bytes(2, "big") + ciphers + b"\x01\x00"
        + len(extensions).to_bytes(2, "big") + extensions
    )  # fmt: skip
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_hello(random: bytes = bytes(32), cipher: int = 0xC02F) -> bytes:
    extensions = bytes.fromhex("ff01000100")  # renegotiation info
    body = b"\x03\x03" + random + b"\x20" + random + cipher.to_bytes(2, "big") + b"\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    return b"\x02" + len(body).to_bytes(3, "big") + body

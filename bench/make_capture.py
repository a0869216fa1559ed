"""Write a large, realistic pcap of a container terminal's OT network, fast.

``python bench/make_capture.py --packets 2500000 --out bench/data/port.pcap [--seed 7]``

The benchmark needs millions of packets whose mix and flow structure look like
a real terminal (long-lived PLC polling, many short office connections, a little
VLAN and IPv6), built in seconds. Packets are therefore not built one by one:
every call below describes a whole array of packets of one layout (timestamps,
hosts, ports, sequence numbers, payload fields as numpy arrays), and each layout
is assembled into pcap records with column writes on one uint8 array. Simulated
time is generated window by window (10 minutes each) and merged in time order,
so memory stays bounded whatever the packet count.

The network: six ship-to-shore cranes (one /24 each, 10.10.1-6.0/24; crane 6 on
a tagged trunk, VLAN 106), a yard (RTG PLCs, reefer-monitoring gateways reached
over IPv6), the terminal operating system and SCADA (10.30.0.0/24), CCTV (VLAN
50) and a corporate LAN, each behind a Cisco router interface. MACs carry the
makers' real OUIs. Traffic: Modbus/TCP, S7comm and EtherNet/IP explicit
messaging polled every 200 ms-1 s over long-lived connections (3-way handshakes,
exact seq/ack, reconnects closed by FIN or RST; half of them already open when
the capture starts), EtherNet/IP implicit I/O on UDP 2222, HTTP and TLS 1.3
sessions, DNS over IPv4 and IPv6, NTP, ARP and ICMP echo.

All checksums are correct: IPv4 header, TCP, UDP (also over IPv6) and ICMP.
Frames shorter than 60 bytes are padded as on the wire. The output is a classic
pcap (microsecond, little-endian, Ethernet). The same seed gives the same bytes,
and a capture of N packets is the first N packets of any longer one. A sidecar
``FILE.truth.json`` holds the generator's own accounting.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

START_US = 1_741_939_200_000_000  # 2025-03-14 08:00:00 UTC
WINDOW_US = 600_000_000
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
GENERATOR = "quaywatch-bench-make-capture/1"

KINDS = ("modbus", "s7comm", "enip", "enip_io", "http", "tls", "dns", "ntp", "arp", "icmp")
KIND = {name: code for code, name in enumerate(KINDS)}
FLAG_VLAN, FLAG_IPV6 = 1, 2

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
DATA = PSH | ACK
TCP, UDP, ICMP = 6, 17, 1
# MSS 1460, NOP, window scale 0 (windows below are in bytes), NOP, NOP, SACK permitted.
SYN_OPTIONS = bytes.fromhex("020405b40103030001010402")

OUI = {
    "siemens": "00:1b:1b",
    "rockwell": "00:00:bc",
    "schneider": "00:80:f4",
    "hikvision": "44:19:b6",
    "dell": "f8:bc:12",
    "cisco": "00:1b:54",
}

Array = np.ndarray
Payload = Array | bytes  # per-packet rows, or the same bytes in every packet
Delay = Array | int  # microseconds


# -- random draws and byte helpers ---------------------------------------------------------


def ints(rng: np.random.Generator, low: int, high: int, size: int | tuple[int, ...] | None = None) -> Array:
    """Integers in [low, high) as an int64 array (typed, unlike the Generator method)."""
    return np.asarray(rng.integers(low, high, size), np.int64)


def chance(rng: np.random.Generator, probability: float, count: int) -> Array:
    """A boolean array: which of ``count`` events happen."""
    return np.asarray(rng.random(count) < probability)


def random_bytes(rng: np.random.Generator, count: int, size: int) -> Array:
    """Ciphertext-like bytes, (count, size)."""
    return np.asarray(rng.integers(0, 256, (count, size), dtype=np.uint8))


def be(values: npt.ArrayLike, width: int) -> Array:
    """Big-endian bytes of each value, as an (n, width) uint8 array."""
    data = np.atleast_1d(np.asarray(values)).astype(np.uint64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(8)
    return ((data[:, None] >> shifts) & np.uint64(0xFF)).astype(np.uint8)


def le(values: npt.ArrayLike, width: int) -> Array:
    """Little-endian bytes of each value, as an (n, width) uint8 array."""
    return be(values, width)[:, ::-1]


def fill(template: bytes, count: int, patches: dict[int, Array]) -> Array:
    """``count`` copies of ``template`` with per-row bytes written at the given offsets."""
    rows = np.empty((count, len(template)), np.uint8)
    rows[:] = np.frombuffer(template, np.uint8)
    for offset, values in patches.items():
        rows[:, offset : offset + values.shape[1]] = values
    return rows


def word_sum(rows: Array) -> Array:
    """Sum of the big-endian 16-bit words of each row (odd lengths padded with zero)."""
    high = rows[:, 0::2].sum(axis=1, dtype=np.uint64)
    low = rows[:, 1::2].sum(axis=1, dtype=np.uint64)
    total: Array = (high << np.uint64(8)) + low
    return total


def fold(total: Array) -> Array:
    """One's-complement checksum from a 64-bit word sum."""
    for _ in range(4):
        total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    return (~total) & np.uint64(0xFFFF)


def qname(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def ntp_time(t_us: Array) -> Array:
    """NTP timestamps (seconds since 1900, 32.32 fixed point) as (n, 8) bytes."""
    seconds = t_us // 1_000_000 + 2_208_988_800
    fraction = (t_us % 1_000_000) * (1 << 32) // 1_000_000
    return np.concatenate([be(seconds, 4), be(fraction, 4)], axis=1)


# -- the network -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    ipv4: str
    vendor: str
    vlan: int = 0
    ipv6: str = ""
    ttl: int = 64
    window: int = 29200
    external: bool = False


def terminal_hosts() -> list[Host]:
    """About sixty hosts of a mid-size container terminal, plus the Internet servers they use."""
    hosts: list[Host] = []
    gateways = [f"10.10.{crane}" for crane in range(1, 7)] + ["10.20.0", "10.30.0", "10.50.0", "192.168.10"]
    for prefix in gateways:
        vlan = 106 if prefix == "10.10.6" else 50 if prefix == "10.50.0" else 0
        hosts.append(Host(f"gw-{prefix}", f"{prefix}.1", "cisco", vlan, ttl=255, window=4128))
    for crane in range(1, 7):
        maker = "siemens" if crane <= 3 else "rockwell" if crane <= 5 else "schneider"
        vlan = 106 if crane == 6 else 0
        net = f"10.10.{crane}"
        plc_ttl = 30 if maker == "siemens" else 64
        hosts += [
            Host(f"sts{crane}-plc", f"{net}.10", maker, vlan, ttl=plc_ttl, window=8192),
            Host(f"sts{crane}-spreader", f"{net}.11", "schneider", vlan, window=5840),
            Host(f"sts{crane}-rio", f"{net}.20", maker, vlan, window=5840),
            Host(f"sts{crane}-hmi", f"{net}.30", "dell", vlan, ttl=128, window=64240),
        ]
    hosts += [Host(f"rtg{n}-plc", f"10.20.0.{10 + n}", "schneider", window=5840) for n in range(1, 5)]
    hosts += [
        Host(f"reefer-gw{n}", f"10.20.0.{20 + n}", "schneider", ipv6=f"fd00:20::{20 + n}", window=5840)
        for n in range(1, 4)
    ]
    hosts += [
        Host("gate-ocr", "10.20.0.40", "dell", ttl=128, window=64240),
        Host("tos-app", "10.30.0.10", "dell", ipv6="fd00:30::10"),
        Host("tos-db", "10.30.0.11", "dell", ipv6="fd00:30::11"),
        Host("scada", "10.30.0.20", "dell", ttl=128, window=64240),
        Host("historian", "10.30.0.21", "dell", ttl=128, window=64240),
        Host("eng-ws", "10.30.0.25", "dell", ttl=128, window=64240),
        Host("reefer-mon", "10.30.0.30", "dell", ipv6="fd00:30::30"),
        Host("dc01", "10.30.0.53", "dell", ipv6="fd00:30::53", ttl=128, window=64240),
        Host("ntp", "10.30.0.123", "cisco", ttl=255, window=4128),
        Host("nvr", "10.50.0.5", "hikvision", 50, window=14600),
    ]
    hosts += [Host(f"cam{n}", f"10.50.0.{10 + n}", "hikvision", 50, window=14600) for n in range(1, 9)]
    hosts += [Host(f"ws{n}", f"192.168.10.{100 + n}", "dell", ttl=128, window=64240) for n in range(1, 11)]
    hosts += [Host(name, ip, "cisco", ttl=52, window=65535, external=True) for name, ip, _ in SITES]
    return hosts


# Internet services the terminal talks to: name, address, protocol (addresses from documentation ranges).
SITES = [
    ("outlook.office365.com", "203.0.113.10", "tls"),
    ("login.microsoftonline.com", "203.0.113.11", "tls"),
    ("teams.microsoft.com", "203.0.113.12", "tls"),
    ("www.maersk.com", "198.51.100.20", "tls"),
    ("www.marinetraffic.com", "198.51.100.21", "tls"),
    ("api.vesselfinder.com", "198.51.100.22", "tls"),
    ("www.msftconnecttest.com", "198.51.100.30", "http"),
    ("ctldl.windowsupdate.com", "198.51.100.31", "http"),
    ("dev.hik-connect.com", "203.0.113.50", "tls"),
]


class Network:
    """Hosts as arrays, so that whole packet arrays can look up their addresses."""

    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        self.index = {host.name: number for number, host in enumerate(hosts)}
        count = len(hosts)
        self.mac = np.zeros((count, 6), np.uint8)
        self.ip4 = np.zeros((count, 4), np.uint8)
        self.ip6 = np.zeros((count, 16), np.uint8)
        self.local = np.array([not host.external for host in hosts])
        self.vlan = np.array([host.vlan for host in hosts], np.int64)
        self.ttl = np.array([host.ttl for host in hosts], np.int64)
        self.window = np.array([host.window for host in hosts], np.int64)
        prefixes = sorted({host.ipv4.rsplit(".", 1)[0] for host in hosts if not host.external})
        self.subnet = np.array(
            [-1 if host.external else prefixes.index(host.ipv4.rsplit(".", 1)[0]) for host in hosts], np.int64
        )
        self.gateway = np.array([self.index[f"gw-{prefix}"] for prefix in prefixes], np.int64)
        serials: Counter[str] = Counter()
        for number, host in enumerate(hosts):
            serials[host.vendor] += 1
            oui = bytes(int(part, 16) for part in OUI[host.vendor].split(":"))
            tail = (0x3A5C00 + serials[host.vendor] * 0x1F3 + number).to_bytes(3, "big")
            self.mac[number] = np.frombuffer(oui + tail, np.uint8)
            self.ip4[number] = np.frombuffer(ipaddress.IPv4Address(host.ipv4).packed, np.uint8)
            if host.ipv6:
                self.ip6[number] = np.frombuffer(ipaddress.IPv6Address(host.ipv6).packed, np.uint8)
        self.sum4 = word_sum(self.ip4)
        self.sum6 = word_sum(self.ip6)

    def __getitem__(self, name: str) -> int:
        return self.index[name]

    def named(self, *names: str) -> Array:
        return np.array([self.index[name] for name in names], np.int64)


# -- packets of one window ---------------------------------------------------------------


@dataclass(slots=True)
class Part:
    kind: int
    t: Array
    src: Array
    dst: Array
    sport: Array
    dport: Array
    seq: Array
    ack: Array
    flags: Array
    payload: Array  # (n, length) or (length,) for the same bytes in every packet


@dataclass(slots=True)
class Records:
    """pcap records (header + frame) stored back to back, with per-record facts."""

    blob: Array
    offsets: Array
    lengths: Array
    t: Array
    kind: Array
    flags: Array
    flow: Array  # canonical 5-tuple packed in an int64, 0 for ARP

    @classmethod
    def empty(cls) -> Records:
        none = np.zeros(0, np.int64)
        return cls(np.zeros(0, np.uint8), none, none, none, none, none, none)

    @classmethod
    def concatenate(cls, parts: list[Records]) -> Records:
        bases = np.cumsum([0] + [part.blob.shape[0] for part in parts[:-1]])
        return cls(
            np.concatenate([part.blob for part in parts]),
            np.concatenate([part.offsets + base for part, base in zip(parts, bases, strict=True)]),
            np.concatenate([part.lengths for part in parts]),
            np.concatenate([part.t for part in parts]),
            np.concatenate([part.kind for part in parts]),
            np.concatenate([part.flags for part in parts]),
            np.concatenate([part.flow for part in parts]),
        )

    def take(self, order: Array) -> Records:
        """The records at ``order``, in that order, copied into a new blob."""
        lengths = self.lengths[order]
        return Records(
            gather(self.blob, self.offsets[order], lengths),
            np.cumsum(lengths) - lengths,
            lengths,
            self.t[order],
            self.kind[order],
            self.flags[order],
            self.flow[order],
        )


def gather(blob: Array, starts: Array, lengths: Array) -> Array:
    """Concatenate ``blob[start:start+length]`` slices without a Python loop per slice."""
    out = np.empty(int(lengths.sum()), np.uint8)
    position = 0
    step = 1 << 15
    for first in range(0, starts.shape[0], step):
        piece_starts, piece_lengths = starts[first : first + step], lengths[first : first + step]
        total = int(piece_lengths.sum())
        ends = np.cumsum(piece_lengths)
        index = np.repeat(piece_starts - (ends - piece_lengths), piece_lengths) + np.arange(total)
        out[position : position + total] = blob[index]
        position += total
    return out


class Frames:
    """Collects packet arrays of one window by layout, then builds each layout in bulk."""

    def __init__(self, net: Network, rng: np.random.Generator) -> None:
        self.net = net
        self.rng = rng
        self.parts: dict[tuple[int, bool, int, bool], list[Part]] = {}
        self.arps: list[tuple[Array, Array, Array, Array]] = []

    def _add(
        self,
        key: tuple[int, bool, int, bool],
        kind: str,
        t: Array,
        src: object,
        dst: object,
        sport: object,
        dport: object,
        seq: object,
        ack: object,
        flags: object,
        payload: Array | bytes,
    ) -> None:
        t = np.atleast_1d(np.asarray(t, np.int64))
        count = t.shape[0]
        if count == 0:
            return

        def column(value: object) -> Array:
            return np.broadcast_to(np.asarray(value, np.int64), (count,))

        rows = np.frombuffer(payload, np.uint8) if isinstance(payload, bytes) else payload
        part = Part(
            KIND[kind],
            t,
            column(src),
            column(dst),
            column(sport),
            column(dport),
            column(seq),
            column(ack),
            column(flags),
            rows,
        )
        self.parts.setdefault(key, []).append(part)

    def tcp(
        self,
        kind: str,
        t: Array,
        src: object,
        dst: object,
        sport: object,
        dport: object,
        seq: object,
        ack: object,
        flags: object,
        payload: Array | bytes = b"",
        *,
        ipv6: bool = False,
        syn: bool = False,
    ) -> None:
        length = payload.shape[-1] if isinstance(payload, np.ndarray) else len(payload)
        self._add((TCP, ipv6, length, syn), kind, t, src, dst, sport, dport, seq, ack, flags, payload)

    def udp(
        self,
        kind: str,
        t: Array,
        src: object,
        dst: object,
        sport: object,
        dport: object,
        payload: Array | bytes,
        *,
        ipv6: bool = False,
    ) -> None:
        length = payload.shape[-1] if isinstance(payload, np.ndarray) else len(payload)
        self._add((UDP, ipv6, length, False), kind, t, src, dst, sport, dport, 0, 0, 0, payload)

    def icmp(self, kind: str, t: Array, src: object, dst: object, message: Array) -> None:
        """``message`` is the whole ICMP message with a zero checksum; the checksum is filled in."""
        self._add((ICMP, False, message.shape[-1], False), kind, t, src, dst, 0, 0, 0, 0, 0, message)

    def arp(self, t: Array, sender: Array, target: Array, reply: Array) -> None:
        self.arps.append((np.asarray(t, np.int64), sender, target, reply))

    # -- assembly ----------------------------------------------------------------------

    def build(self) -> Records:
        pieces: list[Records] = []
        for key, parts in self.parts.items():
            pieces += self._build_ip(key, parts)
        if self.arps:
            pieces += self._build_arp()
        return Records.concatenate(pieces) if pieces else Records.empty()

    def _link(self, src: Array, dst: Array, tagged: bool, ether_type: int, out: Array) -> int:
        """Write the Ethernet (and 802.1Q) header as seen leaving the sender; return its length."""
        net = self.net
        same = net.local[src] & net.local[dst] & (net.subnet[src] == net.subnet[dst])
        from_inside = net.local[src]
        gateway_of_src = net.gateway[np.maximum(net.subnet[src], 0)]
        gateway_of_dst = net.gateway[np.maximum(net.subnet[dst], 0)]
        destination = np.where(same | ~from_inside, dst, gateway_of_src)
        source = np.where(from_inside, src, gateway_of_dst)
        out[:, 16:22] = net.mac[destination]
        out[:, 22:28] = net.mac[source]
        position = 28
        if tagged:
            vlan = np.where(from_inside, net.vlan[src], net.vlan[dst])
            out[:, 28:30] = (0x81, 0x00)
            out[:, 30:32] = be(vlan | (5 << 13), 2)  # priority 5: control traffic
            position = 32
        out[:, position : position + 2] = (ether_type >> 8, ether_type & 0xFF)
        return position + 2 - 16

    def _tagged(self, src: Array, dst: Array) -> Array:
        net = self.net
        return np.asarray(np.where(net.local[src], net.vlan[src], net.vlan[dst]) != 0)

    def _build_ip(self, key: tuple[int, bool, int, bool], parts: list[Part]) -> list[Records]:
        proto, ipv6, length, syn = key

        def joined(name: str) -> Array:
            return np.concatenate([getattr(part, name) for part in parts])

        whole = Part(
            parts[0].kind,
            joined("t"),
            joined("src"),
            joined("dst"),
            joined("sport"),
            joined("dport"),
            joined("seq"),
            joined("ack"),
            joined("flags"),
            np.concatenate([np.broadcast_to(part.payload, (part.t.shape[0], length)) for part in parts]),
        )
        kinds = np.concatenate([np.full(part.t.shape[0], part.kind, np.int64) for part in parts])
        tagged = self._tagged(whole.src, whole.dst)
        out = []
        for vlan in (False, True):
            chosen = np.flatnonzero(tagged == vlan)
            if chosen.shape[0]:
                out.append(self._assemble(proto, ipv6, length, syn, vlan, whole, kinds, chosen))
        return out

    def _assemble(
        self,
        proto: int,
        ipv6: bool,
        length: int,
        syn: bool,
        vlan: bool,
        whole: Part,
        kinds: Array,
        chosen: Array,
    ) -> Records:
        net = self.net
        count = chosen.shape[0]
        src, dst = whole.src[chosen], whole.dst[chosen]
        sport, dport = whole.sport[chosen], whole.dport[chosen]
        transport_header = {TCP: 20 + (len(SYN_OPTIONS) if syn else 0), UDP: 8, ICMP: 0}[proto]
        transport_length = transport_header + length
        network_header = 40 if ipv6 else 20
        link_header = 18 if vlan else 14
        frame_length = max(60, link_header + network_header + transport_length)
        rows = np.zeros((count, 16 + frame_length), np.uint8)
        t = whole.t[chosen]
        rows[:, 0:4] = le(t // 1_000_000, 4)
        rows[:, 4:8] = le(t % 1_000_000, 4)
        rows[:, 8:12] = le(frame_length, 4)
        rows[:, 12:16] = le(frame_length, 4)
        ip = 16 + self._link(src, dst, vlan, 0x86DD if ipv6 else 0x0800, rows)
        l4 = ip + network_header
        if ipv6:
            label = (sport * 0x9E37 + dport * 0x85EB + src * 0x2C1B + dst) & 0xFFFFF
            rows[:, ip : ip + 4] = be((6 << 28) | label, 4)
            rows[:, ip + 4 : ip + 6] = be(transport_length, 2)
            rows[:, ip + 6] = proto
            rows[:, ip + 7] = net.ttl[src]
            rows[:, ip + 8 : ip + 24] = net.ip6[src]
            rows[:, ip + 24 : ip + 40] = net.ip6[dst]
            pseudo = net.sum6[src] + net.sum6[dst]
        else:
            rows[:, ip] = 0x45
            rows[:, ip + 2 : ip + 4] = be(20 + transport_length, 2)
            rows[:, ip + 4 : ip + 6] = be(ints(self.rng, 0, 1 << 16, count), 2)
            rows[:, ip + 6] = 0x40  # don't fragment
            rows[:, ip + 8] = net.ttl[src]
            rows[:, ip + 9] = proto
            rows[:, ip + 12 : ip + 16] = net.ip4[src]
            rows[:, ip + 16 : ip + 20] = net.ip4[dst]
            rows[:, ip + 10 : ip + 12] = be(fold(word_sum(rows[:, ip : ip + 20])), 2)
            pseudo = net.sum4[src] + net.sum4[dst]
        payload_at = l4 + transport_header
        rows[:, payload_at : payload_at + length] = whole.payload[chosen]
        checksum_at = {TCP: l4 + 16, UDP: l4 + 6, ICMP: l4 + 2}[proto]
        if proto == TCP:
            rows[:, l4 : l4 + 2] = be(sport, 2)
            rows[:, l4 + 2 : l4 + 4] = be(dport, 2)
            rows[:, l4 + 4 : l4 + 8] = be(whole.seq[chosen] & 0xFFFFFFFF, 4)
            rows[:, l4 + 8 : l4 + 12] = be(whole.ack[chosen] & 0xFFFFFFFF, 4)
            rows[:, l4 + 12] = (transport_header // 4) << 4
            rows[:, l4 + 13] = whole.flags[chosen]
            rows[:, l4 + 14 : l4 + 16] = be(np.where(whole.flags[chosen] & RST, 0, net.window[src]), 2)
            if syn:
                rows[:, l4 + 20 : l4 + 20 + len(SYN_OPTIONS)] = np.frombuffer(SYN_OPTIONS, np.uint8)
        elif proto == UDP:
            rows[:, l4 : l4 + 2] = be(sport, 2)
            rows[:, l4 + 2 : l4 + 4] = be(dport, 2)
            rows[:, l4 + 4 : l4 + 6] = be(transport_length, 2)
        if proto == ICMP:
            total = word_sum(rows[:, l4 : l4 + transport_length])
        else:
            pseudo = pseudo + np.uint64(proto + transport_length)
            total = word_sum(rows[:, l4 : l4 + transport_length]) + pseudo
        checksum = fold(total)
        if proto == UDP:
            checksum[checksum == 0] = 0xFFFF
        rows[:, checksum_at : checksum_at + 2] = be(checksum, 2)
        address = src * 2 + int(ipv6)
        peer = dst * 2 + int(ipv6)
        ends = np.sort(np.stack([(address << 16) | sport, (peer << 16) | dport], axis=1), axis=1)
        flow = (ends[:, 0] << 25) | ends[:, 1] << 1 | 1
        flow = flow * 256 + proto
        flags = np.full(count, (FLAG_VLAN if vlan else 0) | (FLAG_IPV6 if ipv6 else 0), np.int64)
        return _records(rows, t, kinds[chosen], flags, flow)

    def _build_arp(self) -> list[Records]:
        net = self.net
        t = np.concatenate([entry[0] for entry in self.arps])
        sender, target, reply = (np.concatenate([entry[i] for entry in self.arps]) for i in (1, 2, 3))
        tagged = self._tagged(sender, target)
        out = []
        for vlan in (False, True):
            chosen = np.flatnonzero(tagged == vlan)
            if not chosen.shape[0]:
                continue
            count = chosen.shape[0]
            rows = np.zeros((count, 16 + 60), np.uint8)
            ts = t[chosen]
            rows[:, 0:4] = le(ts // 1_000_000, 4)
            rows[:, 4:8] = le(ts % 1_000_000, 4)
            rows[:, 8:12] = le(60, 4)
            rows[:, 12:16] = le(60, 4)
            ask, answer, is_reply = sender[chosen], target[chosen], reply[chosen].astype(bool)
            at = 16 + self._link(ask, answer, vlan, 0x0806, rows)
            rows[:, 16:22] = np.where(is_reply[:, None], net.mac[answer], 0xFF)
            rows[:, at : at + 8] = np.frombuffer(bytes.fromhex("0001080006040000"), np.uint8)
            rows[:, at + 7] = np.where(is_reply, 2, 1)
            rows[:, at + 8 : at + 14] = net.mac[ask]
            rows[:, at + 14 : at + 18] = net.ip4[ask]
            rows[:, at + 18 : at + 24] = np.where(is_reply[:, None], net.mac[answer], 0)
            rows[:, at + 24 : at + 28] = net.ip4[answer]
            flags = np.full(count, FLAG_VLAN if vlan else 0, np.int64)
            kinds = np.full(count, KIND["arp"], np.int64)
            out.append(_records(rows, ts, kinds, flags, np.zeros(count, np.int64)))
        return out


def _records(rows: Array, t: Array, kind: Array, flags: Array, flow: Array) -> Records:
    count, width = rows.shape
    return Records(
        rows.reshape(-1),
        np.arange(count, dtype=np.int64) * width,
        np.full(count, width, np.int64),
        t,
        kind,
        flags,
        flow,
    )


# -- TCP conversations -------------------------------------------------------------------


class Conversation:
    """n TCP connections that exchange messages of the same sizes, tracked together.

    ``t`` is the time of each connection's last packet; each call sends one packet per
    connection ``delay`` microseconds later with the right sequence and acknowledgement.
    """

    def __init__(
        self,
        frames: Frames,
        kind: str,
        t: Array,
        client: Array,
        server: Array,
        client_port: Array,
        server_port: int,
        client_next: Array,
        server_next: Array,
        ipv6: bool = False,
    ) -> None:
        self.frames, self.kind, self.ipv6 = frames, kind, ipv6
        self.t = np.asarray(t, np.int64)
        self.client, self.server = client, server
        self.client_port, self.server_port = client_port, server_port
        self.next = {True: np.asarray(client_next, np.int64), False: np.asarray(server_next, np.int64)}

    def send(self, from_client: bool, delay: Delay, payload: Payload = b"", flags: int = DATA) -> None:
        self.t = self.t + delay
        ends = (self.client, self.client_port), (self.server, self.server_port)
        (source, sport), (destination, dport) = ends if from_client else ends[::-1]
        length = payload.shape[-1] if isinstance(payload, np.ndarray) else len(payload)
        seq, ack = self.next[from_client], self.next[not from_client]
        self.frames.tcp(
            self.kind,
            self.t,
            source,
            destination,
            sport,
            dport,
            seq,
            ack if flags & ACK else 0,
            flags,
            payload,
            ipv6=self.ipv6,
            syn=bool(flags & SYN),
        )
        self.next[from_client] = seq + length + (1 if flags & (SYN | FIN) else 0)

    def handshake(self, rtt: Array | int) -> None:
        self.send(True, 0, flags=SYN)
        self.send(False, rtt // 2 + 40, flags=SYN | ACK)
        self.send(True, rtt // 2 + 25, flags=ACK)

    def close(self, rtt: Array | int, from_client: bool = True) -> None:
        self.send(from_client, 200, flags=FIN | ACK)
        self.send(not from_client, rtt // 2 + 60, flags=FIN | ACK)
        self.send(from_client, rtt // 2 + 30, flags=ACK)

    def reset(self, from_client: bool, delay: Array | int = 150) -> None:
        self.send(from_client, delay, flags=RST | ACK)


# -- industrial polling --------------------------------------------------------------------


def plant_values(t_us: Array, count: int, salt: int) -> Array:
    """Process values that move like a crane or reefer: slow sines, a cycle counter, a status word."""
    seconds = (t_us - START_US) / 1e6
    register = np.arange(count)
    periods = 20.0 + (register * 37 + salt * 13) % 600
    base = 1000 + (register * 1543 + salt * 97) % 20000
    amplitude = 200 + (register * 311 + salt * 7) % 3000
    values = base + amplitude * np.sin(2 * np.pi * seconds[:, None] / periods + register + salt)
    values[:, 0] = seconds // 95 + salt * 100  # moves completed
    values[:, -1] = 0x0101 | ((seconds // 400).astype(np.int64) % 2) << 4  # status bits
    return np.asarray(np.clip(np.rint(values), 0, 65535), np.int64)


@dataclass(slots=True)
class Connection:
    first: int  # first poll index
    end: int  # one past the last poll index
    opens_at: int | None  # None: already open when the capture starts
    closes_at: int
    close: str  # "fin", "rst" or "client-rst"
    client_port: int
    client_base: int  # client sequence number of the first poll
    server_base: int
    extra: int  # per connection: Modbus transaction id / S7 PDU reference base, EtherNet/IP session


class Poller:
    """A client polling one server every ``period`` over a series of TCP connections."""

    kind = ""
    port = 0

    def __init__(self, net: Network, client: str, server: str, period: int, rng: np.random.Generator) -> None:
        """``period`` in milliseconds."""
        self.net = net
        self.client, self.server = net[client], net[server]
        self.ipv6 = False
        self.period = period * 1000
        self.phase = START_US + int(ints(rng, 0, self.period))
        self.salt = int(ints(rng, 0, 50))
        self.response_us = (2000, 8000)
        self.connections: list[Connection] = []
        self.rng = rng

    # protocol hooks
    def request(self, index: Array, extra: int, t: Array) -> Array:
        raise NotImplementedError

    def response(self, index: Array, extra: int, t: Array) -> Array:
        raise NotImplementedError

    def preamble(self, conversation: Conversation, extra: int) -> None:
        """Messages after the handshake and before polling starts."""

    @property
    def request_length(self) -> int:
        return int(self.request(np.zeros(1, np.int64), 0, np.full(1, START_US)).shape[1])

    @property
    def response_length(self) -> int:
        return int(self.response(np.zeros(1, np.int64), 0, np.full(1, START_US)).shape[1])

    def nominal(self, index: int) -> int:
        return self.phase + index * self.period

    def _schedule(self, until: int) -> None:
        """Extend the connection schedule to cover polls up to time ``until``."""
        rng = self.rng
        while not self.connections or self.connections[-1].closes_at < until:
            lifetime = int(rng.exponential(45 * 60e6)) + 60_000_000
            if not self.connections:
                if rng.random() < 0.5:
                    first, opens = 0, None
                else:
                    opens = START_US + int(ints(rng, 0, 5_000_000))
                    first = -(-(opens + 60_000 - self.phase) // self.period)
            else:
                previous = self.connections[-1].closes_at
                ready = previous + int(ints(rng, 1_000_000, 6_000_000))
                first = -(-(ready + 60_000 - self.phase) // self.period)
                opens = self.nominal(first) - 60_000
            end = first + max(2, lifetime // self.period)
            close = str(rng.choice(["fin", "rst", "client-rst"], p=[0.7, 0.2, 0.1]))
            windows = (49152, 65535) if self.net.ttl[self.client] == 128 else (32768, 60999)
            self.connections.append(
                Connection(
                    first,
                    end,
                    opens,
                    self.nominal(end - 1) + self.period // 2,
                    close,
                    int(ints(rng, *windows)),
                    int(ints(rng, 1, 1 << 31)),
                    int(ints(rng, 1, 1 << 31)),
                    int(ints(rng, 1, 1 << 16)),
                )
            )

    def window(self, frames: Frames, start: int, stop: int) -> None:
        self._schedule(stop + self.period)
        rng = self.rng
        rtt = int(ints(rng, 150, 700))
        # connection set-up and tear-down that fall in this window
        for conn in self.connections:
            one = np.ones(1, np.int64)
            if conn.opens_at is not None and start <= conn.opens_at < stop:
                at, client_base, server_base = conn.opens_at, conn.client_base, conn.server_base
                conversation = self._conversation(frames, conn, at, client_base, server_base)
                conversation.next = {True: one * (conn.client_base - 1), False: one * (conn.server_base - 1)}
                conversation.handshake(rtt)
                self.preamble(conversation, conn.extra)
                conn.client_base, conn.server_base = (
                    int(conversation.next[True][0]),
                    int(conversation.next[False][0]),
                )
            if start <= conn.closes_at < stop:
                polls = conn.end - conn.first
                conversation = self._conversation(
                    frames,
                    conn,
                    conn.closes_at,
                    conn.client_base + polls * self.request_length,
                    conn.server_base + polls * self.response_length,
                )
                if conn.close == "fin":
                    conversation.close(rtt)
                else:
                    conversation.reset(conn.close == "client-rst")
        # the polls themselves, all at once
        first = -(-(start - self.phase) // self.period)
        last = -(-(stop - self.phase) // self.period)
        index = np.arange(max(first, 0), max(last, 0), dtype=np.int64)
        starts = np.array([conn.first for conn in self.connections], np.int64)
        number = np.searchsorted(starts, index, side="right") - 1
        ends = np.array([conn.end for conn in self.connections], np.int64)
        live = (number >= 0) & (index < ends[np.maximum(number, 0)])
        index, number = index[live], number[live]
        count = index.shape[0]
        if count == 0:
            return
        asked = self.phase + index * self.period + ints(rng, 0, self.period // 40 + 1, count)
        answered = asked + ints(rng, *self.response_us, count)
        for which in np.unique(number).tolist():
            conn = self.connections[which]
            chosen = number == which
            poll = index[chosen] - conn.first
            request = self.request(poll, conn.extra, asked[chosen])
            response = self.response(poll, conn.extra, asked[chosen])
            client_seq = conn.client_base + poll * request.shape[1]
            server_seq = conn.server_base + poll * response.shape[1]
            net_args = (self.client, self.server, conn.client_port, self.port)
            frames.tcp(
                self.kind,
                asked[chosen],
                *net_args,
                client_seq,
                server_seq,
                PSH | ACK,
                request,
                ipv6=self.ipv6,
            )
            frames.tcp(
                self.kind,
                answered[chosen],
                self.server,
                self.client,
                self.port,
                conn.client_port,
                server_seq,
                client_seq + request.shape[1],
                PSH | ACK,
                response,
                ipv6=self.ipv6,
            )

    def _conversation(
        self, frames: Frames, conn: Connection, at: int, client_next: int, server_next: int
    ) -> Conversation:
        one = np.ones(1, np.int64)
        return Conversation(
            frames,
            self.kind,
            one * at,
            one * self.client,
            one * self.server,
            one * conn.client_port,
            self.port,
            one * client_next,
            one * server_next,
            self.ipv6,
        )


class ModbusPoller(Poller):
    """Read Holding (3) or Input (4) Registers, as HMIs, SCADA and PLCs acting as clients do."""

    kind, port = "modbus", 502

    def __init__(
        self,
        net: Network,
        client: str,
        server: str,
        period_ms: int,
        rng: np.random.Generator,
        *,
        function: int = 3,
        address: int = 0,
        quantity: int = 10,
        unit: int = 1,
    ) -> None:
        super().__init__(net, client, server, period_ms, rng)
        self.function, self.address, self.quantity, self.unit = function, address, quantity, unit
        self.response_us = (1500, 6000)

    def request(self, index: Array, extra: int, t: Array) -> Array:
        template = bytes(4) + b"\x00\x06" + bytes([self.unit, self.function])
        template += struct.pack(">HH", self.address, self.quantity)
        return fill(template, index.shape[0], {0: be((index + extra) & 0xFFFF, 2)})

    def response(self, index: Array, extra: int, t: Array) -> Array:
        size = 2 * self.quantity
        template = bytes(4) + struct.pack(">HBBB", 3 + size, self.unit, self.function, size) + bytes(size)
        values = plant_values(t, self.quantity, self.salt).astype(">u2").view(np.uint8)
        return fill(template, index.shape[0], {0: be((index + extra) & 0xFFFF, 2), 9: values})


def _tpkt_cotp(s7: bytes) -> bytes:
    return b"\x03\x00" + struct.pack(">H", 7 + len(s7)) + b"\x02\xf0\x80" + s7


class S7Poller(Poller):
    """S7comm Read Var of one data block area over ISO-on-TCP, as WinCC or a panel does."""

    kind, port = "s7comm", 102

    def __init__(
        self,
        net: Network,
        client: str,
        server: str,
        period_ms: int,
        rng: np.random.Generator,
        *,
        block: int = 1,
        size: int = 40,
    ) -> None:
        super().__init__(net, client, server, period_ms, rng)
        self.block, self.size = block, size
        self.response_us = (3000, 12000)

    def request(self, index: Array, extra: int, t: Array) -> Array:
        item = b"\x12\x0a\x10\x02" + struct.pack(">HH", self.size, self.block) + b"\x84\x00\x00\x00"
        parameter = b"\x04\x01" + item
        s7 = b"\x32\x01\x00\x00" + b"\x00\x00" + struct.pack(">HH", len(parameter), 0) + parameter
        return fill(_tpkt_cotp(s7), index.shape[0], {11: be((index + extra) & 0xFFFF, 2)})

    def response(self, index: Array, extra: int, t: Array) -> Array:
        data = b"\xff\x04" + struct.pack(">H", self.size * 8) + bytes(self.size)
        # header (Ack_Data, PDU reference patched below, no error), parameter (Read Var, one item), data
        s7 = b"\x32\x03\x00\x00\x00\x00" + struct.pack(">HH", 2, len(data)) + b"\x00\x00\x04\x01" + data
        values = plant_values(t, self.size // 2, self.salt).astype(">u2").view(np.uint8)
        return fill(_tpkt_cotp(s7), index.shape[0], {11: be((index + extra) & 0xFFFF, 2), 25: values})

    def preamble(self, conversation: Conversation, extra: int) -> None:
        parameters = bytes.fromhex("c0010ac1020100c2020102")
        request = b"\x03\x00\x00\x16\x11\xe0\x00\x00\x00\x01\x00" + parameters
        confirm = b"\x03\x00\x00\x16\x11\xd0\x00\x01\x44\x31\x00" + parameters
        setup = _tpkt_cotp(bytes.fromhex("32010000ffff00080000f0000001000101e0"))
        setup_ack = _tpkt_cotp(bytes.fromhex("32030000ffff000800000000f0000001000100f0"))
        conversation.send(True, 300, request)
        conversation.send(False, 2500, confirm)
        conversation.send(True, 400, setup)
        conversation.send(False, 4000, setup_ack)


class EnipPoller(Poller):
    """EtherNet/IP SendRRData carrying CIP Read Tag, as a Logix HMI polls a ControlLogix."""

    kind, port = "enip", 44818

    def __init__(
        self,
        net: Network,
        client: str,
        server: str,
        period_ms: int,
        rng: np.random.Generator,
        *,
        tag: str = "CraneStatus",
        elements: int = 8,
    ) -> None:
        super().__init__(net, client, server, period_ms, rng)
        name = tag.encode() + (b"\x00" if len(tag) % 2 else b"")
        path = b"\x91" + bytes([len(tag)]) + name
        self.cip_request = b"\x4c" + bytes([len(path) // 2]) + path + struct.pack("<H", elements)
        self.elements = elements
        self.response_us = (1000, 5000)

    @staticmethod
    def _encapsulate(cip: bytes) -> bytes:
        items = b"\x00\x00\x00\x00" + b"\x0a\x00" + b"\x02\x00" + b"\x00\x00\x00\x00" + b"\xb2\x00"
        data = items + struct.pack("<H", len(cip)) + cip
        return b"\x6f\x00" + struct.pack("<H", len(data)) + bytes(20) + data

    def request(self, index: Array, extra: int, t: Array) -> Array:
        context = le(index, 8)
        return fill(self._encapsulate(self.cip_request), index.shape[0], {4: le(extra, 4), 12: context})

    def response(self, index: Array, extra: int, t: Array) -> Array:
        cip = b"\xcc\x00\x00\x00\xc4\x00" + bytes(4 * self.elements)
        values = plant_values(t, self.elements, self.salt).astype("<u4").view(np.uint8)
        patches = {4: le(extra, 4), 12: le(index, 8), 46: values}
        return fill(self._encapsulate(cip), index.shape[0], patches)

    def preamble(self, conversation: Conversation, extra: int) -> None:
        register = b"\x65\x00\x04\x00" + bytes(20) + b"\x01\x00\x00\x00"
        registered = b"\x65\x00\x04\x00" + struct.pack("<I", extra) + bytes(16) + b"\x01\x00\x00\x00"
        conversation.send(True, 300, register)
        conversation.send(False, 1500, registered)


# -- the terminal's traffic ----------------------------------------------------------------

NAMES_A = {  # internal names the DNS server answers
    "tos.terminal.local": "10.30.0.10",
    "intranet.terminal.local": "10.30.0.10",
    "scada.terminal.local": "10.30.0.20",
    "historian.terminal.local": "10.30.0.21",
    "ntp.terminal.local": "10.30.0.123",
    "nvr.terminal.local": "10.50.0.5",
}
NAMES_MISSING = ["wpad.corp.local", "isatap.corp.local"]
NAMES_AAAA = {
    "tos-db.terminal.local": "fd00:30::11",
    "reefer-gw1.terminal.local": "fd00:20::21",
    "reefer-gw2.terminal.local": "fd00:20::22",
    "reefer-gw3.terminal.local": "fd00:20::23",
}

HTTP_EXCHANGES = {
    "www.msftconnecttest.com": (
        b"GET /connecttest.txt HTTP/1.1\r\nConnection: Close\r\nUser-Agent: Microsoft NCSI\r\n"
        b"Host: www.msftconnecttest.com\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 22\r\nContent-Type: text/plain\r\n"
        b"Connection: close\r\n\r\nMicrosoft Connect Test",
    ),
    "ctldl.windowsupdate.com": (
        b"GET /msdownload/update/v3/static/trustedr/en/disallowedcertstl.cab?7d1e2b0f3a HTTP/1.1\r\n"
        b"Connection: Keep-Alive\r\nAccept: */*\r\nIf-Modified-Since: Tue, 04 Feb 2025 18:22:41 GMT\r\n"
        b"User-Agent: Microsoft-CryptoAPI/10.0\r\nHost: ctldl.windowsupdate.com\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nLast-Modified: Tue, 04 Feb 2025 18:22:41 GMT\r\n"
        b'ETag: "0c1f4e3a3c7db1:0"\r\n'
        b"Server: ECAcc (lhd/4B2E)\r\n\r\n",
    ),
}
BERTH_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Berth plan</title></head><body><table>"
    b"<tr><td>Berth 3</td><td>MSC ALINA</td><td>ETA 14:30</td></tr></table></body></html>\n"
)
INTRANET = (
    b"GET /berth-plan HTTP/1.1\r\nHost: intranet.terminal.local\r\n"
    b"User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64)\r\nAccept: text/html\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: "
    + str(len(BERTH_PAGE)).encode()
    + b"\r\n\r\n"
    + BERTH_PAGE,
)
CAMERA_STATUS = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<DeviceStatus version="2.0" '
    b'xmlns="http://www.hikvision.com/ver20/XMLSchema">\n<currentDeviceTime>2025-03-14T08:00:00+00:00'
    b"</currentDeviceTime>\n<deviceUpTime>864000</deviceUpTime>\n</DeviceStatus>\n"
)
ISAPI = (
    b"GET /ISAPI/System/status HTTP/1.1\r\nHost: 10.50.0.10\r\nAuthorization: Basic YWRtaW46MTIzNDU=\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: application/xml; charset=UTF-8\r\nContent-Length: "
    + str(len(CAMERA_STATUS)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + CAMERA_STATUS,
)


def client_hello(server_name: str) -> tuple[bytes, int, int, int]:
    """A TLS 1.3 ClientHello record and the offsets of its random, session id and key share."""
    name = server_name.encode()
    sni_entry = b"\x00" + struct.pack(">H", len(name)) + name
    extensions = b"".join(
        struct.pack(">HH", kind, len(body)) + body
        for kind, body in [
            (0x0000, struct.pack(">H", len(sni_entry)) + sni_entry),
            (0x0017, b""),
            (0xFF01, b"\x00"),
            (0x000A, bytes.fromhex("0008001d001700180019")),
            (0x000B, b"\x01\x00"),
            (0x0010, bytes.fromhex("000c02683208687474702f312e31")),
            (0x000D, bytes.fromhex("0012040308040401050308050501080606010201")),
            (0x0033, bytes.fromhex("0024001d0020") + bytes(32)),
            (0x002D, b"\x01\x01"),
            (0x002B, bytes.fromhex("0403040303")),
        ]
    )
    suites = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
    body = b"\x03\x03" + bytes(32) + b"\x20" + bytes(32)  # version, random, session id
    body += struct.pack(">H", len(suites)) + suites + b"\x01\x00"
    body += struct.pack(">H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake
    return record, 11, 44, record.index(bytes.fromhex("001d0020") + bytes(32)) + 4


def server_flight(encrypted: int) -> tuple[bytes, int, int, int, int]:
    """ServerHello, ChangeCipherSpec and an encrypted record; offsets of random, sid, key, ciphertext."""
    extensions = bytes.fromhex("002b00020304") + bytes.fromhex("00330024001d0020") + bytes(32)
    body = b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + b"\x13\x01\x00"
    body += struct.pack(">H", len(extensions)) + extensions
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    hello = b"\x16\x03\x03" + struct.pack(">H", len(handshake)) + handshake
    change_cipher_spec = b"\x14\x03\x03\x00\x01\x01"
    flight = hello + change_cipher_spec + b"\x17\x03\x03" + struct.pack(">H", encrypted) + bytes(encrypted)
    return flight, 11, 44, len(hello) - 32, len(flight) - encrypted


def application_data(sizes: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
    """TLS application-data records of the given sizes, with where their ciphertext sits."""
    record, spans = b"", []
    for size in sizes:
        record += b"\x17\x03\x03" + struct.pack(">H", size)
        spans.append((len(record), size))
        record += bytes(size)
    return record, spans


class Terminal:
    """All traffic sources of the terminal; ``window`` emits one window of simulated time."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.net = Network(terminal_hosts())
        self.pollers: list[Poller] = []
        net, rng = self.net, self.rng
        for crane in range(1, 7):
            plc, hmi = f"sts{crane}-plc", f"sts{crane}-hmi"
            if crane <= 3:
                self.pollers += [
                    S7Poller(net, hmi, plc, 200, rng, block=10 + crane, size=40),
                    S7Poller(net, "scada", plc, 1000, rng, block=100, size=64),
                ]
            elif crane <= 5:
                self.pollers += [
                    EnipPoller(net, hmi, plc, 200, rng, tag="CraneStatus", elements=8),
                    EnipPoller(net, "scada", plc, 1000, rng, tag="Hoist_Data", elements=16),
                ]
            else:
                self.pollers += [
                    ModbusPoller(net, hmi, plc, 200, rng, address=0, quantity=24),
                    ModbusPoller(net, "scada", plc, 1000, rng, address=100, quantity=32),
                ]
            self.pollers.append(
                ModbusPoller(net, plc, f"sts{crane}-spreader", 250, rng, function=4, quantity=6, unit=2)
            )
        for rtg in range(1, 5):
            self.pollers.append(ModbusPoller(net, "scada", f"rtg{rtg}-plc", 500, rng, address=0, quantity=20))
        for gateway in range(1, 4):
            poller = ModbusPoller(net, "reefer-mon", f"reefer-gw{gateway}", 900, rng, function=4, quantity=48)
            poller.ipv6 = True
            self.pollers.append(poller)
        self.io_pairs = [(net[f"sts{crane}-plc"], net[f"sts{crane}-rio"], 900 + crane) for crane in (4, 5)]
        self.ntp_clients = [
            (net[host.name], 64_000_000 if host.vendor in ("siemens", "dell") else 1_024_000_000)
            for host in net.hosts
            if not host.external and host.vendor != "cisco" and not host.name.startswith("ws")
        ]
        self.ntp_phase = ints(rng, 0, 64_000_000, len(self.ntp_clients))
        self.workstations = net.named(*(f"ws{n}" for n in range(1, 11)))
        self.cameras = net.named(*(f"cam{n}" for n in range(1, 9)))
        self.servers = net.named("tos-app", "tos-db", "reefer-mon")
        plcs = [f"sts{crane}-plc" for crane in range(1, 7)] + [f"rtg{n}-plc" for n in range(1, 5)]
        self.plcs = net.named(*plcs)
        self.dns = self._dns_templates()
        self.tls = {name: self._tls_templates(name) for name, _, kind in SITES if kind == "tls"}

    # -- per window ----------------------------------------------------------------------

    def window(self, start: int, stop: int) -> Records:
        frames = Frames(self.net, self.rng)
        for poller in self.pollers:
            poller.window(frames, start, stop)
        self._implicit_io(frames, start, stop)
        self._web(frames, start, stop)
        self._cameras(frames, start, stop)
        self._dns_background(frames, start, stop)
        self._ntp(frames, start, stop)
        self._arp(frames, start, stop)
        self._ping(frames, start, stop)
        return frames.build()

    def _implicit_io(self, frames: Frames, start: int, stop: int) -> None:
        """EtherNet/IP class 1 cyclic I/O between a Logix PLC and its remote I/O, RPI 80 ms each way."""
        rpi = 80_000
        for plc, adapter, connection in self.io_pairs:
            index = np.arange(-(-(start - START_US) // rpi), -(-(stop - START_US) // rpi), dtype=np.int64)
            count = index.shape[0]
            for outbound in (True, False):
                t = START_US + index * rpi + (connection % 7) * 1000 + (0 if outbound else 7000)
                t = t + ints(self.rng, 0, 400, count)
                data = 16 if outbound else 12
                item = 2 + (4 if outbound else 0) + data  # sequence count, run/idle header, data
                header = b"\x02\x00\x02\x80\x08\x00" + bytes(8) + b"\xb1\x00" + struct.pack("<H", item)
                payload = header + bytes(2) + (b"\x01\x00\x00\x00" if outbound else b"") + bytes(data)
                values = plant_values(t, data // 2, connection).astype("<u2").view(np.uint8)
                ident = 0x10000000 + connection * 2 + int(outbound)
                patches = {
                    6: le(ident, 4),
                    10: le(index + 1, 4),
                    18: le(index & 0xFFFF, 2),
                    len(payload) - data: values,
                }
                source, target = (plc, adapter) if outbound else (adapter, plc)
                frames.udp("enip_io", t, source, target, 2222, 2222, fill(payload, count, patches))

    def _dns_templates(self) -> dict[str, tuple[bytes, bytes, bool]]:
        """Per name: query, response (id left zero) and whether it goes over IPv6."""
        templates: dict[str, tuple[bytes, bytes, bool]] = {}
        answers = {name: (1, ipaddress.IPv4Address(ip).packed) for name, ip, _ in SITES}
        answers |= {name: (1, ipaddress.IPv4Address(ip).packed) for name, ip in NAMES_A.items()}
        answers |= {name: (28, ipaddress.IPv6Address(ip).packed) for name, ip in NAMES_AAAA.items()}
        for name in [*answers, *NAMES_MISSING]:
            record_type = answers.get(name, (1, b""))[0]
            question = qname(name) + struct.pack(">HH", record_type, 1)
            query = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + question
            if name in answers:
                address = answers[name][1]
                ttl = 300 if name.endswith(".local") else 60
                answer = b"\xc0\x0c" + struct.pack(">HHIH", record_type, 1, ttl, len(address)) + address
                response = struct.pack(">HHHHHH", 0, 0x8180, 1, 1, 0, 0) + question + answer
            else:
                response = struct.pack(">HHHHHH", 0, 0x8183, 1, 0, 0, 0) + question
            templates[name] = (query, response, record_type == 28)
        return templates

    def _lookups(self, frames: Frames, t: Array, clients: Array, name: str) -> None:
        """DNS queries for ``name`` at times ``t`` from ``clients``, each from a fresh port."""
        count = t.shape[0]
        if count == 0:
            return
        query, response, ipv6 = self.dns[name]
        server = self.net["dc01"]
        windows = self.net.ttl[clients] == 128
        port = np.where(windows, ints(self.rng, 49152, 65536, count), ints(self.rng, 32768, 61000, count))
        ident = be(ints(self.rng, 0, 1 << 16, count), 2)
        frames.udp("dns", t, clients, server, port, 53, fill(query, count, {0: ident}), ipv6=ipv6)
        answered = t + ints(self.rng, 300, 2500, count) + (0 if name.endswith(".local") else 18_000)
        frames.udp("dns", answered, server, clients, 53, port, fill(response, count, {0: ident}), ipv6=ipv6)

    def _dns_background(self, frames: Frames, start: int, stop: int) -> None:
        """Lookups that are not followed by a connection here: cached names, internal names, probes."""
        rng, seconds = self.rng, (stop - start) / 1e6
        internal = [*NAMES_A, *NAMES_MISSING]
        count = rng.poisson(seconds * 1.2)
        t = np.sort(ints(rng, start, stop, count))
        clients = self.workstations[ints(rng, 0, len(self.workstations), count)]
        which = ints(rng, 0, len(internal) + len(SITES), count)
        names = internal + [name for name, _, _ in SITES]
        for number, name in enumerate(names):
            chosen = which == number
            self._lookups(frames, t[chosen], clients[chosen], name)
        count = rng.poisson(seconds * 0.2)  # TOS servers resolve their peers over IPv6
        t = np.sort(ints(rng, start, stop, count))
        clients = self.servers[ints(rng, 0, len(self.servers), count)]
        which = ints(rng, 0, len(NAMES_AAAA), count)
        for number, name in enumerate(NAMES_AAAA):
            self._lookups(frames, t[which == number], clients[which == number], name)

    def _tls_templates(self, name: str) -> list[tuple[bytes, list[tuple[int, int]]]]:
        """The TLS records of one session to ``name`` and the random spans inside each."""
        hello, random_at, session_at, key_at = client_hello(name)
        size = 1180 + len(name) * 7
        flight, s_random, _, s_key, cipher_at = server_flight(size)
        second, second_spans = application_data([300 + len(name) * 3, 53])
        finished, finished_spans = application_data([53, 420 + len(name)])
        finished = b"\x14\x03\x03\x00\x01\x01" + finished
        finished_spans = [(at + 6, length) for at, length in finished_spans]
        reply, reply_spans = application_data([250, 250, 900 + 11 * len(name)])
        alert, alert_spans = application_data([19])
        return [
            (hello, [(random_at, 32), (session_at, 32), (key_at, 32)]),
            (flight, [(s_random, 32), (s_key, 32), (cipher_at, size)]),
            (second, second_spans),
            (finished, finished_spans),
            (reply, reply_spans),
            (alert, alert_spans),
        ]

    def _sessions(
        self,
        frames: Frames,
        kind: str,
        t: Array,
        clients: Array,
        servers: Array,
        port: int,
        rtt: Array,
        messages: list[tuple[bool, Array | bytes, Array]],
        reset: Array,
    ) -> None:
        """Short TCP sessions: handshake, the messages (with ACKs of bulk data), FIN or RST."""
        count = t.shape[0]
        if count == 0:
            return
        windows = self.net.ttl[clients] == 128
        ports = np.where(windows, ints(self.rng, 49152, 65536, count), ints(self.rng, 32768, 61000, count))
        isn = ints(self.rng, 1, 1 << 32, (2, count))
        conversation = Conversation(frames, kind, t, clients, servers, ports, port, isn[0], isn[1])
        conversation.handshake(rtt)
        for from_client, payload, delay in messages:
            conversation.send(from_client, delay, payload)
            if not from_client:
                conversation.send(True, 120, flags=ACK)
        graceful = np.flatnonzero(~reset)
        abrupt = np.flatnonzero(reset)
        for chosen, ending in ((graceful, "fin"), (abrupt, "rst")):
            if not chosen.shape[0]:
                continue
            rest = Conversation(
                frames,
                kind,
                conversation.t[chosen],
                clients[chosen],
                servers[chosen],
                ports[chosen],
                port,
                conversation.next[True][chosen],
                conversation.next[False][chosen],
            )
            if ending == "fin":
                rest.close(rtt[chosen], from_client=True)
            else:
                rest.reset(True, 800)

    def _tls(self, frames: Frames, t: Array, clients: Array, name: str) -> None:
        count = t.shape[0]
        if count == 0:
            return
        rng = self.rng
        rtt = ints(rng, 12_000, 60_000, count)
        records = self.tls[name]
        filled = []
        for template, spans in records:
            patches = {at: random_bytes(rng, count, size) for at, size in spans}
            filled.append(fill(template, count, patches))
        hello, flight, second = filled[0], filled[1], filled[2]
        flight[:, 44:76] = hello[:, 44:76]  # the server echoes the session id
        think = ints(rng, 2_000, 40_000, count)
        messages: list[tuple[bool, Array | bytes, Array]] = [
            (True, hello, np.full(count, 150)),
            (False, flight, rtt + ints(rng, 500, 3000, count)),
            (False, second, np.full(count, 90)),
            (True, filled[3], np.full(count, 900)),
            (False, filled[4], rtt + think),
            (True, filled[5], ints(rng, 50_000, 2_000_000, count)),
        ]
        server = np.full(count, self.net[name])
        self._sessions(frames, "tls", t, clients, server, 443, rtt, messages, chance(rng, 0.15, count))

    def _http(
        self,
        frames: Frames,
        t: Array,
        clients: Array,
        servers: Array,
        exchange: tuple[bytes, bytes],
        rtt: Array,
        request: Array | bytes | None = None,
    ) -> None:
        count = t.shape[0]
        if count == 0:
            return
        think = ints(self.rng, 300, 9000, count)
        messages: list[tuple[bool, Array | bytes, Array]] = [
            (True, exchange[0] if request is None else request, np.full(count, 120)),
            (False, exchange[1], rtt + think),
        ]
        self._sessions(frames, "http", t, clients, servers, 80, rtt, messages, chance(self.rng, 0.1, count))

    def _web(self, frames: Frames, start: int, stop: int) -> None:
        """Office browsing and Windows background traffic, each connection after a DNS lookup."""
        rng, seconds = self.rng, (stop - start) / 1e6
        count = rng.poisson(seconds * 0.55)
        t = np.sort(ints(rng, start, stop, count))
        clients = self.workstations[ints(rng, 0, len(self.workstations), count)]
        weights = np.array([6, 5, 4, 2, 2, 1, 2, 1, 0], float)
        site = rng.choice(len(SITES), count, p=weights / weights.sum())
        looked_up = chance(rng, 0.6, count)
        connect = t + np.where(looked_up, 45_000, 0)  # a lookup first, unless the name is cached
        for number, (name, _, kind) in enumerate(SITES):
            chosen = site == number
            lookup = chosen & looked_up
            self._lookups(frames, t[lookup], clients[lookup], name)
            t_chosen = connect[chosen]
            if kind == "tls":
                self._tls(frames, t_chosen, clients[chosen], name)
            else:
                server = np.full(t_chosen.shape[0], self.net[name])
                rtt = ints(rng, 8_000, 30_000, server.shape[0])
                self._http(frames, t_chosen, clients[chosen], server, HTTP_EXCHANGES[name], rtt)
        count = rng.poisson(seconds * 0.08)  # the berth plan on the intranet
        t = np.sort(ints(rng, start, stop, count))
        clients = self.workstations[ints(rng, 0, len(self.workstations), count)]
        server = np.full(count, self.net["tos-app"])
        self._http(frames, t, clients, server, INTRANET, ints(rng, 300, 900, count))

    def _cameras(self, frames: Frames, start: int, stop: int) -> None:
        """The NVR checks each camera every 30 s; the cameras phone their cloud service now and then."""
        rng, period = self.rng, 30_000_000
        index = np.arange(-(-(start - START_US) // period), -(-(stop - START_US) // period), dtype=np.int64)
        t = (START_US + index[:, None] * period + np.arange(len(self.cameras)) * 2_900_000).reshape(-1)
        t = t + ints(rng, 0, 20_000, t.shape[0])
        cameras = np.tile(self.cameras, index.shape[0])
        digit = ISAPI[0].index(b"10.50.0.10") + 9  # the Host header names each camera
        last = (ord("0") + self.net.ip4[cameras, 3:] % 10).astype(np.uint8)
        request = fill(ISAPI[0], t.shape[0], {digit: last})
        nvr = np.full(t.shape[0], self.net["nvr"])
        self._http(frames, t, nvr, cameras, ISAPI, ints(rng, 200, 600, t.shape[0]), request)
        count = rng.poisson((stop - start) / 1e6 / 300 * len(self.cameras))
        t = np.sort(ints(rng, start, stop, count))
        clients = self.cameras[ints(rng, 0, len(self.cameras), count)]
        self._lookups(frames, t, clients, "dev.hik-connect.com")
        self._tls(frames, t + 30_000, clients, "dev.hik-connect.com")

    def _ntp(self, frames: Frames, start: int, stop: int) -> None:
        server = self.net["ntp"]
        for (client, period), phase in zip(self.ntp_clients, self.ntp_phase.tolist(), strict=True):
            origin = START_US + phase
            index = np.arange(-(-(start - origin) // period), -(-(stop - origin) // period), dtype=np.int64)
            count = index.shape[0]
            if count == 0:
                continue
            sent = origin + index * period + ints(self.rng, 0, 3000, count)
            received = sent + ints(self.rng, 100, 400, count)
            replied = received + ints(self.rng, 20, 60, count)
            back = replied + ints(self.rng, 100, 400, count)
            query = fill(b"\x23\x00\x06\xe9" + bytes(44), count, {40: ntp_time(sent)})
            reference = ntp_time(replied - 11_000_000)
            answer = fill(
                b"\x24\x01\x06\xec" + bytes(4) + b"\x00\x00\x00\x10" + b"GPS\x00" + bytes(32),
                count,
                {16: reference, 24: ntp_time(sent), 32: ntp_time(received), 40: ntp_time(replied)},
            )
            frames.udp("ntp", sent, client, server, 123, 123, query)
            frames.udp("ntp", back, server, client, 123, 123, answer)

    def _arp(self, frames: Frames, start: int, stop: int) -> None:
        """Address resolution on each segment: a request and its reply every few seconds."""
        rng, net = self.rng, self.net
        local = np.flatnonzero(net.local)
        local = local[np.argsort(net.subnet[local], kind="stable")]  # grouped by subnet
        sizes = np.bincount(net.subnet[local])
        firsts = np.cumsum(sizes) - sizes
        count = rng.poisson((stop - start) / 1e6 / 4)
        t = np.sort(ints(rng, start, stop, count))
        asker = local[ints(rng, 0, local.shape[0], count)]
        subnet = net.subnet[asker]
        target = local[firsts[subnet] + (rng.random(count) * sizes[subnet]).astype(np.int64)]
        target = np.where(target == asker, net.gateway[subnet], target)
        if count:
            frames.arp(t, asker, target, np.zeros(count, np.int64))
            frames.arp(t + ints(rng, 80, 900, count), target, asker, np.ones(count, np.int64))

    def _ping(self, frames: Frames, start: int, stop: int) -> None:
        """An engineer pings a PLC now and then: four echo requests a second apart, Windows style."""
        rng = self.rng
        count = rng.poisson((stop - start) / 1e6 / 240)
        if count == 0:
            return
        t = (np.sort(ints(rng, start, stop, count))[:, None] + np.arange(4) * 1_000_000).reshape(-1)
        target = np.repeat(self.plcs[ints(rng, 0, len(self.plcs), count)], 4)
        ident = np.repeat(ints(rng, 1, 1 << 16, count), 4)
        sequence = (np.arange(t.shape[0]) + ints(rng, 0, 5000)) & 0xFFFF
        body = b"abcdefghijklmnopqrstuvwabcdefghi"
        patches = {4: be(ident, 2), 6: be(sequence, 2)}
        engineer = self.net["eng-ws"]
        frames.icmp("icmp", t, engineer, target, fill(b"\x08\x00" + bytes(6) + body, t.shape[0], patches))
        back = t + ints(rng, 300, 2000, t.shape[0])
        frames.icmp("icmp", back, target, engineer, fill(b"\x00\x00" + bytes(6) + body, t.shape[0], patches))


# -- writing -------------------------------------------------------------------------------


def write_capture(path: Path, packets: int, seed: int = 7) -> dict[str, object]:
    """Write exactly ``packets`` packets to ``path``; return (and write beside it) the accounting."""
    started = time.perf_counter()
    terminal = Terminal(seed)
    carry = Records.empty()
    written = 0
    kinds = np.zeros(len(KINDS), np.int64)
    vlan_packets = ipv6_packets = 0
    flows: set[int] = set()
    first_t = last_t = START_US
    window = 0
    with path.open("wb") as handle:
        handle.write(PCAP_HEADER)
        while written < packets:
            start = START_US + window * WINDOW_US
            fresh = terminal.window(start, start + WINDOW_US)
            if fresh.t.shape[0] and int(fresh.t.min()) < start:
                raise RuntimeError("a traffic source wrote into a window already written")
            merged = Records.concatenate([carry, fresh])
            order = np.argsort(merged.t, kind="stable")
            ready = int(np.searchsorted(merged.t[order], start + WINDOW_US))
            emit = order[: min(ready, packets - written)]
            carry = merged.take(order[ready:])
            out = merged.take(emit)
            handle.write(out.blob.tobytes())
            if written == 0 and out.t.shape[0]:
                first_t = int(out.t[0])
            if out.t.shape[0]:
                last_t = int(out.t[-1])
            written += emit.shape[0]
            kinds += np.bincount(out.kind, minlength=len(KINDS))
            vlan_packets += int(np.count_nonzero(out.flags & FLAG_VLAN))
            ipv6_packets += int(np.count_nonzero(out.flags & FLAG_IPV6))
            flows.update(np.unique(out.flow[out.flow != 0]).tolist())
            window += 1
    elapsed = time.perf_counter() - started
    truth: dict[str, object] = {
        "generator": GENERATOR,
        "seed": seed,
        "packets": written,
        "bytes": path.stat().st_size,
        "packets_by_kind": {name: int(count) for name, count in zip(KINDS, kinds, strict=True)},
        "vlan_packets": vlan_packets,
        "ipv6_packets": ipv6_packets,
        "flows": len(flows),
        "flows_note": "distinct bidirectional 5-tuples (TCP, UDP; ICMP by address pair); ARP not counted",
        "hosts": int(np.count_nonzero(terminal.net.local)),
        "first_timestamp": first_t / 1e6,
        "last_timestamp": last_t / 1e6,
        "simulated_seconds": (last_t - first_t) / 1e6,
        "generation_seconds": round(elapsed, 3),
    }
    path.with_name(path.name + ".truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=2_500_000, help="exact number of packets to write")
    parser.add_argument("--out", type=Path, required=True, help="pcap file to write")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quiet", action="store_true")
    arguments = parser.parse_args(argv)
    if arguments.packets < 1:
        parser.error("--packets must be at least 1")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    truth = write_capture(arguments.out, arguments.packets, arguments.seed)
    if not arguments.quiet:
        seconds = float(truth["generation_seconds"])  # type: ignore[arg-type]
        print(
            f"{arguments.out}: {truth['packets']:,} packets, {truth['flows']:,} flows, "
            f"{truth['simulated_seconds']:.0f} s of traffic, written in {seconds:.1f} s "
            f"({int(truth['packets']) / seconds:,.0f} packets/s)"  # type: ignore[call-overload]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

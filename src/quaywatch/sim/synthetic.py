"""Fast synthesis of container-terminal OT traffic, for the demo and benchmarks.

Packets are not built one by one: each traffic source (a PLC poll loop, DNS
lookups, web sessions...) has a template frame and the fields that change per
message (timestamps, sequence numbers, transaction ids, register values that
follow crane physics) are written into whole arrays of frames at once. Sources
are generated window by window of simulated time and merged in time order by
a compiled gather, so memory stays bounded whatever the packet count.

TCP and UDP checksums are left zero (UDP: "no checksum", valid; TCP: not
verified by tshark or Zeek by default); IPv4 header checksums are correct.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
START = 1_764_000_000.0  # 2025-11-24, a Monday
WINDOW_SECONDS = 20.0

# Makers' IEEE OUIs (see the vendor data of the assets stage).
OUI = {
    "siemens": "00:1b:1b",
    "rockwell": "00:00:bc",
    "schneider": "00:80:f4",
    "hikvision": "44:19:b6",
    "dell": "f8:bc:12",
    "cisco": "00:1b:54",
    "abb": "00:0c:2d",
    "vaisala": "00:0b:4f",
}


def _mac(vendor: str, host: int) -> bytes:
    prefix = bytes(int(part, 16) for part in OUI[vendor].split(":"))
    return prefix + host.to_bytes(3, "big")


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    ip: str
    mac: bytes
    vlan: int | None = None

    @property
    def ip_bytes(self) -> bytes:
        family = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        return socket.inet_pton(family, self.ip)


def _internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = int(np.frombuffer(data, ">u2").astype(np.int64).sum())
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _u16(values: np.ndarray) -> np.ndarray:
    return values.astype(">u2").view(np.uint8).reshape(-1, 2)


def _u32(values: np.ndarray) -> np.ndarray:
    return (values % (1 << 32)).astype(">u4").view(np.uint8).reshape(-1, 4)


@dataclass(slots=True)
class FrameBlock:
    """Many frames built from one template: same length, patched fields."""

    timestamps: np.ndarray
    frames: np.ndarray  # (count, length) uint8
    kind: str


class Template:
    """An Ethernet frame and where its variable fields sit."""

    def __init__(
        self,
        source: Host,
        destination: Host,
        transport: int,
        source_port: int,
        destination_port: int,
        payload: bytes,
        tcp_flags: int = 0x18,
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
                "!HHIIBBHHH", source_port, destination_port, 0, 0, 0x50, tcp_flags, 8192, 0, 0
            )
        elif transport == 17:
            transport_header = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0)
        else:  # ICMP echo
            transport_header = b""
        body = transport_header + payload
        if ipv6:
            if transport == 17:  # a zero UDP checksum is illegal over IPv6 (RFC 8200 section 8.1)
                pseudo = source.ip_bytes + destination.ip_bytes + struct.pack("!IxxxB", len(body), 17)
                checksum = _internet_checksum(pseudo + body) or 0xFFFF
                body = body[:6] + struct.pack("!H", checksum) + body[8:]
            network = (
                struct.pack("!IHBB", 0x60000000, len(body), transport, 64) + source.ip_bytes + destination.ip_bytes
            )
        else:
            network = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, transport, 0,
                source.ip_bytes, destination.ip_bytes,
            )  # fmt: skip
        self.frame = np.frombuffer(link + network + body, np.uint8)
        self.network_offset = len(link)
        self.transport_offset = len(link) + len(network)
        self.payload_offset = self.transport_offset + len(transport_header)
        self.ipv6 = ipv6
        words = np.frombuffer(network, ">u2").astype(np.int64) if not ipv6 else np.zeros(1, np.int64)
        self.checksum_base = int(words.sum()) if not ipv6 else 0

    def build(self, timestamps: np.ndarray, kind: str, identification: np.ndarray | None = None) -> FrameBlock:
        count = timestamps.shape[0]
        frames = np.tile(self.frame, (count, 1))
        if not self.ipv6:
            ids = (
                identification if identification is not None else np.arange(count, dtype=np.int64)
            ) & 0xFFFF  # fmt: skip
            frames[:, self.network_offset + 4 : self.network_offset + 6] = _u16(ids)
            total = self.checksum_base + ids
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            frames[:, self.network_offset + 10 : self.network_offset + 12] = _u16(~total & 0xFFFF)
        return FrameBlock(timestamps, frames, kind)

    def set_sequence(self, block: FrameBlock, sequence: np.ndarray, acknowledgement: np.ndarray) -> None:
        block.frames[:, self.transport_offset + 4 : self.transport_offset + 8] = _u32(sequence)
        block.frames[:, self.transport_offset + 8 : self.transport_offset + 12] = _u32(acknowledgement)

    def set_payload(self, block: FrameBlock, offset: int, values: np.ndarray) -> None:
        start = self.payload_offset + offset
        block.frames[:, start : start + values.shape[1]] = values


@dataclass(slots=True)
class Terminal:
    """The hosts of a mid-size container terminal."""

    plcs: list[Host] = field(default_factory=list)
    hmis: list[Host] = field(default_factory=list)
    io_devices: list[Host] = field(default_factory=list)
    corporate: list[Host] = field(default_factory=list)
    cameras: list[Host] = field(default_factory=list)
    dns_server: Host | None = None
    ntp_server: Host | None = None
    web_servers: list[Host] = field(default_factory=list)
    ipv6_hosts: list[Host] = field(default_factory=list)

    @classmethod
    def default(cls, cranes: int = 6) -> Terminal:
        terminal = cls()
        for crane in range(cranes):
            vlan = 100 + crane
            maker = ("siemens", "rockwell", "schneider")[crane % 3]
            terminal.plcs.append(Host(f"sts{crane + 1}-plc", f"10.10.{crane + 1}.10", _mac(maker, 0x10 + crane), vlan))
            terminal.plcs.append(
                Host(f"sts{crane + 1}-spreader", f"10.10.{crane + 1}.11", _mac(maker, 0x30 + crane), vlan)
            )
            terminal.hmis.append(
                Host(f"sts{crane + 1}-cab-hmi", f"10.10.{crane + 1}.20", _mac("dell", 0x20 + crane), vlan)
            )
            terminal.io_devices.append(
                Host(f"sts{crane + 1}-drive", f"10.10.{crane + 1}.30", _mac("abb", 0x40 + crane), vlan)
            )
        terminal.plcs.append(Host("weather-station", "10.40.0.10", _mac("vaisala", 1)))
        terminal.hmis.append(Host("cms-server", "10.20.0.5", _mac("dell", 0x50)))
        terminal.corporate = [Host(f"office-{i}", f"192.168.10.{20 + i}", _mac("dell", 0x100 + i)) for i in range(24)]
        terminal.cameras = [Host(f"camera-{i}", f"10.50.0.{10 + i}", _mac("hikvision", 0x200 + i)) for i in range(8)]
        terminal.dns_server = Host("dns", "10.30.0.53", _mac("cisco", 0x53))
        terminal.ntp_server = Host("ntp", "10.30.0.123", _mac("cisco", 0x7B))
        terminal.web_servers = [Host(f"web-{i}", f"203.0.113.{10 + i}", _mac("cisco", 0x1)) for i in range(6)]
        terminal.ipv6_hosts = [Host(f"tos-{i}", f"fd00:30::{i + 1:x}", _mac("dell", 0x300 + i)) for i in range(4)]
        return terminal


def crane_registers(times: np.ndarray, crane: int) -> np.ndarray:
    """Ten holding registers that follow a crane's work cycle (about 100 s per box).

    hoist height (cm), trolley position (cm), gantry position (cm), load (0.1 t),
    twistlocks locked, wind speed (0.1 m/s), spreader size (ft), cycle count,
    drive temperature (0.1 C), status word.
    """
    phase = (times / 100.0 + crane * 0.17) % 1.0
    hoist = 1500 + 2500 * np.abs(np.sin(np.pi * phase))
    trolley = 500 + 6000 * phase
    gantry = np.full_like(times, 12_000 + 3_000 * crane)
    locked = ((phase > 0.1) & (phase < 0.6)).astype(np.float64)
    load = locked * (220 + 40 * np.sin(times / 900.0 + crane))
    wind = 60 + 25 * np.sin(times / 600.0) + 10 * np.sin(times / 37.0 + crane)
    spreader = np.where((times // 1000 + crane) % 3 == 0, 20, 40)
    cycles = times // 100
    temperature = 450 + 80 * np.sin(times / 3600.0)
    status = np.full_like(times, 0x0001)
    values = np.stack([hoist, trolley, gantry, load, locked, wind, spreader, cycles, temperature, status], axis=1)
    return np.clip(values, 0, 65535).astype(np.int64)


@njit(cache=True)
def _gather(blob: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, order: np.ndarray, out: np.ndarray) -> int:
    position = 0
    for index in order:
        start = offsets[index]
        length = lengths[index]
        out[position : position + length] = blob[start : start + length]
        position += length
    return position


class Synthesiser:
    """Generates the terminal's traffic window by window."""

    def __init__(self, terminal: Terminal, seed: int) -> None:
        self.terminal = terminal
        self.random = np.random.default_rng(seed)
        self.counts: Counter[str] = Counter()
        self.flows = 0
        self.ephemeral = 32768
        # Long-lived polling connections: (client, server, period seconds, kind, client port, crane).
        self.polls: list[tuple[Host, Host, float, str, int, int]] = []
        for index, plc in enumerate(self.terminal.plcs):
            crane = index // 2
            hmi = self.terminal.hmis[min(crane, len(self.terminal.hmis) - 1)]
            kind = ("modbus", "s7comm", "enip")[crane % 3] if plc.name != "weather-station" else "modbus"
            for client, period in ((hmi, 0.1), (self.terminal.hmis[-1], 0.5)):
                self.polls.append((client, plc, period, kind, self._port(), crane))
        self.flows += len(self.polls)
        self.io_pairs = [
            (plc, device) for plc, device in zip(self.terminal.plcs[::2], self.terminal.io_devices, strict=False)
        ]
        self.flows += len(self.io_pairs)
        self.templates: dict[tuple[int, str], list[Template]] = {}

    def _port(self) -> int:
        self.ephemeral = 32768 + (self.ephemeral - 32768 + 1) % 28000
        return self.ephemeral

    # -- sources --------------------------------------------------------------------

    def window(self, start: float, end: float) -> list[FrameBlock]:
        blocks: list[FrameBlock] = []
        for number, (client, server, period, kind, port, crane) in enumerate(self.polls):
            blocks += self._poll(number, client, server, period, kind, port, crane, start, end)
        for plc, device in self.io_pairs:
            blocks += self._cyclic_io(plc, device, start, end)
        blocks += self._dns(start, end)
        blocks += self._short_tcp(start, end)
        blocks += self._ntp_arp_icmp(start, end)
        return blocks

    def _poll_templates(self, number: int, client: Host, server: Host, kind: str, port: int) -> list[Template]:
        key = (number, kind)
        if key not in self.templates:
            if kind == "modbus":
                request = bytes.fromhex("000000000006") + bytes([1, 3, 0, 0, 0, 10])
                response = bytes.fromhex("000000000017") + bytes([1, 3, 20]) + bytes(20)
                server_port = 502
            elif kind == "s7comm":
                item = bytes.fromhex("120a10020014000184000000")  # DB1 byte 0, 20 bytes
                parameter = bytes([0x04, 1]) + item
                s7 = bytes.fromhex("320100000000") + len(parameter).to_bytes(2, "big") + b"\x00\x00" + parameter
                request = bytes.fromhex("0300") + (7 + len(s7)).to_bytes(2, "big") + bytes.fromhex("02f080") + s7
                data = bytes.fromhex("ff040014") + bytes(20)
                s7_response = bytes.fromhex("32030000000000020018") + b"\x00\x00" + bytes([0x04, 1]) + data
                response = (
                    bytes.fromhex("0300")
                    + (7 + len(s7_response)).to_bytes(2, "big")
                    + bytes.fromhex("02f080")
                    + s7_response
                )
                server_port = 102
            else:
                cip = bytes.fromhex("4c03910454414731") + bytes.fromhex("0100")  # Read Tag "TAG1"
                items = bytes.fromhex("000000000a00020000000000b200")  # handle, timeout, 2 items
                cpf = items + len(cip).to_bytes(2, "little") + cip
                request = bytes.fromhex("6f00") + len(cpf).to_bytes(2, "little") + bytes(20) + cpf
                reply = bytes.fromhex("cc000000c300") + bytes(20)
                cpf_reply = items + len(reply).to_bytes(2, "little") + reply
                response = bytes.fromhex("6f00") + len(cpf_reply).to_bytes(2, "little") + bytes(20) + cpf_reply
                server_port = 44818
            self.templates[key] = [
                Template(client, server, 6, port, server_port, request),
                Template(server, client, 6, server_port, port, response),
            ]
        return self.templates[key]

    def _poll(
        self, number: int, client: Host, server: Host, period: float, kind: str, port: int, crane: int,
        start: float, end: float,
    ) -> list[FrameBlock]:  # fmt: skip
        first = int(np.ceil((start - START) / period))
        last = int(np.ceil((end - START) / period))
        if last <= first:
            return []
        indexes = np.arange(first, last, dtype=np.int64)
        jitter = self.random.normal(0, period * 0.02, indexes.shape[0])
        requests_at = START + indexes * period + np.abs(jitter) + number * 0.0007
        responses_at = requests_at + self.random.uniform(0.002, 0.008, indexes.shape[0])
        request, response = self._poll_templates(number, client, server, kind, port)
        request_length = request.frame.shape[0] - request.payload_offset
        response_length = response.frame.shape[0] - response.payload_offset
        client_isn, server_isn = 1_000_000 * (number + 1), 7_000_000 * (number + 1)
        outbound = request.build(requests_at, kind, indexes)
        inbound = response.build(responses_at, kind, indexes + 31)
        request.set_sequence(outbound, client_isn + indexes * request_length, server_isn + indexes * response_length)
        response.set_sequence(
            inbound, server_isn + indexes * response_length, client_isn + (indexes + 1) * request_length
        )
        if kind == "modbus":
            transaction = _u16(indexes & 0xFFFF)
            request.set_payload(outbound, 0, transaction)
            response.set_payload(inbound, 0, transaction)
            registers = crane_registers(requests_at - START, crane)
            response.set_payload(inbound, 9, registers.astype(">u2").view(np.uint8).reshape(-1, 20))
        elif kind == "s7comm":
            reference = _u16(indexes & 0xFFFF)
            request.set_payload(outbound, 11, reference)
            response.set_payload(inbound, 11, reference)
            registers = crane_registers(requests_at - START, crane)
            response.set_payload(inbound, 25, registers.astype(">u2").view(np.uint8).reshape(-1, 20))
        else:
            context = _u32(indexes)
            request.set_payload(outbound, 12, context)
            response.set_payload(inbound, 12, context)
        self.counts[kind] += 2 * indexes.shape[0]
        return [outbound, inbound]

    def _cyclic_io(self, plc: Host, device: Host, start: float, end: float) -> list[FrameBlock]:
        key = (hash(device.name), "cip_io")
        if key not in self.templates:
            payload = bytes.fromhex("020002800800") + bytes(8) + bytes.fromhex("b1000a00") + bytes(10)
            self.templates[key] = [
                Template(plc, device, 17, 2222, 2222, payload),
                Template(device, plc, 17, 2222, 2222, payload),
            ]
        period = 0.05  # drive I/O every 50 ms
        first, last = int(np.ceil((start - START) / period)), int(np.ceil((end - START) / period))
        indexes = np.arange(first, last, dtype=np.int64)
        blocks = []
        for side, template in enumerate(self.templates[key]):
            block = template.build(START + indexes * period + side * 0.003, "cip_io", indexes)
            template.set_payload(block, 10, _u32(indexes))
            blocks.append(block)
        self.counts["cip_io"] += 2 * indexes.shape[0]
        return blocks

    def _dns(self, start: float, end: float) -> list[FrameBlock]:
        """Lookups from office and TOS hosts; each from a fresh port, so each is a flow."""
        assert self.terminal.dns_server is not None
        count = self.random.poisson((end - start) * 12.0)
        if count == 0:
            return []
        names = [
            b"tos.terminal.example",
            b"edi.partner-line.example",
            b"updates.vendor.example",
            b"time.terminal.example",
        ]
        blocks = []
        times = np.sort(self.random.uniform(start, end, count))
        clients = self.random.integers(0, len(self.terminal.corporate), count)
        for name_index, name in enumerate(names):
            chosen = np.flatnonzero(np.arange(count) % len(names) == name_index)
            if chosen.shape[0] == 0:
                continue
            question = b"".join(bytes([len(part)]) + part for part in name.split(b".")) + b"\x00\x00\x01\x00\x01"
            for client_index in np.unique(clients[chosen]).tolist():
                subset = chosen[clients[chosen] == client_index]
                client = self.terminal.corporate[client_index]
                for query_index in subset.tolist():
                    port = self._port()
                    query = Template(
                        client,
                        self.terminal.dns_server,
                        17,
                        port,
                        53,
                        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question,
                    )
                    answer_record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04" + bytes([10, 30, 0, 80])
                    answer = Template(
                        self.terminal.dns_server,
                        client,
                        17,
                        53,
                        port,
                        b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer_record,
                    )
                    at = np.array([times[query_index]])
                    blocks.append(query.build(at, "dns"))
                    blocks.append(answer.build(at + 0.0015, "dns"))
                    self.flows += 1
        self.counts["dns"] += 2 * count
        if self.terminal.ipv6_hosts:
            host = self.terminal.ipv6_hosts[int(self.random.integers(0, len(self.terminal.ipv6_hosts)))]
            server = Host("dns6", "fd00:30::53", self.terminal.dns_server.mac)
            port = self._port()
            question = b"\x03tos\x08terminal\x07example\x00\x00\x1c\x00\x01"
            query = Template(host, server, 17, port, 53, b"\x56\x78\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question)
            answer = Template(
                server, host, 17, 53, port, b"\x56\x78\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + question
            )
            at = np.array([start + (end - start) / 2])
            blocks += [query.build(at, "dns6"), answer.build(at + 0.001, "dns6")]
            self.counts["dns6"] += 2
            self.flows += 1
        return blocks

    def _short_tcp(self, start: float, end: float) -> list[FrameBlock]:
        """Office web and TLS sessions: handshake, request, response, close."""
        count = self.random.poisson((end - start) * 4.0)
        blocks = []
        for at in np.sort(self.random.uniform(start, end, count)).tolist():
            client = self.terminal.corporate[int(self.random.integers(0, len(self.terminal.corporate)))]
            server = self.terminal.web_servers[int(self.random.integers(0, len(self.terminal.web_servers)))]
            port = self._port()
            if self.random.random() < 0.5:
                service, kind = 80, "http"
                request = b"GET /schedule HTTP/1.1\r\nHost: portal.example\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
                response = (
                    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
                    b"Content-Length: 12\r\n\r\nvessel plan\n"
                )
            else:
                service, kind = 443, "tls"
                request = _tls_record(_client_hello(b"portal.example"))
                response = _tls_record(
                    b"\x02" + (38 + 3).to_bytes(3, "big") + b"\x03\x03" + bytes(32) + b"\x00\x13\x01\x00"
                )
            a, b = 100, 900
            steps = [
                (client, server, port, service, 0x02, b"", a, 0),
                (server, client, service, port, 0x12, b"", b, a + 1),
                (client, server, port, service, 0x10, b"", a + 1, b + 1),
                (client, server, port, service, 0x18, request, a + 1, b + 1),
                (server, client, service, port, 0x18, response, b + 1, a + 1 + len(request)),
                (client, server, port, service, 0x11, b"", a + 1 + len(request), b + 1 + len(response)),
                (server, client, service, port, 0x11, b"", b + 1 + len(response), a + 2 + len(request)),
                (client, server, port, service, 0x10, b"", a + 2 + len(request), b + 2 + len(response)),
            ]
            for step, (source, destination, sport, dport, flags, payload, sequence, acknowledgement) in enumerate(
                steps
            ):
                template = Template(source, destination, 6, sport, dport, payload, flags)
                block = template.build(np.array([at + step * 0.004]), kind)
                template.set_sequence(block, np.array([sequence]), np.array([acknowledgement]))
                blocks.append(block)
            self.counts[kind] += len(steps)
            self.flows += 1
        return blocks

    def _ntp_arp_icmp(self, start: float, end: float) -> list[FrameBlock]:
        assert self.terminal.ntp_server is not None
        blocks = []
        for host in self.terminal.plcs[::3]:
            first, last = int(np.ceil((start - START) / 64.0)), int(np.ceil((end - START) / 64.0))
            if last > first:
                times = START + np.arange(first, last) * 64.0 + 0.3
                request = Template(host, self.terminal.ntp_server, 17, 123, 123, b"\x23\x02\x06\xe9" + bytes(44))
                reply = Template(self.terminal.ntp_server, host, 17, 123, 123, b"\x24\x02\x06\xe9" + bytes(44))
                blocks += [request.build(times, "ntp"), reply.build(times + 0.0008, "ntp")]
                self.counts["ntp"] += 2 * times.shape[0]
                self.flows += times.shape[0]
        first, last = int(np.ceil((start - START) / 30.0)), int(np.ceil((end - START) / 30.0))
        for index in range(first, last):
            asker = self.terminal.hmis[index % len(self.terminal.hmis)]
            target = self.terminal.plcs[index % len(self.terminal.plcs)]
            at = START + index * 30.0 + 0.11
            arp_request = (
                b"\xff" * 6
                + asker.mac
                + b"\x08\x06"
                + struct.pack(
                    "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, asker.mac, asker.ip_bytes, bytes(6), target.ip_bytes
                )
            )
            arp_reply = (
                asker.mac
                + target.mac
                + b"\x08\x06"
                + struct.pack(
                    "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, target.mac, target.ip_bytes, asker.mac, asker.ip_bytes
                )
            )
            blocks.append(FrameBlock(np.array([at]), np.frombuffer(arp_request, np.uint8).reshape(1, -1), "arp"))
            blocks.append(FrameBlock(np.array([at + 0.0004]), np.frombuffer(arp_reply, np.uint8).reshape(1, -1), "arp"))
            echo = Template(self.terminal.hmis[-1], target, 1, 0, 0, b"\x08\x00\x00\x00\x00\x01\x00\x01" + bytes(32))
            echo_reply = Template(
                target, self.terminal.hmis[-1], 1, 0, 0, b"\x00\x00\x00\x00\x00\x01\x00\x01" + bytes(32)
            )
            blocks += [echo.build(np.array([at + 1]), "icmp"), echo_reply.build(np.array([at + 1.0005]), "icmp")]
            self.counts["arp"] += 2
            self.counts["icmp"] += 2
            self.flows += 1
        return blocks


def _tls_record(handshake: bytes) -> bytes:
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def _client_hello(server_name: bytes) -> bytes:
    name = b"\x00" + len(server_name).to_bytes(2, "big") + server_name
    sni = b"\x00\x00" + (len(name) + 2).to_bytes(2, "big") + len(name).to_bytes(2, "big") + name
    versions = b"\x00\x2b\x00\x03\x02\x03\x04"
    extensions = sni + versions
    body = (
        b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
        + len(extensions).to_bytes(2, "big") + extensions
    )  # fmt: skip
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _records(blocks: list[FrameBlock]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flatten blocks into pcap records: (blob, offsets, lengths, timestamps)."""
    pieces, offsets, lengths, stamps = [], [], [], []
    position = 0
    for block in blocks:
        count, length = block.frames.shape
        if count == 0:
            continue
        seconds = np.floor(block.timestamps).astype(np.int64)
        micros = np.round((block.timestamps - seconds) * 1e6).astype(np.int64)
        overflow = micros >= 1_000_000
        seconds, micros = seconds + overflow, np.where(overflow, micros - 1_000_000, micros)
        header = np.stack(
            [seconds, micros, np.full(count, length), np.full(count, length)], axis=1
        ).astype("<u4").view(np.uint8).reshape(count, 16)  # fmt: skip
        records = np.concatenate([header, block.frames], axis=1)
        pieces.append(records.reshape(-1))
        record_length = 16 + length
        offsets.append(position + np.arange(count, dtype=np.int64) * record_length)
        lengths.append(np.full(count, record_length, np.int64))
        stamps.append(block.timestamps)
        position += count * record_length
    if not pieces:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.uint8), empty, empty, np.zeros(0)
    return np.concatenate(pieces), np.concatenate(offsets), np.concatenate(lengths), np.concatenate(stamps)


def write_capture(path: Path, packets: int, seed: int = 7, cranes: int = 6) -> dict[str, object]:
    """Write a pcap of about ``packets`` packets (whole windows; trimmed to exactly ``packets``).

    Returns the generator's own accounting, also written to ``<path>.truth.json``.
    """
    synthesiser = Synthesiser(Terminal.default(cranes), seed)
    written = 0
    window = 0
    with path.open("wb") as handle:
        handle.write(PCAP_HEADER)
        while written < packets:
            start = START + window * WINDOW_SECONDS
            blob, offsets, lengths, stamps = _records(synthesiser.window(start, start + WINDOW_SECONDS))
            order = np.argsort(stamps, kind="stable")[: packets - written]
            out = np.empty(int(lengths[order].sum()), np.uint8)
            _gather(blob, offsets, lengths, order, out)
            handle.write(out.tobytes())
            written += order.shape[0]
            window += 1
    truth: dict[str, object] = {
        "packets": written,
        "simulated_seconds": window * WINDOW_SECONDS,
        "packets_by_kind_before_trim": dict(synthesiser.counts),
        "flows_at_least": synthesiser.flows,
        "seed": seed,
        "cranes": cranes,
    }
    path.with_name(path.name + ".truth.json").write_text(json.dumps(truth, indent=2))
    return truth

"""Shared machinery of the attack scenarios: scheduling across windows and protocol messages.

A scenario knows its whole timeline when it is built (the physics of the whole
span is known), so it lists *events* (a time and a builder). ``window`` builds
the events that start in it and hands out frames through a spool, so a session
that runs past the window's end continues in the next window and no frame is
ever placed before a window's start.

Accounting buckets (``FrameBlock.protocol``): the tshark name of the frame's
top protocol. TCP segments without payload (handshake, ACK, FIN), and the
non-final segments of a message tshark reassembles, are "tcp"; the final
segment carries the application protocol's name (``retag``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from quaywatch.sim.engine import Scenario, SimulationContext
from quaywatch.sim.frames import Endpoint, FrameBlock, client_hello, scenario_tls_client, server_hello, tls_record
from quaywatch.sim.model import Device, TerminalModel
from quaywatch.sim.pending import PendingFrames
from quaywatch.yaml_files import load_yaml

Builder = Callable[[], list[FrameBlock]]


@cache
def reference(section: str) -> dict[str, Any]:
    """One section of data/sim/scenarios.yaml (illustrative addresses and names, with their sources)."""
    text = resources.files("quaywatch.data").joinpath("sim", "scenarios.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = load_yaml(text)
    return dict(document[section])


def external_host(model: TerminalModel, name: str, ip: str, domain: str = "", role: str = "server") -> Device:
    """An internet host a scenario talks to, added to the model once (so context.endpoints can route it)."""
    try:
        return model.device(name)
    except KeyError:
        device = Device(name=name, zone="external", role=role, maker="", ip=ip, mac="", vlan=None, domain=domain)
        model.add_device(device)
        return device


LISTED_CAMERA = "camera-07"


def listed_camera(model: TerminalModel) -> Device:
    """The Hikvision camera a contractor installed on the CCTV network (added once; it is declared: it was bought).

    The clean terminal has no listed-vendor equipment, so a clean day gives no D12 finding; the scenarios that need
    such a camera install it, and the normal CCTV recording then includes it.
    """
    return model.place(
        LISTED_CAMERA, "cctv", 16, "camera", "Hikvision", model="DS-2CD2143G2-I", firmware="V5.7.3", declared=True
    )


class ScheduledScenario(Scenario):
    """A scenario as a list of (time, builder) events, built lazily window by window."""

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        # Two instances of one scenario with different parameters draw differently (and use other client ports).
        identity = self.name if not parameters else f"{self.name}/{json.dumps(parameters, sort_keys=True, default=str)}"
        self.random = context.random(identity)
        self.ports = context.ports(identity)
        self.events: list[tuple[float, int, Builder]] = []
        self.spool = PendingFrames()
        self._next = 0

    def schedule(self, moment: float, builder: Builder) -> None:
        if self.context.start <= moment < self.context.end:
            self.events.append((moment, len(self.events), builder))

    def window(self, start: float, end: float) -> list[FrameBlock]:
        if self._next == 0:
            self.events.sort(key=lambda event: (event[0], event[1]))
        while self._next < len(self.events) and self.events[self._next][0] < end:
            self.spool.add(self.events[self._next][2]())
            self._next += 1
        return self.spool.take(end)


# -- endpoints ------------------------------------------------------------------------------------------------


def own_uplink(context: SimulationContext, modem: Device, host: Device, reply_ttl: int) -> tuple[Endpoint, Endpoint]:
    """The modem and an internet host as seen on the crane VLAN when the modem is its own gateway.

    Both directions carry the modem's MAC (no firewall hop), and the far side's
    TTL is the carrier path's, unlike the firewall's: the signs of a second uplink.
    """
    neighbour = next(device for device in context.model.devices if device.zone == modem.zone and device != modem)
    near, _ = context.endpoints(modem, neighbour)
    return near, Endpoint(host.name, host.ip, near.mac, near.vlan, reply_ttl)


# -- accounting -----------------------------------------------------------------------------------------------


# -- DNS --------------------------------------------------------------------------------------------------------


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def dns_query(transaction: int, name: str, query_type: int = 1) -> bytes:
    return struct.pack("!HHHHHH", transaction, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", query_type, 1)


def dns_response(transaction: int, name: str, addresses: list[str], ttl: int = 300) -> bytes:
    """A recursive resolver's NOERROR answer with A records (compressed name pointer to the question)."""
    header = struct.pack("!HHHHHH", transaction, 0x8180, 1, len(addresses), 0, 0)
    question = dns_name(name) + struct.pack("!HH", 1, 1)
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + bytes(int(part) for part in address.split("."))
        for address in addresses
    )
    return header + question + answers


# -- DHCP -------------------------------------------------------------------------------------------------------


def dhcp_message(
    op: int,
    message_type: int,
    transaction: int,
    client_mac: bytes,
    options: list[tuple[int, bytes]],
    yiaddr: str = "0.0.0.0",
    ciaddr: str = "0.0.0.0",
    broadcast: bool = False,
) -> bytes:
    """A BOOTP/DHCP message (RFC 2131) with option 53 first and the END option."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s",
        op, 1, 6, 0, transaction, 0, 0x8000 if broadcast else 0,
        _ip(ciaddr), _ip(yiaddr), _ip("0.0.0.0"), _ip("0.0.0.0"),
    )  # fmt: skip
    body = header + client_mac + bytes(10) + bytes(64) + bytes(128) + b"\x63\x82\x53\x63"
    body += bytes([53, 1, message_type])
    for code, value in options:
        body += bytes([code, len(value)]) + value
    body += b"\xff"
    return body + bytes(max(0, 300 - len(body)))


def _ip(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def ip_option(*addresses: str) -> bytes:
    return b"".join(_ip(address) for address in addresses)


# -- TLS --------------------------------------------------------------------------------------------------------


def tls_opening(server_name: str, random: np.random.Generator, scenario: str) -> list[tuple[int, bytes, float]]:
    """ClientHello with SNI, ServerHello + ChangeCipherSpec + Finished, the client's CCS + Finished.

    The ClientHello has the shape of the scenario's TLS stack (data/sim/tls_clients.yaml), so its JA4 is the
    implant's or device's own, not the office browsers'.
    """
    client_random = random.bytes(32)
    server_random = random.bytes(32)
    hello = tls_record(22, client_hello(server_name, client_random, scenario_tls_client(scenario)), 0x0301)
    answer = tls_record(22, server_hello(server_random)) + tls_record(20, b"\x01") + tls_record(22, random.bytes(40))
    finish = tls_record(20, b"\x01") + tls_record(22, random.bytes(40))
    return [(0, hello, 0.0), (1, answer, 0.02), (0, finish, 0.003)]


def tls_data(random: np.random.Generator, size: int) -> bytes:
    """Application-data records of ``size`` bytes of ciphertext in total (records of at most 16 KiB)."""
    out = b""
    while size > 0:
        chunk = min(size, 16_384)
        out += tls_record(23, random.bytes(chunk))
        size -= chunk
    return out


# -- HTTP -------------------------------------------------------------------------------------------------------


def http_post(host: str, uri: str, user_agent: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"POST {uri} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def http_ok(body: bytes = b'{"status":"ok"}') -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# -- MQTT 3.1.1 ---------------------------------------------------------------------------------------------


def _remaining(length: int) -> bytes:
    out = b""
    while True:
        byte = length % 128
        length //= 128
        out += bytes([byte | (0x80 if length else 0)])
        if not length:
            return out


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def mqtt_connect(client_id: str, user_name: str, keep_alive: int = 60) -> bytes:
    flags = 0x02 | 0x80 | 0x40  # clean session, user name, password
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + keep_alive.to_bytes(2, "big")
    payload = _mqtt_string(client_id) + _mqtt_string(user_name) + _mqtt_string("s3cr3t-bridge")
    body = variable + payload
    return b"\x10" + _remaining(len(body)) + body


MQTT_CONNACK = b"\x20\x02\x00\x00"


def mqtt_publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    """QoS 1 PUBLISH (answered by PUBACK)."""
    body = _mqtt_string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _remaining(len(body)) + body


def mqtt_puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


MQTT_DISCONNECT = b"\xe0\x00"


def with_ttl(endpoint: Endpoint, ttl: int) -> Endpoint:
    return replace(endpoint, ttl=ttl)

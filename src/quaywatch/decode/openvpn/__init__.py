"""OpenVPN over UDP and TCP (OpenVPN's ssl.h / "OpenVPN protocol" wire format; nDPI protocols/openvpn.c).

Each packet starts with an opcode (high five bits) and key id (low three bits); over TCP a two-byte length
precedes it. A session starts with a P_CONTROL_HARD_RESET_CLIENT_V2/V3 (opcode 7 or 10, key id 0) carrying the
client's 8-byte session id; the server answers with P_CONTROL_HARD_RESET_SERVER_V2 (opcode 8) whose ACK echoes that
session id as the remote session id, after an optional tls-auth HMAC (0, 16, 20, 32 or 64 bytes) and packet id.
This is nDPI's rule: the echo identifies OpenVPN, a client reset alone does not. One ``remote_access`` row per flow.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session

PROTOCOL = "openvpn"
CLIENT_RESETS = {7: "P_CONTROL_HARD_RESET_CLIENT_V2", 10: "P_CONTROL_HARD_RESET_CLIENT_V3"}
SERVER_RESET = 8
HMAC_SIZES = (0, 16, 20, 32, 64)
TABLES = {remote_access.TABLE: remote_access.SCHEMA}


def client_reset(packet: bytes) -> bool:
    return len(packet) >= 14 and packet[0] >> 3 in CLIENT_RESETS and packet[0] & 7 == 0


def echoes(packet: bytes, session_id: bytes) -> bool:
    """A server hard reset whose ACK names ``session_id`` as the remote session."""
    if len(packet) < 22 or packet[0] >> 3 != SERVER_RESET:
        return False
    for hmac in HMAC_SIZES:
        position = 9 + (hmac + 8 if hmac else 0)
        if position >= len(packet):
            break
        count = packet[position]
        start = position + 1 + 4 * count
        if 0 < count <= 8 and packet[start : start + 8] == session_id:
            return True
    return False


class OpenvpnSession(Session):
    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.session_id: bytes | None = None
        self.reset_name = ""
        self.done = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.done:
            return []
        if not self.stream:
            return self._packet(data, direction)
        buffer = self.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 2 and not self.done:
            length = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + length:
                break
            packet = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            events += self._packet(packet, direction)
        if len(buffer) > 4096:
            self.done = True  # no OpenVPN framing: give up on the flow
        if self.done:
            self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        return events

    def _packet(self, packet: bytes, direction: Direction) -> list[Event]:
        if direction == Direction.TO_SERVER and self.session_id is None and client_reset(packet):
            self.session_id = packet[1:9]
            self.reset_name = CLIENT_RESETS[packet[0] >> 3]
        elif direction == Direction.TO_CLIENT and self.session_id is not None and echoes(packet, self.session_id):
            self.done = True
            over = "TCP" if self.stream else "UDP"
            evidence = f"{self.reset_name} answered by P_CONTROL_HARD_RESET_SERVER_V2 echoing its session id ({over})"
            return [
                remote_access.remote_access("openvpn", evidence, version="OpenVPN", tunnel_id=self.session_id.hex())
            ]
        return []


class OpenvpnUdpDecoder(Decoder):
    name = "openvpn_udp"
    transport = "udp"
    ports = frozenset({1194})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return direction == Direction.TO_SERVER and client_reset(payload)

    def session(self) -> Session:
        return OpenvpnSession(stream=False)


class OpenvpnTcpDecoder(Decoder):
    name = "openvpn_tcp"
    transport = "tcp"
    ports = frozenset({1194})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        if direction != Direction.TO_SERVER or len(payload) < 16:
            return False
        length = int.from_bytes(payload[:2], "big")
        return length == len(payload) - 2 and client_reset(payload[2:])

    def session(self) -> Session:
        return OpenvpnSession(stream=True)

"""WireGuard over UDP (the WireGuard whitepaper, section 5.4, and https://www.wireguard.com/protocol/).

Messages start with a type byte (1 handshake initiation, 2 response, 3 cookie reply, 4 transport data) and three
reserved zero bytes; the handshake messages have fixed sizes (148, 92, 64 bytes), transport data at least 32.
Confirmation follows nDPI's rule (protocols/wireguard.c): an initiation answered by a response or cookie reply
whose receiver index is the initiator's sender index, or transport data whose receiver indices are consistent
over three messages. The flow then gets its ``remote_access`` row; no per-message table is kept (the payload is
encrypted).
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session

PROTOCOL = "wireguard"
SIZES = {1: 148, 2: 92, 3: 64}
TABLES = {remote_access.TABLE: remote_access.SCHEMA}


def message_type(payload: bytes) -> int | None:
    """The WireGuard message type of a datagram whose shape fits, else None."""
    if len(payload) < 32 or payload[1:4] != b"\x00\x00\x00":
        return None
    kind = payload[0]
    if kind in SIZES:
        return kind if len(payload) == SIZES[kind] else None
    return 4 if kind == 4 and len(payload) % 16 == 0 else None


class WireguardSession(Session):
    def __init__(self) -> None:
        self.initiator: tuple[Direction, bytes] | None = None
        self.receivers: dict[Direction, bytes] = {}
        self.transport_seen = 0
        self.reported = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.reported:
            return []
        kind = message_type(data)
        evidence = None
        if kind == 1:
            self.initiator = (direction, data[4:8])
        elif kind in (2, 3) and self.initiator is not None and self.initiator[0] != direction:
            receiver = data[8:12] if kind == 2 else data[4:8]
            if receiver == self.initiator[1]:
                name = "handshake response" if kind == 2 else "cookie reply"
                evidence = f"handshake initiation (148 bytes) answered by a {name} with its sender index"
        elif kind == 4:
            receiver = data[4:8]
            known = self.receivers.get(direction)
            if known is not None and len(self.receivers) == 2 and known == receiver:
                evidence = "transport data with consistent receiver indices in both directions"
            else:
                self.receivers[direction] = receiver
        if evidence is None:
            return []
        self.reported = True
        index = self.initiator[1] if self.initiator else self.receivers.get(Direction.TO_SERVER, b"")
        return [remote_access.remote_access("wireguard", evidence, version="WireGuard", tunnel_id=index.hex())]


class WireguardDecoder(Decoder):
    name = PROTOCOL
    transport = "udp"
    ports = frozenset({51820})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        kind = message_type(payload)
        return kind in SIZES or (kind == 4 and server_port in self.ports)

    def session(self) -> Session:
        return WireguardSession()

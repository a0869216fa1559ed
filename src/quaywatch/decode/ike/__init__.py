"""IKE (ISAKMP) over UDP 500 and NAT-T UDP 4500 (RFC 2408 3.1, RFC 7296 3.1, RFC 3948 2.2).

A 28-byte header: initiator SPI (never zero), responder SPI, next payload, version (1.0 or 2.0), exchange type,
flags, message id and a length equal to the datagram's. On port 4500 IKE follows a four-byte zero non-ESP
marker; ESP packets and one-byte NAT-keepalives share the flow. One ``ike`` row per IKE message and one
``remote_access`` row per flow.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session

PROTOCOL = "ike"
#: IANA "Internet Key Exchange Version 1 / 2 Parameters", exchange types.
EXCHANGES = {
    1: "Base",
    2: "Identity Protection (Main Mode)",
    3: "Authentication Only",
    4: "Aggressive",
    5: "Informational",
    32: "Quick Mode",
    33: "New Group Mode",
    34: "IKE_SA_INIT",
    35: "IKE_AUTH",
    36: "CREATE_CHILD_SA",
    37: "INFORMATIONAL",
    38: "IKE_SESSION_RESUME",
    43: "IKE_INTERMEDIATE",
}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("version", pa.string(), "IKEv1 or IKEv2 (major.minor of the header)"),
        _field("initiator_spi", pa.string(), "initiator SPI, hex"),
        _field("responder_spi", pa.string(), "responder SPI, hex (zero in the first message)"),
        _field("exchange_type", pa.int16(), "exchange type"),
        _field("exchange", pa.string(), "its name"),
        _field("flags", pa.int16(), "header flags"),
        _field("message_id", pa.int64(), "message id"),
        _field("length", pa.int64(), "message length"),
        _field("nat_traversal", pa.bool_(), "carried on NAT-T (after the non-ESP marker)"),
    ]
)
TABLES = {"ike": SCHEMA, remote_access.TABLE: remote_access.SCHEMA}


def header(payload: bytes) -> tuple[bytes, bool] | None:
    """The IKE message of a datagram (and whether it followed a non-ESP marker), if its header is valid."""
    marker = payload[:4] == b"\x00\x00\x00\x00"
    message = payload[4:] if marker else payload
    if len(message) < 28 or message[:8] == b"\x00" * 8 or message[17] not in (0x10, 0x20):
        return None
    if int.from_bytes(message[24:28], "big") != len(message) or message[18] not in EXCHANGES:
        return None
    return message, marker


class IkeSession(Session):
    def __init__(self) -> None:
        self.reported = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        found = header(data)
        if found is None:
            return []  # ESP, NAT-keepalive
        message, marker = found
        version = "IKEv2" if message[17] == 0x20 else "IKEv1"
        kind = message[18]
        row = {
            "version": version,
            "initiator_spi": message[0:8].hex(),
            "responder_spi": message[8:16].hex(),
            "exchange_type": kind,
            "exchange": EXCHANGES[kind],
            "flags": message[19],
            "message_id": int.from_bytes(message[20:24], "big"),
            "length": len(message),
            "nat_traversal": marker,
        }
        events = [Event("ike", "message", row)]
        if not self.reported:
            self.reported = True
            evidence = f"{version} header, {EXCHANGES[kind]}, length matches" + (" (NAT-T)" if marker else "")
            events.append(remote_access.remote_access("ike", evidence, version=version, tunnel_id=message[0:8].hex()))
        return events


class IkeDecoder(Decoder):
    name = PROTOCOL
    transport = "udp"
    ports = frozenset({500, 4500})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return header(payload) is not None

    def session(self) -> Session:
        return IkeSession()

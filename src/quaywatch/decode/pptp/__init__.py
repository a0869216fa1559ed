"""PPTP control connection over TCP (RFC 2637 section 2).

Every control message: length (2), PPTP message type (1 = control), magic cookie 0x1A2B3C4D, control message
type. Start-Control-Connection-Request/Reply carry the protocol version, firmware revision, host name and vendor
(64 bytes each), which name the client and server software. One ``pptp`` row per control message and one
``remote_access`` row per connection. The GRE data channel (IP protocol 47) is not decoded: the ingest hands only
TCP and UDP flows to decoders.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "pptp"
MAGIC = b"\x1a\x2b\x3c\x4d"
#: RFC 2637 2.0 control message types.
MESSAGES = {
    1: "Start-Control-Connection-Request",
    2: "Start-Control-Connection-Reply",
    3: "Stop-Control-Connection-Request",
    4: "Stop-Control-Connection-Reply",
    5: "Echo-Request",
    6: "Echo-Reply",
    7: "Outgoing-Call-Request",
    8: "Outgoing-Call-Reply",
    9: "Incoming-Call-Request",
    10: "Incoming-Call-Reply",
    11: "Incoming-Call-Connected",
    12: "Call-Clear-Request",
    13: "Call-Disconnect-Notify",
    14: "WAN-Error-Notify",
    15: "Set-Link-Info",
}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("message_type", pa.int32(), "control message type"),
        _field("message", pa.string(), "its name"),
        _field("protocol_version", pa.string(), "SCCRQ/SCCRP: PPTP version, e.g. 1.0"),
        _field("result_code", pa.int16(), "SCCRP: result code (1 = success)"),
        _field("firmware_revision", pa.int32(), "SCCRQ/SCCRP: firmware revision"),
        _field("host_name", pa.string(), "SCCRQ/SCCRP: host name, as received"),
        _field("vendor", pa.string(), "SCCRQ/SCCRP: vendor string, as received"),
    ]
)
TABLES = {"pptp": SCHEMA, remote_access.TABLE: remote_access.SCHEMA}


def is_control(payload: bytes) -> bool:
    if len(payload) < 12 or payload[4:8] != MAGIC or payload[2:4] != b"\x00\x01":
        return False
    return int.from_bytes(payload[:2], "big") >= 12 and int.from_bytes(payload[8:10], "big") in MESSAGES


def _name(data: bytes) -> str:
    return remote_access.text(data.split(b"\x00", 1)[0])


class PptpSession(Session):
    def __init__(self) -> None:
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.software: dict[Direction, str] = {}
        self.reported = False
        self.broken = {Direction.TO_SERVER: False, Direction.TO_CLIENT: False}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.broken[direction]:
            return []
        buffer = self.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 12:
            length = int.from_bytes(buffer[:2], "big")
            if length < 12 or buffer[4:8] != MAGIC:
                events.append(anomaly(PROTOCOL, "bad_header", f"{direction.name}: length {length} or magic cookie"))
                self.broken[direction] = True
                buffer.clear()
                break
            if len(buffer) < length:
                break
            message = bytes(buffer[:length])
            del buffer[:length]
            events += self._message(message, direction)
        return events

    def _message(self, message: bytes, direction: Direction) -> list[Event]:
        kind = int.from_bytes(message[8:10], "big")
        row: dict[str, object] = {"message_type": kind, "message": MESSAGES.get(kind, f"type {kind}")}
        if kind in (1, 2) and len(message) >= 156:
            row["protocol_version"] = f"{message[12]}.{message[13]}"
            if kind == 2:
                row["result_code"] = message[14]
            row["firmware_revision"] = int.from_bytes(message[26:28], "big")
            row["host_name"] = _name(message[28:92])
            row["vendor"] = _name(message[92:156])
            self.software[direction] = f"{row['vendor']} ({row['host_name']})"
        events = [Event("pptp", "control", row)]
        if not self.reported and (kind == 2 or (kind != 1 and direction == Direction.TO_CLIENT)):
            self.reported = True
            events.append(
                remote_access.remote_access(
                    "pptp",
                    f"PPTP control message with magic cookie 0x1A2B3C4D: {row['message']}",
                    version=row.get("protocol_version"),
                    client_software=self.software.get(Direction.TO_SERVER),
                    server_software=self.software.get(Direction.TO_CLIENT),
                )
            )
        return events

    def close(self) -> list[Event]:
        if self.reported or Direction.TO_SERVER not in self.software:
            return []
        self.reported = True
        return [
            remote_access.remote_access(
                "pptp",
                "PPTP Start-Control-Connection-Request with magic cookie 0x1A2B3C4D (no reply seen)",
                client_software=self.software[Direction.TO_SERVER],
            )
        ]


class PptpDecoder(Decoder):
    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({1723})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return is_control(payload)

    def session(self) -> Session:
        return PptpSession()

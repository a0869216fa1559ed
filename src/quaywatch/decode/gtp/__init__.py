"""GTP over UDP: GTPv1-U user plane (3GPP TS 29.281), GTPv1-C and GTPv2-C control (TS 29.060, TS 29.274) and
GTP' charging (TS 32.295).

A GTP tunnel is what a cellular modem's traffic looks like on a mobile core or a private LTE/5G network: the
G-PDU (message type 255) wraps the modem's own IP packets, keyed by a tunnel endpoint id (TEID). Identification is
by the header: version, protocol-type bit and a length field that must equal the datagram's. One ``gtp`` row per
control message and per new (direction, TEID) of user data, with the inner IP addresses of its first packet, and
one ``remote_access`` row per flow (method gtp_u, gtp_c or gtp_prime).
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session

PROTOCOL = "gtp"
USER_PLANE_TYPES = {1: "Echo Request", 2: "Echo Response", 26: "Error Indication", 31: "Supported Extension "
                    "Headers Notification", 254: "End Marker", 255: "G-PDU"}  # fmt: skip
PRIME_TYPES = {1, 2, 3, 4, 5, 6, 7, 240, 241}
V2_TYPES = set(range(1, 6)) | set(range(32, 40)) | set(range(64, 74)) | set(range(95, 130)) | set(range(160, 177))
V2_TYPES |= set(range(200, 202)) | set(range(211, 214)) | {231, 232}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("method", pa.string(), "gtp_u (user plane), gtp_c (control) or gtp_prime (charging)"),
        _field("version", pa.int16(), "GTP version (0-2)"),
        _field("message_type", pa.int16(), "message type (255: G-PDU)"),
        _field("message", pa.string(), "its name, where known"),
        _field("length", pa.int32(), "length field"),
        _field("teid", pa.int64(), "tunnel endpoint id (GTPv1, GTPv2 with the T flag)"),
        _field("sequence", pa.int64(), "sequence number, where present"),
        _field("inner_version", pa.int16(), "G-PDU: IP version of the carried packet"),
        _field("inner_source", pa.string(), "G-PDU: source address of the carried packet"),
        _field("inner_destination", pa.string(), "G-PDU: destination address of the carried packet"),
    ]
)
TABLES = {"gtp": SCHEMA, remote_access.TABLE: remote_access.SCHEMA}


def parse(payload: bytes, server_port: int) -> dict[str, object] | None:
    """The header fields of a GTP datagram, or None if it is not one."""
    if len(payload) < 6:
        return None
    flags, kind = payload[0], payload[1]
    version, protocol_type = flags >> 5, (flags >> 4) & 1
    length = int.from_bytes(payload[2:4], "big")
    if version == 1 and protocol_type == 1 and len(payload) >= 8 and length == len(payload) - 8:
        row: dict[str, object] = {"version": 1, "message_type": kind, "length": length}
        row["teid"] = int.from_bytes(payload[4:8], "big")
        position = 8
        if flags & 0x07:
            if len(payload) < 12:
                return None
            row["sequence"] = int.from_bytes(payload[8:10], "big")
            next_type, position = payload[11], 12
            while flags & 0x04 and next_type:
                if position >= len(payload) or payload[position] == 0:
                    return None
                position += 4 * payload[position]
                if position > len(payload):
                    return None
                next_type = payload[position - 1]
        user = kind in (254, 255) or (kind in USER_PLANE_TYPES and server_port == 2152)
        row["method"] = "gtp_u" if user else "gtp_c"
        row["message"] = USER_PLANE_TYPES.get(kind) if user else None
        if kind == 255:
            _inner(payload[position:], row)
        return row
    if version == 2 and protocol_type == 0 and kind in V2_TYPES and len(payload) >= 8:
        if length != len(payload) - 4 and not (flags & 0x10 and length < len(payload) - 4):
            return None
        row = {"method": "gtp_c", "version": 2, "message_type": kind, "length": length}
        if flags & 0x08:
            if len(payload) < 12:
                return None
            row["teid"] = int.from_bytes(payload[4:8], "big")
            row["sequence"] = int.from_bytes(payload[8:11], "big")
        else:
            row["sequence"] = int.from_bytes(payload[4:7], "big")
        return row
    if version <= 2 and protocol_type == 0 and flags & 0x0E == 0x0E and kind in PRIME_TYPES:
        header = 6 if flags & 1 or version else 20  # TS 32.295 6.1.1: the 20-octet header is GTP' v0 only
        if len(payload) < header or length != len(payload) - header:
            return None
        return {
            "method": "gtp_prime",
            "version": version,
            "message_type": kind,
            "length": length,
            "sequence": int.from_bytes(payload[4:6], "big"),
        }
    return None


def _inner(packet: bytes, row: dict[str, object]) -> None:
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        row["inner_version"] = 4
        row["inner_source"] = str(ipaddress.IPv4Address(packet[12:16]))
        row["inner_destination"] = str(ipaddress.IPv4Address(packet[16:20]))
    elif len(packet) >= 40 and packet[0] >> 4 == 6:
        row["inner_version"] = 6
        row["inner_source"] = str(ipaddress.IPv6Address(packet[8:24]))
        row["inner_destination"] = str(ipaddress.IPv6Address(packet[24:40]))


class GtpSession(Session):
    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.tunnels: set[tuple[Direction, int]] = set()
        self.reported = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        row = parse(data, self.server_port)
        if row is None:
            return []
        events: list[Event] = []
        if row["message_type"] != 255 or (direction, row["teid"]) not in self.tunnels:
            if row["message_type"] == 255:
                self.tunnels.add((direction, row["teid"]))  # type: ignore[arg-type]
            events.append(Event("gtp", "message", row))
        if not self.reported:
            self.reported = True
            method = str(row["method"])
            teid = row.get("teid")
            evidence = (
                f"GTPv{row['version']} header, message type {row['message_type']}, length field matches the datagram"
            )
            events.append(
                remote_access.remote_access(
                    method,
                    evidence,
                    version=f"GTPv{row['version']}" + ("'" if method == "gtp_prime" else ""),
                    tunnel_id=None if teid is None else f"{teid:08x}",
                    inner_client_ip=row.get("inner_source"),
                    inner_server_ip=row.get("inner_destination"),
                )
            )
        return events


class GtpDecoder(Decoder):
    name = PROTOCOL
    transport = "udp"
    ports = frozenset({2152, 2123, 3386})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return parse(payload, server_port) is not None

    def session(self) -> Session:
        return GtpSession(0)

    def session_for(self, server_port: int) -> Session:
        return GtpSession(server_port)

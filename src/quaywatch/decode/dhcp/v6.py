"""DHCPv6 (RFC 8415) over UDP 546/547: the IPv6 clients that ask for configuration and the servers that answer.

One ``dhcpv6`` row per message. Relay-forward and relay-reply messages keep their relay header (hop count, link
and peer address) and are decoded through their Relay Message option down to the client's or server's message,
whose fields fill the row. The client DUID (and the MAC inside a DUID-LLT or DUID-LL), the client FQDN, the
vendor class and the option request list fingerprint a device as option 55 and 60 do in DHCPv4.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "dhcpv6"
CLIENT_PORT, SERVER_PORT = 546, 547
RELAY_FORW, RELAY_REPL = 12, 13
MESSAGE_TYPES = {
    1: "SOLICIT",
    2: "ADVERTISE",
    3: "REQUEST",
    4: "CONFIRM",
    5: "RENEW",
    6: "REBIND",
    7: "REPLY",
    8: "RELEASE",
    9: "DECLINE",
    10: "RECONFIGURE",
    11: "INFORMATION-REQUEST",
    RELAY_FORW: "RELAY-FORW",
    RELAY_REPL: "RELAY-REPL",
    14: "LEASEQUERY",  # RFC 5007
    15: "LEASEQUERY-REPLY",
    16: "LEASEQUERY-DONE",  # RFC 5460
    17: "LEASEQUERY-DATA",
    18: "RECONFIGURE-REQUEST",  # RFC 6977
    19: "RECONFIGURE-REPLY",
    20: "DHCPV4-QUERY",  # RFC 7341
    21: "DHCPV4-RESPONSE",
}
CLIENTID, SERVERID, IA_NA, IA_TA, IAADDR, ORO, ELAPSED, RELAY_MSG = 1, 2, 3, 4, 5, 6, 8, 9
VENDOR_CLASS, DNS_SERVERS, DOMAIN_LIST, IA_PD, CLIENT_FQDN, STATUS = 16, 23, 24, 25, 39, 13
DUID_TYPES = {1: "LLT", 2: "EN", 3: "LL", 4: "UUID"}
MAX_RELAY_DEPTH = 32  # RFC 8415 HOP_COUNT_LIMIT


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("message_type", pa.int16(), "msg-type of the outermost message (12 RELAY-FORW, 13 RELAY-REPL)"),
        _field("message_type_name", pa.string(), "SOLICIT, ADVERTISE, REQUEST, ..., RELAY-FORW, RELAY-REPL"),
        _field("inner_message_type", pa.int16(), "relayed messages: msg-type of the innermost message"),
        _field("inner_message_type_name", pa.string(), "its name"),
        _field("transaction_id", pa.int32(), "transaction-id (24 bits) of the (innermost) client/server message"),
        _field("hop_count", pa.int16(), "relay messages: hop-count of the outermost relay header"),
        _field("link_address", pa.string(), "relay messages: link-address"),
        _field("peer_address", pa.string(), "relay messages: peer-address (the client's or previous relay's)"),
        _field("client_duid", pa.binary(), "Client Identifier option (1): the DUID bytes"),
        _field("client_duid_type", pa.string(), "DUID type: LLT, EN, LL, UUID"),
        _field("client_mac", pa.string(), "link-layer address inside a DUID-LLT or DUID-LL of hardware type 1"),
        _field("server_duid", pa.binary(), "Server Identifier option (2): the DUID bytes"),
        _field("client_fqdn", pa.string(), "Client FQDN option (39): the name, labels joined by '.', as received"),
        _field("vendor_class_enterprise", pa.int64(), "Vendor Class option (16): enterprise number (311 Microsoft)"),
        _field("vendor_class", pa.list_(pa.string()), "Vendor Class option: the vendor-class-data items, as received"),
        _field("requested_options", pa.list_(pa.int32()), "Option Request option (6): requested option codes"),
        _field("elapsed_time", pa.int32(), "Elapsed Time option (8), hundredths of a second"),
        _field("addresses", pa.list_(pa.string()), "IA Address options (5) inside IA_NA/IA_TA: addresses"),
        _field("dns_servers", pa.list_(pa.string()), "DNS Recursive Name Server option (23)"),
        _field("options", pa.list_(pa.int32()), "option codes of the (innermost) message, in order"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _name(raw: bytes) -> str:
    """A DNS wire-format name (RFC 1035 3.1, no compression) as dotted labels; a partial name has no root label."""
    labels, position = [], 0
    while position < len(raw) and raw[position]:
        size = raw[position]
        labels.append(_text(raw[position + 1 : position + 1 + size]))
        position += 1 + size
    return ".".join(labels)


def _options(data: bytes) -> list[tuple[int, bytes]] | None:
    """The options of a message body, or None if one runs past the end."""
    result, position = [], 0
    while position < len(data):
        if position + 4 > len(data):
            return None
        code, length = (
            int.from_bytes(data[position : position + 2], "big"),
            int.from_bytes(data[position + 2 : position + 4], "big"),
        )
        if position + 4 + length > len(data):
            return None
        result.append((code, data[position + 4 : position + 4 + length]))
        position += 4 + length
    return result


class Dhcpv6Parser:
    """Decodes one DHCPv6 datagram into a row and anomalies."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.row: dict[str, object] = {}
        self.anomalies: list[Event] = []

    def flag(self, code: str, detail: str) -> None:
        self.anomalies.append(anomaly(PROTOCOL, code, detail))

    def parse(self) -> list[Event]:
        data, row = self.data, self.row
        if len(data) < 4:
            self.flag("truncated_header", f"DHCPv6 header needs 4 bytes, the datagram has {len(data)}")
            return self.anomalies
        kind = data[0]
        row.update(message_type=kind, message_type_name=MESSAGE_TYPES.get(kind, f"type {kind}"))
        depth, offset = 0, 0
        while kind in (RELAY_FORW, RELAY_REPL):
            if len(data) < 34:
                self.flag("truncated_header", f"relay header at offset {offset} needs 34 bytes, {len(data)} remain")
                return [Event(PROTOCOL, "truncated", row), *self.anomalies]
            if depth == 0:
                row.update(
                    hop_count=data[1],
                    link_address=str(ipaddress.IPv6Address(data[2:18])),
                    peer_address=str(ipaddress.IPv6Address(data[18:34])),
                )
            options = _options(data[34:])
            if options is None:
                self.flag("truncated_option", f"relay message at offset {offset}: an option runs past the end")
                return [Event(PROTOCOL, MESSAGE_TYPES[row["message_type"]].lower(), row), *self.anomalies]  # type: ignore[index]
            inner = next((value for code, value in options if code == RELAY_MSG), None)
            depth += 1
            if inner is None or len(inner) < 4 or depth > MAX_RELAY_DEPTH:
                self.flag("bad_relay_message", f"relay message at offset {offset}: no usable Relay Message option")
                row["options"] = [code for code, _ in options]
                return [Event(PROTOCOL, MESSAGE_TYPES[kind].lower(), row), *self.anomalies]
            offset += 34 + 4 + next(i for i, (c, _) in enumerate(options) if c == RELAY_MSG)
            data, kind = inner, inner[0]
            row.update(inner_message_type=kind, inner_message_type_name=MESSAGE_TYPES.get(kind, f"type {kind}"))
        row["transaction_id"] = int.from_bytes(data[1:4], "big")
        options = _options(data[4:])
        if options is None:
            self.flag("truncated_option", "an option runs past the end of the message")
            options = []
        row["options"] = [code for code, _ in options]
        for code, value in options:
            self._option(code, value)
        outer = int(row["message_type"])  # type: ignore[call-overload]
        event_type = MESSAGE_TYPES[outer].lower() if outer in MESSAGE_TYPES else f"type_{outer}"
        return [Event(PROTOCOL, event_type, row), *self.anomalies]

    def _option(self, code: int, value: bytes) -> None:
        row = self.row
        if code == CLIENTID and "client_duid" not in row:
            row["client_duid"] = value
            if len(value) >= 2:
                duid_type = int.from_bytes(value[:2], "big")
                row["client_duid_type"] = DUID_TYPES.get(duid_type, f"type {duid_type}")
                hardware = int.from_bytes(value[2:4], "big") if len(value) >= 4 else None
                address = value[8:] if duid_type == 1 else value[4:] if duid_type == 3 else b""
                if hardware == 1 and len(address) == 6:
                    row["client_mac"] = _mac(address)
        elif code == SERVERID:
            row.setdefault("server_duid", value)
        elif code == CLIENT_FQDN and value:
            row.setdefault("client_fqdn", _name(value[1:]))
        elif code == VENDOR_CLASS:
            if len(value) < 4:
                self.flag("bad_option_length", f"Vendor Class option of {len(value)} bytes")
                return
            row.setdefault("vendor_class_enterprise", int.from_bytes(value[:4], "big"))
            items, position = [], 4
            while position + 2 <= len(value):
                size = int.from_bytes(value[position : position + 2], "big")
                items.append(_text(value[position + 2 : position + 2 + size]))
                position += 2 + size
            row.setdefault("vendor_class", items)
        elif code == ORO:
            if len(value) % 2:
                self.flag("bad_option_length", f"Option Request option of odd length {len(value)}")
            row.setdefault(
                "requested_options", [int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value) - 1, 2)]
            )
        elif code == ELAPSED:
            if len(value) != 2:
                self.flag("bad_option_length", f"Elapsed Time option of {len(value)} bytes, 2 expected")
                return
            row.setdefault("elapsed_time", int.from_bytes(value, "big"))
        elif code == DNS_SERVERS:
            if len(value) % 16:
                self.flag("bad_option_length", f"DNS servers option of {len(value)} bytes")
            row.setdefault(
                "dns_servers", [str(ipaddress.IPv6Address(value[i : i + 16])) for i in range(0, len(value) - 15, 16)]
            )
        elif code in (IA_NA, IA_TA):
            start = 12 if code == IA_NA else 4
            for inner_code, inner in _options(value[start:]) or []:
                if inner_code == IAADDR and len(inner) >= 16:
                    row.setdefault("addresses", []).append(str(ipaddress.IPv6Address(inner[:16])))  # type: ignore[attr-defined]


def decode(data: bytes) -> list[Event]:
    """Events of one DHCPv6 datagram."""
    try:
        return Dhcpv6Parser(data).parse()
    except Exception as error:  # defence in depth: the parser checks every length itself
        return [anomaly(PROTOCOL, "malformed", f"{type(error).__name__}: {error}")]


def looks_like_dhcpv6(payload: bytes) -> bool:
    """A known message type whose options end exactly at the end of the datagram and include a client or server
    identifier holding a DUID of a known type (a relay message: a Relay Message option), as RFC 8415 section 16
    requires of nearly every message."""
    if len(payload) < 8 or payload[0] not in MESSAGE_TYPES:
        return False
    relay = payload[0] in (RELAY_FORW, RELAY_REPL)
    options = _options(payload[34:] if relay else payload[4:])
    if not options:
        return False
    if relay:
        return any(code == RELAY_MSG for code, _ in options)
    return any(
        code in (CLIENTID, SERVERID) and len(value) >= 4 and 1 <= int.from_bytes(value[:2], "big") <= 4
        for code, value in options
    )


class Dhcpv6Session(Session):
    """The DHCPv6 datagrams of one UDP flow; each is one complete message."""

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        return decode(data)


class Dhcpv6Decoder(Decoder):
    """DHCPv6, found by content: a known message type whose options fill the datagram exactly."""

    name = PROTOCOL
    transport = "udp"
    ports = frozenset({CLIENT_PORT, SERVER_PORT})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return looks_like_dhcpv6(payload)

    def session(self) -> Session:
        return Dhcpv6Session()

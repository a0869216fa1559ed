"""DHCPv4 (RFC 2131, options RFC 2132) over UDP 67/68: who asks for addresses, and who hands them out.

One ``dhcp`` row per BOOTP/DHCP message. The fixed BOOTP header (RFC 951) gives the operation, transaction id,
client hardware address and the four address fields; the options after the magic cookie give the message type,
the client's self-description (host name, vendor class, client id, parameter request list: together the
fingerprint Fingerbank and similar databases key on) and the server's offer (server id, routers, subnet mask,
DNS servers, domain name, lease times). A reply whose ``server_id`` or ``routers`` are not the site's own is an
extra gateway: a cellular modem that hands out addresses shows up here first.

Options are read as RFC 3396 says: several instances of one option are concatenated before decoding, and
option overload (52) continues the options in ``file`` and then ``sname``. Strings are stored as received.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "dhcp"
SERVER_PORT, CLIENT_PORT = 67, 68
HEADER = 236  # op .. file, before the magic cookie
MAGIC = b"\x63\x82\x53\x63"
PAD, END = 0, 255

OPERATIONS = {1: "request", 2: "reply"}
MESSAGE_TYPES = {
    1: "DISCOVER",
    2: "OFFER",
    3: "REQUEST",
    4: "DECLINE",
    5: "ACK",
    6: "NAK",
    7: "RELEASE",
    8: "INFORM",
    9: "FORCERENEW",  # RFC 3203
    10: "LEASEQUERY",  # RFC 4388
    11: "LEASEUNASSIGNED",
    12: "LEASEUNKNOWN",
    13: "LEASEACTIVE",
    14: "BULKLEASEQUERY",  # RFC 6926
    15: "LEASEQUERYDONE",
    16: "ACTIVELEASEQUERY",  # RFC 7724
    17: "LEASEQUERYSTATUS",
    18: "TLS",
}
#: Options whose value is one IPv4 address, or a list of them: code -> (column, is_list).
ADDRESS_OPTIONS = {
    1: ("subnet_mask", False),
    3: ("routers", True),
    6: ("dns_servers", True),
    50: ("requested_ip", False),
    54: ("server_id", False),
}
#: Options holding one unsigned 32-bit number of seconds.
TIME_OPTIONS = {51: "lease_time", 58: "renewal_time", 59: "rebinding_time"}
#: Options holding text, kept as received.
TEXT_OPTIONS = {12: "hostname", 15: "domain_name", 60: "vendor_class_id", 56: "message"}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("op", pa.int16(), "BOOTP op: 1 BOOTREQUEST (client to server), 2 BOOTREPLY"),
        _field("op_name", pa.string(), "request or reply"),
        _field("htype", pa.int16(), "hardware address type (1 Ethernet)"),
        _field("hlen", pa.int16(), "hardware address length (6 for Ethernet)"),
        _field("hops", pa.int16(), "relay agents passed"),
        _field("xid", pa.int64(), "transaction id chosen by the client; replies repeat it"),
        _field("secs", pa.int32(), "seconds since the client began acquiring an address"),
        _field("broadcast", pa.bool_(), "flags bit 15: the client asks for broadcast replies"),
        _field("ciaddr", pa.string(), "client's current address (renewing, INFORM)"),
        _field("yiaddr", pa.string(), "'your' address: what the server assigns"),
        _field("siaddr", pa.string(), "next server (boot/TFTP server)"),
        _field("giaddr", pa.string(), "relay agent address"),
        _field("client_mac", pa.string(), "chaddr: the first hlen bytes (aa:bb:..); the client's MAC for Ethernet"),
        _field("server_name", pa.string(), "sname field, as received less NUL padding (NULL if empty or overloaded)"),
        _field("boot_file", pa.string(), "file field, as received less NUL padding (NULL if empty or overloaded)"),
        _field("message_type", pa.int16(), "option 53: 1 DISCOVER .. 8 INFORM, 9-18 RFC 3203/4388/6926/7724"),
        _field("message_type_name", pa.string(), "DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM, ..."),
        _field("hostname", pa.string(), "option 12: host name, as received"),
        _field("vendor_class_id", pa.string(), "option 60: vendor class identifier (e.g. 'MSFT 5.0'), as received"),
        _field("client_id", pa.binary(), "option 61: client identifier bytes (first byte the type, 1 Ethernet)"),
        _field("client_id_mac", pa.string(), "option 61 of type 1 and 6 address bytes: that MAC"),
        _field("parameter_request_list", pa.list_(pa.int16()), "option 55: requested option codes, in order"),
        _field(
            "parameter_request_string",
            pa.string(),
            "option 55 as comma-joined codes ('1,3,6,15'): the DHCP fingerprint as in Fingerbank",
        ),
        _field("requested_ip", pa.string(), "option 50: address the client asks for"),
        _field("server_id", pa.string(), "option 54: the DHCP server's identifier (its address)"),
        _field("routers", pa.list_(pa.string()), "option 3: default gateways offered"),
        _field("subnet_mask", pa.string(), "option 1"),
        _field("dns_servers", pa.list_(pa.string()), "option 6: DNS servers offered"),
        _field("domain_name", pa.string(), "option 15, as received"),
        _field("lease_time", pa.int64(), "option 51: lease seconds (4294967295 infinite)"),
        _field("renewal_time", pa.int64(), "option 58: T1 renewal seconds"),
        _field("rebinding_time", pa.int64(), "option 59: T2 rebinding seconds"),
        _field("max_message_size", pa.int32(), "option 57: maximum DHCP message size the client accepts"),
        _field("message", pa.string(), "option 56: error text (NAK, DECLINE), as received"),
        _field("client_fqdn", pa.string(), "option 81 (RFC 4702): domain name, as received (wire or ASCII form)"),
        _field("user_class", pa.binary(), "option 77: user class bytes"),
        _field(
            "options",
            pa.list_(pa.int16()),
            "option codes in order (pads left out), then one END (255) per option area it closes, as tshark lists them",
        ),
        _field("overload", pa.int16(), "option 52: 1 file, 2 sname, 3 both carry more options"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _ipv4(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _field_text(raw: bytes) -> str | None:
    text = raw.split(b"\x00", 1)[0]
    return _text(text) if text else None


class DhcpParser:
    """Decodes one BOOTP/DHCP message into a row and anomalies."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.row: dict[str, object] = {}
        self.anomalies: list[Event] = []
        self.codes: list[int] = []
        self.values: dict[int, bytearray] = {}
        self.ends = 0  # option areas (options, file, sname) closed by END

    def flag(self, code: str, detail: str) -> None:
        self.anomalies.append(anomaly(PROTOCOL, code, detail))

    def parse(self) -> list[Event]:
        data, row = self.data, self.row
        if len(data) < HEADER:
            self.flag("truncated_header", f"BOOTP header needs {HEADER} bytes, the datagram has {len(data)}")
            return self.anomalies
        op, htype, hlen, hops = data[0], data[1], data[2], data[3]
        row.update(
            op=op,
            op_name=OPERATIONS.get(op, f"op {op}"),
            htype=htype,
            hlen=hlen,
            hops=hops,
            xid=int.from_bytes(data[4:8], "big"),
            secs=int.from_bytes(data[8:10], "big"),
            broadcast=bool(data[10] & 0x80),
            ciaddr=_ipv4(data[12:16]),
            yiaddr=_ipv4(data[16:20]),
            siaddr=_ipv4(data[20:24]),
            giaddr=_ipv4(data[24:28]),
            client_mac=_mac(data[28 : 28 + min(hlen, 16)]),
        )
        if hlen > 16:
            self.flag("bad_hlen", f"hlen {hlen} at offset 2 exceeds the 16-byte chaddr field")
        sname, boot_file = data[44:108], data[108:236]
        if data[HEADER : HEADER + 4] != MAGIC:
            if len(data) > HEADER:
                self.flag("bad_magic_cookie", f"no DHCP magic cookie at offset {HEADER}: plain BOOTP or damaged")
            row.update(server_name=_field_text(sname), boot_file=_field_text(boot_file))
            return [Event(PROTOCOL, "bootp", row), *self.anomalies]
        self._options(data, HEADER + 4, len(data), "options")
        overload = self.values.get(52)
        overload_value = overload[0] if overload else 0
        if overload:
            row["overload"] = overload_value
            if overload_value & 1:
                self._options(data, 108, 236, "file")
            if overload_value & 2:
                self._options(data, 44, 108, "sname")
        if not overload_value & 2:
            row["server_name"] = _field_text(sname)
        if not overload_value & 1:
            row["boot_file"] = _field_text(boot_file)
        self._decode_values()
        row["options"] = self.codes + [END] * self.ends
        name = row.get("message_type_name")
        event_type = str(name).lower() if isinstance(name, str) and row["message_type"] in MESSAGE_TYPES else "bootp"
        return [Event(PROTOCOL, event_type, row), *self.anomalies]

    def _options(self, data: bytes, start: int, end: int, area: str) -> None:
        """Walk one option area, gathering each option's bytes (instances of one code concatenated, RFC 3396)."""
        position = start
        while position < end:
            code = data[position]
            if code == PAD:
                position += 1
                continue
            if code == END:
                self.ends += 1
                return
            if position + 2 > end or position + 2 + data[position + 1] > end:
                self.flag(
                    "truncated_option",
                    f"{area}: option {code} at offset {position} runs past the end of the area at offset {end}",
                )
                self.codes.append(code)
                return
            length = data[position + 1]
            self.codes.append(code)
            self.values.setdefault(code, bytearray()).extend(data[position + 2 : position + 2 + length])
            position += 2 + length
        if area == "options":
            self.flag("missing_end", f"options end at offset {end} without the END option (255)")

    def _decode_values(self) -> None:
        row, values = self.row, self.values
        for code, raw in values.items():
            value = bytes(raw)
            if code == 53:
                if len(value) != 1:
                    self.flag("bad_option_length", f"option 53 (message type) has {len(value)} bytes, 1 expected")
                if value:
                    row.update(message_type=value[0], message_type_name=MESSAGE_TYPES.get(value[0], f"type {value[0]}"))
            elif code in ADDRESS_OPTIONS:
                column, many = ADDRESS_OPTIONS[code]
                if not value or len(value) % 4 or (not many and len(value) != 4):
                    self.flag("bad_option_length", f"option {code} ({column}) has {len(value)} bytes")
                addresses = [_ipv4(value[i : i + 4]) for i in range(0, len(value) - 3, 4)]
                if addresses:
                    row[column] = addresses if many else addresses[0]
            elif code in TIME_OPTIONS:
                if len(value) != 4:
                    self.flag("bad_option_length", f"option {code} ({TIME_OPTIONS[code]}) has {len(value)} bytes")
                else:
                    row[TIME_OPTIONS[code]] = int.from_bytes(value, "big")
            elif code in TEXT_OPTIONS:
                row[TEXT_OPTIONS[code]] = _text(value)
            elif code == 55:
                row["parameter_request_list"] = list(value)
                row["parameter_request_string"] = ",".join(str(b) for b in value)
            elif code == 61:
                row["client_id"] = value
                if len(value) == 7 and value[0] == 1:
                    row["client_id_mac"] = _mac(value[1:])
            elif code == 57:
                if len(value) == 2:
                    row["max_message_size"] = int.from_bytes(value, "big")
                else:
                    self.flag("bad_option_length", f"option 57 (maximum message size) has {len(value)} bytes")
            elif code == 81:
                if len(value) >= 3:
                    row["client_fqdn"] = _text(value[3:])
            elif code == 77:
                row["user_class"] = value


def decode(data: bytes) -> list[Event]:
    """Events of one BOOTP/DHCP datagram."""
    try:
        return DhcpParser(data).parse()
    except Exception as error:  # defence in depth: the parser checks every length itself
        return [anomaly(PROTOCOL, "malformed", f"{type(error).__name__}: {error}")]


def looks_like_dhcp(payload: bytes) -> bool:
    """BOOTP op 1 or 2, a sane hardware type and length, and the DHCP magic cookie."""
    return (
        len(payload) >= HEADER + 4
        and payload[0] in OPERATIONS
        and 1 <= payload[1] <= 40
        and payload[2] <= 16
        and payload[HEADER : HEADER + 4] == MAGIC
    )


class DhcpSession(Session):
    """The DHCP datagrams of one UDP flow. Each datagram is one complete message: nothing is buffered."""

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        return decode(data)


class DhcpDecoder(Decoder):
    """DHCPv4, found by content: BOOTP header with the magic cookie 0x63825363."""

    name = PROTOCOL
    transport = "udp"
    ports = frozenset({SERVER_PORT, CLIENT_PORT})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return looks_like_dhcp(payload)

    def session(self) -> Session:
        return DhcpSession()

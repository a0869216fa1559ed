"""Remote Desktop Protocol connection setup over TCP ([MS-RDPBCGR] 2.2.1, 3.2.5.3).

RDP starts like S7comm with TPKT (RFC 1006) and an X.224 (ISO 8073) Connection Request, but its CR carries a
``Cookie: mstshash=USER`` line (or a routing token) and an RDP_NEG_REQ instead of S7's TSAP parameters. One ``rdp``
row per connection, as Zeek's rdp.log: the cookie, the requested and selected security protocols or the failure
code, and, when standard RDP security keeps the MCS Connect Initial in clear, the client core, security and network
data (client name, build, keyboard layout, desktop size, channels) and the server's security data. Nothing after
the connection setup is read (it is encrypted). Each connection also gets its ``remote_access`` row.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "rdp"
MAXIMUM_TPKT = 65535

#: [MS-RDPBCGR] 2.2.1.1.1 requestedProtocols / selectedProtocol flags (names as Zeek's rdp.log).
PROTOCOLS = {0x1: "SSL", 0x2: "HYBRID", 0x4: "RDSTLS", 0x8: "HYBRID_EX", 0x10: "RDSAAD"}
#: [MS-RDPBCGR] 2.2.1.2.2 RDP_NEG_FAILURE failureCode.
FAILURES = {
    1: "SSL_REQUIRED_BY_SERVER",
    2: "SSL_NOT_ALLOWED_BY_SERVER",
    3: "SSL_CERT_NOT_ON_SERVER",
    4: "INCONSISTENT_FLAGS",
    5: "HYBRID_REQUIRED_BY_SERVER",
    6: "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER",
}
#: T.125 Connect-Response result (ENUMERATED), as Zeek names them.
MCS_RESULTS = {
    0: "Success",
    1: "Domain merging",
    2: "Domain not hierarchical",
    3: "No such channel",
    4: "No such domain",
    5: "No such user",
    6: "Not admitted",
    7: "Other user id",
    8: "Parameters unacceptable",
    9: "Token not available",
    10: "Token not possessed",
    11: "Too many channels",
    12: "Too many tokens",
    13: "Too many users",
    14: "Unspecified failure",
    15: "User rejected",
}
#: [MS-RDPBCGR] 2.2.1.4.3 encryptionMethod and encryptionLevel.
ENCRYPTION_METHODS = {0: "None", 1: "40bit", 2: "128bit", 8: "56bit", 0x10: "FIPS"}
ENCRYPTION_LEVELS = {0: "None", 1: "Low", 2: "Client compatible", 3: "High", 4: "FIPS"}
#: [MS-RDPBCGR] 2.2.1.3.2 highColorDepth.
COLOR_DEPTHS = {4: "4bit", 8: "8bit", 15: "15bit", 16: "16bit", 24: "24bit"}
RNS_UD_CS_WANT_32BPP_SESSION = 0x0002


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("cookie", pa.string(), "user name of the 'Cookie: mstshash=' line, as received"),
        _field("routing_token", pa.string(), "any other Cookie line of the Connection Request (load-balancer token)"),
        _field("requested_protocols", pa.list_(pa.string()), "RDP_NEG_REQ: RDP, SSL, HYBRID, RDSTLS, HYBRID_EX"),
        _field("requested_flags", pa.int64(), "RDP_NEG_REQ requestedProtocols as sent"),
        _field("security_protocol", pa.string(), "Connection Confirm: protocol the server selected"),
        _field("failure_code", pa.int32(), "RDP_NEG_FAILURE failureCode"),
        _field("result", pa.string(), "as Zeek: failure name, 'encrypted' (TLS/CredSSP), or the MCS result"),
        _field("client_version", pa.int64(), "client core data: RDP version (0x00080004: RDP 5.0+)"),
        _field("desktop_width", pa.int32(), "client core data: desktop width"),
        _field("desktop_height", pa.int32(), "client core data: desktop height"),
        _field("keyboard_layout", pa.int64(), "client core data: keyboard layout (Windows input locale id)"),
        _field("client_build", pa.int64(), "client core data: client build number"),
        _field("client_name", pa.string(), "client core data: client computer name"),
        _field("client_dig_product_id", pa.string(), "client core data: product id of the client"),
        _field("requested_color_depth", pa.string(), "client core data: colour depth as Zeek names it"),
        _field("early_capability_flags", pa.int32(), "client core data: earlyCapabilityFlags"),
        _field("client_channels", pa.list_(pa.string()), "client network data: static virtual channel names"),
        _field("encryption_methods", pa.int64(), "client security data: encryptionMethods offered"),
        _field("encryption_method", pa.string(), "server security data: method chosen"),
        _field("encryption_level", pa.string(), "server security data: level"),
        _field("cert_type", pa.string(), "server certificate: RSA (proprietary) or X.509"),
        _field("cert_count", pa.int32(), "X.509 chain length (1 for a proprietary certificate)"),
        _field("cert_permanent", pa.bool_(), "certificate is permanent (not temporary)"),
    ]
)
TABLES = {"rdp": SCHEMA, remote_access.TABLE: remote_access.SCHEMA}


def _names(flags: int) -> list[str]:
    return [name for bit, name in PROTOCOLS.items() if flags & bit] or ["RDP"]


def _utf16(data: bytes) -> str:
    return data.decode("utf-16-le", "backslashreplace").split("\x00", 1)[0]


def _ber_length(data: bytes, position: int) -> tuple[int, int]:
    first = data[position]
    if first < 0x80:
        return first, position + 1
    count = first & 0x7F
    if count == 0 or count > 3 or position + 1 + count > len(data):
        raise ValueError("bad BER length")
    return int.from_bytes(data[position + 1 : position + 1 + count], "big"), position + 1 + count


def _ber_skip(data: bytes, position: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the BER element at ``position``."""
    tag = data[position]
    length, start = _ber_length(data, position + 1)
    if start + length > len(data):
        raise ValueError("BER element beyond the PDU")
    return tag, start, start + length


def _gcc_blocks(user_data: bytes, key: bytes) -> list[tuple[int, bytes]]:
    """The TS_UD_HEADER blocks after the T.124 H.221 key ('Duca' client, 'McDn' server)."""
    at = user_data.find(key)
    if at < 0:
        raise ValueError(f"no {key.decode()} key in the GCC user data")
    position = at + 4
    length = user_data[position]
    position += 2 if length & 0x80 else 1  # PER length determinant
    blocks = []
    while position + 4 <= len(user_data):
        kind = int.from_bytes(user_data[position : position + 2], "little")
        size = int.from_bytes(user_data[position + 2 : position + 4], "little")
        if size < 4:
            raise ValueError(f"user data block 0x{kind:04x} of {size} bytes")
        blocks.append((kind, user_data[position + 4 : position + size]))
        position += size
    return blocks


def parse_request(body: bytes, row: dict[str, object]) -> None:
    """X.224 CR variable part (after the 7 fixed bytes): cookie line, RDP_NEG_REQ."""
    position = 0
    if body.startswith(b"Cookie:"):
        end = body.find(b"\r\n")
        end = len(body) if end < 0 else end
        line = body[7:end].lstrip(b" ")
        if line.startswith(b"mstshash="):
            row["cookie"] = remote_access.text(line[9:])
        else:
            row["routing_token"] = remote_access.text(line)
        position = end + 2
    if position + 8 <= len(body) and body[position] == 0x01:
        flags = int.from_bytes(body[position + 4 : position + 8], "little")
        row["requested_flags"] = flags
        row["requested_protocols"] = _names(flags)


def parse_confirm(body: bytes, row: dict[str, object]) -> None:
    if len(body) < 8:
        row["security_protocol"] = "RDP"  # no RDP_NEG_RSP: standard RDP security
        return
    kind, value = body[0], int.from_bytes(body[4:8], "little")
    if kind == 0x02:
        names = _names(value)
        row["security_protocol"] = names[0]
        if value:
            row["result"] = "encrypted"
    elif kind == 0x03:
        row["failure_code"] = value
        row["result"] = FAILURES.get(value, f"failure {value}")


def parse_connect_initial(pdu: bytes, row: dict[str, object]) -> None:
    """T.125 Connect-Initial (BER, [APPLICATION 101]) with the GCC Conference Create Request."""
    position = 2  # 0x7f 0x65
    _, position = _ber_length(pdu, position)
    for _ in range(6):  # calling, called domain selectors, upward flag, three DomainParameters
        _, _, position = _ber_skip(pdu, position)
    tag, start, end = _ber_skip(pdu, position)
    if tag != 0x04:
        raise ValueError("Connect-Initial without userData")
    for kind, block in _gcc_blocks(pdu[start:end], b"Duca"):
        if kind == 0xC001 and len(block) >= 52:
            row["client_version"] = int.from_bytes(block[0:4], "little")
            row["desktop_width"] = int.from_bytes(block[4:6], "little")
            row["desktop_height"] = int.from_bytes(block[6:8], "little")
            row["keyboard_layout"] = int.from_bytes(block[12:16], "little")
            row["client_build"] = int.from_bytes(block[16:20], "little")
            row["client_name"] = _utf16(block[20:52])
            depth = int.from_bytes(block[136:138], "little") if len(block) >= 138 else None
            flags = int.from_bytes(block[140:142], "little") if len(block) >= 142 else 0
            if len(block) >= 142:
                row["early_capability_flags"] = flags
            if len(block) >= 206:
                row["client_dig_product_id"] = _utf16(block[142:206])
            if flags & RNS_UD_CS_WANT_32BPP_SESSION:
                row["requested_color_depth"] = "32bit"
            elif depth is not None:
                row["requested_color_depth"] = COLOR_DEPTHS.get(depth, f"{depth}bit")
        elif kind == 0xC002 and len(block) >= 4:
            row["encryption_methods"] = int.from_bytes(block[0:4], "little")
        elif kind == 0xC003 and len(block) >= 4:
            count = int.from_bytes(block[0:4], "little")
            channels = []
            for index in range(min(count, (len(block) - 4) // 12)):
                name = block[4 + 12 * index : 12 + 12 * index].split(b"\x00", 1)[0]
                channels.append(remote_access.text(name))
            row["client_channels"] = channels


def parse_connect_response(pdu: bytes, row: dict[str, object]) -> None:
    """T.125 Connect-Response ([APPLICATION 102]): result, then the server security data."""
    position = 2
    _, position = _ber_length(pdu, position)
    tag, start, end = _ber_skip(pdu, position)
    if tag != 0x0A or end <= start:
        raise ValueError("Connect-Response without result")
    result = pdu[start]
    row["result"] = MCS_RESULTS.get(result, f"result {result}")
    _, _, position = _ber_skip(pdu, end)  # calledConnectId
    _, _, position = _ber_skip(pdu, position)  # domainParameters
    tag, start, end = _ber_skip(pdu, position)
    if tag != 0x04:
        return
    for kind, block in _gcc_blocks(pdu[start:end], b"McDn"):
        if kind == 0x0C02 and len(block) >= 8:
            method = int.from_bytes(block[0:4], "little")
            level = int.from_bytes(block[4:8], "little")
            row["encryption_method"] = ENCRYPTION_METHODS.get(method, str(method))
            row["encryption_level"] = ENCRYPTION_LEVELS.get(level, str(level))
            if len(block) >= 20 and method:
                random_length = int.from_bytes(block[8:12], "little")
                certificate = block[16 + random_length :]
                if len(certificate) >= 4:
                    version = int.from_bytes(certificate[0:4], "little")
                    row["cert_permanent"] = not version & 0x80000000
                    if version & 0x7FFFFFFF == 1:
                        row["cert_type"], row["cert_count"] = "RSA", 1
                    elif version & 0x7FFFFFFF == 2:
                        row["cert_type"] = "X.509"
                        if len(certificate) >= 8:
                            row["cert_count"] = int.from_bytes(certificate[4:8], "little")


def is_connection_request(payload: bytes) -> bool:
    """TPKT + X.224 CR whose variable part is an RDP cookie or RDP_NEG_REQ (not S7's TSAP parameters)."""
    if len(payload) < 11 or payload[0] != 3 or payload[1] != 0 or payload[5] != 0xE0:
        return False
    length = (payload[2] << 8) | payload[3]
    if length < 11 or payload[4] != length - 5:
        return False
    body = payload[11:length]
    return body.startswith(b"Cookie:") or (len(body) >= 8 and body[0] == 0x01 and body[2:4] == b"\x08\x00")


class RdpSession(Session):
    def __init__(self) -> None:
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.row: dict[str, object] = {}
        self.done = {Direction.TO_SERVER: False, Direction.TO_CLIENT: False}
        self.reported = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.done[direction] or self.reported:
            return []
        buffer = self.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 4 and not self.done[direction]:
            if buffer[0] != 3:
                # Not TPKT: a TLS handshake or a fast-path PDU; nothing more is in clear.
                self.done[direction] = True
                break
            length = (buffer[2] << 8) | buffer[3]
            if length < 7:
                events.append(anomaly(PROTOCOL, "bad_tpkt_length", f"{direction.name}: TPKT length {length}"))
                self.done[direction] = True
                break
            if len(buffer) < length:
                break
            packet = bytes(buffer[:length])
            del buffer[:length]
            try:
                self._packet(packet, direction)
            except (ValueError, IndexError) as error:
                events.append(anomaly(PROTOCOL, "malformed", f"{direction.name}: {error}"))
                self.done[direction] = True
        if self.done[direction]:
            buffer.clear()
        if self.done[Direction.TO_SERVER] and self.done[Direction.TO_CLIENT]:
            events += self._report()
        return events

    def _packet(self, packet: bytes, direction: Direction) -> None:
        header_length, code = packet[4], packet[5] & 0xF0
        if code == 0xE0 and direction == Direction.TO_SERVER:
            parse_request(packet[11 : 5 + header_length], self.row)
        elif code == 0xD0 and direction == Direction.TO_CLIENT:
            parse_confirm(packet[11 : 5 + header_length], self.row)
            if self.row.get("result") is not None:  # TLS/CredSSP or refused: nothing more in clear
                self.done = {Direction.TO_SERVER: True, Direction.TO_CLIENT: True}
        elif code == 0xF0:
            pdu = packet[5 + header_length :]
            if pdu[:2] == b"\x7f\x65":
                parse_connect_initial(pdu, self.row)
                self.done[direction] = True
            elif pdu[:2] == b"\x7f\x66":
                parse_connect_response(pdu, self.row)
                self.done[direction] = True

    def _report(self) -> list[Event]:
        if self.reported or not self.row:
            return []
        self.reported = True
        row = self.row
        evidence = "X.224 Connection Request with " + (
            "Cookie: mstshash=" if "cookie" in row else "RDP_NEG_REQ" if "requested_flags" in row else "cookie"
        )
        build, name = row.get("client_build"), row.get("client_name")
        software = None if build is None else f"RDP client build {build}" + (f" on {name}" if name else "")
        return [
            Event("rdp", "connection", dict(row)),
            remote_access.remote_access(
                "rdp",
                evidence,
                version=row.get("security_protocol"),
                user_name=row.get("cookie"),
                client_software=software,
            ),
        ]

    def close(self) -> list[Event]:
        return self._report()


class RdpDecoder(Decoder):
    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({3389})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return direction == Direction.TO_SERVER and is_connection_request(payload)

    def session(self) -> Session:
        return RdpSession()

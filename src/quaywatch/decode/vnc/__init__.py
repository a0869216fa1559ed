"""VNC: the Remote Framebuffer protocol handshake over TCP (RFC 6143 section 7.1-7.3).

One ``vnc`` row per connection, as Zeek's rfb.log: both ProtocolVersion messages ("RFB 003.008\\n"), the security
types the server offered and the one chosen, the SecurityResult (with the failure reason), the ClientInit share
flag and the ServerInit desktop size, pixel format and name. Apple Remote Desktop's Diffie-Hellman authentication
(type 30) is followed too. The VNC authentication challenge and response are never stored: the response is the
challenge DES-encrypted with the password, so it would allow an offline password search. Nothing after
ServerInit is read. Each connection also gets its ``remote_access`` row.
"""

from __future__ import annotations

import re
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "vnc"
VERSION = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
MAXIMUM_STRING = 1 << 16

#: RFC 6143 section 7.1.2 and the IANA "Remote Framebuffer Security Types" registry (names as Zeek's rfb.log).
SECURITY_TYPES = {
    0: "Invalid",
    1: "None",
    2: "VNC",
    5: "RA2",
    6: "RA2ne",
    16: "Tight",
    17: "Ultra",
    18: "TLS",
    19: "VeNCrypt",
    20: "GTK-VNC SASL",
    21: "MD5 hash authentication",
    22: "Colin Dean xvp",
    30: "Apple Remote Desktop",
}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("client_version", pa.string(), "client ProtocolVersion, e.g. 003.008"),
        _field("server_version", pa.string(), "server ProtocolVersion"),
        _field("security_types", pa.list_(pa.int16()), "security types the server offered (3.3: the one it chose)"),
        _field("security_type", pa.int16(), "security type in use"),
        _field("authentication_method", pa.string(), "its name: None, VNC, Apple Remote Desktop ..."),
        _field("auth_success", pa.bool_(), "SecurityResult: OK (true) or failed (false)"),
        _field("failure_reason", pa.string(), "reason string of a refused connection or failed security, as received"),
        _field("share_flag", pa.bool_(), "ClientInit: leave other clients connected"),
        _field("width", pa.int32(), "ServerInit: framebuffer width"),
        _field("height", pa.int32(), "ServerInit: framebuffer height"),
        _field("bits_per_pixel", pa.int16(), "ServerInit pixel format: bits per pixel"),
        _field("depth", pa.int16(), "ServerInit pixel format: depth"),
        _field("big_endian", pa.bool_(), "ServerInit pixel format: big-endian flag"),
        _field("true_color", pa.bool_(), "ServerInit pixel format: true-colour flag"),
        _field("red_max", pa.int32(), "ServerInit pixel format: red maximum"),
        _field("green_max", pa.int32(), "ServerInit pixel format: green maximum"),
        _field("blue_max", pa.int32(), "ServerInit pixel format: blue maximum"),
        _field("red_shift", pa.int16(), "ServerInit pixel format: red shift"),
        _field("green_shift", pa.int16(), "ServerInit pixel format: green shift"),
        _field("blue_shift", pa.int16(), "ServerInit pixel format: blue shift"),
        _field("desktop_name", pa.string(), "ServerInit: desktop name, as received"),
    ]
)
TABLES = {"vnc": SCHEMA, remote_access.TABLE: remote_access.SCHEMA}

S, C = Direction.TO_SERVER, Direction.TO_CLIENT


class _More(Exception):
    """Not enough bytes yet in the direction the handshake waits for."""


class VncSession(Session):
    """The handshake as a sequence of reads that alternate between the two directions."""

    def __init__(self) -> None:
        self.buffers = {S: bytearray(), C: bytearray()}
        self.row: dict[str, object] = {}
        self.state = "server_version"
        self.minor = 3
        self.reported = False

    def _take(self, direction: Direction, count: int) -> bytes:
        buffer = self.buffers[direction]
        if len(buffer) < count:
            raise _More
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    def _peek(self, direction: Direction, count: int) -> bytes:
        if len(self.buffers[direction]) < count:
            raise _More
        return bytes(self.buffers[direction][:count])

    def _reason(self, direction: Direction) -> str:
        length = int.from_bytes(self._peek(direction, 4), "big")
        if length > MAXIMUM_STRING:
            raise ValueError(f"reason string of {length} bytes")
        return remote_access.text(self._take(direction, 4 + length)[4:])

    def _reason_or_wait(self) -> str:
        try:
            return self._reason(C)
        except _More:
            self.state = "reason"
            raise

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.state == "done":
            return []
        self.buffers[direction] += data
        events: list[Event] = []
        while self.state != "done":
            try:
                self._step()
            except _More:
                break
            except ValueError as error:
                events.append(anomaly(PROTOCOL, "malformed", f"{self.state}: {error}"))
                self.state = "done"
        if self.state == "done":
            self.buffers = {S: bytearray(), C: bytearray()}
            events += self._report()
        return events

    def _version(self, direction: Direction) -> str:
        data = self._take(direction, 12)
        match = VERSION.fullmatch(data)
        if match is None:
            raise ValueError(f"bad ProtocolVersion {data!r}")
        return f"{match[1].decode()}.{match[2].decode()}"

    def _step(self) -> None:
        state, row = self.state, self.row
        if state == "server_version":
            row["server_version"] = self._version(C)
            self.state = "client_version"
        elif state == "client_version":
            row["client_version"] = version = self._version(S)
            major, minor = (int(part) for part in version.split("."))
            self.minor = minor if major == 3 and minor >= 7 else 3  # RFC 6143 7.1.1: others act as 3.3
            self.state = "security"
        elif state == "security":
            if self.minor < 7:
                kind = int.from_bytes(self._peek(C, 4), "big")
                if kind == 0:
                    self._take(C, 4)
                    row["security_types"] = []
                    self.state = "reason"
                    return
                self._take(C, 4)
                row["security_types"] = [kind]
                self._chosen(kind)
                return
            count = self._peek(C, 1)[0]
            if count == 0:
                self._take(C, 1)
                row["security_types"] = []
                self.state = "reason"
                return
            row["security_types"] = list(self._take(C, 1 + count)[1:])
            self.state = "choice"
        elif state == "choice":
            self._chosen(self._take(S, 1)[0])
        elif state == "vnc_challenge":
            self._take(C, 16)
            self.state = "vnc_response"
        elif state == "vnc_response":
            self._take(S, 16)
            self.state = "result"
        elif state == "ard_server":
            header = self._peek(C, 4)
            key_length = int.from_bytes(header[2:4], "big")
            self._take(C, 4 + 2 * key_length)
            self.ard_key = key_length
            self.state = "ard_client"
        elif state == "ard_client":
            self._take(S, 128 + self.ard_key)
            self.state = "result"
        elif state == "result":
            result = int.from_bytes(self._take(C, 4), "big")
            row["auth_success"] = result == 0
            if result:
                self.state = "reason" if self.minor >= 8 else "done"
            else:
                self.state = "client_init"
        elif state == "reason":
            self.state = "done"  # whatever the reason string holds, the handshake ends here
            row["failure_reason"] = self._reason_or_wait()
        elif state == "client_init":
            row["share_flag"] = bool(self._take(S, 1)[0])
            self.state = "server_init"
        elif state == "server_init":
            header = self._peek(C, 24)
            length = int.from_bytes(header[20:24], "big")
            if length > MAXIMUM_STRING:
                raise ValueError(f"desktop name of {length} bytes")
            data = self._take(C, 24 + length)
            row.update(
                width=int.from_bytes(data[0:2], "big"),
                height=int.from_bytes(data[2:4], "big"),
                bits_per_pixel=data[4],
                depth=data[5],
                big_endian=bool(data[6]),
                true_color=bool(data[7]),
                red_max=int.from_bytes(data[8:10], "big"),
                green_max=int.from_bytes(data[10:12], "big"),
                blue_max=int.from_bytes(data[12:14], "big"),
                red_shift=data[14],
                green_shift=data[15],
                blue_shift=data[16],
                desktop_name=remote_access.text(data[24:]),
            )
            self.state = "done"

    def _chosen(self, kind: int) -> None:
        self.row["security_type"] = kind
        self.row["authentication_method"] = SECURITY_TYPES.get(kind, f"type {kind}")
        if kind == 1:
            self.state = "result" if self.minor >= 8 else "client_init"
        elif kind == 2:
            self.state = "vnc_challenge"
        elif kind == 30:
            self.state = "ard_server"
        else:
            self.state = "done"  # a security type whose handshake is not followed

    def _report(self) -> list[Event]:
        if self.reported or not self.row:
            return []
        self.reported = True
        row = self.row
        versions = f"server RFB {row.get('server_version')}, client RFB {row.get('client_version')}"
        return [
            Event("vnc", "handshake", dict(row)),
            remote_access.remote_access(
                "vnc",
                f"RFB ProtocolVersion handshake ({versions})",
                version=f"RFB {row.get('client_version') or row.get('server_version')}",
                server_software=row.get("desktop_name"),
            ),
        ]

    def close(self) -> list[Event]:
        return self._report()


class VncDecoder(Decoder):
    name = PROTOCOL
    transport = "tcp"
    ports = frozenset(range(5900, 5911))
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """The server's ProtocolVersion comes first; a capture that missed it still has the client's."""
        return VERSION.fullmatch(payload[:12]) is not None

    def session(self) -> Session:
        return VncSession()

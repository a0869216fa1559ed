"""FTP control connections (RFC 959, RFC 2428 EPRT/EPSV, RFC 3659) over TCP 21.

Crane and PLC vendors still ship firmware and logs over FTP, with user names and passwords in clear.

Table ``ftp``: one row per command with its final reply, as Zeek's ftp.log: command and argument, the user
logged in, reply code and text, preliminary (1xx) reply code, PORT/EPRT/PASV/EPSV data channel addresses and file
names of RETR, STOR and kin, with latency. Unsolicited replies (the 220 banner) get rows without a command;
commands never answered get rows at close. The argument of PASS is never stored: only ``password_present`` and
its length. Logins also go to the shared ``cleartext_credentials`` table (see :mod:`.credentials`).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.ftp import credentials

PROTOCOL = "ftp"
#: Longest control line kept; longer lines are an anomaly and dropped up to their end.
MAXIMUM_LINE = 4096
#: Commands waiting for their reply; more are answered as unanswered.
MAXIMUM_PENDING = 64
#: Lines of one multi-line reply counted; text kept from the first only.
MAXIMUM_TEXT = 1024
FILE_COMMANDS = frozenset({"RETR", "STOR", "STOU", "APPE", "DELE", "RNFR", "RNTO", "SIZE", "MDTM"})
_REPLY = re.compile(rb"([1-5][0-9][0-9])([ -])?(.*)", re.DOTALL)
_COMMAND = re.compile(rb"([A-Za-z]{3,4})(?: (.*))?", re.DOTALL)
_HOST_PORT = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV = re.compile(rb"\((.)\1\1(\d{1,5})\1\)")
#: Telnet commands a client may put on the control connection (RFC 959 section 4.1.3: IAC IP, IAC DM before ABOR).
_TELNET = re.compile(rb"\xff[\xfb-\xfe].|\xff[\xf0-\xfa]", re.DOTALL)


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field(
            "command",
            pa.string(),
            "command verb, upper-cased (RFC 959: case-insensitive); null for unsolicited replies",
        ),
        _field("arg", pa.string(), "command argument as received (backslash-escaped); never for PASS"),
        _field("user", pa.string(), "the last USER argument of the connection"),
        _field("password_present", pa.bool_(), "PASS: a password was sent (never stored)"),
        _field("password_length", pa.int32(), "PASS: its length in octets"),
        _field("file_name", pa.string(), "RETR, STOR, STOU, APPE, DELE, RNFR, RNTO, SIZE, MDTM: the path argument"),
        _field("reply_code", pa.int16(), "final reply code (2xx-5xx; 1xx if only a preliminary reply came)"),
        _field("reply_message", pa.string(), "text of the final reply's first line, after the code"),
        _field("reply_lines", pa.int32(), "lines of the final reply (multi-line replies, RFC 959 section 4.2)"),
        _field("preliminary_code", pa.int16(), "1xx preliminary reply before the final one (150 opening data ...)"),
        _field("data_address", pa.string(), "PORT/EPRT argument or PASV reply: data channel IP address"),
        _field("data_port", pa.int32(), "PORT/EPRT/PASV/EPSV: data channel TCP port"),
        _field("passive", pa.bool_(), "the data channel address came from PASV/EPSV (server listens)"),
        _field("answered", pa.bool_(), "a final reply was seen for the command"),
        _field("latency", pa.float64(), "seconds from the command to its final reply"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA, credentials.TABLE: credentials.SCHEMA}


def _text(data: bytes) -> str:
    return data[:MAXIMUM_TEXT].decode("utf-8", "backslashreplace")


def _address(match: re.Match[bytes]) -> tuple[str, int] | None:
    numbers = [int(part) for part in match.groups()]
    if any(number > 255 for number in numbers):
        return None
    return ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]


@dataclass(slots=True)
class _Command:
    row: dict[str, object]
    timestamp: float
    password_length: int | None = None


class LineBuffer:
    """Lines of one direction ended by LF (CR stripped), bounded: an over-long line is reported and skipped."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.discarding = False

    def lines(self, data: bytes) -> tuple[list[bytes], int]:
        """Complete lines of ``data`` added to what was buffered, and how many over-long lines were skipped."""
        out: list[bytes] = []
        skipped = 0
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self.discarding:
                self.buffer += piece
                if len(self.buffer) > MAXIMUM_LINE:
                    skipped += 1
                    self.discarding = True
                    self.buffer.clear()
            if end < 0:
                return out, skipped
            if not self.discarding:
                out.append(bytes(self.buffer).rstrip(b"\r"))
            self.buffer.clear()
            self.discarding = False
            start = end + 1


class FtpSession(Session):
    """One FTP control connection: commands queued until their final reply."""

    def __init__(self) -> None:
        self.lines = {Direction.TO_SERVER: LineBuffer(), Direction.TO_CLIENT: LineBuffer()}
        self.pending: deque[_Command] = deque()
        self.user: str | None = None
        #: The multi-line reply being read: code, first line text, lines so far.
        self.multiline: tuple[bytes, bytes, int] | None = None
        #: AUTH TLS/SSL was accepted (234, RFC 4217): the rest of the connection is TLS and is not read.
        self.encrypted = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.encrypted:
            return []
        lines, skipped = self.lines[direction].lines(data)
        events = [
            anomaly(PROTOCOL, "line_too_long", f"{direction.name}: line longer than {MAXIMUM_LINE} octets skipped")
            for _ in range(skipped)
        ]
        for line in lines:
            if self.encrypted:
                break
            if direction == Direction.TO_SERVER:
                events += self._command(line, timestamp)
            else:
                events += self._reply_line(line, timestamp)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.lines[direction] = LineBuffer()
        if direction == Direction.TO_CLIENT:
            self.multiline = None
        return []

    def close(self) -> list[Event]:
        events = []
        while self.pending:
            command = self.pending.popleft()
            command.row["answered"] = False
            events.append(Event(PROTOCOL, "unanswered", command.row))
        for direction, buffer in self.lines.items():
            if buffer.buffer:
                events.append(anomaly(PROTOCOL, "truncated_line", f"{direction.name}: {len(buffer.buffer)} bytes left"))
        return events

    def _command(self, line: bytes, timestamp: float) -> list[Event]:
        if b"\xff" in line:
            line = _TELNET.sub(b"", line)
        if not line.strip():
            return []
        match = _COMMAND.fullmatch(line)
        events: list[Event] = []
        if match is None:
            return [anomaly(PROTOCOL, "bad_command", f"not an FTP command: {line[:40]!r}")]
        verb = match[1].decode("ascii").upper()
        argument = match[2]
        row: dict[str, object] = {"command": verb}
        command = _Command(row, timestamp)
        if verb == "PASS":
            command.password_length = len(argument or b"")
            row["password_present"] = True
            row["password_length"] = command.password_length
        elif argument is not None:
            row["arg"] = _text(argument)
        if verb == "USER":
            self.user = _text(argument or b"")
        row["user"] = self.user
        if verb in FILE_COMMANDS and argument is not None:
            row["file_name"] = _text(argument)
        if verb == "PORT" and argument is not None:
            found = _HOST_PORT.fullmatch(argument.strip())
            address = _address(found) if found else None
            if address is None:
                events.append(anomaly(PROTOCOL, "bad_port_argument", f"PORT {argument[:40]!r}"))
            else:
                row["data_address"], row["data_port"] = address
                row["passive"] = False
        elif verb == "EPRT" and argument is not None:
            parts = argument.strip().split(argument.strip()[:1] or b"|")
            if len(parts) == 5 and parts[3].isdigit() and int(parts[3]) < 65536:
                row["data_address"], row["data_port"], row["passive"] = _text(parts[2]), int(parts[3]), False
            else:
                events.append(anomaly(PROTOCOL, "bad_port_argument", f"EPRT {argument[:40]!r}"))
        if len(self.pending) >= MAXIMUM_PENDING:
            oldest = self.pending.popleft()
            oldest.row["answered"] = False
            events.append(Event(PROTOCOL, "unanswered", oldest.row))
        self.pending.append(command)
        return events

    def _reply_line(self, line: bytes, timestamp: float) -> list[Event]:
        if self.multiline is not None:
            code, first, count = self.multiline
            if line[:3] == code and line[3:4] == b" ":
                self.multiline = None
                return self._reply(int(code), first, count + 1, timestamp)
            self.multiline = (code, first, count + 1)
            return []
        match = _REPLY.fullmatch(line)
        if match is None or (match[2] is None and match[3]):
            return [anomaly(PROTOCOL, "bad_reply", f"not an FTP reply: {line[:40]!r}")]
        if match[2] == b"-":
            self.multiline = (match[1], match[3], 1)
            return []
        return self._reply(int(match[1]), match[3], 1, timestamp)

    def _reply(self, code: int, text: bytes, lines: int, timestamp: float) -> list[Event]:
        if not self.pending:
            row: dict[str, object] = {
                "user": self.user,
                "reply_code": code,
                "reply_message": _text(text),
                "reply_lines": lines,
            }
            return [Event(PROTOCOL, "reply", row)]
        command = self.pending[0]
        row = command.row
        if code < 200:
            row["preliminary_code"] = code
            return []
        self.pending.popleft()
        row.update(
            reply_code=code,
            reply_message=_text(text),
            reply_lines=lines,
            answered=True,
            latency=max(0.0, timestamp - command.timestamp),
        )
        if code == 227:
            found = _HOST_PORT.search(text)
            address = _address(found) if found else None
            if address is not None:
                row["data_address"], row["data_port"] = address
                row["passive"] = True
        elif code == 229:
            found = _EPSV.search(text)
            if found and int(found[2]) < 65536:
                row["data_port"], row["passive"] = int(found[2]), True
        events = [Event(PROTOCOL, str(row["command"]).lower(), row)]
        verb = row["command"]
        if verb == "AUTH" and code == 234:
            self.encrypted = True
            self.lines = {Direction.TO_SERVER: LineBuffer(), Direction.TO_CLIENT: LineBuffer()}
            while self.pending:
                self.pending.popleft()
        success = True if code in (230, 202) else False if code == 530 else None
        if verb == "PASS" or (verb == "USER" and code == 230):
            evidence = f"{code} {_text(text)}"
            events.append(credentials.credential(PROTOCOL, self.user, command.password_length, success, evidence))
        return events


def probe_payload(payload: bytes, direction: Direction, server_port: int) -> bool:
    """A server greeting (220/120 reply naming FTP, or any greeting on port 21) or a client login command."""
    if direction == Direction.TO_CLIENT:
        if payload[:4] not in (b"220 ", b"220-", b"120 ", b"120-") or not payload.endswith(b"\n"):
            return False
        return server_port == 21 or b"ftp" in payload[:512].lower()
    head = payload[:5].upper()
    return payload.endswith(b"\n") and head in (b"USER ", b"AUTH ", b"FEAT\r", b"SYST\r", b"OPTS ")


class FtpDecoder(Decoder):
    """FTP control connections, found by the greeting or the first login command."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({21})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return probe_payload(payload, direction, server_port)

    def session(self) -> Session:
        return FtpSession()

"""Telnet (RFC 854, 855 and the option RFCs) over TCP 23: option negotiation and best-effort login detection.

Serial servers, switches, crane PLC gateways and old HMIs still offer telnet, with the login in clear.

Table ``telnet``: one ``command`` row per IAC command (WILL, WONT, DO, DONT, SB with its option and, for
TERMINAL-TYPE, NAWS and TERMINAL-SPEED, the decoded value; GA, IP, AYT ...), one ``login`` row per login
attempt and one ``summary`` row at the end of the connection (options each side offered or asked for, terminal
type, window size, data octets).

Login detection is a heuristic: after the server prints a prompt ending in ``login:``, ``username:`` or ``user
name:`` (case-insensitive) and nothing else, the next line the client types is taken as the user name; after a
prompt ending in ``password:`` the next line's length (after backspace/DEL erasures) is counted. The password's
characters are never kept, not even in memory beyond the count. Each attempt also goes to the shared
``cleartext_credentials`` table: ``success`` is false when the server's next 256 octets hold a failure message
(``incorrect``, ``failed``, ``denied``, ``invalid`` ...) or the client answers a new login or password prompt,
null otherwise (telnet has no standard success signal, so success is never asserted).
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.ftp import credentials

PROTOCOL = "telnet"
IAC, SB, SE = 255, 250, 240
NEGOTIATION = {251: "WILL", 252: "WONT", 253: "DO", 254: "DONT"}
COMMANDS = {
    241: "NOP", 242: "DM", 243: "BRK", 244: "IP", 245: "AO", 246: "AYT", 247: "EC", 248: "EL", 249: "GA", 250: "SB",
    **NEGOTIATION,
}  # fmt: skip
OPTIONS = {
    0: "binary", 1: "echo", 2: "reconnection", 3: "suppress-go-ahead", 5: "status", 6: "timing-mark",
    8: "output-line-width", 9: "output-page-size", 10: "output-cr", 18: "logout", 23: "send-location",
    24: "terminal-type", 25: "end-of-record", 31: "naws", 32: "terminal-speed", 33: "remote-flow-control",
    34: "linemode", 35: "x-display-location", 36: "environment", 37: "authentication", 38: "encryption",
    39: "new-environ", 44: "com-port", 46: "start-tls", 255: "extended-options-list",
}  # fmt: skip
#: Octets of a subnegotiation kept; longer ones are an anomaly and cut.
MAXIMUM_SUBNEGOTIATION = 512
#: Rows of IAC commands per connection (a flood would otherwise fill the table).
MAXIMUM_COMMANDS = 1024
MAXIMUM_ATTEMPTS = 32
MAXIMUM_USER = 256
#: Server text remembered to recognise a prompt.
PROMPT_WINDOW = 32
USER_PROMPTS = (b"login:", b"username:", b"user name:")
PASSWORD_PROMPTS = (b"password:", b"passcode:")
#: Server text after a password that marks the login as failed (util-linux, BusyBox, Cisco, Windows telnetd ...).
FAILURES = (b"incorrect", b"failed", b"denied", b"invalid", b"authentication failure", b"bad password")
#: Server octets after a password searched for a failure message before the outcome is left unknown.
VERDICT_WINDOW = 256


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("command_code", pa.int16(), "command rows: IAC command octet (240-254)"),
        _field("command", pa.string(), "command rows: WILL, WONT, DO, DONT, SB, GA, IP, AYT ..."),
        _field("option_code", pa.int16(), "command rows: option number of WILL/WONT/DO/DONT/SB"),
        _field("option", pa.string(), "command rows: option name (echo, terminal-type, naws ...)"),
        _field(
            "subnegotiation",
            pa.binary(),
            f"SB rows: parameter octets after the option (first {MAXIMUM_SUBNEGOTIATION})",
        ),
        _field("terminal_type", pa.string(), "SB TERMINAL-TYPE IS, and summary: the terminal type as received"),
        _field("terminal_speed", pa.string(), "SB TERMINAL-SPEED IS: transmit,receive speed as received"),
        _field("window_width", pa.int32(), "SB NAWS, and summary: window width in characters"),
        _field("window_height", pa.int32(), "SB NAWS, and summary: window height"),
        _field("user_name", pa.string(), "login rows: line typed after a login prompt (backslash-escaped)"),
        _field("password_present", pa.bool_(), "login rows: a line was typed after a password prompt (never stored)"),
        _field("password_length", pa.int32(), "login rows: its length in characters after erasures"),
        _field("client_options", pa.list_(pa.string()), "summary: distinct 'VERB option' the client sent, sorted"),
        _field("server_options", pa.list_(pa.string()), "summary: distinct 'VERB option' the server sent, sorted"),
        _field("client_data_bytes", pa.int64(), "summary: data octets (outside IAC commands) from the client"),
        _field("server_data_bytes", pa.int64(), "summary: data octets from the server"),
        _field("login_attempts", pa.int32(), "summary: login rows of the connection"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA, credentials.TABLE: credentials.SCHEMA}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


class _Parser:
    """IAC state machine of one direction, fed octet by octet (so any split gives the same result)."""

    def __init__(self) -> None:
        self.state = 0  # 0 data, 1 after IAC, 2 after a negotiation verb, 3 in SB, 4 IAC in SB
        self.verb = 0
        self.sub = bytearray()
        self.sub_cut = False
        self.data_bytes = 0
        self.options: set[str] = set()


class TelnetSession(Session):
    """One telnet connection: both directions' IAC parsers and the login heuristic."""

    def __init__(self) -> None:
        self.parsers = {Direction.TO_SERVER: _Parser(), Direction.TO_CLIENT: _Parser()}
        self.commands = 0
        self.attempts = 0
        self.recent = bytearray()  # lower-cased server text since the last client line
        self.expect: str | None = None  # "user" or "password"
        self.line = bytearray()
        self.line_length = 0
        self.typing = False
        self.user: str | None = None
        self.terminal_type: str | None = None
        self.window: tuple[int, int] | None = None
        #: The credential of the last password line, held until the server's answer shows a failure or not.
        self.verdict: tuple[str | None, int] | None = None
        self.verdict_text = bytearray()

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        parser = self.parsers[direction]
        events: list[Event] = []
        for octet in data:
            state = parser.state
            if state == 0:
                if octet == IAC:
                    parser.state = 1
                else:
                    parser.data_bytes += 1
                    events += self._data(octet, direction)
            elif state == 1:
                if octet == IAC:
                    parser.state = 0
                    parser.data_bytes += 1
                    events += self._data(octet, direction)
                elif octet in NEGOTIATION or octet == SB:
                    parser.verb = octet
                    parser.state = 2
                else:
                    parser.state = 0
                    events += self._command(direction, octet, None, None)
            elif state == 2:
                if parser.verb == SB:
                    parser.verb = octet  # the option being subnegotiated
                    parser.sub.clear()
                    parser.sub_cut = False
                    parser.state = 3
                else:
                    parser.state = 0
                    events += self._command(direction, parser.verb, octet, None)
            elif state == 3:
                if octet == IAC:
                    parser.state = 4
                elif len(parser.sub) < MAXIMUM_SUBNEGOTIATION:
                    parser.sub.append(octet)
                else:
                    parser.sub_cut = True
            else:  # IAC inside SB
                if octet == IAC:
                    parser.state = 3
                    if len(parser.sub) < MAXIMUM_SUBNEGOTIATION:
                        parser.sub.append(IAC)
                elif octet == SE:
                    parser.state = 0
                    events += self._command(direction, SB, parser.verb, bytes(parser.sub))
                    if parser.sub_cut:
                        events.append(anomaly(PROTOCOL, "long_subnegotiation", f"{direction.name}: cut"))
                else:
                    # RFC 855: only IAC SE ends a subnegotiation; another command inside is an error.
                    parser.state = 0
                    events.append(
                        anomaly(
                            PROTOCOL, "bad_subnegotiation", f"{direction.name}: IAC {octet} inside SB {parser.verb}"
                        )
                    )
        return events

    def _command(self, direction: Direction, code: int, option: int | None, sub: bytes | None) -> list[Event]:
        parser = self.parsers[direction]
        verb = COMMANDS.get(code, f"CMD_{code}")
        if option is not None:
            parser.options.add(f"{verb} {OPTIONS.get(option, str(option))}")
        self.commands += 1
        if self.commands > MAXIMUM_COMMANDS:
            return []
        row: dict[str, object] = {"command_code": code, "command": verb}
        if option is not None:
            row["option_code"], row["option"] = option, OPTIONS.get(option)
        if sub is not None:
            row["subnegotiation"] = sub
            if option in (24, 32) and sub[:1] == b"\x00":
                value = _text(sub[1:])
                row["terminal_type" if option == 24 else "terminal_speed"] = value
                if option == 24:
                    self.terminal_type = value
            elif option == 31 and len(sub) == 4:
                self.window = int.from_bytes(sub[:2], "big"), int.from_bytes(sub[2:], "big")
                row["window_width"], row["window_height"] = self.window
        return [Event(PROTOCOL, "command", row)]

    def _data(self, octet: int, direction: Direction) -> list[Event]:
        events: list[Event] = []
        if direction == Direction.TO_CLIENT and self.verdict is not None:
            self.verdict_text.append(octet | 0x20 if 0x41 <= octet <= 0x5A else octet)
            text = bytes(self.verdict_text)
            if text.endswith(FAILURES):
                events += self._decide(False, _text(text.strip()[-80:]))
            elif len(text) >= VERDICT_WINDOW:
                events += self._decide(None, None)
        if direction == Direction.TO_CLIENT:
            if self.expect and not self.typing and octet not in b" \t\r\n\0":
                self.expect = None  # more text after the prompt: it was not a prompt ("Last login: ...")
            self.recent.append(octet | 0x20 if 0x41 <= octet <= 0x5A else octet)
            del self.recent[:-PROMPT_WINDOW]
            if octet == ord(":"):
                if self.recent.endswith(USER_PROMPTS):
                    self.expect, self.typing, self.line_length = "user", False, 0
                    self.line.clear()
                elif self.recent.endswith(PASSWORD_PROMPTS):
                    self.expect, self.typing, self.line_length = "password", False, 0
                    self.line.clear()
            return events
        if self.expect is None:
            return []
        if octet in b"\r\n":
            if not self.typing:
                return []  # an empty line before typing (CR NUL, CR LF of the prompt answer) is skipped
            return self._line_done()
        if octet == 0:
            return []
        if not self.typing and self.verdict is not None:
            events = self._decide(False, "answered a new login or password prompt")
        self.typing = True
        if octet in (0x08, 0x7F):
            if self.expect == "user" and self.line:
                self.line.pop()
            self.line_length = max(0, self.line_length - 1)
        else:
            if self.expect == "user" and len(self.line) < MAXIMUM_USER:
                self.line.append(octet)
            self.line_length += 1
        return events

    def _line_done(self) -> list[Event]:
        expect, self.expect, self.typing = self.expect, None, False
        self.recent.clear()
        if expect == "user":
            self.user = _text(bytes(self.line))
            self.line.clear()
            return []
        length, self.line_length = self.line_length, 0
        self.attempts += 1
        if self.attempts > MAXIMUM_ATTEMPTS:
            return []
        row: dict[str, object] = {"user_name": self.user, "password_present": True, "password_length": length}
        events = self._decide(None, None)
        self.verdict, self.user = (self.user, length), None
        return [*events, Event(PROTOCOL, "login", row)]

    def _decide(self, success: bool | None, evidence: str | None) -> list[Event]:
        """The held credential, with the outcome the server's text showed (False) or left unknown (None)."""
        if self.verdict is None:
            return []
        (user, length), self.verdict = self.verdict, None
        self.verdict_text.clear()
        return [credentials.credential(PROTOCOL, user, length, success, evidence)]

    def close(self) -> list[Event]:
        events = self._decide(None, None)
        if self.expect == "user" and self.user is None and self.line:
            self.user = _text(bytes(self.line))
        if self.user is not None and self.attempts < MAXIMUM_ATTEMPTS:
            # A user name without a password prompt (a passwordless login or a capture that stops early).
            self.attempts += 1
            login: dict[str, object] = {"user_name": self.user, "password_present": False}
            events += [Event(PROTOCOL, "login", login), credentials.credential(PROTOCOL, self.user, None, None)]
            self.user = None
        client, server = self.parsers[Direction.TO_SERVER], self.parsers[Direction.TO_CLIENT]
        if self.commands or client.data_bytes or server.data_bytes:
            row = {
                "client_options": sorted(client.options),
                "server_options": sorted(server.options),
                "client_data_bytes": client.data_bytes,
                "server_data_bytes": server.data_bytes,
                "terminal_type": self.terminal_type,
                "login_attempts": self.attempts,
            }
            if self.window:
                row["window_width"], row["window_height"] = self.window
            events.append(Event(PROTOCOL, "summary", row))
        return events


class TelnetDecoder(Decoder):
    """Telnet, found by an IAC negotiation at the start of either side, or a text greeting on port 23."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({23})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        if len(payload) >= 3 and payload[0] == IAC and (payload[1] in NEGOTIATION or payload[1] == SB):
            return True
        if server_port != 23 or direction != Direction.TO_CLIENT:
            return False
        head = payload[:64]
        return all(32 <= octet < 127 or octet in b"\r\n\t\0" for octet in head)

    def session(self) -> Session:
        return TelnetSession()

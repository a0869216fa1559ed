"""HTTP/1.0 and HTTP/1.1 over TCP (RFC 9110 semantics, RFC 9112 message syntax).

One ``http`` row per request/response pair, as in Zeek's http.log: requests are queued and answered in order, so
pipelined requests (several sent before the first response) pair correctly, and a persistent connection gives one
row per exchange (``trans_depth`` counts them). Interim 1xx responses are counted in ``info_code`` and the final
response completes the pair. A request never answered is written when the connection ends (or when too many are
pending); a response without a request (the capture started mid-connection) gets a row of its own.

Bodies are framed by RFC 9112 section 6: ``Transfer-Encoding: chunked`` (decoded, chunk sizes and trailers not
counted), else ``Content-Length``, else none for requests and read-until-close for responses; HEAD, 1xx, 204 and
304 responses have none. Body lengths are the bytes of the message body after chunked decoding (content codings
such as gzip are not undone). The first 256 body bytes of each side are kept as received.

Authorization: Basic credentials are decoded for the user name only; the password is never stored, only whether
one was present and its length. After a 101 Switching Protocols (Upgrade) or a successful CONNECT the connection
carries another protocol: nothing more is parsed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "http"
BODY_HEAD = 256
MAXIMUM_HEADER = 64 * 1024
MAXIMUM_PENDING = 64
METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK SEARCH "
    b"REPORT MKACTIVITY CHECKOUT MERGE BIND UNBIND REBIND ACL MKCALENDAR NOTIFY SUBSCRIBE UNSUBSCRIBE "
    b"M-SEARCH PURGE LINK UNLINK".split()
)
REQUEST_LINE = re.compile(rb"([A-Z][A-Z-]{2,15}) ([^ \r\n]+) HTTP/1\.[0-9]\r?\n")
STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] [0-9]{3}[ \r\n]")


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("trans_depth", pa.int32(), "1-based position of this exchange on the connection"),
        _field("pipelined", pa.bool_(), "the request was sent while an earlier one was still unanswered"),
        _field("method", pa.string(), "request method, as received"),
        _field("host", pa.string(), "Host header"),
        _field("uri", pa.string(), "request target, as received"),
        _field("version", pa.string(), "request HTTP version (1.0, 1.1)"),
        _field("user_agent", pa.string(), "User-Agent header"),
        _field("referrer", pa.string(), "Referer header"),
        _field("origin", pa.string(), "Origin header"),
        _field("request_content_type", pa.string(), "request Content-Type header"),
        _field("request_body_len", pa.int64(), "request body bytes (after chunked decoding)"),
        _field("request_body_head", pa.binary(), f"first {BODY_HEAD} request body bytes, as received"),
        _field("request_chunked", pa.bool_(), "the request body used chunked transfer coding"),
        _field("username", pa.string(), "user name of Authorization: Basic, as decoded"),
        _field("password_present", pa.bool_(), "Basic credentials carried a password (it is never stored)"),
        _field("password_length", pa.int32(), "its length in bytes"),
        _field("authorization_scheme", pa.string(), "Authorization scheme (Basic, Digest, Bearer ...)"),
        _field("response_version", pa.string(), "response HTTP version"),
        _field("status_code", pa.int32(), "final status code"),
        _field("status_msg", pa.string(), "reason phrase, as received"),
        _field("info_code", pa.int32(), "last interim 1xx status before the final one"),
        _field("server", pa.string(), "Server header"),
        _field("content_type", pa.string(), "response Content-Type header"),
        _field("location", pa.string(), "response Location header"),
        _field("response_body_len", pa.int64(), "response body bytes (after chunked decoding)"),
        _field("response_body_head", pa.binary(), f"first {BODY_HEAD} response body bytes, as received"),
        _field("response_chunked", pa.bool_(), "the response body used chunked transfer coding"),
        _field("connection", pa.string(), "request Connection header (keep-alive, close, Upgrade)"),
        _field("upgrade", pa.string(), "Upgrade header of the request (e.g. websocket)"),
        _field("upgraded", pa.bool_(), "101 Switching Protocols or a 2xx to CONNECT: the connection left HTTP"),
    ]
)
TABLES = {PROTOCOL: SCHEMA}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


class Malformed(ValueError):
    pass


def _headers(block: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """Start line and headers (lower-case names, values stripped, obs-fold joined) of a header block."""
    lines = block.split(b"\n")
    start = lines[0].rstrip(b"\r")
    headers: dict[bytes, list[bytes]] = {}
    last: list[bytes] | None = None
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and last is not None:  # RFC 9112 section 5.2 obs-fold
            last[-1] = last[-1] + b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        last = headers.setdefault(name.strip().lower(), [])
        last.append(value.strip(b" \t"))
    return start, headers


def _one(headers: dict[bytes, list[bytes]], name: bytes) -> str | None:
    values = headers.get(name)
    return _text(values[0]) if values else None


class _Body:
    """Incremental body framing: fixed length, chunked, until close, or none."""

    __slots__ = ("chunk_state", "head", "length", "line", "mode", "remaining")

    def __init__(self, mode: str, remaining: int = 0) -> None:
        self.mode = mode  # length, chunked, close
        self.remaining = remaining
        self.chunk_state = "size"  # size, data, data_end, trailer
        self.line = bytearray()
        self.length = 0
        self.head = bytearray()

    def _take(self, data: bytes | bytearray) -> None:
        self.length += len(data)
        if len(self.head) < BODY_HEAD:
            self.head += data[: BODY_HEAD - len(self.head)]

    def feed(self, buffer: bytearray) -> bool:
        """Consume body bytes from ``buffer``; True once the body is complete."""
        if self.mode == "close":
            self._take(buffer)
            buffer.clear()
            return False
        if self.mode == "length":
            piece = buffer[: self.remaining]
            self._take(piece)
            del buffer[: len(piece)]
            self.remaining -= len(piece)
            return self.remaining == 0
        while buffer:
            if self.chunk_state == "data":
                piece = buffer[: self.remaining]
                self._take(piece)
                del buffer[: len(piece)]
                self.remaining -= len(piece)
                if self.remaining == 0:
                    self.chunk_state = "data_end"
                continue
            end = buffer.find(b"\n")
            if end < 0:
                if len(self.line) + len(buffer) > 4096:
                    raise Malformed("chunk size or trailer line longer than 4096 bytes")
                self.line += buffer
                buffer.clear()
                return False
            line = bytes(self.line + buffer[:end]).rstrip(b"\r")
            if len(self.line) + end > 4096:
                raise Malformed("chunk size or trailer line longer than 4096 bytes")
            self.line.clear()
            del buffer[: end + 1]
            if self.chunk_state == "data_end":
                if line:
                    raise Malformed("chunk data not followed by CRLF")
                self.chunk_state = "size"
            elif self.chunk_state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
                    raise Malformed(f"bad chunk size {line[:20]!r}")
                self.remaining = int(size, 16)
                self.chunk_state = "data" if self.remaining else "trailer"
            elif not line:  # the empty line after the trailer fields ends the message
                return True
        return False


class _Side:
    __slots__ = ("body", "buffer", "done", "message")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.body: _Body | None = None
        self.message: dict[str, object] = {}
        self.done = False


def _basic(value: bytes, row: dict[str, object]) -> None:
    scheme, _, credentials = value.partition(b" ")
    row["authorization_scheme"] = _text(scheme)
    if scheme.lower() != b"basic":
        return
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("Authorization: Basic credentials are not base64") from None
    user, colon, password = decoded.partition(b":")
    row["username"] = _text(user)
    row["password_present"] = bool(colon)
    row["password_length"] = len(password)


class HttpSession(Session):
    """One HTTP/1.x connection: message framing per direction, requests paired with responses in order."""

    def __init__(self) -> None:
        self.sides = {Direction.TO_SERVER: _Side(), Direction.TO_CLIENT: _Side()}
        self.pending: deque[dict[str, object]] = deque()  # complete or in-progress requests awaiting an answer
        self.depth = 0
        self.upgraded = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        side = self.sides[direction]
        if side.done or not data:
            return []
        side.buffer += data
        events: list[Event] = []
        try:
            while side.buffer and not side.done:
                if side.body is None:
                    if not self._header(side, direction, events):
                        break
                    continue
                if side.body.feed(side.buffer):
                    self._finish(side, direction, events)
        except Malformed as error:
            # A client may send tunnelled bytes right behind a CONNECT, before the proxy's 2xx arrives: not HTTP.
            tunnel = direction == Direction.TO_SERVER and self.pending and self.pending[-1].get("method") == "CONNECT"
            if not tunnel:
                events.append(anomaly(PROTOCOL, "malformed", f"{direction.name}: {error}; direction no longer parsed"))
            side.done = True
            side.buffer.clear()
        return events

    def _header(self, side: _Side, direction: Direction, events: list[Event]) -> bool:
        buffer = side.buffer
        while buffer[:2] == b"\r\n" or buffer[:1] == b"\n":  # RFC 9112 section 2.2: skip empty lines before a message
            del buffer[: 2 if buffer[:1] == b"\r" else 1]
        # The header block ends at the first empty line; lines may end in CRLF or a bare LF (RFC 9112 section 2.2).
        found = [(at, size) for at, size in ((buffer.find(b"\n\r\n"), 3), (buffer.find(b"\n\n"), 2)) if at >= 0]
        if not found:
            if len(buffer) > MAXIMUM_HEADER + 3:
                raise Malformed(f"header block longer than {MAXIMUM_HEADER} bytes")
            return False
        end, size = min(found)
        if end > MAXIMUM_HEADER:
            raise Malformed(f"header block longer than {MAXIMUM_HEADER} bytes")
        block = bytes(buffer[:end])
        del buffer[: end + size]
        start, headers = _headers(block)
        if direction == Direction.TO_SERVER:
            self._request(side, start, headers, events)
        else:
            self._response(side, start, headers, events)
        return True

    @staticmethod
    def _framing(headers: dict[bytes, list[bytes]], row: dict[str, object], who: str) -> _Body | None:
        encoding = b",".join(headers.get(b"transfer-encoding", [])).lower()
        if encoding:
            if encoding.replace(b" ", b"").split(b",")[-1] == b"chunked":
                row[f"{who}_chunked"] = True
                return _Body("chunked")
            return _Body("close") if who == "response" else None
        lengths = {value.strip() for value in headers.get(b"content-length", [])}
        if len(lengths) > 1:
            raise Malformed(f"conflicting Content-Length headers {sorted(lengths)!r}")
        if lengths:
            (length,) = lengths
            if not length.isdigit() or len(length) > 18:
                raise Malformed(f"bad Content-Length {length[:20]!r}")
            return _Body("length", int(length)) if int(length) else None
        return _Body("close") if who == "response" else None

    def _request(self, side: _Side, start: bytes, headers: dict[bytes, list[bytes]], events: list[Event]) -> None:
        parts = start.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            raise Malformed(f"bad request line {start[:60]!r}")
        self.depth += 1
        row: dict[str, object] = {
            "trans_depth": self.depth,
            "pipelined": bool(self.pending),
            "method": _text(parts[0]),
            "uri": _text(parts[1]),
            "version": _text(parts[2][5:]),
            "host": _one(headers, b"host"),
            "user_agent": _one(headers, b"user-agent"),
            "referrer": _one(headers, b"referer"),
            "origin": _one(headers, b"origin"),
            "request_content_type": _one(headers, b"content-type"),
            "connection": _one(headers, b"connection"),
            "upgrade": _one(headers, b"upgrade"),
            "request_body_len": 0,
        }
        if headers.get(b"authorization"):
            try:
                _basic(headers[b"authorization"][0], row)
            except Malformed as error:
                events.append(anomaly(PROTOCOL, "bad_authorization", str(error)))
        side.message = row
        self.pending.append(row)
        if len(self.pending) > MAXIMUM_PENDING:
            events.append(Event(PROTOCOL, "request", self.pending.popleft()))
        side.body = self._framing(headers, row, "request")
        if side.body is None:
            self._finish(side, Direction.TO_SERVER, events)

    def _response(self, side: _Side, start: bytes, headers: dict[bytes, list[bytes]], events: list[Event]) -> None:
        version, _, rest = start.partition(b" ")
        code, _, message = rest.partition(b" ")
        if not version.startswith(b"HTTP/") or len(code) != 3 or not code.isdigit():
            raise Malformed(f"bad status line {start[:60]!r}")
        status = int(code)
        request = self.pending[0] if self.pending else None
        if 100 <= status < 200 and status != 101:
            if request is not None:
                request["info_code"] = status
            return  # an interim response: the final one follows
        row: dict[str, object] = {
            "response_version": _text(version[5:]),
            "status_code": status,
            "status_msg": _text(message),
            "server": _one(headers, b"server"),
            "content_type": _one(headers, b"content-type"),
            "location": _one(headers, b"location"),
            "response_body_len": 0,
        }
        side.message = row
        method = request.get("method") if request else None
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            row["upgraded"] = True
            self.upgraded = True
            side.body = None
        elif method == "HEAD" or status in (204, 304):
            side.body = None
        else:
            side.body = self._framing(headers, row, "response")
        if side.body is None:
            self._finish(side, Direction.TO_CLIENT, events)

    def _finish(self, side: _Side, direction: Direction, events: list[Event]) -> None:
        body, row = side.body, side.message
        side.body = None
        who = "request" if direction == Direction.TO_SERVER else "response"
        if body is not None:
            row[f"{who}_body_len"] = body.length
            row[f"{who}_body_head"] = bytes(body.head)
        if direction == Direction.TO_SERVER:
            return
        request = self.pending.popleft() if self.pending else {}
        events.append(Event(PROTOCOL, "exchange" if request else "response", {**request, **row}))
        if self.upgraded:
            for other in self.sides.values():
                other.done = True
                other.buffer.clear()

    def gap(self, direction: Direction, length: int) -> list[Event]:
        side = self.sides[direction]
        if side.body is not None and side.body.mode == "length" and length < side.body.remaining:
            side.body.remaining -= length  # inside a sized body: still framed; the gap is simply not counted
            return []
        if side.body is not None and side.body.mode == "close":
            return []
        if not side.done:
            side.done = True
            side.buffer.clear()
            return [anomaly(PROTOCOL, "gap", f"{direction.name}: {length} bytes missing; direction no longer parsed")]
        return []

    def close(self) -> list[Event]:
        events: list[Event] = []
        response = self.sides[Direction.TO_CLIENT]
        if response.body is not None and not response.done:
            if response.body.mode == "close":
                self._finish(response, Direction.TO_CLIENT, events)
            else:
                events.append(anomaly(PROTOCOL, "truncated_message", "TO_CLIENT: response body cut short"))
                response.body.mode = "close"
                self._finish(response, Direction.TO_CLIENT, events)
        request = self.sides[Direction.TO_SERVER]
        if request.body is not None and not request.done:
            events.append(anomaly(PROTOCOL, "truncated_message", "TO_SERVER: request body cut short"))
            row = request.message
            row["request_body_len"] = request.body.length
            row["request_body_head"] = bytes(request.body.head)
        while self.pending:
            events.append(Event(PROTOCOL, "request", self.pending.popleft()))
        for side in self.sides.values():
            side.buffer.clear()
            side.body = None
        return events


class HttpDecoder(Decoder):
    """HTTP/1.x, found by a request line (known method, target, HTTP/1.x) or a status line."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({80, 8080, 8000, 8008, 8081, 8888})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """A client request line 'METHOD SP target SP HTTP/1.x' with a known method, or a server status line."""
        if direction == Direction.TO_SERVER:
            found = REQUEST_LINE.match(payload.lstrip(b"\r\n")[:8192])
            return found is not None and found.group(1) in METHODS
        return STATUS_LINE.match(payload) is not None

    def session(self) -> Session:
        return HttpSession()

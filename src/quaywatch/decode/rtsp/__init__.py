"""RTSP 1.0 (RFC 2326) and 2.0 (RFC 7826) over TCP 554 and 8554: the control channel of IP cameras and encoders.

Hikvision, Dahua and other cameras on the FCC Covered List stream through RTSP; who pulls which stream, with
which user name, is the question.

Table ``rtsp``: one row per request with its response, paired by CSeq: method, URI, version, CSeq, User-Agent,
Server, Session, Transport, status and reason, content type and lengths, and the user name of Basic
authorization (the password is never stored; Digest gives the ``username`` parameter). Responses without a
request get their own row; requests never answered get rows at close. Interleaved binary data (``$``, RFC 2326
section 10.12) is skipped and counted.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "rtsp"
MAXIMUM_HEAD = 16384
MAXIMUM_BODY = 1 << 24
MAXIMUM_PENDING = 256
MAXIMUM_TEXT = 1024
_REQUEST = re.compile(rb"([A-Z_]{3,32}) (\S{1,8192}) (RTSP/\d\.\d)")
_RESPONSE = re.compile(rb"(RTSP/\d\.\d) (\d{3})(?: (.*))?", re.DOTALL)
_DIGEST_USER = re.compile(rb'username="([^"]*)"', re.IGNORECASE)
_COMMON_HEADERS = ((b"session", "session"), (b"transport", "rtsp_transport"))
_REQUEST_HEADERS = ((b"user-agent", "user_agent"), *_COMMON_HEADERS, (b"content-type", "request_content_type"))
_RESPONSE_HEADERS = (
    (b"server", "server"),
    *_COMMON_HEADERS,
    (b"content-type", "response_content_type"),
    (b"www-authenticate", "www_authenticate"),
)


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field(
            "method", pa.string(), "request method (OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER ...)"
        ),
        _field("uri", pa.string(), "request URI as received"),
        _field("version", pa.string(), "RTSP version of the request (or of the response if there was no request)"),
        _field(
            "from_server", pa.bool_(), "the request came from the server (ANNOUNCE, GET_PARAMETER, PLAY_NOTIFY ...)"
        ),
        _field("cseq", pa.int64(), "CSeq header, pairing requests and responses"),
        _field("user_agent", pa.string(), "User-Agent of the request"),
        _field("auth_scheme", pa.string(), "Authorization scheme of the request (Basic, Digest ...)"),
        _field("user_name", pa.string(), "Basic: the user name (password never stored); Digest: username parameter"),
        _field("session", pa.string(), "Session header (response's if present, else request's)"),
        _field("rtsp_transport", pa.string(), "Transport header (response's if present, else request's)"),
        _field("request_content_type", pa.string(), "Content-Type of the request"),
        _field("request_body_length", pa.int64(), "octets of the request body"),
        _field("status_code", pa.int16(), "response status code"),
        _field("reason", pa.string(), "response reason phrase"),
        _field("server", pa.string(), "Server header of the response"),
        _field("response_content_type", pa.string(), "Content-Type of the response (application/sdp ...)"),
        _field("response_body_length", pa.int64(), "octets of the response body"),
        _field("www_authenticate", pa.string(), "WWW-Authenticate of the response (the realm names the camera)"),
        _field("matched", pa.bool_(), "request and response were paired by CSeq"),
        _field("latency", pa.float64(), "seconds from request to response"),
        _field("interleaved_frames", pa.int64(), "'$' interleaved data frames seen in this direction before this row"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _text(data: bytes) -> str:
    return data[:MAXIMUM_TEXT].decode("utf-8", "backslashreplace")


@dataclass(slots=True)
class _Stream:
    buffer: bytearray = field(default_factory=bytearray)
    #: Octets of body (or interleaved frame) still to skip.
    skip: int = 0
    interleaved: int = 0
    broken: bool = False


def _headers(lines: list[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon:
            out.setdefault(name.strip().lower(), value.strip())
    return out


class RtspSession(Session):
    """One RTSP connection: messages framed per direction, requests paired with responses by CSeq."""

    def __init__(self) -> None:
        self.streams = {Direction.TO_SERVER: _Stream(), Direction.TO_CLIENT: _Stream()}
        self.pending: dict[tuple[Direction, int | None], tuple[dict[str, object], float]] = {}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        stream = self.streams[direction]
        if stream.broken:
            return []
        stream.buffer += data
        events: list[Event] = []
        while stream.buffer:
            if stream.skip:
                taken = min(stream.skip, len(stream.buffer))
                del stream.buffer[:taken]
                stream.skip -= taken
                continue
            if stream.buffer[0] == 0x24:  # '$' channel length: interleaved RTP/RTCP
                if len(stream.buffer) < 4:
                    break
                stream.skip = 4 + int.from_bytes(stream.buffer[2:4], "big")
                stream.interleaved += 1
                continue
            end = stream.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(stream.buffer) > MAXIMUM_HEAD:
                    events.append(anomaly(PROTOCOL, "header_too_long", f"{direction.name}: no end of header"))
                    stream.buffer.clear()
                    stream.broken = True
                break
            head = bytes(stream.buffer[:end])
            del stream.buffer[: end + 4]
            if not head.strip(b"\r\n"):
                continue
            lines = head.lstrip(b"\r\n").split(b"\r\n")
            headers = _headers(lines[1:])
            length_text = headers.get(b"content-length", b"0")
            length = int(length_text) if length_text.isdigit() else -1
            if length < 0 or length > MAXIMUM_BODY:
                events.append(anomaly(PROTOCOL, "bad_content_length", f"{direction.name}: {length_text[:20]!r}"))
                length = 0
            stream.skip = length
            events += self._message(lines[0], headers, length, direction, timestamp)
        return events

    def _message(
        self, start: bytes, headers: dict[bytes, bytes], length: int, direction: Direction, timestamp: float
    ) -> list[Event]:
        cseq_text = headers.get(b"cseq", b"")
        cseq = int(cseq_text) if cseq_text.isdigit() and len(cseq_text) < 18 else None
        stream = self.streams[direction]
        # RFC 2326 section 10 and RFC 7826: servers send requests too (ANNOUNCE, GET_PARAMETER, REDIRECT,
        # PLAY_NOTIFY) and clients answer them; pairing is per requesting side.
        match = None if start.startswith(b"RTSP/") else _REQUEST.fullmatch(start)
        if match is not None:
            row: dict[str, object] = {
                "method": _text(match[1]),
                "uri": _text(match[2]),
                "version": _text(match[3]),
                "cseq": cseq,
                "from_server": direction == Direction.TO_CLIENT,
                "request_body_length": length,
                "interleaved_frames": stream.interleaved,
            }
            for name, column in _REQUEST_HEADERS:
                if name in headers:
                    row[column] = _text(headers[name])
            authorization = headers.get(b"authorization")
            if authorization:
                scheme, _, credentials = authorization.partition(b" ")
                row["auth_scheme"] = _text(scheme)
                if scheme.lower() == b"basic":
                    try:
                        decoded = base64.b64decode(credentials.strip(), validate=True)
                    except (binascii.Error, ValueError):
                        decoded = None
                    if decoded is not None:
                        row["user_name"] = _text(decoded.partition(b":")[0])
                elif found := _DIGEST_USER.search(credentials):
                    row["user_name"] = _text(found[1])
            events: list[Event] = []
            key = (direction, cseq)
            if key in self.pending or len(self.pending) >= MAXIMUM_PENDING:
                old, _ = self.pending.pop(key) if key in self.pending else self.pending.pop(next(iter(self.pending)))
                old["matched"] = False
                events.append(Event(PROTOCOL, "unanswered", old))
            self.pending[key] = (row, timestamp)
            return events
        status = _RESPONSE.fullmatch(start)
        if status is None:
            code = "bad_request_line" if direction == Direction.TO_SERVER else "bad_status_line"
            return [anomaly(PROTOCOL, code, f"{start[:60]!r}")]
        other = Direction.TO_CLIENT if direction == Direction.TO_SERVER else Direction.TO_SERVER
        request = self.pending.pop((other, cseq), None)
        if request is None:
            row = {
                "version": _text(status[1]),
                "cseq": cseq,
                "matched": False,
                "from_server": other == Direction.TO_CLIENT,
            }
        else:
            row, sent = request
            row["matched"] = True
            row["latency"] = max(0.0, timestamp - sent)
        row.update(status_code=int(status[2]), reason=_text(status[3] or b""), response_body_length=length)
        for name, column in _RESPONSE_HEADERS:
            if name in headers:
                row[column] = _text(headers[name])
        row.setdefault("interleaved_frames", stream.interleaved)
        return [Event(PROTOCOL, str(row.get("method") or "response").lower(), row)]

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.streams[direction] = _Stream()
        return []

    def close(self) -> list[Event]:
        events = []
        for row, _ in self.pending.values():
            row["matched"] = False
            events.append(Event(PROTOCOL, "unanswered", row))
        self.pending.clear()
        for direction, stream in self.streams.items():
            if stream.buffer and not stream.skip:
                events.append(
                    anomaly(PROTOCOL, "truncated_message", f"{direction.name}: {len(stream.buffer)} bytes left")
                )
        return events


def probe_payload(payload: bytes, direction: Direction) -> bool:
    line = payload.split(b"\r\n", 1)[0]
    if direction == Direction.TO_SERVER:
        return _REQUEST.fullmatch(line) is not None
    return line.startswith(b"RTSP/") and _RESPONSE.fullmatch(line) is not None


class RtspDecoder(Decoder):
    """RTSP, found by an RTSP request line or status line."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({554, 8554})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return probe_payload(payload, direction)

    def session(self) -> Session:
        return RtspSession()

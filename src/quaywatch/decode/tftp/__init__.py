"""TFTP (RFC 1350, options RFC 2347-2349, 7440) over UDP 69 and the transfer ports that follow.

PLCs, VoIP phones, switches and crane drives fetch firmware and configuration over TFTP, without any
authentication: a WRQ to a controller is a firmware or configuration push.

Table ``tftp``: one row per request (RRQ/WRQ: file name, mode, options), per ERROR (code and message) and per
OACK (options); DATA and ACK packets are counted, not logged one by one: a ``transfer`` row at the end of each
flow gives the DATA and ACK counts, data octets, the last block number and whether the final (short) block was
seen. The request goes to port 69 and the transfer runs on a new server port (RFC 1350 section 4), so the
request and its transfer are two flows sharing the client's address and port.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "tftp"
OPCODES = {1: "read", 2: "write", 3: "data", 4: "ack", 5: "error", 6: "oack"}
MODES = frozenset({"netascii", "octet", "mail"})
ERRORS = {
    0: "Not defined", 1: "File not found", 2: "Access violation", 3: "Disk full or allocation exceeded",
    4: "Illegal TFTP operation", 5: "Unknown transfer ID", 6: "File already exists", 7: "No such user",
    8: "Option negotiation refused",
}  # fmt: skip
#: Options kept per request, octets of a string kept.
MAXIMUM_OPTIONS = 32
MAXIMUM_TEXT = 512
DEFAULT_BLOCK = 512


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("opcode_code", pa.int16(), "TFTP opcode (1-6); null on transfer rows"),
        _field("opcode", pa.string(), "read (RRQ), write (WRQ), error, oack; transfer for the end-of-flow summary"),
        _field("file_name", pa.string(), "RRQ/WRQ: file name as received (backslash-escaped)"),
        _field("mode", pa.string(), "RRQ/WRQ: transfer mode as received (netascii, octet, mail)"),
        _field("options", pa.list_(pa.string()), "RRQ/WRQ/OACK options as name=value (blksize, tsize, timeout ...)"),
        _field("error_code", pa.int16(), "ERROR: error code"),
        _field("error_name", pa.string(), "ERROR: RFC 1350 name of the code (File not found, Access violation ...)"),
        _field("error_message", pa.string(), "ERROR: message as received"),
        _field("data_packets", pa.int64(), "transfer: DATA packets in the flow"),
        _field("ack_packets", pa.int64(), "transfer: ACK packets in the flow"),
        _field("data_bytes", pa.int64(), "transfer: octets carried by DATA packets"),
        _field("last_block", pa.int32(), "transfer: highest DATA block number seen (16-bit, may wrap)"),
        _field("complete", pa.bool_(), "transfer: a DATA block shorter than the block size ended the transfer"),
        _field("malformed", pa.string(), "why the packet contradicts RFC 1350 (also anomaly rows)"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _text(data: bytes) -> str:
    return data[:MAXIMUM_TEXT].decode("utf-8", "backslashreplace")


def _strings(data: bytes) -> tuple[list[bytes], bool]:
    """NUL-terminated strings of ``data`` and whether the last one was terminated."""
    parts = data.split(b"\0")
    return parts[:-1] if data.endswith(b"\0") else parts, data.endswith(b"\0")


class TftpSession(Session):
    """One TFTP flow: requests, errors and option acks as rows; DATA and ACK counted."""

    def __init__(self) -> None:
        self.data_packets = 0
        self.ack_packets = 0
        self.data_bytes = 0
        self.last_block: int | None = None
        self.block_size = DEFAULT_BLOCK
        self.complete = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if len(data) < 2:
            return [anomaly(PROTOCOL, "truncated_packet", f"{direction.name}: {len(data)}-octet datagram")]
        code = int.from_bytes(data[:2], "big")
        if code not in OPCODES:
            return [anomaly(PROTOCOL, "unknown_opcode", f"{direction.name}: opcode {code}")]
        if code in (3, 4):
            if len(data) < 4:
                return [
                    anomaly(PROTOCOL, "truncated_packet", f"{direction.name}: {OPCODES[code]} of {len(data)} octets")
                ]
            block = int.from_bytes(data[2:4], "big")
            if code == 4:
                self.ack_packets += 1
                return []
            self.data_packets += 1
            self.data_bytes += len(data) - 4
            self.last_block = block if self.last_block is None else max(self.last_block, block)
            if len(data) - 4 < self.block_size:
                self.complete = True
            return []
        row: dict[str, object] = {"opcode_code": code, "opcode": OPCODES[code]}
        problem: str | None = None
        if code in (1, 2, 6):
            strings, terminated = _strings(data[2:])
            if not terminated:
                problem = "strings not NUL-terminated"
            if code != 6:
                if len(strings) < 2:
                    problem = "request without file name and mode"
                row["file_name"] = _text(strings[0]) if strings else None
                row["mode"] = _text(strings[1]) if len(strings) > 1 else None
                if problem is None and str(row["mode"]).lower() not in MODES:
                    problem = f"unknown mode {row['mode']!r}"
                if problem is None and not strings[0]:
                    problem = "empty file name"
                strings = strings[2:]
            if len(strings) % 2 and problem is None:
                problem = "option without a value"
            options = [f"{_text(n)}={_text(v)}" for n, v in zip(strings[::2], strings[1::2], strict=False)]
            row["options"] = options[:MAXIMUM_OPTIONS]
            for name, value in zip(strings[::2], strings[1::2], strict=False):
                if name.lower() == b"blksize" and value.isdigit() and 8 <= int(value) <= 65464:
                    self.block_size = int(value)
        else:
            if len(data) < 4:
                problem = "error without code"
            else:
                error = int.from_bytes(data[2:4], "big")
                row["error_code"], row["error_name"] = error, ERRORS.get(error)
                strings, terminated = _strings(data[4:])
                row["error_message"] = _text(strings[0]) if strings else ""
                if not terminated:
                    problem = "error message not NUL-terminated"
        events = [Event(PROTOCOL, str(row["opcode"]), row)]
        if problem:
            row["malformed"] = problem
            events.append(anomaly(PROTOCOL, "malformed_packet", f"{direction.name}: {OPCODES[code]}: {problem}"))
        return events

    def close(self) -> list[Event]:
        if not self.data_packets and not self.ack_packets:
            return []
        row: dict[str, object] = {
            "opcode": "transfer",
            "data_packets": self.data_packets,
            "ack_packets": self.ack_packets,
            "data_bytes": self.data_bytes,
            "last_block": self.last_block,
            "complete": self.complete,
        }
        return [Event(PROTOCOL, "transfer", row)]


def probe_payload(payload: bytes, server_port: int) -> bool:
    """A well-formed request (any port; a request with an unusual mode on port 69), or the first transfer packet."""
    if len(payload) < 4 or payload[0] != 0:
        return False
    code = payload[1]
    if code in (1, 2):
        strings, terminated = _strings(payload[2:])
        if not terminated or len(strings) < 2 or len(payload) > 1024:
            return False
        return server_port == 69 or (bool(strings[0]) and strings[1].lower().decode("latin-1") in MODES)
    block = int.from_bytes(payload[2:4], "big")
    if code == 3:
        return block == 1 and len(payload) <= 4 + 65464
    if code == 4:
        return len(payload) == 4 and block in (0, 1)
    if code in (5, 6):
        return payload.endswith(b"\0") and len(payload) <= 1024 and (code == 6 or block <= 8)
    return False


class TftpDecoder(Decoder):
    """TFTP, found by a well-formed request, or the first DATA/ACK/OACK/ERROR of a transfer."""

    name = PROTOCOL
    transport = "udp"
    ports = frozenset({69})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return probe_payload(payload, server_port)

    def session(self) -> Session:
        return TftpSession()

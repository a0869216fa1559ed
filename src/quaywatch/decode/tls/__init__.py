"""TLS 1.0-1.3 and SSL 3.0 over TCP: record layer, handshake reassembly, fingerprints, certificates.

RFC 8446 (TLS 1.3) section 5.1 and RFC 5246 (TLS 1.2) section 6.2.1: records are ``type(1) version(2) length(2)``
followed by at most 2^14 bytes (2^14 + 2048 once encrypted). Handshake messages (``type(1) length(3) body``) may span
records and several may share one; both are reassembled per direction. Once a direction has sent ChangeCipherSpec
(or, in TLS 1.3, after the ServerHello) its handshake records are encrypted and are only counted.

Rows in ``tls``: one per ClientHello, ServerHello, alert, the first ChangeCipherSpec and the first application-data
record of each direction, and one ``summary`` row when the flow ends with the number and size of the application-data
records of each direction (not a row per record). A TLS <= 1.2 Certificate message gives one ``tls_certificate`` row
per certificate of the chain. An SSL 2.0-compatible ClientHello (RFC 6101 appendix E.2, RFC 5246 appendix E.2) is
reported as a ``client_hello`` with ``sslv2_format`` set.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.tls import fingerprints as fp
from quaywatch.decode.tls.certificates import CERTIFICATE_SCHEMA, certificate_rows

PROTOCOL = "tls"
CERTIFICATE_TABLE = "tls_certificate"
MAX_RECORD = (1 << 14) + 2048  # RFC 8446 section 5.2: the largest (encrypted) record
MAX_HANDSHAKE = 1 << 20  # larger handshake messages are treated as corrupt (certificate chains are far smaller)

CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data", 24: "heartbeat"}
HANDSHAKE_TYPES = {
    0: "hello_request",
    1: "client_hello",
    2: "server_hello",
    4: "new_session_ticket",
    5: "end_of_early_data",
    8: "encrypted_extensions",
    11: "certificate",
    12: "server_key_exchange",
    13: "certificate_request",
    14: "server_hello_done",
    15: "certificate_verify",
    16: "client_key_exchange",
    20: "finished",
    22: "certificate_status",
    24: "key_update",
}
VERSION_NAMES = {
    0x0002: "SSL 2.0",
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}
#: RFC 8446 section 6 and the IANA TLS Alerts registry.
ALERT_DESCRIPTIONS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}
EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43


@cache
def cipher_suite_names() -> dict[int, str]:
    """IANA cipher-suite code -> name (``quaywatch/data/tls_cipher_suites.csv``)."""
    text = resources.files("quaywatch.data").joinpath("tls_cipher_suites.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {int(row["code"], 16): row["name"] for row in rows}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


_INTS = pa.list_(pa.int32())
SCHEMA = pa.schema(
    [
        _field("content_type", pa.int16(), "record type: 20 ChangeCipherSpec, 21 alert, 22 handshake, 23 app data"),
        _field("record_version", pa.int32(), "record-layer version field (0x0301 = 769 ...); 2 for an SSLv2 hello"),
        _field("record_length", pa.int32(), "record length (of the first record carrying the message)"),
        _field("handshake_type", pa.int16(), "handshake message type (1 ClientHello, 2 ServerHello)"),
        _field("handshake_length", pa.int32(), "handshake message body length"),
        _field("sslv2_format", pa.bool_(), "ClientHello in the SSL 2.0-compatible record format"),
        _field("legacy_version", pa.int32(), "Hello: client_version / legacy_version field"),
        _field("supported_versions", _INTS, "Hello: supported_versions extension (43) as sent, GREASE included"),
        _field("version", pa.int32(), "ServerHello: negotiated version (selected supported_version, else legacy)"),
        _field("version_name", pa.string(), "its name: SSL 3.0, TLS 1.0 ... TLS 1.3"),
        _field("session_id_length", pa.int16(), "Hello: session id length"),
        _field("session_id", pa.binary(), "Hello: session id"),
        _field("cipher_suites", _INTS, "ClientHello: offered cipher suites in order (SSLv2 format: 3-byte specs)"),
        _field("cipher_suite", pa.int32(), "ServerHello: chosen cipher suite"),
        _field("cipher_suite_name", pa.string(), "its IANA name (data/tls_cipher_suites.csv); NULL if unassigned"),
        _field("compression_methods", _INTS, "Hello: compression methods (ServerHello: the chosen one)"),
        _field("extensions", _INTS, "Hello: extension types in order"),
        _field("server_name", pa.string(), "ClientHello: SNI host_name as received (backslash-escaped)"),
        _field("alpn", pa.list_(pa.string()), "Hello: ALPN protocol names as received (ServerHello: the chosen one)"),
        _field("supported_groups", _INTS, "ClientHello: supported_groups extension (10)"),
        _field("ec_point_formats", _INTS, "Hello: ec_point_formats extension (11)"),
        _field("signature_algorithms", _INTS, "ClientHello: signature_algorithms extension (13)"),
        _field("ja3", pa.string(), "ClientHello: JA3 string (Salesforce), GREASE removed"),
        _field("ja3_md5", pa.string(), "ClientHello: MD5 of the JA3 string"),
        _field("ja3s", pa.string(), "ServerHello: JA3S string"),
        _field("ja3s_md5", pa.string(), "ServerHello: MD5 of the JA3S string"),
        _field("ja4", pa.string(), "ClientHello: JA4 fingerprint (FoxIO), e.g. t13d1516h2_8daaf6152771_e5627efa2ab1"),
        _field("ja4_r", pa.string(), "ClientHello: JA4 raw form (sorted lists before hashing)"),
        _field("ja4s", pa.string(), "ServerHello: JA4S fingerprint"),
        _field("ja4s_r", pa.string(), "ServerHello: JA4S raw form"),
        _field("certificates", pa.int16(), "Certificate: number of certificates in the chain"),
        _field("alert_level", pa.int16(), "alert: 1 warning, 2 fatal (NULL if encrypted)"),
        _field("alert_description", pa.int16(), "alert: description code"),
        _field("alert_name", pa.string(), "alert: description name (close_notify, handshake_failure ...)"),
        _field("encrypted", pa.bool_(), "the record was sent after the direction's ChangeCipherSpec (contents hidden)"),
        _field("data_records_to_server", pa.int64(), "summary: application-data records client -> server"),
        _field("data_bytes_to_server", pa.int64(), "summary: their total record length"),
        _field("data_records_to_client", pa.int64(), "summary: application-data records server -> client"),
        _field("data_bytes_to_client", pa.int64(), "summary: their total record length"),
        _field("encrypted_handshake_records", pa.int64(), "summary: encrypted handshake records, both directions"),
    ]
)
TABLES = {PROTOCOL: SCHEMA, CERTIFICATE_TABLE: CERTIFICATE_SCHEMA, remote_access.TABLE: remote_access.SCHEMA}

#: AnyDesk's self-signed certificates (client and server) carry this subject, which the Emerging Threats Open
#: ruleset's AnyDesk policy rules match (tls.cert_subject); its relays are named under net.anydesk.com.
ANYDESK_SUBJECT = "CN=AnyDesk Client"
ANYDESK_DOMAIN = ".anydesk.com"


class Malformed(ValueError):
    pass


class _Reader:
    """Bounds-checked big-endian reads over one message."""

    __slots__ = ("data", "end", "position")

    def __init__(self, data: bytes, position: int = 0, end: int | None = None) -> None:
        self.data, self.position, self.end = data, position, len(data) if end is None else end

    def take(self, size: int, what: str) -> bytes:
        if self.position + size > self.end:
            raise Malformed(f"{what} at offset {self.position} runs past the end ({size} bytes, {self.left()} left)")
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def integer(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str) -> _Reader:
        length = self.integer(length_size, f"{what} length")
        start = self.position
        self.take(length, what)
        return _Reader(self.data, start, start + length)

    def left(self) -> int:
        return self.end - self.position

    def take_all(self) -> bytes:
        return self.take(self.left(), "value")

    def integers(self, size: int, what: str) -> list[int]:
        if self.left() % size:
            raise Malformed(f"{what}: {self.left()} bytes is not a multiple of {size}")
        return [self.integer(size, what) for _ in range(self.left() // size)]


def _hello_extensions(reader: _Reader, row: dict[str, object], client: bool) -> list[Event]:
    """Parse the extensions block of a hello into ``row``; returns anomalies for bad extension bodies."""
    events: list[Event] = []
    types: list[int] = []
    row["extensions"] = types
    if not reader.left():
        return events
    block = reader.vector(2, "extensions")
    while block.left():
        kind = block.integer(2, "extension type")
        body = block.vector(2, f"extension {kind}")
        types.append(kind)
        try:
            _extension(kind, body, row, client)
        except Malformed as error:
            events.append(anomaly(PROTOCOL, "bad_extension", f"extension {kind}: {error}"))
    if reader.left():
        events.append(anomaly(PROTOCOL, "trailing_bytes", f"{reader.left()} bytes after the hello extensions"))
    return events


def _extension(kind: int, body: _Reader, row: dict[str, object], client: bool) -> None:
    if kind == EXT_SERVER_NAME and client and body.left():
        names = body.vector(2, "server_name_list")
        while names.left():
            name_type = names.integer(1, "name type")
            name = names.vector(2, "host name").take_all()
            if name_type == 0 and "server_name" not in row:
                row["server_name"] = name.decode("utf-8", "backslashreplace")
    elif kind == EXT_SUPPORTED_GROUPS and client:
        row["supported_groups"] = body.vector(2, "named_group_list").integers(2, "supported_groups")
    elif kind == EXT_EC_POINT_FORMATS:
        row["ec_point_formats"] = body.vector(1, "ec_point_format_list").integers(1, "ec_point_formats")
    elif kind == EXT_SIGNATURE_ALGORITHMS and client:
        row["signature_algorithms"] = body.vector(2, "supported_signature_algorithms").integers(2, "signatures")
    elif kind == EXT_ALPN:
        names_list = body.vector(2, "protocol_name_list")
        protocols: list[bytes] = []
        while names_list.left():
            protocols.append(names_list.vector(1, "protocol name").take_all())
        row["_alpn_raw"] = protocols
        row["alpn"] = [p.decode("utf-8", "backslashreplace") for p in protocols]
    elif kind == EXT_SUPPORTED_VERSIONS:
        if client:
            row["supported_versions"] = body.vector(1, "versions").integers(2, "supported_versions")
        else:
            row["supported_versions"] = [body.integer(2, "selected_version")]


def parse_client_hello(body: bytes) -> tuple[dict[str, object], list[Event]]:
    reader = _Reader(body)
    row: dict[str, object] = {"legacy_version": reader.integer(2, "client_version")}
    reader.take(32, "random")
    session = reader.vector(1, "session_id").take_all()
    row["session_id_length"], row["session_id"] = len(session), session
    row["cipher_suites"] = reader.vector(2, "cipher_suites").integers(2, "cipher_suites")
    row["compression_methods"] = reader.vector(1, "compression_methods").integers(1, "compression_methods")
    events = _hello_extensions(reader, row, client=True)
    legacy = int(row["legacy_version"])  # type: ignore[call-overload]
    extensions: list[int] = row["extensions"]  # type: ignore[assignment]
    ciphers: list[int] = row["cipher_suites"]  # type: ignore[assignment]
    row["ja3"], row["ja3_md5"] = fp.ja3(
        legacy,
        ciphers,
        extensions,
        row.get("supported_groups") or [],  # type: ignore[arg-type]
        row.get("ec_point_formats") or [],  # type: ignore[arg-type]
    )
    alpn_raw: list[bytes] = row.pop("_alpn_raw", None) or []  # type: ignore[assignment]
    row["ja4"], row["ja4_r"] = fp.ja4(
        legacy,
        row.get("supported_versions") or [],  # type: ignore[arg-type]
        fp.SNI in extensions,
        ciphers,
        extensions,
        alpn_raw[0] if alpn_raw else None,
        row.get("signature_algorithms") or [],  # type: ignore[arg-type]
    )
    return row, events


def parse_server_hello(body: bytes) -> tuple[dict[str, object], list[Event]]:
    reader = _Reader(body)
    legacy = reader.integer(2, "server_version")
    row: dict[str, object] = {"legacy_version": legacy}
    reader.take(32, "random")
    session = reader.vector(1, "session_id").take_all()
    row["session_id_length"], row["session_id"] = len(session), session
    cipher = reader.integer(2, "cipher_suite")
    row["cipher_suite"] = cipher
    row["cipher_suite_name"] = cipher_suite_names().get(cipher)
    row["compression_methods"] = [reader.integer(1, "compression_method")]
    events = _hello_extensions(reader, row, client=False)
    selected: list[int] = row.get("supported_versions") or []  # type: ignore[assignment]
    version = selected[0] if selected else legacy
    row["version"], row["version_name"] = version, VERSION_NAMES.get(version)
    extensions: list[int] = row["extensions"]  # type: ignore[assignment]
    row["ja3s"], row["ja3s_md5"] = fp.ja3s(legacy, cipher, extensions)
    alpn_raw: list[bytes] = row.pop("_alpn_raw", None) or []  # type: ignore[assignment]
    row["ja4s"], row["ja4s_r"] = fp.ja4s(
        legacy, selected[0] if selected else None, cipher, extensions, alpn_raw[0] if alpn_raw else None
    )
    return row, events


def parse_sslv2_client_hello(message: bytes) -> dict[str, object]:
    """SSL 2.0 CLIENT-HELLO body after the 2-byte record header (RFC 5246 appendix E.2)."""
    reader = _Reader(message)
    if reader.integer(1, "msg_type") != 1:
        raise Malformed("SSLv2 record is not a CLIENT-HELLO")
    version = reader.integer(2, "version")
    spec_length = reader.integer(2, "cipher_spec_length")
    session_length = reader.integer(2, "session_id_length")
    challenge_length = reader.integer(2, "challenge_length")
    if spec_length % 3:
        raise Malformed(f"cipher_spec_length {spec_length} is not a multiple of 3")
    specs = [reader.integer(3, "cipher spec") for _ in range(spec_length // 3)]
    session = reader.take(session_length, "session_id")
    reader.take(challenge_length, "challenge")
    return {
        "sslv2_format": True,
        "legacy_version": version,
        "cipher_suites": specs,
        "session_id_length": session_length,
        "session_id": session,
    }


def _sslv2_header(data: bytes | bytearray) -> int | None:
    """Length of an SSLv2 two-byte-header CLIENT-HELLO starting ``data``, or None."""
    if len(data) < 5 or not data[0] & 0x80 or data[2] != 1:
        return None
    version = (data[3] << 8) | data[4]
    if version not in (0x0002, 0x0300, 0x0301, 0x0302, 0x0303):
        return None
    length = ((data[0] & 0x7F) << 8) | data[1]
    return length if length >= 9 else None


def _plausible_record(data: bytes | bytearray, position: int = 0) -> bool:
    if len(data) < position + 5:
        return False
    kind, major, minor = data[position], data[position + 1], data[position + 2]
    length = (data[position + 3] << 8) | data[position + 4]
    return kind in CONTENT_TYPES and major == 3 and minor <= 4 and length <= MAX_RECORD


class _Side:
    __slots__ = (
        "buffer",
        "ccs",
        "data_bytes",
        "data_records",
        "dead",
        "encrypted",
        "handshake",
        "seen_data",
        "started",
    )

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.handshake = bytearray()  # handshake bytes not yet forming a whole message
        self.ccs = False
        self.encrypted = False
        self.seen_data = False
        self.started = False
        self.dead = False
        self.data_records = 0
        self.data_bytes = 0


class TlsSession(Session):
    """One TLS connection: record framing and handshake reassembly per direction."""

    def __init__(self) -> None:
        self.sides = {Direction.TO_SERVER: _Side(), Direction.TO_CLIENT: _Side()}
        self.encrypted_handshakes = 0
        self.tls13 = False
        self.remote_access_reported = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        side = self.sides[direction]
        if side.dead:
            return []
        side.buffer += data
        events: list[Event] = []
        buffer = side.buffer
        while True:
            if not side.started:
                sslv2 = _sslv2_header(buffer) if direction == Direction.TO_SERVER else None
                if sslv2 is not None:
                    if len(buffer) < 2 + sslv2:
                        break
                    message = bytes(buffer[2 : 2 + sslv2])
                    del buffer[: 2 + sslv2]
                    side.started = True
                    try:
                        row = parse_sslv2_client_hello(message)
                        row.update(content_type=22, record_version=2, record_length=sslv2, handshake_type=1)
                        events.append(Event(PROTOCOL, "client_hello", row))
                    except Malformed as error:
                        events.append(anomaly(PROTOCOL, "bad_sslv2_hello", f"{direction.name}: {error}"))
                    continue
            if len(buffer) < 5:
                break
            if not _plausible_record(buffer):
                events.append(
                    anomaly(
                        PROTOCOL,
                        "bad_record_header",
                        f"{direction.name}: bytes {bytes(buffer[:5]).hex()} are not a TLS record header; "
                        "rest of this direction ignored",
                    )
                )
                buffer.clear()
                side.dead = True
                break
            length = (buffer[3] << 8) | buffer[4]
            if len(buffer) < 5 + length:
                break
            kind, version = buffer[0], (buffer[1] << 8) | buffer[2]
            fragment = bytes(buffer[5 : 5 + length])
            del buffer[: 5 + length]
            side.started = True
            events += self._record(side, direction, kind, version, fragment)
        return events

    def _record(self, side: _Side, direction: Direction, kind: int, version: int, fragment: bytes) -> list[Event]:
        head: dict[str, object] = {"content_type": kind, "record_version": version, "record_length": len(fragment)}
        if kind == 22:
            if side.encrypted:
                self.encrypted_handshakes += 1
                return []
            return self._handshake(side, direction, fragment, head)
        if kind == 20:
            side.encrypted = True
            if side.ccs:
                return []
            side.ccs = True
            return [Event(PROTOCOL, "change_cipher_spec", head)]
        if kind == 21:
            row = dict(head)
            if side.encrypted or len(fragment) != 2:
                row["encrypted"] = True
            else:
                row.update(
                    alert_level=fragment[0],
                    alert_description=fragment[1],
                    alert_name=ALERT_DESCRIPTIONS.get(fragment[1]),
                    encrypted=False,
                )
            return [Event(PROTOCOL, "alert", row)]
        if kind == 23:
            side.data_records += 1
            side.data_bytes += len(fragment)
            if side.seen_data:
                return []
            side.seen_data = True
            return [Event(PROTOCOL, "application_data", {**head, "encrypted": True})]
        return []  # heartbeat: counted nowhere, no row

    def _handshake(self, side: _Side, direction: Direction, fragment: bytes, head: dict[str, object]) -> list[Event]:
        side.handshake += fragment
        events: list[Event] = []
        pending = side.handshake
        while len(pending) >= 4:
            kind = pending[0]
            length = int.from_bytes(pending[1:4], "big")
            if length > MAX_HANDSHAKE:
                events.append(
                    anomaly(PROTOCOL, "bad_handshake_length", f"{direction.name}: {length}-byte handshake message")
                )
                pending.clear()
                break
            if len(pending) < 4 + length:
                break
            body = bytes(pending[4 : 4 + length])
            del pending[: 4 + length]
            events += self._message(side, direction, kind, body, head)
        return events

    def _message(
        self, side: _Side, direction: Direction, kind: int, body: bytes, head: dict[str, object]
    ) -> list[Event]:
        name = HANDSHAKE_TYPES.get(kind, f"handshake_{kind}")
        try:
            if kind == 1:
                row, events = parse_client_hello(body)
            elif kind == 2:
                row, events = parse_server_hello(body)
                if row.get("version") == 0x0304:
                    self.tls13 = True
                    side.encrypted = True  # RFC 8446 section 2: everything after ServerHello is protected
            elif kind == 11 and not self.tls13:
                certificates, events = certificate_rows(body)
                table_rows = [Event(CERTIFICATE_TABLE, "certificate", c) for c in certificates]
                row = {**head, "handshake_type": kind, "handshake_length": len(body), "certificates": len(certificates)}
                subject = str(certificates[0].get("subject") or "") if certificates else ""
                if ANYDESK_SUBJECT in subject.split(","):
                    events = [*self._remote_access(f"certificate subject {subject}"), *events]
                return [Event(PROTOCOL, name, row), *table_rows, *events]
            else:
                return []
        except Malformed as error:
            return [anomaly(PROTOCOL, f"bad_{name}", f"{direction.name}: {error}")]
        row.update(head, handshake_type=kind, handshake_length=len(body), sslv2_format=False)
        server_name = str(row.get("server_name") or "").lower()
        if kind == 1 and (server_name == "anydesk.com" or server_name.endswith(ANYDESK_DOMAIN)):
            events = [*self._remote_access(f"SNI {row['server_name']}"), *events]
        return [Event(PROTOCOL, name, row), *events]

    def _remote_access(self, evidence: str) -> list[Event]:
        """AnyDesk runs its sessions over TLS: its certificates and its relays' names give it away."""
        if self.remote_access_reported:
            return []
        self.remote_access_reported = True
        return [remote_access.remote_access("anydesk", evidence, version="AnyDesk")]

    def gap(self, direction: Direction, length: int) -> list[Event]:
        side = self.sides[direction]
        side.buffer.clear()
        side.handshake.clear()
        side.dead = True  # record boundaries are lost; TLS has no resynchronisation marker
        return []

    def close(self) -> list[Event]:
        events: list[Event] = []
        for direction, side in self.sides.items():
            if side.buffer and not side.dead:
                events.append(anomaly(PROTOCOL, "truncated_record", f"{direction.name}: {len(side.buffer)} bytes left"))
            if side.handshake:
                events.append(
                    anomaly(PROTOCOL, "truncated_handshake", f"{direction.name}: {len(side.handshake)} bytes left")
                )
            side.buffer.clear()
            side.handshake.clear()
        client, server = self.sides[Direction.TO_SERVER], self.sides[Direction.TO_CLIENT]
        if client.data_records or server.data_records or self.encrypted_handshakes:
            events.append(
                Event(
                    PROTOCOL,
                    "summary",
                    {
                        "data_records_to_server": client.data_records,
                        "data_bytes_to_server": client.data_bytes,
                        "data_records_to_client": server.data_records,
                        "data_bytes_to_client": server.data_bytes,
                        "encrypted_handshake_records": self.encrypted_handshakes,
                    },
                )
            )
        return events


def _hello_start(payload: bytes) -> bool:
    """A handshake record (type 22, version 0x0300-0x0304) whose first message is a ClientHello or ServerHello."""
    if len(payload) < 6 or payload[0] != 22 or payload[1] != 3 or payload[2] > 4:
        return False
    length = (payload[3] << 8) | payload[4]
    if not 4 <= length <= MAX_RECORD or payload[5] not in (1, 2):
        return False
    if len(payload) >= 9:
        message = int.from_bytes(payload[6:9], "big")
        if message < 38:  # version + random + session id length at least
            return False
    return len(payload) < 11 or payload[9] == 3  # the hello's own version is 3.x too


class TlsDecoder(Decoder):
    name: ClassVar[str] = PROTOCOL
    transport = "tcp"
    ports: ClassVar[frozenset[int]] = frozenset({443, 8443, 465, 636, 993, 995, 853, 3389, 5061, 8883, 4840, 4843})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        if _hello_start(payload):
            return True
        if direction != Direction.TO_SERVER:
            return False
        length = _sslv2_header(payload)
        return length is not None and length >= 9 and len(payload) >= 11 and ((payload[5] << 8) | payload[6]) % 3 == 0

    def session(self) -> Session:
        return TlsSession()

"""SSH transport layer up to NEWKEYS (RFC 4253): identification banners, KEXINIT name-lists and HASSH.

One ``ssh`` row per event: ``banner`` (each side's identification string, section 4.2), ``kexinit`` (each side's
SSH_MSG_KEXINIT, section 7.1, with its name-lists and its HASSH fingerprint), ``negotiated`` (once both KEXINITs
are seen: the algorithms chosen by the rule of section 7.1, the first client algorithm the server also supports)
and ``newkeys`` (SSH_MSG_NEWKEYS, section 7.3). After a side's NEWKEYS its stream is encrypted: nothing more of
that direction is parsed or counted.

HASSH (Salesforce, https://github.com/salesforce/hassh): ``hassh`` is the MD5 hex digest of the client KEXINIT's
``kex_algorithms;encryption_algorithms_client_to_server;mac_algorithms_client_to_server;
compression_algorithms_client_to_server`` (each name-list as sent, comma-separated). ``hasshServer`` is the MD5 of the
server KEXINIT's ``kex_algorithms;encryption_algorithms_server_to_client;mac_algorithms_server_to_client;
compression_algorithms_server_to_client``: the lists the server offers for what it sends (the reference
implementation ``hassh.py`` and Suricata's ``ssh.server.hassh`` use the server-to-client lists; for most servers both
directions are identical). ``hassh_algorithms`` keeps the string that was hashed.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "ssh"
#: RFC 4253 section 4.2: the identification string is at most 255 characters including CR LF.
MAXIMUM_BANNER = 255
#: Longest identification line accepted at all (longer than MAXIMUM_BANNER is flagged but still read).
MAXIMUM_LINE = 8192
#: Lines a server may send before its identification string (section 4.2) that we wait through.
MAXIMUM_PRE_BANNER = 8192
#: RFC 4253 section 6.1: implementations must handle packets of 35000 bytes; larger is treated as corrupt framing.
MAXIMUM_PACKET = 256 * 1024
KEXINIT, NEWKEYS = 20, 21
NAME_LISTS = (
    "kex_algorithms",
    "server_host_key_algorithms",
    "encryption_client_to_server",
    "encryption_server_to_client",
    "mac_client_to_server",
    "mac_server_to_client",
    "compression_client_to_server",
    "compression_server_to_client",
    "languages_client_to_server",
    "languages_server_to_client",
)


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


_LIST = pa.list_(pa.string())
SCHEMA = pa.schema(
    [
        _field("banner", pa.string(), "banner: the identification line as received, without CR LF"),
        _field("proto_version", pa.string(), "banner: protocol version (2.0, 1.99, 1.5 ...)"),
        _field("software_version", pa.string(), "banner: software version (up to the first space)"),
        _field("comments", pa.string(), "banner: comments after the first space"),
        _field("pre_banner_bytes", pa.int32(), "banner: bytes of other lines the server sent before its banner"),
        _field("message_code", pa.int16(), "kexinit/newkeys: SSH message number (20, 21)"),
        _field("packet_length", pa.int64(), "kexinit/newkeys: packet_length field of the binary packet"),
        *[_field(name, _LIST, f"kexinit: name-list {name}, as sent") for name in NAME_LISTS],
        _field("first_kex_packet_follows", pa.bool_(), "kexinit: a guessed key-exchange packet follows"),
        _field("hassh", pa.string(), "kexinit: HASSH (client) or HASSHServer (server) MD5 hex digest"),
        _field("hassh_algorithms", pa.string(), "kexinit: the 'kex;enc;mac;cmp' string that was hashed"),
        _field("kex_alg", pa.string(), "negotiated: key-exchange algorithm"),
        _field("host_key_alg", pa.string(), "negotiated: server host key algorithm"),
        _field("cipher_alg", pa.string(), "negotiated: cipher client to server"),
        _field("cipher_alg_server", pa.string(), "negotiated: cipher server to client"),
        _field("mac_alg", pa.string(), "negotiated: MAC client to server (chosen even for AEAD ciphers)"),
        _field("mac_alg_server", pa.string(), "negotiated: MAC server to client"),
        _field("compression_alg", pa.string(), "negotiated: compression client to server"),
        _field("compression_alg_server", pa.string(), "negotiated: compression server to client"),
    ]
)
TABLES = {PROTOCOL: SCHEMA}


class Malformed(ValueError):
    pass


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def parse_banner(line: bytes) -> dict[str, object]:
    """Fields of 'SSH-protoversion-softwareversion SP comments' (RFC 4253 section 4.2), as received."""
    row: dict[str, object] = {"banner": _text(line)}
    rest = line[4:]
    version, dash, software = rest.partition(b"-")
    row["proto_version"] = _text(version)
    if dash:
        software, space, comments = software.partition(b" ")
        row["software_version"] = _text(software)
        if space:
            row["comments"] = _text(comments)
    return row


def _name_lists(payload: bytes) -> tuple[list[list[str]], bool]:
    position = 17  # message code and the 16-byte cookie
    lists = []
    for _ in NAME_LISTS:
        if position + 4 > len(payload):
            raise Malformed(f"name-list length at offset {position} beyond the packet")
        length = int.from_bytes(payload[position : position + 4], "big")
        end = position + 4 + length
        if end > len(payload):
            raise Malformed(f"name-list of {length} bytes at offset {position} beyond the packet")
        raw = payload[position + 4 : end]
        lists.append([_text(name) for name in raw.split(b",")] if raw else [])
        position = end
    if position >= len(payload):
        raise Malformed("first_kex_packet_follows beyond the packet")
    return lists, bool(payload[position])


def hassh(kexinit: dict[str, object], client: bool) -> tuple[str, str]:
    """(digest, hashed string) of a parsed KEXINIT, as defined in the module docstring."""
    way = "client_to_server" if client else "server_to_client"
    parts = [kexinit["kex_algorithms"], kexinit[f"encryption_{way}"], kexinit[f"mac_{way}"]]
    parts.append(kexinit[f"compression_{way}"])
    text = ";".join(",".join(part) for part in parts)  # type: ignore[arg-type]
    return hashlib.md5(text.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest(), text


def _choose(client: list[str], server: list[str]) -> str | None:
    """RFC 4253 section 7.1: the first algorithm on the client's list that is also on the server's."""
    offered = set(server)
    return next((name for name in client if name in offered), None)


class _Side:
    __slots__ = ("buffer", "skipped", "state")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.state = "banner"  # banner -> packets -> done
        self.skipped = 0


class SshSession(Session):
    """One SSH connection: banner lines, then binary packets until NEWKEYS, per direction."""

    def __init__(self) -> None:
        self.sides = {Direction.TO_SERVER: _Side(), Direction.TO_CLIENT: _Side()}
        self.kexinits: dict[Direction, dict[str, object]] = {}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        side = self.sides[direction]
        if side.state == "done" or not data:
            return []
        side.buffer += data
        events: list[Event] = []
        if side.state == "banner":
            events += self._banner(side, direction)
        if side.state == "packets":
            events += self._packets(side, direction)
        return events

    def _banner(self, side: _Side, direction: Direction) -> list[Event]:
        buffer = side.buffer
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                # Limits are checked on the bytes so far, so any split of the stream gives the same verdict.
                if buffer[:4] == b"SSH-"[: len(buffer)]:
                    if len(buffer) <= MAXIMUM_LINE:
                        return []
                elif side.skipped + len(buffer) <= MAXIMUM_PRE_BANNER:
                    return []
                return self._give_up(side, f"{direction.name}: no identification line")
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"SSH-"):
                if end > MAXIMUM_LINE:
                    return self._give_up(side, f"{direction.name}: {end}-byte identification line")
                break
            side.skipped += end + 1
            if direction == Direction.TO_SERVER or side.skipped > MAXIMUM_PRE_BANNER:
                # Section 4.2: only the server may send other lines first.
                return self._give_up(side, f"{direction.name}: line before the identification")
        row = parse_banner(line)
        if side.skipped:
            row["pre_banner_bytes"] = side.skipped
        events = [Event(PROTOCOL, "banner", row)]
        if len(line) + 2 > MAXIMUM_BANNER:
            events.append(anomaly(PROTOCOL, "long_banner", f"{direction.name}: {len(line)}-byte identification"))
        version = row["proto_version"]
        if version in ("2.0", "1.99"):
            side.state = "packets"
        else:
            side.state = "done"  # SSH-1 binary packets (or an unknown version) are not decoded
            buffer.clear()
        return events

    @staticmethod
    def _give_up(side: _Side, detail: str) -> list[Event]:
        side.state = "done"
        side.buffer.clear()
        return [anomaly(PROTOCOL, "bad_banner", detail)]

    def _packets(self, side: _Side, direction: Direction) -> list[Event]:
        buffer = side.buffer
        events: list[Event] = []
        while len(buffer) >= 5:
            length = int.from_bytes(buffer[:4], "big")
            padding = buffer[4]
            if not 5 <= length <= MAXIMUM_PACKET or padding + 1 > length:
                events.append(
                    anomaly(PROTOCOL, "bad_packet_length", f"{direction.name}: packet_length {length}; stream dropped")
                )
                side.state = "done"
                buffer.clear()
                break
            if len(buffer) < 4 + length:
                break
            payload = bytes(buffer[5 : 4 + length - padding])
            del buffer[: 4 + length]
            code = payload[0] if payload else -1
            if code == KEXINIT:
                events += self._kexinit(payload, length, direction)
            elif code == NEWKEYS:
                events.append(Event(PROTOCOL, "newkeys", {"message_code": code, "packet_length": length}))
                side.state = "done"
                buffer.clear()
                break
        return events

    def _kexinit(self, payload: bytes, length: int, direction: Direction) -> list[Event]:
        try:
            lists, follows = _name_lists(payload)
        except Malformed as error:
            return [anomaly(PROTOCOL, "malformed_kexinit", f"{direction.name}: {error}")]
        row: dict[str, object] = {"message_code": KEXINIT, "packet_length": length}
        row.update(zip(NAME_LISTS, lists, strict=True))
        row["first_kex_packet_follows"] = follows
        row["hassh"], row["hassh_algorithms"] = hassh(row, direction == Direction.TO_SERVER)
        events = [Event(PROTOCOL, "kexinit", row)]
        if direction in self.kexinits:
            return events  # a re-key in the clear cannot happen before NEWKEYS; keep the first
        self.kexinits[direction] = row
        if len(self.kexinits) == 2:
            events.append(Event(PROTOCOL, "negotiated", self._negotiate()))
        return events

    def _negotiate(self) -> dict[str, object]:
        client, server = self.kexinits[Direction.TO_SERVER], self.kexinits[Direction.TO_CLIENT]

        def choose(name: str) -> str | None:
            return _choose(client[name], server[name])  # type: ignore[arg-type]

        row: dict[str, object] = {
            "kex_alg": choose("kex_algorithms"),
            "host_key_alg": choose("server_host_key_algorithms"),
            "cipher_alg": choose("encryption_client_to_server"),
            "cipher_alg_server": choose("encryption_server_to_client"),
            "compression_alg": choose("compression_client_to_server"),
            "compression_alg_server": choose("compression_server_to_client"),
        }
        # Chosen by the same rule even for AEAD ciphers, whose MAC is then implicit (as Zeek logs it).
        row["mac_alg"] = choose("mac_client_to_server")
        row["mac_alg_server"] = choose("mac_server_to_client")
        return row

    def gap(self, direction: Direction, length: int) -> list[Event]:
        side = self.sides[direction]
        if side.state != "done":
            side.state = "done"  # without the packet boundaries nothing more can be framed
            side.buffer.clear()
            return [anomaly(PROTOCOL, "gap", f"{direction.name}: {length} bytes missing; direction no longer parsed")]
        return []

    def close(self) -> list[Event]:
        events = []
        for direction, side in self.sides.items():
            if side.state != "done" and side.buffer:
                left = len(side.buffer)
                events.append(anomaly(PROTOCOL, "truncated_message", f"{direction.name}: {left} bytes left"))
            side.buffer.clear()
        return events


class SshDecoder(Decoder):
    """SSH, found by "SSH-" at the start of either direction (or after a server's pre-banner lines)."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({22, 2222})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        if payload.startswith(b"SSH-") and len(payload) >= 6 and payload[4:5].isdigit():
            return True
        # RFC 4253 section 4.2: the server may send other lines before its identification string.
        return direction == Direction.TO_CLIENT and b"\nSSH-2.0-" in payload[:MAXIMUM_PRE_BANNER]

    def session(self) -> Session:
        return SshSession()

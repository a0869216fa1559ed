"""NTP (RFC 5905, RFC 1305 mode 6 control per RFC 9327, ntpd mode 7 private) over UDP 123.

Crane PLCs, CCTV recorders and the port's historians set their clocks by NTP; a rogue or external time source
is an integrity risk, and mode 6/7 queries (above all monlist, the amplification request of CVE-2013-5211) are
reconnaissance.

Table ``ntp``: one row per datagram: leap indicator, version, mode by name, stratum, poll, precision, root delay
and dispersion in seconds, reference id (dotted IPv4 from stratum 2 up, the ASCII kiss code or reference clock
name at stratum 0 and 1), the four timestamps as seconds since the Unix epoch, key id when a MAC follows; mode 6
control messages give opcode, sequence, status, association and count; mode 7 private messages give the
implementation, request code by name (``monlist`` flagged) and item counts.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "ntp"
#: Seconds from the NTP prime epoch (1900-01-01) to the Unix epoch.
UNIX_OFFSET = 2208988800
LEAP = ["no_warning", "last_minute_61", "last_minute_59", "unsynchronized"]
MODES = ["reserved", "symmetric_active", "symmetric_passive", "client", "server", "broadcast", "control", "private"]
CONTROL_OPCODES = {
    0: "unspecified", 1: "read_status", 2: "read_variables", 3: "write_variables", 4: "read_clock_variables",
    5: "write_clock_variables", 6: "set_trap", 7: "async_message", 8: "configure", 9: "save_configuration",
    10: "read_mru", 11: "read_ordinal_list", 12: "request_nonce", 31: "unset_trap",
}  # fmt: skip
PRIVATE_REQUESTS = {
    0: "peer_list", 1: "peer_list_sum", 2: "peer_info", 3: "peer_stats", 4: "sys_info", 5: "sys_stats",
    6: "io_stats", 7: "mem_stats", 8: "loop_info", 9: "timer_stats", 10: "config", 11: "unconfig",
    12: "set_sys_flag", 13: "clr_sys_flag", 14: "monitor", 15: "nomonitor", 16: "get_restrict",
    17: "resaddflags", 18: "ressubflags", 19: "unrestrict", 20: "mon_getlist", 21: "reset_stats",
    22: "reset_peer", 23: "reread_keys", 24: "do_dirty_hack", 25: "dont_dirty_hack", 26: "trustkey",
    27: "untrustkey", 28: "auth_info", 29: "traps", 30: "add_trap", 31: "clr_trap", 32: "request_key",
    33: "control_key", 34: "get_ctlstats", 35: "get_leapinfo", 36: "get_clockinfo", 37: "set_clkfudge",
    38: "get_kernel", 39: "get_clkbuginfo", 40: "set_precision", 41: "set_select_code", 42: "mon_getlist_1",
    43: "hostname_associd", 44: "if_stats", 45: "if_reload",
}  # fmt: skip
MONLIST = frozenset({20, 42})
IMPLEMENTATIONS = {0: "univ", 2: "xntpd_old", 3: "xntpd"}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("length", pa.int32(), "octets of the datagram"),
        _field("leap_code", pa.int16(), "leap indicator (0-3); modes 1-6"),
        _field("leap", pa.string(), "no_warning, last_minute_61, last_minute_59, unsynchronized (clock not set)"),
        _field("version", pa.int16(), "version number (1-4)"),
        _field("mode_code", pa.int16(), "association mode (0-7)"),
        _field("mode", pa.string(), "symmetric_active, symmetric_passive, client, server, broadcast, control, private"),
        _field(
            "stratum",
            pa.int16(),
            "stratum: 0 unspecified or kiss-o'-death, 1 primary (reference clock), 2-15 secondary, 16 unsynchronised",
        ),
        _field("poll", pa.int16(), "maximum poll interval, log2 seconds"),
        _field("precision", pa.int16(), "clock precision, log2 seconds"),
        _field("root_delay", pa.float64(), "round-trip delay to the reference clock, seconds"),
        _field("root_dispersion", pa.float64(), "dispersion to the reference clock, seconds"),
        _field(
            "reference_id",
            pa.string(),
            "stratum >= 2: dotted IPv4 of the upstream server (IPv6: hash); stratum 0/1: ASCII code",
        ),
        _field("kiss_code", pa.string(), "stratum 0: the kiss-o'-death code (DENY, RATE, RSTR ...), as received"),
        _field("reference_time", pa.float64(), "reference timestamp, seconds since the Unix epoch (null if zero)"),
        _field("origin_time", pa.float64(), "origin timestamp, seconds since the Unix epoch (null if zero)"),
        _field("receive_time", pa.float64(), "receive timestamp, seconds since the Unix epoch (null if zero)"),
        _field("transmit_time", pa.float64(), "transmit timestamp, seconds since the Unix epoch (null if zero)"),
        _field("extension_bytes", pa.int32(), "octets after the 48-octet header (extension fields and MAC)"),
        _field("key_id", pa.int64(), "key identifier of the MAC (20 or 24 trailing octets)"),
        _field("response", pa.bool_(), "modes 6 and 7: the response bit"),
        _field("control_opcode_code", pa.int16(), "mode 6: opcode"),
        _field(
            "control_opcode",
            pa.string(),
            "mode 6: read_status, read_variables, write_variables, read_mru, configure ...",
        ),
        _field("control_error", pa.bool_(), "mode 6: error bit"),
        _field("control_more", pa.bool_(), "mode 6: more bit (fragments follow)"),
        _field("sequence", pa.int32(), "mode 6: sequence; mode 7: sequence number (7 bits)"),
        _field("control_status", pa.int32(), "mode 6: status word"),
        _field("association_id", pa.int32(), "mode 6: association id"),
        _field("control_offset", pa.int32(), "mode 6: offset of the data"),
        _field("control_count", pa.int32(), "mode 6: count of data octets"),
        _field("control_data", pa.string(), "mode 6: first 256 octets of the data (variable list) as received"),
        _field("private_implementation_code", pa.int16(), "mode 7: implementation number"),
        _field("private_implementation", pa.string(), "mode 7: univ, xntpd_old, xntpd"),
        _field("private_request_code", pa.int16(), "mode 7: request code"),
        _field("private_request", pa.string(), "mode 7: request name (mon_getlist_1 is monlist, peer_list ...)"),
        _field("private_error", pa.int16(), "mode 7: error code (responses)"),
        _field("private_items", pa.int32(), "mode 7: number of data items"),
        _field("private_item_size", pa.int32(), "mode 7: size of each data item"),
        _field(
            "monlist",
            pa.bool_(),
            "mode 7 MON_GETLIST or MON_GETLIST_1: the monlist amplification request or its answer",
        ),
        _field("malformed", pa.string(), "why the datagram contradicts RFC 5905 (also anomaly rows)"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _timestamp(data: bytes, offset: int) -> float | None:
    seconds = int.from_bytes(data[offset : offset + 4], "big")
    fraction = int.from_bytes(data[offset + 4 : offset + 8], "big")
    if seconds == 0 and fraction == 0:
        return None
    # Era 1 (from 2036-02-07) when the top bit is clear, as RFC 4330 section 3 suggests.
    if seconds < 0x80000000:
        seconds += 1 << 32
    return seconds - UNIX_OFFSET + fraction / (1 << 32)


def _short(data: bytes, offset: int) -> float:
    return int.from_bytes(data[offset : offset + 4], "big") / 65536


def _reference(data: bytes, stratum: int) -> str | None:
    octets = data[12:16]
    if octets == b"\0\0\0\0":
        return None
    if stratum >= 2:
        return ".".join(str(o) for o in octets)
    return octets.rstrip(b"\0").decode("utf-8", "backslashreplace")


def decode(data: bytes, row: dict[str, object]) -> str | None:
    """Fill ``row``; return why the datagram is malformed, or None."""
    if not data:
        return "empty datagram"
    first = data[0]
    version, mode = (first >> 3) & 7, first & 7
    row.update(version=version, mode_code=mode, mode=MODES[mode])
    if mode == 7:
        if len(data) < 8:
            return f"mode 7 message of {len(data)} octets"
        row["response"] = bool(first & 0x80)
        row["sequence"] = data[1] & 0x7F
        row["private_implementation_code"] = data[2]
        row["private_implementation"] = IMPLEMENTATIONS.get(data[2])
        row["private_request_code"] = data[3]
        row["private_request"] = PRIVATE_REQUESTS.get(data[3])
        row["monlist"] = data[3] in MONLIST
        row["private_error"] = data[4] >> 4
        row["private_items"] = int.from_bytes(data[4:6], "big") & 0x0FFF
        row["private_item_size"] = int.from_bytes(data[6:8], "big") & 0x0FFF
        return None if 1 <= version <= 4 else f"version {version}"
    leap = first >> 6
    row.update(leap_code=leap, leap=LEAP[leap])
    if mode == 6:
        if len(data) < 12:
            return f"mode 6 message of {len(data)} octets"
        code = data[1] & 0x1F
        row.update(
            response=bool(data[1] & 0x80),
            control_error=bool(data[1] & 0x40),
            control_more=bool(data[1] & 0x20),
            control_opcode_code=code,
            control_opcode=CONTROL_OPCODES.get(code),
            sequence=int.from_bytes(data[2:4], "big"),
            control_status=int.from_bytes(data[4:6], "big"),
            association_id=int.from_bytes(data[6:8], "big"),
            control_offset=int.from_bytes(data[8:10], "big"),
            control_count=int.from_bytes(data[10:12], "big"),
        )
        count = int(row["control_count"])  # type: ignore[call-overload]
        if count:
            row["control_data"] = data[12 : 12 + min(count, 256)].decode("utf-8", "backslashreplace")
        if 12 + count > len(data):
            return f"mode 6 count {count} exceeds the {len(data) - 12} data octets"
        return None if 1 <= version <= 4 else f"version {version}"
    if len(data) < 48:
        return f"{len(data)}-octet message, the header needs 48"
    stratum = data[1]
    row.update(
        stratum=stratum,
        poll=int.from_bytes(data[2:3], "big", signed=True),
        precision=int.from_bytes(data[3:4], "big", signed=True),
        root_delay=_short(data, 4),
        root_dispersion=_short(data, 8),
        reference_id=_reference(data, stratum),
        reference_time=_timestamp(data, 16),
        origin_time=_timestamp(data, 24),
        receive_time=_timestamp(data, 32),
        transmit_time=_timestamp(data, 40),
        extension_bytes=len(data) - 48,
    )
    if stratum == 0 and row["reference_id"]:
        row["kiss_code"] = row["reference_id"]
    if len(data) - 48 in (20, 24):
        row["key_id"] = int.from_bytes(data[48:52], "big")
    if mode == 0:
        return "reserved mode 0"
    if not 1 <= version <= 4:
        return f"version {version}"
    return None


class NtpSession(Session):
    """One NTP flow: each datagram decoded alone."""

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        row: dict[str, object] = {"length": len(data)}
        problem = decode(data, row)
        events = [Event(PROTOCOL, str(row.get("mode") or "malformed"), row)]
        if problem:
            row["malformed"] = problem
            events.append(anomaly(PROTOCOL, "malformed_message", f"{direction.name}: {problem}"))
        return events


def probe_payload(payload: bytes, server_port: int) -> bool:
    """Modes 1-5: a 48-octet header (optionally a MAC or extensions), version 1-4 and stratum <= 16; modes 6 and 7
    only towards port 123, as their headers are short and carry no constant."""
    if not payload:
        return False
    version, mode = (payload[0] >> 3) & 7, payload[0] & 7
    if not 1 <= version <= 4:
        return False
    if mode in (6, 7):
        return server_port == 123 and len(payload) >= (12 if mode == 6 else 8)
    if mode == 0 or len(payload) < 48 or payload[1] > 16:
        return False
    return server_port == 123 or (len(payload) in (48, 68, 72) and version >= 3)


class NtpDecoder(Decoder):
    """NTP, found by a well-formed header (modes 6 and 7 on port 123 only)."""

    name = PROTOCOL
    transport = "udp"
    ports = frozenset({123})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return probe_payload(payload, server_port)

    def session(self) -> Session:
        return NtpSession()

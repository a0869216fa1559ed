"""SNMP v1 (RFC 1157), v2c (RFC 1901, 3416) and v3 (RFC 3412, 3414) over UDP 161/162.

Switches, cameras, UPSs, PLC gateways and crane drives answer SNMP; the community string travels in clear and
``public``/``private`` defaults are common, so the table keeps the community as received.

Table ``snmp``: one row per datagram: version, community, PDU type, request id, error status and index, the
varbind OIDs, and in responses sysDescr, sysObjectID and sysName rendered; traps: enterprise, agent address,
generic and specific trap, time stamp and (v2c traps and informs) snmpTrapOID.0. v3 messages give msgID, max
size, flags, security model, the USM user name, engine id, boots and time, and the scoped PDU when it is not
encrypted. Responses are paired with their request by request id (latency).
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.snmp import ber
from quaywatch.decode.snmp.ber import Malformed

PROTOCOL = "snmp"
MAXIMUM_PENDING = 1024
#: Varbind OIDs listed per message.
MAXIMUM_VARBINDS = 256
#: Octets of a rendered string value kept.
MAXIMUM_TEXT = 1024

VERSIONS = {0: "1", 1: "2c", 3: "3"}
PDU_TYPES = {
    0xA0: "get",
    0xA1: "get-next",
    0xA2: "response",
    0xA3: "set",
    0xA4: "trap",
    0xA5: "get-bulk",
    0xA6: "inform",
    0xA7: "v2-trap",
    0xA8: "report",
}
REQUESTS = frozenset({0xA0, 0xA1, 0xA3, 0xA5, 0xA6})
ERROR_STATUS = [
    "noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess", "wrongType", "wrongLength",
    "wrongEncoding", "wrongValue", "noCreation", "inconsistentValue", "resourceUnavailable", "commitFailed",
    "undoFailed", "authorizationError", "notWritable", "inconsistentName",
]  # fmt: skip
GENERIC_TRAPS = [
    "coldStart", "warmStart", "linkDown", "linkUp", "authenticationFailure", "egpNeighborLoss", "enterpriseSpecific",
]  # fmt: skip
SECURITY_MODELS = {1: "SNMPv1", 2: "SNMPv2c", 3: "USM", 4: "TSM"}
SYSTEM = {"1.3.6.1.2.1.1.1.0": "sys_descr", "1.3.6.1.2.1.1.2.0": "sys_object_id", "1.3.6.1.2.1.1.5.0": "sys_name"}
TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("message_id", pa.int64(), "ordinal of the datagram in its flow"),
        _field("length", pa.int32(), "octets of the datagram"),
        _field("version_code", pa.int16(), "msgVersion field: 0 (v1), 1 (v2c), 3 (v3)"),
        _field("version", pa.string(), "1, 2c or 3"),
        _field("community", pa.string(), "v1/v2c community string as received (backslash-escaped)"),
        _field("pdu_type_code", pa.int16(), "PDU tag octet (0xa0-0xa8)"),
        _field("pdu_type", pa.string(), "get, get-next, get-bulk, set, response, trap, inform, v2-trap, report"),
        _field("request_id", pa.int64(), "request-id of the PDU (not in v1 traps)"),
        _field("error_status_code", pa.int32(), "error-status number (get-bulk: non-repeaters instead)"),
        _field("error_status", pa.string(), "error-status name (noError, noSuchName, authorizationError ...)"),
        _field("error_index", pa.int32(), "error-index (get-bulk: max-repetitions instead)"),
        _field("non_repeaters", pa.int32(), "get-bulk: non-repeaters"),
        _field("max_repetitions", pa.int32(), "get-bulk: max-repetitions"),
        _field("varbinds", pa.int32(), "variable bindings in the PDU"),
        _field("oids", pa.list_(pa.string()), f"the varbind OIDs in order (first {MAXIMUM_VARBINDS})"),
        _field("sys_descr", pa.string(), "responses and traps: value of sysDescr.0 (1.3.6.1.2.1.1.1.0) as received"),
        _field("sys_object_id", pa.string(), "value of sysObjectID.0 (1.3.6.1.2.1.1.2.0): the vendor's product OID"),
        _field("sys_name", pa.string(), "value of sysName.0 (1.3.6.1.2.1.1.5.0) as received"),
        _field("enterprise", pa.string(), "v1 trap: enterprise OID"),
        _field("agent_address", pa.string(), "v1 trap: agent-addr"),
        _field("generic_trap_code", pa.int16(), "v1 trap: generic-trap number"),
        _field(
            "generic_trap", pa.string(), "v1 trap: coldStart, warmStart, linkDown, linkUp, authenticationFailure ..."
        ),
        _field("specific_trap", pa.int64(), "v1 trap: specific-trap"),
        _field("time_stamp", pa.int64(), "v1 trap: sysUpTime in hundredths of a second"),
        _field("trap_oid", pa.string(), "v2c trap and inform: snmpTrapOID.0 value; v1 trap: the enterprise OID"),
        _field("msg_id", pa.int64(), "v3: msgID"),
        _field("msg_max_size", pa.int64(), "v3: msgMaxSize"),
        _field("msg_flags", pa.int16(), "v3: msgFlags octet"),
        _field("authenticated", pa.bool_(), "v3: authFlag"),
        _field("encrypted", pa.bool_(), "v3: privFlag; the scoped PDU is encrypted and not decoded"),
        _field("reportable", pa.bool_(), "v3: reportableFlag"),
        _field("security_model_code", pa.int32(), "v3: msgSecurityModel number"),
        _field("security_model", pa.string(), "v3: USM, TSM, SNMPv1, SNMPv2c"),
        _field("engine_id", pa.string(), "v3 USM: msgAuthoritativeEngineID as hex"),
        _field("engine_boots", pa.int64(), "v3 USM: msgAuthoritativeEngineBoots"),
        _field("engine_time", pa.int64(), "v3 USM: msgAuthoritativeEngineTime"),
        _field("user_name", pa.string(), "v3 USM: msgUserName as received"),
        _field("context_engine_id", pa.string(), "v3 scoped PDU: contextEngineID as hex"),
        _field("context_name", pa.string(), "v3 scoped PDU: contextName as received"),
        _field("matched", pa.bool_(), "responses and reports: a request with this request id was seen"),
        _field("request_pdu_type", pa.string(), "responses and reports: the PDU type of that request"),
        _field("latency", pa.float64(), "responses and reports: seconds since the request"),
        _field("malformed", pa.string(), "why the datagram contradicts X.690 or the SNMP RFCs (also anomaly rows)"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _text(data: bytes) -> str:
    return data[:MAXIMUM_TEXT].decode("utf-8", "backslashreplace")


def _value(data: bytes, tag: int, start: int, stop: int) -> str:
    """A varbind value as text: strings as received, OIDs dotted, integers in decimal, others as hex."""
    if tag == ber.OCTET_STRING:
        return _text(data[start:stop])
    if tag == ber.OID:
        return ber.oid(data, start, stop)
    if tag in (ber.INTEGER, 0x41, 0x42, 0x43, 0x46) and start < stop:
        return str(ber.integer(data, start, stop, signed=tag == ber.INTEGER))
    return data[start:stop].hex()


def _pdu(data: bytes, position: int, end: int, row: dict[str, object]) -> None:
    """Decode the PDU at ``position`` into ``row``."""
    tag, start, stop = ber.tlv(data, position, end)
    if tag not in PDU_TYPES:
        raise Malformed(f"unknown PDU tag 0x{tag:02x} at offset {position}")
    row["pdu_type_code"] = tag
    row["pdu_type"] = PDU_TYPES[tag]
    if tag == 0xA4:
        first, after = ber.expect(data, start, stop, ber.OID, "enterprise")
        row["enterprise"] = row["trap_oid"] = ber.oid(data, first, after)
        found, first, after = ber.tlv(data, after, stop)
        if found != ber.IP_ADDRESS or after - first != 4:
            raise Malformed(f"agent-addr: tag 0x{found:02x} of {after - first} octets")
        row["agent_address"] = ".".join(str(octet) for octet in data[first:after])
        generic, after = ber.read_integer(data, after, stop, "generic-trap")
        row["generic_trap_code"] = generic
        row["generic_trap"] = GENERIC_TRAPS[generic] if 0 <= generic < len(GENERIC_TRAPS) else None
        row["specific_trap"], after = ber.read_integer(data, after, stop, "specific-trap")
        first, after = ber.expect(data, after, stop, ber.TIMETICKS, "time-stamp")
        row["time_stamp"] = ber.integer(data, first, after, signed=False)
        position = after
    else:
        row["request_id"], position = ber.read_integer(data, start, stop, "request-id")
        status, position = ber.read_integer(data, position, stop, "error-status")
        index, position = ber.read_integer(data, position, stop, "error-index")
        if tag == 0xA5:
            row["non_repeaters"], row["max_repetitions"] = status, index
        else:
            row["error_status_code"], row["error_index"] = status, index
            row["error_status"] = ERROR_STATUS[status] if 0 <= status < len(ERROR_STATUS) else None
    first, after = ber.expect(data, position, stop, ber.SEQUENCE, "variable-bindings")
    oids: list[str] = []
    count = 0
    while first < after:
        inner, first = ber.expect(data, first, after, ber.SEQUENCE, "varbind")
        name_start, name_stop = ber.expect(data, inner, first, ber.OID, "varbind name")
        name = ber.oid(data, name_start, name_stop)
        value_tag, value_start, value_stop = ber.tlv(data, name_stop, first)
        count += 1
        if len(oids) < MAXIMUM_VARBINDS:
            oids.append(name)
        column = SYSTEM.get(name)
        if column is not None and tag in (0xA2, 0xA4, 0xA6, 0xA7, 0xA8) and value_tag in (ber.OCTET_STRING, ber.OID):
            row[column] = _value(data, value_tag, value_start, value_stop)
        elif name == TRAP_OID and value_tag == ber.OID:
            row["trap_oid"] = ber.oid(data, value_start, value_stop)
    row["varbinds"] = count
    row["oids"] = oids


def _usm(data: bytes, start: int, stop: int, row: dict[str, object]) -> None:
    """UsmSecurityParameters (RFC 3414 clause 2.4) inside the msgSecurityParameters octet string."""
    first, end = ber.expect(data, start, stop, ber.SEQUENCE, "UsmSecurityParameters")
    engine_start, position = ber.expect(data, first, end, ber.OCTET_STRING, "msgAuthoritativeEngineID")
    row["engine_id"] = data[engine_start:position].hex()
    # Both are INTEGER (0..2147483647); agents that drop the leading zero octet (0xdd for 221) are read unsigned,
    # as net-snmp, Zeek and Wireshark do.
    for column, what in (
        ("engine_boots", "msgAuthoritativeEngineBoots"),
        ("engine_time", "msgAuthoritativeEngineTime"),
    ):
        first, position = ber.expect(data, position, end, ber.INTEGER, what)
        row[column] = ber.integer(data, first, position, signed=False)
    user_start, position = ber.expect(data, position, end, ber.OCTET_STRING, "msgUserName")
    row["user_name"] = _text(data[user_start:position])


def decode(data: bytes, row: dict[str, object]) -> None:
    """Fill ``row`` from one SNMP message; raises :class:`Malformed` where the message breaks the rules."""
    start, end = ber.expect(data, 0, len(data), ber.SEQUENCE, "message")
    version, position = ber.read_integer(data, start, end, "version")
    row["version_code"] = version
    if version not in VERSIONS:
        raise Malformed(f"unknown version {version}")
    row["version"] = VERSIONS[version]
    if version != 3:
        first, position = ber.expect(data, position, end, ber.OCTET_STRING, "community")
        row["community"] = _text(data[first:position])
        _pdu(data, position, end, row)
        return
    first, position = ber.expect(data, position, end, ber.SEQUENCE, "msgGlobalData")
    row["msg_id"], first = ber.read_integer(data, first, position, "msgID")
    row["msg_max_size"], first = ber.read_integer(data, first, position, "msgMaxSize")
    flags_start, first = ber.expect(data, first, position, ber.OCTET_STRING, "msgFlags")
    if first - flags_start != 1:
        raise Malformed(f"msgFlags of {first - flags_start} octets")
    flags = data[flags_start]
    row["msg_flags"] = flags
    row["authenticated"], row["encrypted"], row["reportable"] = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    model, first = ber.read_integer(data, first, position, "msgSecurityModel")
    row["security_model_code"] = model
    row["security_model"] = SECURITY_MODELS.get(model)
    first, position = ber.expect(data, position, end, ber.OCTET_STRING, "msgSecurityParameters")
    if model == 3:
        _usm(data, first, position, row)
    if flags & 2:
        ber.expect(data, position, end, ber.OCTET_STRING, "encryptedPDU")
        return
    first, position = ber.expect(data, position, end, ber.SEQUENCE, "ScopedPDU")
    engine_start, first = ber.expect(data, first, position, ber.OCTET_STRING, "contextEngineID")
    row["context_engine_id"] = data[engine_start:first].hex()
    name_start, first = ber.expect(data, first, position, ber.OCTET_STRING, "contextName")
    row["context_name"] = _text(data[name_start:first])
    _pdu(data, first, position, row)


class SnmpSession(Session):
    """One SNMP flow: each datagram decoded alone; requests remembered by request id for pairing."""

    def __init__(self) -> None:
        self.messages = 0
        self.pending: dict[tuple[Direction, int], tuple[float, str]] = {}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        row: dict[str, object] = {"message_id": self.messages, "length": len(data)}
        self.messages += 1
        events: list[Event] = []
        try:
            decode(data, row)
        except Malformed as error:
            row["malformed"] = str(error)
            events.append(anomaly(PROTOCOL, "malformed_message", f"{direction.name}: {error}"))
        code = row.get("pdu_type_code")
        request_id = row.get("request_id")
        if isinstance(request_id, int) and isinstance(code, int):
            if code in REQUESTS:
                if len(self.pending) >= MAXIMUM_PENDING:
                    self.pending.pop(next(iter(self.pending)))
                self.pending[(direction, request_id)] = (timestamp, PDU_TYPES[code])
            elif code in (0xA2, 0xA8):
                other = Direction.TO_CLIENT if direction == Direction.TO_SERVER else Direction.TO_SERVER
                found = self.pending.pop((other, request_id), None)
                row["matched"] = found is not None
                if found is not None:
                    row["latency"] = max(0.0, timestamp - found[0])
                    row["request_pdu_type"] = found[1]
        name = row.get("pdu_type") or ("encrypted" if row.get("encrypted") else "malformed")
        events.insert(0, Event(PROTOCOL, str(name), row))
        return events


def probe_message(payload: bytes) -> bool:
    """A SEQUENCE holding a known version INTEGER and, for v1/v2c, a community and a PDU tag."""
    try:
        start, end = ber.expect(payload, 0, len(payload), ber.SEQUENCE, "message")
        version, position = ber.read_integer(payload, start, end, "version")
        if version not in VERSIONS:
            return False
        if version == 3:
            ber.expect(payload, position, end, ber.SEQUENCE, "msgGlobalData")
            return True
        _, position = ber.expect(payload, position, end, ber.OCTET_STRING, "community")
        tag, _, _ = ber.tlv(payload, position, end)
    except Malformed:
        return False
    return tag in PDU_TYPES


class SnmpDecoder(Decoder):
    """SNMP, found by a well-formed message header in the first datagram."""

    name = PROTOCOL
    transport = "udp"
    ports = frozenset({161, 162})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return len(payload) >= 8 and payload[0] == ber.SEQUENCE and probe_message(payload)

    def session(self) -> Session:
        return SnmpSession()

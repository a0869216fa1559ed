"""S7comm over ISO-on-TCP (TPKT, COTP), and S7comm-plus identification.

Tables: ``cotp`` (connection set-up and tear-down with TSAPs), ``s7comm`` (every S7 PDU: jobs, acks,
user data, with item addresses, upload/download, PI services and PLC stop, SZL reads and the module and
component identification they return) and ``s7comm_plus`` (version, opcode, function).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from quaywatch.decode.base import DatagramRows, Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.framing import ResynchronisingStreams
from quaywatch.decode.s7comm import parser, vectorised
from quaywatch.decode.s7comm.constants import COTP_TYPES

PROTOCOL = "s7comm"
MAX_REASSEMBLY = 65536


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


ITEM = pa.struct(
    [
        pa.field("syntax_id", pa.int16()),
        pa.field("transport_size", pa.int16()),
        pa.field("length", pa.int32()),
        pa.field("db", pa.int32()),
        pa.field("area_code", pa.int16()),
        pa.field("area", pa.string()),
        pa.field("byte_offset", pa.int32()),
        pa.field("bit", pa.int16()),
    ]
)

COTP_SCHEMA = pa.schema(
    [
        _field("pdu_code", pa.int16(), "COTP PDU type (high nibble of the type byte), e.g. 14 = CR"),
        _field("pdu_name", pa.string(), "e.g. 'CR Connection Request'"),
        _field("destination_reference", pa.int32(), "CR/CC/DR: destination reference"),
        _field("source_reference", pa.int32(), "CR/CC/DR: source reference"),
        _field("calling_tsap", pa.string(), "CR/CC: calling TSAP, hex"),
        _field("called_tsap", pa.string(), "CR/CC: called TSAP, hex (S7: 01 00 + rack*32+slot)"),
        _field("tpdu_size", pa.int32(), "CR/CC: maximum TPDU size in bytes"),
    ]
)

S7_SCHEMA = pa.schema(
    [
        _field("rosctr_code", pa.int16(), "message type: 1 job, 2 ack, 3 ack-data, 7 user-data"),
        _field("rosctr", pa.string(), "message type name (Job-Request, ACK-Data, User-Data, ...)"),
        _field("pdu_reference", pa.int32(), "PDU reference pairing a job with its acknowledgement"),
        _field(
            "function_code",
            pa.int16(),
            "job function (0x04 read, 0x05 write, 0x29 PLC stop ...) or user-data type/group",
        ),
        _field("function", pa.string(), "function name, e.g. 'Write Variable' or 'Request: CPU Functions'"),
        _field(
            "controls_plc", pa.bool_(), "writes memory, transfers programs, starts or stops the PLC, sets its clock"
        ),
        _field("subfunction_code", pa.int16(), "user-data subfunction"),
        _field("subfunction", pa.string(), "user-data subfunction name, e.g. 'Read SZL'"),
        _field("sequence_number", pa.int16(), "user-data sequence number"),
        _field("error_class_code", pa.int16(), "acknowledgement error class"),
        _field("error_class", pa.string(), "acknowledgement error class name"),
        _field("error_code", pa.int32(), "acknowledgement or user-data error code"),
        _field("max_amq_calling", pa.int32(), "setup communication: parallel jobs, calling side"),
        _field("max_amq_called", pa.int32(), "setup communication: parallel jobs, called side"),
        _field("pdu_length", pa.int32(), "setup communication: negotiated PDU size"),
        _field("item_count", pa.int16(), "read/write variable: number of items"),
        _field("items", pa.list_(ITEM), "read/write variable: every item's area, DB, byte offset, bit, size"),
        _field("values", pa.list_(pa.binary()), "write job: values written; read response: values read"),
        _field("return_codes", pa.list_(pa.int16()), "read/write response: per-item return codes (0xff success)"),
        _field("function_status", pa.int16(), "upload/download: function status"),
        _field("session_id", pa.int64(), "upload/download: session (upload id)"),
        _field("filename", pa.string(), "upload/download: block file name, e.g. _0A00001P"),
        _field("block_type", pa.string(), "upload/download: block type from the file name"),
        _field("block_number", pa.string(), "upload/download: block number from the file name"),
        _field("destination_filesystem", pa.string(), "upload/download: file system (Active, Passive, Both)"),
        _field("block_length", pa.int64(), "upload: block length"),
        _field("pi_service", pa.string(), "PI service or PLC stop service name (P_PROGRAM, _INSE, _DELE ...)"),
        _field("pi_arguments", pa.binary(), "PI service argument block"),
        _field("return_code", pa.int16(), "user-data return code (0xff success)"),
        _field("data_unit_reference", pa.int16(), "user-data: data unit reference of a multi-part exchange"),
        _field("last_data_unit", pa.bool_(), "user-data response: no further part follows"),
        _field("continuation", pa.bool_(), "user-data response continuing an earlier one (records without header)"),
        _field("szl_id", pa.int32(), "Read SZL: list id"),
        _field("szl_index", pa.int32(), "Read SZL: index"),
        _field("szl_id_name", pa.string(), "Read SZL: list name"),
        _field("order_number", pa.string(), "SZL 0x0011 record 1: the module's order number (MLFB)"),
        _field("hardware_order_number", pa.string(), "SZL 0x0011 record 6: basic hardware order number"),
        _field("firmware_version", pa.string(), "SZL 0x0011 record 7: firmware version"),
        _field("automation_system_name", pa.string(), "SZL 0x001C: automation system name, as received"),
        _field("module_name", pa.string(), "SZL 0x001C: module name, as received"),
        _field("plant_id", pa.string(), "SZL 0x001C: plant identification, as received"),
        _field("copyright", pa.string(), "SZL 0x001C: copyright entry, as received"),
        _field("module_serial", pa.string(), "SZL 0x001C: module serial number, as received"),
        _field("module_type_name", pa.string(), "SZL 0x001C: module type name, as received"),
        _field("memory_card_serial", pa.string(), "SZL 0x001C: memory card serial number, as received"),
        _field("location", pa.string(), "SZL 0x001C: location designation, as received"),
        _field("malformed", pa.string(), "why the PDU contradicts the protocol (also an anomaly row)"),
    ]
)

PLUS_SCHEMA = pa.schema(
    [
        _field("version", pa.int16(), "S7comm-plus protocol version (1, 2, 3; 3 carries an integrity digest)"),
        _field("opcode", pa.int16(), "0x31 request, 0x32 response, 0x33 notification"),
        _field("opcode_name", pa.string(), "opcode name"),
        _field("function_code", pa.int32(), "request/response function"),
        _field("function", pa.string(), "function name (Set Variable, Get Multi Variables, Create Object ...)"),
        _field("sequence_number", pa.int32(), "request/response sequence number"),
    ]
)


class S7Session(Session):
    """TPKT framing per direction, COTP data reassembly, then S7comm or S7comm-plus."""

    def __init__(self) -> None:
        self.streams = ResynchronisingStreams(PROTOCOL, "invalid_tpkt_header", "a TPKT header")
        self.fragments = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.more_follows = {Direction.TO_SERVER: False, Direction.TO_CLIENT: False}
        # A Read SZL response split into several data units: the first part's header and records so far.
        self.partial_szl: dict[Direction, dict[str, object]] = {}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        buffer = self.streams.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 4:
            length = (buffer[2] << 8) | buffer[3]
            if buffer[0] != 3 or length < 7:
                self.streams.skip(direction)
                continue
            if len(buffer) < length:
                break
            events += self.streams.resynchronised(direction)
            packet = bytes(buffer[4:length])
            del buffer[:length]
            events += self._cotp(packet, direction)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.fragments[direction].clear()
        return self.streams.gap(direction)

    def close(self) -> list[Event]:
        return self.streams.close({direction: len(parts) for direction, parts in self.fragments.items()})

    def idle(self) -> bool:
        streams = self.streams
        partial = any(streams.buffers.values()) or any(streams.skipped.values()) or any(self.fragments.values())
        return not (partial or any(self.more_follows.values()) or self.partial_szl)

    def _cotp(self, packet: bytes, direction: Direction) -> list[Event]:
        header_length = packet[0]
        if header_length < 1 or len(packet) < 1 + header_length:
            return [anomaly(PROTOCOL, "malformed_cotp", f"COTP header length {header_length} in {len(packet)} bytes")]
        code = packet[1] >> 4
        if code != 0x0F:
            fields: dict[str, object] = {"pdu_code": code, "pdu_name": COTP_TYPES.get(code, f"COTP type {code}")}
            if code in (0x0E, 0x0D, 0x08, 0x0C) and header_length >= 6:
                fields["destination_reference"] = (packet[2] << 8) | packet[3]
                fields["source_reference"] = (packet[4] << 8) | packet[5]
                position = 7
                while position + 2 <= 1 + header_length:
                    kind, size = packet[position], packet[position + 1]
                    value = packet[position + 2 : position + 2 + size]
                    if kind == 0xC1:
                        fields["calling_tsap"] = value.hex()
                    elif kind == 0xC2:
                        fields["called_tsap"] = value.hex()
                    elif kind == 0xC0 and size == 1:
                        fields["tpdu_size"] = 1 << value[0]
                    position += 2 + size
            return [Event("cotp", "cotp", fields)]
        if header_length < 2:
            return [anomaly(PROTOCOL, "malformed_cotp", "data TPDU without its number byte")]
        fragments = self.fragments[direction]
        fragments += packet[1 + header_length :]
        if len(fragments) > MAX_REASSEMBLY:
            fragments.clear()
            return [
                anomaly(PROTOCOL, "reassembly_overflow", f"{direction.name}: COTP data over {MAX_REASSEMBLY} bytes")
            ]
        if not packet[2] & 0x80:
            return []  # more data units follow (EOT not set)
        payload = bytes(fragments)
        fragments.clear()
        if not payload:
            return []
        if payload[0] == 0x32:
            return self._s7(payload, direction)
        if payload[0] == 0x72:
            try:
                return [Event("s7comm_plus", "s7comm_plus", parser.plus(payload))]
            except parser.Malformed as error:
                return [anomaly(PROTOCOL, "malformed_s7comm_plus", str(error))]
        return [anomaly(PROTOCOL, "unknown_protocol_id", f"COTP data starts with 0x{payload[0]:02x}")]

    def _s7(self, payload: bytes, direction: Direction) -> list[Event]:
        try:
            fields = parser.s7(payload, continuation=self.more_follows[direction])
        except parser.Malformed as error:
            fields = {"rosctr_code": payload[1] if len(payload) > 1 else None, "malformed": str(error)}
            return [Event(PROTOCOL, "malformed", fields), anomaly(PROTOCOL, "malformed_s7", str(error))]
        except (IndexError, ValueError) as error:  # structure deeper than the checks above: still an anomaly
            return [anomaly(PROTOCOL, "malformed_s7", f"{type(error).__name__}: {error}")]
        if fields.get("rosctr_code") == 7 and "last_data_unit" in fields:
            self._join_szl_parts(fields, direction)
            self.more_follows[direction] = not fields["last_data_unit"]
        for internal in ("szl_records", "szl_record_size", "szl_record_count", "continuation_data"):
            fields.pop(internal, None)
        kind = str(fields.get("rosctr", "s7")).lower().replace("-", "_")
        return [Event(PROTOCOL, kind, fields)]

    def _join_szl_parts(self, fields: dict[str, object], direction: Direction) -> None:
        """Carry a multi-part SZL list over to its last part, which then reports the whole list."""
        if "szl_records" in fields and not fields["last_data_unit"]:
            self.partial_szl[direction] = {
                name: fields[name]
                for name in ("szl_id", "szl_index", "szl_id_name", "szl_record_size", "szl_record_count")
            } | {"records": fields["szl_records"]}
            return
        partial = self.partial_szl.get(direction)
        if not fields.get("continuation") or partial is None:
            return
        partial["records"] = _as_bytes(partial["records"]) + _as_bytes(fields.get("continuation_data", b""))
        if fields["last_data_unit"]:
            del self.partial_szl[direction]
            for name in ("szl_id", "szl_index", "szl_id_name"):
                fields[name] = partial[name]
            fields.update(
                parser.szl_records(
                    int(str(partial["szl_id"])),
                    _as_bytes(partial["records"]),
                    int(str(partial["szl_record_size"])),
                    int(str(partial["szl_record_count"])),
                )
            )


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else b""


def _called_tsap(parameters: bytes) -> bytes:
    """The called TSAP (parameter 0xC2) of a COTP CR/CC variable part (ISO 8073 13.3.4), or b"" if none."""
    position = 0
    while position + 2 <= len(parameters):
        code, size = parameters[position], parameters[position + 1]
        if code == 0xC2:
            return bytes(parameters[position + 2 : position + 2 + size])
        position += 2 + size
    return b""


class S7Decoder(Decoder):
    """S7comm/S7comm-plus, found by TPKT + COTP structure whatever the port."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({102})
    tables: ClassVar[dict[str, pa.Schema]] = {"cotp": COTP_SCHEMA, PROTOCOL: S7_SCHEMA, "s7comm_plus": PLUS_SCHEMA}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """TPKT version 3 with a consistent length, carrying a known COTP PDU type."""
        if len(payload) < 7 or payload[0] != 3 or payload[1] != 0:
            return False
        length = (payload[2] << 8) | payload[3]
        if length < 7 or (length > len(payload) and server_port != 102):
            return False
        header_length = payload[4]
        if payload[5] >> 4 in (0xE, 0xD) and header_length > 6 and len(payload) > 11 and payload[11] < 0x80:
            return False  # CR/CC whose variable part is no ISO 8073 parameter (codes >= 0x80): RDP's cookie/RDP_NEG
        kind, data_start = payload[5] >> 4, 5 + header_length
        if kind == 0xF and len(payload) > data_start and payload[data_start] not in (0x32, 0x72):
            return False  # a data TPDU of another ISO-on-TCP protocol (IEC 61850 MMS, ICCP): not S7comm's 0x32/0x72
        if kind in (0xE, 0xD) and _called_tsap(payload[11:data_start])[:1] == b"\x00":
            return False  # S7 TSAPs start with a connection type (1 PG, 2 OP, 3 S7 basic ...); MMS uses 0x0001
        return 1 <= header_length <= length - 5 and kind in COTP_TYPES

    def session(self) -> Session:
        return S7Session()

    def segment_shapes(
        self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sides: np.ndarray
    ) -> np.ndarray:
        return vectorised.segment_kinds(buffer, starts, lengths) != 0

    def decode_segments(
        self,
        buffer: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        sides: np.ndarray,
        timestamps: np.ndarray,
        sessions: list[Session],
    ) -> list[tuple[np.ndarray, DatagramRows]]:
        return vectorised.decode_segments(buffer, starts, lengths, ITEM)

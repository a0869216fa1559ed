"""Modbus/TCP: MBAP framing, every public function code, device identification, request pairing.

One ``modbus`` row per request and per response. Responses carry the
address and quantity of the request they answer (a read response alone does
not say what it read) and the latency since it, so each row stands alone.
Requests never answered are flushed when the flow ends.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from quaywatch.decode.base import DatagramRows, Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.framing import ResynchronisingStreams
from quaywatch.decode.modbus import parser, vectorised
from quaywatch.decode.modbus.constants import EXCEPTIONS, FUNCTIONS, MAXIMUM_LENGTH, USER_DEFINED, WRITE_FUNCTIONS

PROTOCOL = "modbus"
MAX_PENDING = 1024


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("transaction_id", pa.int32(), "MBAP transaction identifier"),
        _field("unit_id", pa.int16(), "MBAP unit identifier (the serial device behind a gateway)"),
        _field("function_code", pa.int16(), "function code without the exception bit"),
        _field("function", pa.string(), "function name, as Zeek names it (e.g. WRITE_SINGLE_REGISTER)"),
        _field("writes", pa.bool_(), "the function changes device state (5, 6, 15, 16, 21, 22, 23)"),
        _field("exception_code", pa.int16(), "exception code of an exception response"),
        _field("exception", pa.string(), "exception name (ILLEGAL_DATA_ADDRESS, ...)"),
        _field("address", pa.int32(), "start address (write address for function 23)"),
        _field("quantity", pa.int32(), "number of coils or registers (written ones for function 23)"),
        _field("values", pa.list_(pa.int32()), "register values or coil states (0/1) written or read"),
        _field("read_address", pa.int32(), "function 23: start address read"),
        _field("read_quantity", pa.int32(), "function 23: registers read"),
        _field("and_mask", pa.int32(), "function 22: AND mask"),
        _field("or_mask", pa.int32(), "function 22: OR mask"),
        _field("sub_function", pa.int32(), "function 8: diagnostics sub-function"),
        _field("sub_function_name", pa.string(), "function 8: sub-function name"),
        _field("mei_type", pa.int16(), "function 43: MEI type (14 read device identification)"),
        _field("mei_name", pa.string(), "function 43: MEI type name"),
        _field("device_id_code", pa.int16(), "function 43/14: read device id code (1 basic ... 4 one object)"),
        _field("object_id", pa.int16(), "function 43/14: object id asked for or next object id"),
        _field("conformity_level", pa.int16(), "function 43/14: conformity level"),
        _field("more_follows", pa.bool_(), "function 43/14: the device has more objects"),
        _field("vendor_name", pa.string(), "function 43/14 object 0, as received"),
        _field("product_code", pa.string(), "function 43/14 object 1, as received"),
        _field("revision", pa.string(), "function 43/14 object 2 (major.minor revision), as received"),
        _field("vendor_url", pa.string(), "function 43/14 object 3, as received"),
        _field("product_name", pa.string(), "function 43/14 object 4, as received"),
        _field("model_name", pa.string(), "function 43/14 object 5, as received"),
        _field("user_application_name", pa.string(), "function 43/14 object 6, as received"),
        _field(
            "device_objects",
            pa.list_(pa.struct([pa.field("id", pa.int16()), pa.field("value", pa.string())])),
            "function 43/14: every object returned, standard or vendor-specific",
        ),
        _field("data", pa.binary(), "raw data of functions decoded no further (file records, diagnostics)"),
        _field("malformed", pa.string(), "why the PDU contradicts the specification (also an anomaly row)"),
        _field("matched", pa.bool_(), "responses: the request was seen"),
        _field("latency", pa.float64(), "responses: seconds since the request"),
    ]
)


class ModbusSession(Session):
    """One Modbus/TCP connection: framing per direction and pending requests."""

    def __init__(self) -> None:
        self.streams = ResynchronisingStreams(PROTOCOL, "invalid_mbap_header", "a valid MBAP header")
        self.pending: dict[tuple[int, int], tuple[float, dict[str, object]]] = {}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        buffer = self.streams.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 7:
            protocol, length = (buffer[2] << 8) | buffer[3], (buffer[4] << 8) | buffer[5]
            if protocol != 0 or not 2 <= length <= MAXIMUM_LENGTH:
                self.streams.skip(direction)
                continue
            if len(buffer) < 6 + length:
                break
            events += self.streams.resynchronised(direction)
            transaction, unit = (buffer[0] << 8) | buffer[1], buffer[6]
            pdu = bytes(buffer[7 : 6 + length])
            del buffer[: 6 + length]
            events += self._message(transaction, unit, pdu, direction, timestamp)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        return self.streams.gap(direction)

    def idle(self) -> bool:
        streams = self.streams
        return not (any(streams.buffers.values()) or any(streams.skipped.values()))

    def close(self) -> list[Event]:
        events = []
        for (transaction, unit), (_, fields) in self.pending.items():
            row = {"transaction_id": transaction, "unit_id": unit, **fields}
            events.append(Event(PROTOCOL, "unanswered_request", row))
        self.pending.clear()
        return events + self.streams.close()

    def _message(self, transaction: int, unit: int, pdu: bytes, direction: Direction, timestamp: float) -> list[Event]:
        code = pdu[0]
        function = code & 0x7F
        row: dict[str, object] = {
            "transaction_id": transaction,
            "unit_id": unit,
            "function_code": function,
            "function": FUNCTIONS.get(function)
            or (f"USER_DEFINED_{function}" if function in USER_DEFINED else f"UNKNOWN_{function}"),
            "writes": function in WRITE_FUNCTIONS,
        }
        key = (transaction, unit)
        if direction == Direction.TO_SERVER and code & 0x80:
            # Codes 128-255 are exception responses only (Modbus Application Protocol V1.1b3, sections 4.1 and
            # 7): a client never sends one. Either the capture has the roles reversed (the device opened the
            # connection) or the client is broken; record the exception, not a request it never made.
            exception = pdu[1] if len(pdu) > 1 else None
            row["exception_code"] = exception
            row["exception"] = EXCEPTIONS.get(exception, f"EXCEPTION_{exception}") if exception is not None else None
            row["matched"] = False
            detail = f"function code 0x{code:02x} from the connection's initiator, transaction {transaction}"
            return [Event(PROTOCOL, "exception", row), anomaly(PROTOCOL, "exception_from_client", detail)]
        if direction == Direction.TO_SERVER:
            events: list[Event] = []
            try:
                row.update(parser.request(function, pdu))
            except parser.Malformed as error:
                row["malformed"] = str(error)
                events.append(
                    anomaly(PROTOCOL, "malformed_request", f"{row['function']} transaction {transaction}: {error}")
                )
            if len(self.pending) >= MAX_PENDING:
                self.pending.pop(next(iter(self.pending)))
            self.pending[key] = (timestamp, {k: v for k, v in row.items() if k not in ("transaction_id", "unit_id")})
            return [Event(PROTOCOL, "request", row), *events]
        request = self.pending.pop(key, None)
        if request is not None:
            requested_at, request_fields = request
            row["matched"] = request_fields.get("function_code") == function
            row["latency"] = max(0.0, timestamp - requested_at)
            for name in ("address", "quantity", "read_address", "read_quantity", "mei_type", "sub_function"):
                if name in request_fields:
                    row[name] = request_fields[name]
        else:
            row["matched"] = False
        if code & 0x80:
            exception = pdu[1] if len(pdu) > 1 else None
            row["function_code"] = function
            row["exception_code"] = exception
            row["exception"] = EXCEPTIONS.get(exception, f"EXCEPTION_{exception}") if exception is not None else None
            return [Event(PROTOCOL, "exception", row)]
        try:
            row.update(parser.response(function, pdu, request[1] if request else None))
        except parser.Malformed as error:
            row["malformed"] = str(error)
            return [
                Event(PROTOCOL, "response", row),
                anomaly(PROTOCOL, "malformed_response", f"{row['function']} transaction {transaction}: {error}"),
            ]
        return [Event(PROTOCOL, "response", row)]


class ModbusDecoder(Decoder):
    """Modbus/TCP, found by its MBAP header whatever the port."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({502})
    tables: ClassVar[dict[str, pa.Schema]] = {PROTOCOL: SCHEMA}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """MBAP framing (protocol id 0, sane lengths) for every message in the payload.

        Off port 502 the first PDU must also start with a public or user-defined function
        code; on port 502 framing alone suffices, so odd or fuzzed function codes sent to a
        PLC are still decoded (and flagged) rather than ignored.
        """
        if len(payload) < 8:
            return False
        position = 0
        while position + 6 <= len(payload):
            if payload[position + 2 : position + 4] != b"\x00\x00":
                return False
            size = (payload[position + 4] << 8) | payload[position + 5]
            if not 2 <= size <= MAXIMUM_LENGTH:
                return False
            position += 6 + size
        if server_port == 502:
            return True
        if position > len(payload):
            return False  # off the Modbus port a first segment must hold whole messages
        function = payload[7] & 0x7F
        return function in FUNCTIONS or function in USER_DEFINED

    def session(self) -> Session:
        return ModbusSession()

    def segment_shapes(
        self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sides: np.ndarray
    ) -> np.ndarray:
        return vectorised.segment_shapes(buffer, starts, lengths, sides)

    def decode_segments(
        self,
        buffer: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        sides: np.ndarray,
        timestamps: np.ndarray,
        sessions: list[Session],
    ) -> list[tuple[np.ndarray, DatagramRows]]:
        return vectorised.decode_segments(buffer, starts, sides, timestamps, sessions, MAX_PENDING)

"""DNP3 (IEEE 1815) over TCP and UDP: data link frames, transport reassembly, application fragments.

Tables: ``dnp3`` (one row per application request or response: function, sequence, internal
indications, the request a response answers, times, file transfers, device attributes),
``dnp3_objects`` (every object header), ``dnp3_control`` (every control relay output block,
pattern control block and analog output block, in commands and in their echoes) and
``dnp3_link`` (link-service frames that carry no user data: link resets, tests and status).

Every link CRC is checked; a frame with a bad CRC is reported and not used. Transport segments are
reassembled per direction and per source/destination address pair, so a TCP connection to a
gateway with several outstations behind it is decoded correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.dnp3 import application, link
from quaywatch.decode.dnp3 import constants as c

PROTOCOL = "dnp3"
#: Requests waiting for their response, per session.
MAXIMUM_PENDING = 1024


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


_MESSAGE_ID = _field("message_id", pa.int64(), "ordinal of the application fragment in its flow; joins the dnp3 tables")
_FUNCTION_CODE = _field("function_code", pa.int16(), "application function code (0x81 response, 0x82 unsolicited)")
_FUNCTION = _field("function", pa.string(), "function name as Zeek names it (READ, SELECT, OPERATE, RESPONSE ...)")

DNP3_SCHEMA = pa.schema(
    [
        _MESSAGE_ID,
        _field("link_source", pa.int32(), "data link source address (first frame of the fragment)"),
        _field("link_destination", pa.int32(), "data link destination address"),
        _field("link_from_master", pa.bool_(), "DIR bit: the frame was sent by a master"),
        _field("link_primary", pa.bool_(), "PRM bit of the first frame"),
        _field("link_control", pa.int16(), "data link control octet of the first frame"),
        _field("link_function_code", pa.int16(), "data link function (3 confirmed, 4 unconfirmed user data)"),
        _field("link_length", pa.int16(), "LENGTH field of the first frame"),
        _field("segments", pa.int32(), "transport segments (link frames) the fragment was reassembled from"),
        _field("fragment_length", pa.int32(), "octets of the reassembled application fragment"),
        _field("application_control", pa.int16(), "application control octet"),
        _field("first", pa.bool_(), "FIR: first fragment of a multi-fragment message"),
        _field("final", pa.bool_(), "FIN: final fragment of the message"),
        _field("confirm", pa.bool_(), "CON: the sender asks for an application confirmation"),
        _field("unsolicited", pa.bool_(), "UNS: unsolicited response or its confirmation"),
        _field("sequence", pa.int16(), "application sequence number (0-15)"),
        _FUNCTION_CODE,
        _FUNCTION,
        _field("controls_device", pa.bool_(), "the request changes outputs, counters, configuration, files or state"),
        _field("iin", pa.int32(), "responses: internal indications, IIN1 << 8 | IIN2 (Zeek's iin)"),
        _field("iin_flags", pa.list_(pa.string()), "responses: names of the internal indications set"),
        _field("object_count", pa.int32(), "object headers in the fragment"),
        _field("objects", pa.list_(pa.string()), "group and variation of each object header, as gGvV"),
        _field("request_function_code", pa.int16(), "responses: function code of the request with the same sequence"),
        _field("request_function", pa.string(), "responses: function name of that request"),
        _field("matched", pa.bool_(), "solicited responses: the request was seen"),
        _field("latency", pa.float64(), "solicited responses: seconds since the request"),
        _field("time_ms", pa.int64(), "group 50 absolute time, ms since 1970 UTC (time sync writes, freeze times)"),
        _field("delay_ms", pa.int64(), "group 52 time delay in ms (delay measurement, restart responses)"),
        _field("file_name", pa.string(), "group 70: file name, as received"),
        _field("file_mode", pa.string(), "group 70 file command: READ, WRITE, APPEND or NULL (delete)"),
        _field("file_handle", pa.int64(), "group 70: file handle"),
        _field("file_size", pa.int64(), "group 70: file size in octets"),
        _field("file_block_size", pa.int32(), "group 70: maximum block size"),
        _field("file_request_id", pa.int32(), "group 70: request identifier"),
        _field("file_permissions", pa.int32(), "group 70: permission bits (UNIX style)"),
        _field("file_created_ms", pa.int64(), "group 70: time of creation, ms since 1970 UTC"),
        _field("file_status_code", pa.int16(), "group 70: file command or transport status"),
        _field("file_status", pa.string(), "group 70: status name (SUCCESS, PERMISSION_DENIED ...)"),
        _field("file_text", pa.string(), "group 70: optional text of a status object, as received"),
        _field("file_block_number", pa.int64(), "group 70 transport: block number"),
        _field("file_last_block", pa.bool_(), "group 70 transport: last block of the file"),
        _field("file_data", pa.binary(), "group 70 transport: the file data block, as received"),
        _field("file_user_name", pa.string(), "group 70 authentication: user name, as received (not the password)"),
        _field("file_password_sent", pa.bool_(), "group 70 authentication: a clear-text password was sent"),
        _field(
            "attributes",
            pa.list_(
                pa.struct(
                    [
                        pa.field("variation", pa.int16()),
                        pa.field("name", pa.string()),
                        pa.field("type", pa.string()),
                        pa.field("value", pa.string()),
                    ]
                )
            ),
            "group 0 device attributes (vendor, product, versions, serial number ...), values as text",
        ),
        _field("control_count", pa.int32(), "control and analog output blocks in the fragment (dnp3_control rows)"),
        _field("malformed", pa.string(), "why the fragment contradicts IEEE 1815 (also anomaly rows)"),
    ]
)

OBJECTS_SCHEMA = pa.schema(
    [
        _MESSAGE_ID,
        _FUNCTION_CODE,
        _FUNCTION,
        _field("header_index", pa.int16(), "position of the object header in the fragment, from 0"),
        _field("group", pa.int16(), "object group"),
        _field("variation", pa.int16(), "object variation (0: any)"),
        _field("object_name", pa.string(), "group and variation name from the object library"),
        _field("qualifier", pa.int16(), "qualifier octet"),
        _field("prefix_code", pa.int16(), "object prefix code (qualifier bits 4-6): 0 none, 1-3 index, 4-6 size"),
        _field("range_code", pa.int16(), "range specifier code (qualifier bits 0-3)"),
        _field("range_start", pa.int64(), "start index or address (range codes 0-5)"),
        _field("range_stop", pa.int64(), "stop index or address (range codes 0-5)"),
        _field("count", pa.int64(), "number of objects named (0 for all objects, range code 6)"),
        _field("parse_stopped", pa.bool_(), "the object's size is unknown: later headers were not parsed"),
    ]
)

CONTROL_SCHEMA = pa.schema(
    [
        _MESSAGE_ID,
        _FUNCTION_CODE,
        _FUNCTION,
        _field("sequence", pa.int16(), "application sequence number"),
        _field("link_source", pa.int32(), "data link source address"),
        _field("link_destination", pa.int32(), "data link destination address"),
        _field("header_index", pa.int16(), "position of the object header in the fragment"),
        _field("group", pa.int16(), "12 binary output command, 41 analog output block"),
        _field("variation", pa.int16(), "12: 1 CROB, 2 pattern control block; 41: 1 int32, 2 int16, 3 float, 4 double"),
        _field("object_name", pa.string(), "object name"),
        _field("index", pa.int64(), "point index (from the prefix or the range)"),
        _field("control_code", pa.int16(), "group 12: control code octet"),
        _field("operation", pa.string(), "group 12: NUL, PULSE_ON, PULSE_OFF, LATCH_ON, LATCH_OFF"),
        _field("trip_close", pa.string(), "group 12: NUL, CLOSE, TRIP"),
        _field("queue", pa.bool_(), "group 12: queue bit"),
        _field("clear", pa.bool_(), "group 12: clear bit"),
        _field("count", pa.int16(), "group 12: number of times to execute"),
        _field("on_time", pa.int64(), "group 12: on time in ms"),
        _field("off_time", pa.int64(), "group 12: off time in ms"),
        _field("value", pa.float64(), "group 41: set point value"),
        _field("status_code", pa.int16(), "control status (0 in commands; the outcome in responses)"),
        _field("status", pa.string(), "status name (SUCCESS, NO_SELECT, NOT_AUTHORIZED ...)"),
    ]
)

LINK_SCHEMA = pa.schema(
    [
        _field("source", pa.int32(), "data link source address"),
        _field("destination", pa.int32(), "data link destination address"),
        _field("from_master", pa.bool_(), "DIR bit"),
        _field("primary", pa.bool_(), "PRM bit: primary (request) or secondary (reply) frame"),
        _field("frame_count_bit", pa.bool_(), "FCB (primary frames)"),
        _field("frame_count_valid", pa.bool_(), "FCV for primary frames, DFC (data flow control) for secondary ones"),
        _field("function_code", pa.int16(), "data link function code"),
        _field("function", pa.string(), "RESET_LINK_STATES, REQUEST_LINK_STATUS, ACK, LINK_STATUS ..."),
        _field("length", pa.int16(), "LENGTH field"),
    ]
)

TABLES: dict[str, pa.Schema] = {
    PROTOCOL: DNP3_SCHEMA,
    "dnp3_objects": OBJECTS_SCHEMA,
    "dnp3_control": CONTROL_SCHEMA,
    "dnp3_link": LINK_SCHEMA,
}
_EVENT_TYPES = {
    c.RESPONSE: "response",
    c.UNSOLICITED_RESPONSE: "unsolicited_response",
    c.AUTHENTICATE_RESPONSE: "response",
}


@dataclass(slots=True)
class _Partial:
    """A fragment whose final transport segment has not arrived."""

    first: link.Frame
    chunks: list[bytes] = field(default_factory=list)
    next_sequence: int = 0
    segments: int = 1


class Dnp3Session(Session):
    """One DNP3 flow: frames per direction, fragments per address pair, pending requests."""

    def __init__(self, datagrams: bool = False) -> None:
        self.datagrams = datagrams
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.skipped = {Direction.TO_SERVER: 0, Direction.TO_CLIENT: 0}
        self.partial: dict[tuple[Direction, int, int], _Partial] = {}
        self.pending: dict[tuple[int, int, int], tuple[float, int]] = {}
        self.messages = 0

    # -- framing ------------------------------------------------------------------------------------

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.datagrams:
            buffer = bytearray(data)
            return self._frames(buffer, direction, timestamp) + self._leftover(buffer, direction)
        buffer = self.buffers[direction]
        buffer += data
        return self._frames(buffer, direction, timestamp)

    def _frames(self, buffer: bytearray, direction: Direction, timestamp: float) -> list[Event]:
        """Consume every whole frame at the start of ``buffer``; leave a partial one."""
        events: list[Event] = []
        position = 0
        size = len(buffer)
        while size - position >= 2:
            if buffer[position] != 0x05 or buffer[position + 1] != 0x64:
                found = buffer.find(c.START, position + 1)
                if found < 0:
                    found = size - 1 if buffer[size - 1] == 0x05 else size
                self.skipped[direction] += found - position
                position = found
                continue
            if size - position < c.HEADER_LENGTH:
                break
            if not link.header_valid(buffer, position):
                length = buffer[position + 2]
                if length < c.MINIMUM_LENGTH and link.crc(buffer, position, position + 8) == (
                    buffer[position + 8] | (buffer[position + 9] << 8)
                ):
                    code, detail = "invalid_length", f"LENGTH {length} is below 5"
                else:
                    code, detail = "bad_link_crc", "header CRC does not match"
                events += self._skipped(direction)
                events.append(anomaly(PROTOCOL, code, f"{direction.name}: {detail}"))
                position += 2
                continue
            end = position + link.frame_size(buffer[position + 2])
            if end > size:
                break
            events += self._skipped(direction)
            events += self._frame(link.frame(buffer, position), direction, timestamp)
            position = end
        if position:
            del buffer[:position]
        return events

    def _skipped(self, direction: Direction) -> list[Event]:
        count = self.skipped[direction]
        if not count:
            return []
        self.skipped[direction] = 0
        return [anomaly(PROTOCOL, "invalid_frame_start", f"{direction.name}: {count} octets skipped to a frame start")]

    def _leftover(self, buffer: bytearray, direction: Direction) -> list[Event]:
        """At the end of a datagram or flow: an unfinished frame, or octets that cannot start one."""
        if buffer and buffer[0] != 0x05:
            self.skipped[direction] += len(buffer)
            buffer.clear()
        events = self._skipped(direction)
        if buffer:
            events.append(anomaly(PROTOCOL, "truncated_frame", f"{direction.name}: {len(buffer)} octets of a frame"))
            buffer.clear()
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.buffers[direction].clear()
        for key in [key for key in self.partial if key[0] == direction]:
            del self.partial[key]
        return self._skipped(direction)

    def close(self) -> list[Event]:
        events: list[Event] = []
        for direction, buffer in self.buffers.items():
            events += self._leftover(buffer, direction)
        for (direction, source, destination), partial in self.partial.items():
            events.append(
                anomaly(
                    PROTOCOL,
                    "incomplete_fragment",
                    f"{direction.name} {source}->{destination}: {partial.segments} segments without a final one",
                )
            )
        self.partial.clear()
        self.pending.clear()
        return events

    # -- data link and transport --------------------------------------------------------------------

    def _frame(self, frame: link.Frame, direction: Direction, timestamp: float) -> list[Event]:
        control = frame.control
        function = control & 0x0F
        primary = bool(control & 0x40)
        user_data = frame.user_data
        if frame.bad_block >= 0:
            return [
                anomaly(
                    PROTOCOL,
                    "bad_data_crc",
                    f"{direction.name} {frame.source}->{frame.destination}: CRC of user data block {frame.bad_block} "
                    "does not match; the frame is dropped",
                )
            ]
        if primary and function in c.USER_DATA_FUNCTIONS and user_data:
            return self._segment(frame, direction, timestamp)
        names = c.PRIMARY_FUNCTIONS if primary else c.SECONDARY_FUNCTIONS
        row: dict[str, object] = {
            "source": frame.source,
            "destination": frame.destination,
            "from_master": bool(control & 0x80),
            "primary": primary,
            "frame_count_bit": bool(control & 0x20) if primary else None,
            "frame_count_valid": bool(control & 0x10),
            "function_code": function,
            "function": names.get(function) or f"UNKNOWN_{function}",
            "length": frame.length,
        }
        events = [Event("dnp3_link", "link", row)]
        if primary and function in c.USER_DATA_FUNCTIONS:
            events.append(anomaly(PROTOCOL, "missing_user_data", f"{direction.name}: {row['function']} of LENGTH 5"))
        if function not in names:
            events.append(anomaly(PROTOCOL, "unknown_link_function", f"{direction.name}: link function {function}"))
        if user_data:
            events.append(
                anomaly(
                    PROTOCOL,
                    "unexpected_user_data",
                    f"{direction.name}: {row['function']} with {len(user_data)} octets",
                ),
            )
        return events

    def _segment(self, frame: link.Frame, direction: Direction, timestamp: float) -> list[Event]:
        header = frame.user_data[0]
        final, first, sequence = header & 0x80, header & 0x40, header & 0x3F
        key = (direction, frame.source, frame.destination)
        partial = self.partial.get(key)
        events: list[Event] = []
        if first:
            if partial is not None:
                del self.partial[key]
                events.append(
                    anomaly(
                        PROTOCOL,
                        "fragment_discarded",
                        f"{direction.name} {frame.source}->{frame.destination}: new first segment while "
                        f"{partial.segments} segments waited for a final one",
                    )
                )
            if final:
                return events + self._message(frame, frame.user_data[1:], 1, direction, timestamp)
            if len(self.partial) >= c.MAXIMUM_PARTIAL:
                self.partial.pop(next(iter(self.partial)))
                events.append(anomaly(PROTOCOL, "too_many_partial_fragments", f"more than {c.MAXIMUM_PARTIAL}"))
            self.partial[key] = _Partial(frame, [frame.user_data[1:]], (sequence + 1) & 0x3F)
            return events
        if partial is None:
            return [
                anomaly(
                    PROTOCOL,
                    "first_segment_missing",
                    f"{direction.name} {frame.source}->{frame.destination}: segment {sequence} without a first one",
                )
            ]
        if sequence != partial.next_sequence:
            if sequence == (partial.next_sequence - 1) & 0x3F:
                return [anomaly(PROTOCOL, "duplicate_segment", f"{direction.name}: segment {sequence} repeated")]
            del self.partial[key]
            return [
                anomaly(
                    PROTOCOL,
                    "segment_sequence_error",
                    f"{direction.name}: segment {sequence} where {partial.next_sequence} was due; fragment dropped",
                )
            ]
        partial.chunks.append(frame.user_data[1:])
        partial.segments += 1
        partial.next_sequence = (sequence + 1) & 0x3F
        if final:
            del self.partial[key]
            fragment = b"".join(partial.chunks)
            return self._message(partial.first, fragment, partial.segments, direction, timestamp)
        if partial.segments >= c.MAXIMUM_SEGMENTS:
            del self.partial[key]
            return [
                anomaly(
                    PROTOCOL,
                    "too_long_reassembly",
                    f"{direction.name}: {partial.segments} segments without a final one; fragment dropped",
                )
            ]
        return events

    # -- application --------------------------------------------------------------------------------

    def _message(
        self, first: link.Frame, fragment: bytes, segments: int, direction: Direction, timestamp: float
    ) -> list[Event]:
        parsed = application.parse(fragment)
        message_id = self.messages
        self.messages += 1
        row = parsed.fields
        control = first.control
        row["message_id"] = message_id
        row["link_source"] = first.source
        row["link_destination"] = first.destination
        row["link_from_master"] = bool(control & 0x80)
        row["link_primary"] = bool(control & 0x40)
        row["link_control"] = control
        row["link_function_code"] = control & 0x0F
        row["link_length"] = first.length
        row["segments"] = segments
        row["fragment_length"] = len(fragment)
        row["control_count"] = len(parsed.controls)
        function = row.get("function_code")
        if function is None:  # not even an application header
            event_type = "request"
        else:
            assert isinstance(function, int)
            event_type = _EVENT_TYPES.get(function, "request")
            self._pair(row, function, first, timestamp)
        events = [Event(PROTOCOL, event_type, row)]
        shared = {"message_id": message_id, "function_code": function, "function": row.get("function")}
        for header in parsed.objects:
            header.update(shared)
            events.append(Event("dnp3_objects", event_type, header))
        if parsed.controls:
            sequence = row.get("sequence")
            for point in parsed.controls:
                point.update(shared)
                point["sequence"] = sequence
                point["link_source"] = first.source
                point["link_destination"] = first.destination
                events.append(Event("dnp3_control", event_type, point))
        for code, detail in parsed.problems:
            events.append(
                anomaly(PROTOCOL, code, f"{direction.name} {row.get('function')} message {message_id}: {detail}")
            )
        return events

    def _pair(self, row: dict[str, object], function: int, first: link.Frame, timestamp: float) -> None:
        """Solicited responses carry the sequence of the request they answer (IEEE 1815-2012, 4.2.2.4)."""
        sequence = row["sequence"]
        assert isinstance(sequence, int)
        if function in c.RESPONSES:
            if function == c.UNSOLICITED_RESPONSE:
                return
            key = (first.destination, first.source, sequence)
            # A challenge (AUTHENTICATE_RESP) comes before the real response: the request stays pending.
            request = self.pending.pop(key, None) if function == c.RESPONSE else self.pending.get(key)
            row["matched"] = request is not None
            if request is not None:
                requested_at, request_function = request
                row["request_function_code"] = request_function
                row["request_function"] = c.FUNCTIONS.get(request_function) or f"UNKNOWN_{request_function}"
                row["latency"] = max(0.0, timestamp - requested_at)
            return
        if function in c.NO_RESPONSE:
            return
        key = (first.source, first.destination, sequence)
        self.pending.pop(key, None)
        if len(self.pending) >= MAXIMUM_PENDING:
            self.pending.pop(next(iter(self.pending)))
        self.pending[key] = (timestamp, function)


class _Dnp3Decoder(Decoder):
    name = PROTOCOL
    ports = frozenset({20000})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """A data link header (0x05 0x64, LENGTH >= 5, correct CRC) at the start: 32 bits of evidence.

        The port plays no part: DNP3 on another port is found, anything else on 20000 is not.
        """
        return link.header_valid(payload, 0)


class Dnp3TcpDecoder(_Dnp3Decoder):
    """DNP3 over TCP (IEEE 1815-2012 annex on IP networking): a stream of link frames."""

    transport = "tcp"

    def session(self) -> Session:
        return Dnp3Session(datagrams=False)


class Dnp3UdpDecoder(_Dnp3Decoder):
    """DNP3 over UDP: each datagram holds whole link frames."""

    transport = "udp"

    def session(self) -> Session:
        return Dnp3Session(datagrams=True)


__all__ = ["TABLES", "Dnp3Session", "Dnp3TcpDecoder", "Dnp3UdpDecoder"]

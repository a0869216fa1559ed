"""BACnet/IP (ASHRAE 135-2020 Annex J, clauses 6, 20 and 21) over UDP: BVLC, NPDU and APDU.

Weather stations, building systems, reefer and lighting controllers in port terminals speak it.

Tables: ``bacnet`` (one row per datagram: BVLC function, network layer header and message, APDU type, invoke id,
segmentation, service, error, reject and abort reasons, request pairing with latency, ``controls_device``),
``bacnet_discovery`` (Who-Is, I-Am with the vendor, Who-Has, I-Have), ``bacnet_property`` (one row per property
read, returned or written by ReadProperty, ReadPropertyMultiple, WriteProperty, WritePropertyMultiple and
ReadRange, with the value as short text) and ``bacnet_device_control`` (DeviceCommunicationControl and
ReinitializeDevice requests with their state and their outcome; passwords are never stored, only whether one
was sent and its length).

Segmented requests and acknowledgements (clause 5.3) are reassembled per direction and invoke id; every segment
keeps its ``bacnet`` row and the reassembled service gives the property rows, on the final segment's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.bacnet import apdu as a
from quaywatch.decode.bacnet import constants as c
from quaywatch.decode.bacnet.tags import Malformed
from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "bacnet"
#: Requests waiting for their acknowledgement, per session.
MAXIMUM_PENDING = 1024
#: Segmented messages being reassembled at once, per session, and octets per message.
MAXIMUM_PARTIAL = 64
MAXIMUM_REASSEMBLY = 1 << 20


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


_MESSAGE_ID = _field("message_id", pa.int64(), "ordinal of the datagram in its flow; joins the bacnet tables")
_INVOKE_ID = _field("invoke_id", pa.int16(), "APDU invoke id (confirmed services and their answers)")
_SERVICE = _field("service", pa.string(), "service name as ICSNPP writes it (read_property, i_am, who_is ...)")
_MESSAGE = _field("message", pa.string(), "request, ack (property rows) or response (device control rows)")
_OBJECT = [
    _field("object_type_code", pa.int32(), "object type number (128-1023 proprietary)"),
    _field("object_type", pa.string(), "object type name (analog-input, device ...); null if proprietary"),
    _field("object_instance", pa.int64(), "object instance number (4194303 means unspecified)"),
]
_ERROR = [
    _field("error_class_code", pa.int16(), "error class number"),
    _field("error_class", pa.string(), "error class (device, object, property, resources, security ...)"),
    _field("error_code_code", pa.int32(), "error code number"),
    _field("error_code", pa.string(), "error code (unknown-object, password-failure, write-access-denied ...)"),
]

BACNET_SCHEMA = pa.schema(
    [
        _MESSAGE_ID,
        _field("length", pa.int32(), "octets of the datagram"),
        _field("bvlc_type", pa.int16(), "BVLC type octet (0x81 BACnet/IP)"),
        _field("bvlc_function_code", pa.int16(), "BVLC function (Annex J.2)"),
        _field("bvlc_function", pa.string(), "Original_Unicast_NPDU, Forwarded_NPDU, BVLC_Result ..."),
        _field("bvlc_length", pa.int32(), "BVLC length field (should equal the datagram length)"),
        _field("bvlc_address", pa.string(), "Forwarded-NPDU: original source B/IP address; FDT entry deletion"),
        _field("bvlc_result_code", pa.int32(), "BVLC-Result code"),
        _field("bvlc_result", pa.string(), "BVLC-Result name (Successful_completion, Register-Foreign-Device_NAK ...)"),
        _field("bvlc_ttl", pa.int32(), "Register-Foreign-Device: time to live, seconds"),
        _field("bvlc_entries", pa.int32(), "broadcast distribution or foreign device table entries carried"),
        _field("npdu_version", pa.int16(), "NPDU protocol version (1)"),
        _field("npdu_control", pa.int16(), "NPCI control octet"),
        _field("network_message", pa.bool_(), "the NPDU carries a network layer message, not an APDU"),
        _field("expecting_reply", pa.bool_(), "NPCI data-expecting-reply bit"),
        _field("priority", pa.string(), "network priority: normal, urgent, critical-equipment, life-safety"),
        _field("dnet", pa.int32(), "destination network number (65535: global broadcast)"),
        _field("dadr", pa.binary(), "destination MAC address (empty: broadcast on DNET)"),
        _field("snet", pa.int32(), "source network number (the message was routed)"),
        _field("sadr", pa.binary(), "source MAC address on SNET"),
        _field("hop_count", pa.int16(), "hop count of a routed message"),
        _field("network_message_type_code", pa.int16(), "network layer message type"),
        _field("network_message_type", pa.string(), "who_is_router_to_network, i_am_router_to_network ..."),
        _field("network_vendor_id", pa.int32(), "proprietary network message (0x80-0xFF): vendor id"),
        _field("networks", pa.list_(pa.int32()), "network numbers in Who-Is/I-Am-Router-To-Network and kin"),
        _field("pdu_type_code", pa.int16(), "APDU type (0-7)"),
        _field("pdu_type", pa.string(), "CONFIRMED_REQUEST, UNCONFIRMED_REQUEST, SIMPLE_ACK, COMPLEX_ACK ..."),
        _INVOKE_ID,
        _field("segmented", pa.bool_(), "the APDU is one segment of a segmented message"),
        _field("more_follows", pa.bool_(), "more segments follow"),
        _field("segmented_response_accepted", pa.bool_(), "Confirmed-Request: the client accepts segments"),
        _field("max_segments", pa.int16(), "Confirmed-Request: segments accepted (65: more than 64; null: unsaid)"),
        _field("max_apdu", pa.int32(), "Confirmed-Request: maximum APDU length accepted, octets"),
        _field("sequence_number", pa.int16(), "segment sequence number (segments and SegmentACK)"),
        _field("window_size", pa.int16(), "proposed or actual window size"),
        _field("negative_ack", pa.bool_(), "SegmentACK: negative acknowledgement"),
        _field("from_server", pa.bool_(), "SegmentACK and Abort: sent by the server"),
        _field("service_choice", pa.int16(), "service choice number"),
        _SERVICE,
        _field("controls_device", pa.bool_(), "the request writes, creates, deletes, restarts, silences or sets time"),
        *_ERROR,
        _field("reason_code", pa.int16(), "Reject or Abort reason number"),
        _field("reason", pa.string(), "Reject or Abort reason (unrecognized-service, segmentation-not-supported ...)"),
        _field("segments", pa.int32(), "final segment: segments the message was reassembled from"),
        _field("matched", pa.bool_(), "answers: the request with this invoke id was seen"),
        _field("request_service", pa.string(), "answers: the service of that request"),
        _field("latency", pa.float64(), "answers: seconds since the request"),
        _field("malformed", pa.string(), "why the datagram contradicts ASHRAE 135 (also anomaly rows)"),
    ]
)

DISCOVERY_SCHEMA = pa.schema(
    [
        _MESSAGE_ID,
        _SERVICE,
        _field("low_limit", pa.int64(), "Who-Is/Who-Has: lowest device instance asked for (null: all)"),
        _field("high_limit", pa.int64(), "Who-Is/Who-Has: highest device instance asked for"),
        _field("device_object_type", pa.string(), "I-Am/I-Have: object type of the device identifier (device)"),
        _field("device_instance", pa.int64(), "I-Am/I-Have: device instance"),
        *_OBJECT,
        _field("object_name", pa.string(), "Who-Has/I-Have: object name, as received"),
        _field("max_apdu", pa.int32(), "I-Am: maximum APDU length accepted"),
        _field("segmentation_code", pa.int16(), "I-Am: segmentation supported"),
        _field("segmentation", pa.string(), "segmented-both, segmented-transmit, segmented-receive, no-segmentation"),
        _field("vendor_id", pa.int32(), "I-Am: vendor identifier assigned by ASHRAE"),
        _field("vendor", pa.string(), "I-Am: vendor name (data/bacnet_vendors.csv); null if not listed"),
    ]
)

PROPERTY_SCHEMA = pa.schema(
    [
        _MESSAGE_ID,
        _INVOKE_ID,
        _SERVICE,
        _MESSAGE,
        _field("writes", pa.bool_(), "WriteProperty and WritePropertyMultiple: the property is written"),
        *_OBJECT,
        _field("property_id", pa.int64(), "property identifier (512 and above proprietary)"),
        _field("property", pa.string(), "property name (present-value, object-name ...); null if proprietary"),
        _field("array_index", pa.int64(), "property array index"),
        _field("value_tag", pa.string(), "application tag of the (first) value: real, unsigned, enumerated ..."),
        _field("value", pa.string(), "the (first) value as text; enumerations of a few properties by name"),
        _field("value_number", pa.float64(), "the (first) value as a number: real, double, integers, enumerations"),
        _field("value_count", pa.int32(), "primitive values in the property value (a list or array has several)"),
        _field("values", pa.list_(pa.string()), "every value as text, when there are several (first 1024)"),
        _field("priority", pa.int16(), "WriteProperty: command priority 1-16"),
        *_ERROR,
    ]
)

DEVICE_CONTROL_SCHEMA = pa.schema(
    [
        _MESSAGE_ID,
        _INVOKE_ID,
        _SERVICE,
        _MESSAGE,
        _field("time_duration", pa.int64(), "DeviceCommunicationControl: minutes (null: indefinitely)"),
        _field("state_code", pa.int16(), "enable-disable or reinitialized-state-of-device number"),
        _field("state", pa.string(), "enable, disable, disable-initiation; coldstart, warmstart, start-backup ..."),
        _field("password_present", pa.bool_(), "a password was sent (it is never stored)"),
        _field("password_length", pa.int32(), "its length in characters"),
        _field("result", pa.string(), "responses: SUCCESS (SimpleACK) or ERROR"),
        *_ERROR,
    ]
)

TABLES: dict[str, pa.Schema] = {
    PROTOCOL: BACNET_SCHEMA,
    "bacnet_discovery": DISCOVERY_SCHEMA,
    "bacnet_property": PROPERTY_SCHEMA,
    "bacnet_device_control": DEVICE_CONTROL_SCHEMA,
}
_ANSWERS = frozenset({c.SIMPLE_ACK, c.COMPLEX_ACK, c.ERROR, c.REJECT, c.ABORT})


def _address(octets: bytes) -> str:
    return f"{octets[0]}.{octets[1]}.{octets[2]}.{octets[3]}:{int.from_bytes(octets[4:6], 'big')}"


@dataclass(slots=True)
class _Partial:
    """A segmented message whose last segment has not arrived (clause 5.3)."""

    chunks: list[bytes] = field(default_factory=list)
    next_sequence: int = 1
    size: int = 0


class BacnetSession(Session):
    """One BACnet/IP flow: each datagram decoded alone, plus pending requests and segment reassembly."""

    def __init__(self) -> None:
        self.messages = 0
        self.pending: dict[tuple[Direction, int], tuple[float, str | None]] = {}
        self.partial: dict[tuple[Direction, int, int], _Partial] = {}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        message_id = self.messages
        self.messages += 1
        row: dict[str, object] = {"message_id": message_id, "length": len(data)}
        events: list[Event] = []
        problems: list[tuple[str, str]] = []
        try:
            position = self._bvlc(data, row, problems)
            if position is not None:
                position = self._npdu(data, position, row)
                if position is not None:
                    events += self._apdu(data[position:], direction, timestamp, row, problems)
        except Malformed as error:
            problems.append(("malformed", str(error)))
        if problems:
            row["malformed"] = "; ".join(detail for _code, detail in problems)
        pdu_type = row.get("pdu_type")
        if pdu_type is not None:
            event_type = str(pdu_type).lower().removesuffix("_pdu")
        elif row.get("network_message"):
            event_type = "network_message"
        else:
            event_type = "bvlc"
        for event in events:
            event.fields["message_id"] = message_id
        result = [Event(PROTOCOL, event_type, row), *events]
        result += [anomaly(PROTOCOL, code, f"{direction.name} message {message_id}: {d}") for code, d in problems]
        return result

    def close(self) -> list[Event]:
        events = [
            anomaly(PROTOCOL, "incomplete_segmented_message", f"{d.name} invoke id {i}: {len(p.chunks)} segments")
            for (d, i, _kind), p in self.partial.items()
        ]
        self.partial.clear()
        self.pending.clear()
        return events

    # -- BVLL and network layer ------------------------------------------------------------------------------------

    def _bvlc(self, data: bytes, row: dict[str, object], problems: list[tuple[str, str]]) -> int | None:
        """Annex J.2: the BVLC header; returns the NPDU offset, or None if the function carries no NPDU."""
        if len(data) < 4:
            raise Malformed(f"BVLC header needs 4 octets, {len(data)} present")
        function = data[1]
        length = int.from_bytes(data[2:4], "big")
        row.update(
            bvlc_type=data[0],
            bvlc_function_code=function,
            bvlc_function=c.BVLC_FUNCTIONS.get(function, f"BVLC_FUNCTION_{function}"),
            bvlc_length=length,
        )
        if data[0] != c.BVLC_TYPE_BIP:
            problems.append(("unknown_bvlc_type", f"BVLC type 0x{data[0]:02x} is not BACnet/IP"))
            return None
        if length != len(data):
            problems.append(("bvlc_length_mismatch", f"BVLC length {length}, datagram {len(data)} octets"))
        start = c.NPDU_FUNCTIONS.get(function)
        if function in (0x04, 0x08):
            if len(data) < 10:
                raise Malformed(f"{row['bvlc_function']} needs a 6-octet B/IP address")
            row["bvlc_address"] = _address(data[4:10])
        if start is not None:
            return start
        body = data[4:]
        if function == 0x00:
            if len(body) < 2:
                raise Malformed("BVLC-Result without its result code")
            code = int.from_bytes(body[:2], "big")
            row.update(bvlc_result_code=code, bvlc_result=c.BVLC_RESULTS.get(code, f"result-0x{code:04x}"))
        elif function == 0x05:
            if len(body) < 2:
                raise Malformed("Register-Foreign-Device without its time to live")
            row["bvlc_ttl"] = int.from_bytes(body[:2], "big")
        elif function in (0x01, 0x03, 0x07):
            row["bvlc_entries"] = len(body) // 10
        elif function not in c.BVLC_FUNCTIONS:
            problems.append(("unknown_bvlc_function", f"BVLC function 0x{function:02x}"))
        return None

    def _npdu(self, data: bytes, position: int, row: dict[str, object]) -> int | None:
        """Clause 6.2: NPCI; returns the APDU offset, or None for a network layer message."""
        if len(data) < position + 2:
            raise Malformed("NPDU shorter than its 2-octet header")
        version, control = data[position], data[position + 1]
        row.update(
            npdu_version=version,
            npdu_control=control,
            network_message=bool(control & 0x80),
            expecting_reply=bool(control & 0x04),
            priority=c.PRIORITIES[control & 0x03],
        )
        if version != 1:
            raise Malformed(f"NPDU version {version}, not 1")
        position += 2
        if control & 0x20:
            position = self._address(data, position, row, "dnet", "dadr")
        if control & 0x08:
            position = self._address(data, position, row, "snet", "sadr")
        if control & 0x20:
            if position >= len(data):
                raise Malformed("hop count past the end")
            row["hop_count"] = data[position]
            position += 1
        if not control & 0x80:
            return position
        if position >= len(data):
            raise Malformed("network layer message type past the end")
        kind = data[position]
        position += 1
        row["network_message_type_code"] = kind
        row["network_message_type"] = c.NETWORK_MESSAGES.get(kind, f"network_message_0x{kind:02x}")
        if kind >= 0x80:
            if position + 2 > len(data):
                raise Malformed("proprietary network message without its vendor id")
            row["network_vendor_id"] = int.from_bytes(data[position : position + 2], "big")
        elif kind in (0x00, 0x01, 0x02, 0x04, 0x05, 0x12, 0x13):
            body = data[position:]
            if kind in (0x02, 0x13):  # I-Could-Be-Router (DNET, performance), Network-Number-Is (net, flag)
                body = body[:2]
            row["networks"] = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body) - 1, 2)]
        elif kind == 0x03 and len(data) >= position + 3:
            row["networks"] = [int.from_bytes(data[position + 1 : position + 3], "big")]
        return None

    @staticmethod
    def _address(data: bytes, position: int, row: dict[str, object], net: str, address: str) -> int:
        if position + 3 > len(data):
            raise Malformed(f"{net.upper()} past the end")
        row[net] = int.from_bytes(data[position : position + 2], "big")
        size = data[position + 2]
        position += 3
        if position + size > len(data):
            raise Malformed(f"{address.upper()} of {size} octets past the end")
        row[address] = data[position : position + size]
        return position + size

    # -- application layer -----------------------------------------------------------------------------------------

    def _apdu(
        self,
        data: bytes,
        direction: Direction,
        timestamp: float,
        row: dict[str, object],
        problems: list[tuple[str, str]],
    ) -> list[Event]:
        head = a.header(data)
        row.update(head.fields)
        kind, choice = head.pdu_type, head.service
        if kind == c.CONFIRMED_REQUEST:
            row["controls_device"] = choice in c.CONTROLS_DEVICE
        elif kind == c.UNCONFIRMED_REQUEST:
            row["controls_device"] = choice in c.UNCONFIRMED_CONTROLS_DEVICE
        invoke = row.get("invoke_id")
        if isinstance(invoke, int) and (head.sequence or 0) == 0:
            self._pair(kind, invoke, direction, timestamp, row)
        if choice is None:
            return []
        payload = data[head.payload :]
        if head.segmented:
            joined = self._segment(head, invoke, payload, direction, row, problems)
            if joined is None:
                return []
            payload = joined
        service = a.service(kind, choice, payload)
        row.update(service.fields)
        shared = {"service": row.get("service"), "invoke_id": invoke}
        events = [
            Event("bacnet_discovery", str(row["service"]), {**d, "service": row["service"]}) for d in service.discovery
        ]
        events += [Event("bacnet_property", str(p["message"]), {**shared, **p}) for p in service.properties]
        events += [Event("bacnet_device_control", str(d["message"]), {**shared, **d}) for d in service.controls]
        return events

    def _pair(self, kind: int, invoke: int, direction: Direction, timestamp: float, row: dict[str, object]) -> None:
        """Answers carry the invoke id of the request (clause 20.1.2.3); the requester is the other direction."""
        if kind == c.CONFIRMED_REQUEST:
            key = (direction, invoke)
            self.pending.pop(key, None)
            if len(self.pending) >= MAXIMUM_PENDING:
                self.pending.pop(next(iter(self.pending)))
            self.pending[key] = (timestamp, row.get("service"))  # type: ignore[assignment]
        elif kind in _ANSWERS:
            request = self.pending.pop((Direction(1 - direction), invoke), None)
            row["matched"] = request is not None
            if request is not None:
                row["request_service"] = request[1]
                row["latency"] = max(0.0, timestamp - request[0])
                if row.get("service") is None:
                    row["service"] = request[1]

    def _segment(
        self,
        head: a.Header,
        invoke: object,
        payload: bytes,
        direction: Direction,
        row: dict[str, object],
        problems: list[tuple[str, str]],
    ) -> bytes | None:
        """Collect a segment; the whole service data once the last one is in (clause 5.3)."""
        assert isinstance(invoke, int)
        key = (direction, invoke, head.pdu_type)
        sequence = head.sequence or 0
        if sequence == 0:
            if key in self.partial:
                problems.append(("segments_discarded", f"invoke id {invoke}: new first segment, earlier ones dropped"))
            if len(self.partial) >= MAXIMUM_PARTIAL:
                self.partial.pop(next(iter(self.partial)))
                problems.append(("too_many_segmented_messages", f"more than {MAXIMUM_PARTIAL} at once"))
            self.partial[key] = partial = _Partial([payload], 1, len(payload))
        else:
            found = self.partial.get(key)
            if found is None:
                problems.append(("first_segment_missing", f"invoke id {invoke}: segment {sequence} without segment 0"))
                return None
            partial = found
            if sequence != partial.next_sequence:
                if sequence == (partial.next_sequence - 1) & 0xFF:
                    problems.append(("duplicate_segment", f"invoke id {invoke}: segment {sequence} repeated"))
                    return None
                del self.partial[key]
                problems.append(
                    ("segment_sequence_error", f"invoke id {invoke}: segment {sequence}, {partial.next_sequence} due")
                )
                return None
            partial.chunks.append(payload)
            partial.next_sequence = (sequence + 1) & 0xFF
            partial.size += len(payload)
            if partial.size > MAXIMUM_REASSEMBLY:
                del self.partial[key]
                problems.append(("too_long_reassembly", f"invoke id {invoke}: over {MAXIMUM_REASSEMBLY} octets"))
                return None
        if head.more_follows:
            return None
        del self.partial[key]
        row["segments"] = len(partial.chunks)
        return b"".join(partial.chunks)


class BacnetDecoder(Decoder):
    """BACnet/IP, found by content: BVLC type 0x81, a known function, a length equal to the datagram's, NPDU v1."""

    name = PROTOCOL
    transport = "udp"
    ports = frozenset({c.BACNET_IP_PORT})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """Type 0x81, a known function and a BVLC length equal to the datagram's; NPDU version 1 where there is one.

        A device that gets the BVLC length wrong (seen in the wild: the length of the APDU's first part) is
        still found when the NPDU is well formed (version 1, reserved control bits clear) and a valid APDU type
        or a network message follows. The port plays no part: BACnet/IP on 47809 is found as well.
        """
        if len(payload) < 4 or payload[0] != c.BVLC_TYPE_BIP or payload[1] not in c.BVLC_FUNCTIONS:
            return False
        exact = int.from_bytes(payload[2:4], "big") == len(payload)
        start = c.NPDU_FUNCTIONS.get(payload[1])
        if start is None:
            return exact and payload[1] != 0x0C  # Secure-BVLL alone is too little to go on
        if len(payload) < start + 2 or payload[start] != 1:
            return False
        if exact:
            return True
        control = payload[start + 1]
        if control & 0x50:
            return False
        if control & 0x80:
            return True
        position = start + 2
        for flag in (0x20, 0x08):
            if control & flag:
                if position + 3 > len(payload):
                    return False
                position += 3 + payload[position + 2]
        position += 1 if control & 0x20 else 0
        return position < len(payload) and payload[position] >> 4 <= c.ABORT

    def session(self) -> Session:
        return BacnetSession()


__all__ = ["TABLES", "BacnetDecoder", "BacnetSession"]

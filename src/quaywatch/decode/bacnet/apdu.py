"""BACnet application layer (ASHRAE 135-2020 clauses 20 and 21): APDU headers and the services quaywatch reads.

:func:`header` reads the fixed part of an APDU (clause 20.1); :func:`service` reads a whole (reassembled) service
request or acknowledgement and fills the rows of ``bacnet_discovery``, ``bacnet_property`` and
``bacnet_device_control``. Both raise :class:`~quaywatch.decode.bacnet.tags.Malformed` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quaywatch.decode.bacnet import constants as c
from quaywatch.decode.bacnet import tags as t
from quaywatch.decode.bacnet.tags import Malformed

Row = dict[str, object]


@dataclass(slots=True)
class Header:
    pdu_type: int
    fields: Row
    payload: int = 0  # offset of the service data
    service: int | None = None
    segmented: bool = False
    more_follows: bool = False
    sequence: int | None = None


@dataclass(slots=True)
class Service:
    """Rows read from one service request or acknowledgement."""

    discovery: list[Row] = field(default_factory=list)
    properties: list[Row] = field(default_factory=list)
    controls: list[Row] = field(default_factory=list)
    fields: Row = field(default_factory=dict)  # more columns of the bacnet row


def _need(apdu: bytes, size: int, what: str) -> None:
    if len(apdu) < size:
        raise Malformed(f"{what} needs {size} octets, {len(apdu)} present")


def service_name(pdu_type: int, choice: int | None) -> str | None:
    if choice is None:
        return None
    if pdu_type == c.UNCONFIRMED_REQUEST:
        return c.UNCONFIRMED_SERVICES.get(choice, f"unconfirmed_service_{choice}")
    return c.CONFIRMED_SERVICES.get(choice, f"confirmed_service_{choice}")


def header(apdu: bytes) -> Header:
    """The APDU fixed header (clause 20.1.2-20.1.9)."""
    _need(apdu, 1, "APDU")
    first = apdu[0]
    kind = first >> 4
    row: Row = {"pdu_type_code": kind, "pdu_type": c.PDU_TYPES.get(kind, f"PDU_TYPE_{kind}")}
    result = Header(kind, row)
    if kind == c.CONFIRMED_REQUEST:
        _need(apdu, 4, "Confirmed-Request")
        result.segmented, result.more_follows = bool(first & 0x08), bool(first & 0x04)
        row.update(
            segmented=result.segmented,
            more_follows=result.more_follows,
            segmented_response_accepted=bool(first & 0x02),
            max_segments=c.MAX_SEGMENTS.get((apdu[1] >> 4) & 0x07),
            max_apdu=c.MAX_APDU.get(apdu[1] & 0x0F),
            invoke_id=apdu[2],
        )
        position = 3
        if result.segmented:
            _need(apdu, 6, "segmented Confirmed-Request")
            result.sequence = apdu[3]
            row.update(sequence_number=apdu[3], window_size=apdu[4])
            position = 5
        result.service, result.payload = apdu[position], position + 1
    elif kind == c.UNCONFIRMED_REQUEST:
        _need(apdu, 2, "Unconfirmed-Request")
        result.service, result.payload = apdu[1], 2
    elif kind == c.SIMPLE_ACK:
        _need(apdu, 3, "SimpleACK")
        row["invoke_id"] = apdu[1]
        result.service, result.payload = apdu[2], 3
    elif kind == c.COMPLEX_ACK:
        _need(apdu, 3, "ComplexACK")
        result.segmented, result.more_follows = bool(first & 0x08), bool(first & 0x04)
        row.update(segmented=result.segmented, more_follows=result.more_follows, invoke_id=apdu[1])
        position = 2
        if result.segmented:
            _need(apdu, 5, "segmented ComplexACK")
            result.sequence = apdu[2]
            row.update(sequence_number=apdu[2], window_size=apdu[3])
            position = 4
        result.service, result.payload = apdu[position], position + 1
    elif kind == c.SEGMENT_ACK:
        _need(apdu, 4, "SegmentACK")
        row.update(
            negative_ack=bool(first & 0x02),
            from_server=bool(first & 0x01),
            invoke_id=apdu[1],
            sequence_number=apdu[2],
            window_size=apdu[3],
        )
        result.payload = 4
    elif kind == c.ERROR:
        _need(apdu, 3, "Error-PDU")
        row["invoke_id"] = apdu[1]
        result.service, result.payload = apdu[2], 3
    elif kind in (c.REJECT, c.ABORT):
        _need(apdu, 3, c.PDU_TYPES[kind])
        names = c.REJECT_REASONS if kind == c.REJECT else c.ABORT_REASONS
        row.update(invoke_id=apdu[1], reason_code=apdu[2], reason=names.get(apdu[2], f"reason-{apdu[2]}"))
        if kind == c.ABORT:
            row["from_server"] = bool(first & 0x01)
        result.payload = 3
    else:
        raise Malformed(f"APDU type {kind} is reserved")
    if result.service is not None:
        row["service_choice"] = result.service
        row["service"] = service_name(kind, result.service)
    return result


# -- services ---------------------------------------------------------------------------------------------------


def _object(data: bytes, found: t.Tag) -> Row:
    object_type, instance = t.object_identifier(data, found)
    return {
        "object_type_code": object_type,
        "object_type": c.OBJECT_TYPES.get(object_type),
        "object_instance": instance,
    }


def _property(data: bytes, found: t.Tag) -> Row:
    identifier = t.unsigned(data, found)
    return {"property_id": identifier, "property": c.PROPERTY_IDENTIFIERS.get(identifier)}


def _values(row: Row, kept: list[t.Value], count: int) -> None:
    row["value_count"] = count
    if kept:
        first = kept[0]
        row["value_tag"] = first.tag
        row["value"] = first.text
        row["value_number"] = first.number
    if count > 1:
        row["values"] = [v.text for v in kept]


def _reference(data: bytes, position: int, property_tag: int, what: str) -> tuple[Row, int]:
    """Property identifier and optional array index (context tags ``property_tag`` and the next one)."""
    found = t.expect(data, position, property_tag, f"{what} property identifier")
    row = _property(data, found)
    position = found.end
    index = t.peek(data, position, property_tag + 1)
    if index is not None:
        row["array_index"] = t.unsigned(data, index)
        position = index.end
    return row, position


def _error(data: bytes, position: int) -> tuple[Row, int]:
    """Error class and code: two application enumerations (clause 21, Error)."""
    first = t.expect_application(data, position, 9, "error class")
    second = t.expect_application(data, first.end, 9, "error code")
    klass, code = t.unsigned(data, first), t.unsigned(data, second)
    return {
        "error_class_code": klass,
        "error_class": c.ERROR_CLASSES.get(klass, f"error-class-{klass}"),
        "error_code_code": code,
        "error_code": c.ERROR_CODES.get(code, f"error-code-{code}"),
    }, second.end


def _limits(data: bytes, position: int, row: Row) -> int:
    low = t.peek(data, position, 0)
    if low is not None:
        high = t.expect(data, low.end, 1, "device instance range high limit")
        row["low_limit"], row["high_limit"] = t.unsigned(data, low), t.unsigned(data, high)
        position = high.end
    return position


def _password(data: bytes, position: int, number: int, row: Row) -> int:
    """Presence and length of a password (the password itself is never kept)."""
    found = t.peek(data, position, number)
    row["password_present"] = found is not None
    if found is None:
        return position
    text, _charset = t.character_string(data, found)
    row["password_length"] = len(text)
    return found.end


def service(pdu_type: int, choice: int, data: bytes) -> Service:
    """Read one service's data (``data`` starts after the service choice)."""
    out = Service()
    if pdu_type == c.UNCONFIRMED_REQUEST:
        _unconfirmed(choice, data, out)
    elif pdu_type == c.CONFIRMED_REQUEST:
        _confirmed(choice, data, out)
    elif pdu_type == c.COMPLEX_ACK:
        _complex_ack(choice, data, out)
    elif pdu_type == c.ERROR:
        _error_pdu(choice, data, out)
    elif pdu_type == c.SIMPLE_ACK and choice in (c.DEVICE_COMMUNICATION_CONTROL, c.REINITIALIZE_DEVICE):
        out.controls.append({"message": "response", "result": "SUCCESS"})
    return out


def _unconfirmed(choice: int, data: bytes, out: Service) -> None:
    row: Row = {}
    if choice == c.WHO_IS:
        _limits(data, 0, row)
    elif choice == c.I_AM:
        found = t.expect_application(data, 0, 12, "I-Am device identifier")
        device_type, instance = t.object_identifier(data, found)
        apdu = t.expect_application(data, found.end, 2, "I-Am max APDU length")
        segmentation = t.expect_application(data, apdu.end, 9, "I-Am segmentation")
        vendor = t.expect_application(data, segmentation.end, 2, "I-Am vendor identifier")
        vendor_id = t.unsigned(data, vendor)
        code = t.unsigned(data, segmentation)
        row.update(
            device_object_type=c.OBJECT_TYPES.get(device_type),
            device_instance=instance,
            max_apdu=t.unsigned(data, apdu),
            segmentation_code=code,
            segmentation=c.SEGMENTATION.get(code),
            vendor_id=vendor_id,
            vendor=c.vendors().get(vendor_id),
        )
    elif choice == c.WHO_HAS:
        position = _limits(data, 0, row)
        by_id = t.peek(data, position, 2)
        if by_id is not None:
            row.update(_object(data, by_id))
        else:
            by_name = t.expect(data, position, 3, "Who-Has object identifier or name")
            row["object_name"], _charset = t.character_string(data, by_name)
    elif choice == c.I_HAVE:
        device = t.expect_application(data, 0, 12, "I-Have device identifier")
        device_type, instance = t.object_identifier(data, device)
        found = t.expect_application(data, device.end, 12, "I-Have object identifier")
        name = t.expect_application(data, found.end, 7, "I-Have object name")
        row.update(device_object_type=c.OBJECT_TYPES.get(device_type), device_instance=instance)
        row.update(_object(data, found))
        row["object_name"], _charset = t.character_string(data, name)
    else:
        return
    out.discovery.append(row)


def _confirmed(choice: int, data: bytes, out: Service) -> None:
    if choice in (c.READ_PROPERTY, c.WRITE_PROPERTY, c.READ_RANGE):
        found = t.expect(data, 0, 0, "object identifier")
        row = _object(data, found)
        reference, position = _reference(data, found.end, 1, "")
        row.update(reference, message="request")
        if choice == c.WRITE_PROPERTY:
            opening = t.expect(data, position, 3, "property value", t.OPENING)
            kept, count, position = t.values(data, opening.end, 3, row["property_id"])  # type: ignore[arg-type]
            _values(row, kept, count)
            priority = t.peek(data, position, 4)
            if priority is not None:
                row["priority"] = t.unsigned(data, priority)
            row["writes"] = True
        out.properties.append(row)
    elif choice in (c.READ_PROPERTY_MULTIPLE, c.WRITE_PROPERTY_MULTIPLE):
        writes = choice == c.WRITE_PROPERTY_MULTIPLE
        position = 0
        while position < len(data):
            found = t.expect(data, position, 0, "object identifier")
            target = _object(data, found)
            position = t.expect(data, found.end, 1, "list of properties", t.OPENING).end
            while t.peek(data, position, 1, t.CLOSING) is None:
                reference, position = _reference(data, position, 0, "")
                row = {**target, **reference, "message": "request"}
                if writes:
                    opening = t.expect(data, position, 2, "property value", t.OPENING)
                    kept, count, position = t.values(data, opening.end, 2, row["property_id"])  # type: ignore[arg-type]
                    _values(row, kept, count)
                    priority = t.peek(data, position, 3)
                    if priority is not None:
                        row["priority"] = t.unsigned(data, priority)
                        position = priority.end
                    row["writes"] = True
                out.properties.append(row)
            position = t.tag(data, position).end
    elif choice == c.DEVICE_COMMUNICATION_CONTROL:
        row = {"message": "request"}
        position = 0
        duration = t.peek(data, 0, 0)
        if duration is not None:
            row["time_duration"] = t.unsigned(data, duration)
            position = duration.end
        state = t.expect(data, position, 1, "enable-disable")
        code = t.unsigned(data, state)
        row.update(state_code=code, state=c.ENABLE_DISABLE.get(code, f"state-{code}"))
        _password(data, state.end, 2, row)
        out.controls.append(row)
    elif choice == c.REINITIALIZE_DEVICE:
        state = t.expect(data, 0, 0, "reinitialized-state-of-device")
        code = t.unsigned(data, state)
        row = {"message": "request", "state_code": code, "state": c.REINITIALIZED_STATES.get(code, f"state-{code}")}
        _password(data, state.end, 1, row)
        out.controls.append(row)


def _complex_ack(choice: int, data: bytes, out: Service) -> None:
    if choice == c.READ_PROPERTY:
        found = t.expect(data, 0, 0, "object identifier")
        row = _object(data, found)
        reference, position = _reference(data, found.end, 1, "")
        row.update(reference, message="ack")
        opening = t.expect(data, position, 3, "property value", t.OPENING)
        kept, count, _end = t.values(data, opening.end, 3, row["property_id"])  # type: ignore[arg-type]
        _values(row, kept, count)
        out.properties.append(row)
    elif choice == c.READ_PROPERTY_MULTIPLE:
        position = 0
        while position < len(data):
            found = t.expect(data, position, 0, "object identifier")
            target = _object(data, found)
            position = t.expect(data, found.end, 1, "list of results", t.OPENING).end
            while t.peek(data, position, 1, t.CLOSING) is None:
                reference, position = _reference(data, position, 2, "")
                row = {**target, **reference, "message": "ack"}
                found_value = t.peek(data, position, 4, t.OPENING)
                if found_value is not None:
                    kept, count, position = t.values(data, found_value.end, 4, row["property_id"])  # type: ignore[arg-type]
                    _values(row, kept, count)
                else:
                    opening = t.expect(data, position, 5, "property value or access error", t.OPENING)
                    error, position = _error(data, opening.end)
                    row.update(error)
                    position = t.expect(data, position, 5, "end of property access error", t.CLOSING).end
                out.properties.append(row)
            position = t.tag(data, position).end


def _error_pdu(choice: int, data: bytes, out: Service) -> None:
    """Error-PDU: an Error, or for some services an Error inside a constructed choice (clause 21)."""
    position = 0
    first = t.tag(data, 0)
    if first.context and first.kind == t.OPENING:
        position = first.end
    error, _end = _error(data, position)
    out.fields.update(error)
    if choice in (c.DEVICE_COMMUNICATION_CONTROL, c.REINITIALIZE_DEVICE):
        out.controls.append({"message": "response", "result": "ERROR", **error})

"""Modbus/TCP PDU parsing: bytes in, field dictionaries out, no I/O.

Each parser takes one PDU (function code first) and returns the fields of
the ``modbus`` table it can fill, or raises :class:`Malformed` with a reason;
the session turns that into an anomaly event.
"""

from __future__ import annotations

from quaywatch.decode.modbus.constants import DEVICE_OBJECTS, DIAGNOSTIC_SUB_FUNCTIONS, MEI_TYPES

Fields = dict[str, object]


class Malformed(ValueError):
    """The PDU contradicts the specification."""


def _u16(pdu: bytes, offset: int) -> int:
    if offset + 2 > len(pdu):
        raise Malformed(f"PDU of {len(pdu)} bytes ends before the field at offset {offset}")
    return (pdu[offset] << 8) | pdu[offset + 1]


def _registers(data: bytes) -> list[int]:
    if len(data) % 2:
        raise Malformed(f"register data of odd length {len(data)}")
    return [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]


def _bits(data: bytes, count: int | None) -> list[int]:
    bits = [(byte >> shift) & 1 for byte in data for shift in range(8)]
    return bits if count is None else bits[:count]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def request(function: int, pdu: bytes) -> Fields:
    """Fields of a request PDU (client to server)."""
    if function in (1, 2, 3, 4):
        quantity = _u16(pdu, 3)
        limit = 2000 if function in (1, 2) else 125
        if not 1 <= quantity <= limit:
            raise Malformed(f"read quantity {quantity} outside 1..{limit}")
        return {"address": _u16(pdu, 1), "quantity": quantity}
    if function == 5:
        value = _u16(pdu, 3)
        if value not in (0x0000, 0xFF00):
            raise Malformed(f"write single coil value 0x{value:04x} is neither 0xFF00 nor 0x0000")
        return {"address": _u16(pdu, 1), "quantity": 1, "values": [1 if value else 0]}
    if function == 6:
        return {"address": _u16(pdu, 1), "quantity": 1, "values": [_u16(pdu, 3)]}
    if function in (7, 11, 12, 17):
        return {}
    if function == 8:
        sub_function = _u16(pdu, 1)
        return {
            "sub_function": sub_function,
            "sub_function_name": DIAGNOSTIC_SUB_FUNCTIONS.get(sub_function, f"SUB_FUNCTION_{sub_function}"),
            "data": bytes(pdu[3:]),
        }
    if function == 15:
        address, quantity = _u16(pdu, 1), _u16(pdu, 3)
        count = pdu[5] if len(pdu) > 5 else -1
        data = pdu[6:]
        if count != len(data) or count != (quantity + 7) // 8:
            raise Malformed(f"write multiple coils byte count {count} does not fit quantity {quantity}")
        return {"address": address, "quantity": quantity, "values": _bits(data, quantity)}
    if function == 16:
        address, quantity = _u16(pdu, 1), _u16(pdu, 3)
        count = pdu[5] if len(pdu) > 5 else -1
        data = pdu[6:]
        if count != len(data) or count != 2 * quantity:
            raise Malformed(f"write multiple registers byte count {count} does not fit quantity {quantity}")
        return {"address": address, "quantity": quantity, "values": _registers(data)}
    if function in (20, 21):
        count = pdu[1] if len(pdu) > 1 else -1
        if count != len(pdu) - 2:
            raise Malformed(f"file record byte count {count} does not match {len(pdu) - 2} bytes")
        return {"data": bytes(pdu[2:])}
    if function == 22:
        return {"address": _u16(pdu, 1), "and_mask": _u16(pdu, 3), "or_mask": _u16(pdu, 5)}
    if function == 23:
        read_address, read_quantity = _u16(pdu, 1), _u16(pdu, 3)
        address, quantity = _u16(pdu, 5), _u16(pdu, 7)
        count = pdu[9] if len(pdu) > 9 else -1
        data = pdu[10:]
        if count != len(data) or count != 2 * quantity:
            raise Malformed(f"read/write multiple byte count {count} does not fit write quantity {quantity}")
        return {
            "read_address": read_address,
            "read_quantity": read_quantity,
            "address": address,
            "quantity": quantity,
            "values": _registers(data),
        }
    if function == 24:
        return {"address": _u16(pdu, 1)}
    if function == 43:
        if len(pdu) < 2:
            raise Malformed("encapsulated interface transport without a MEI type")
        mei = pdu[1]
        fields: Fields = {"mei_type": mei, "mei_name": MEI_TYPES.get(mei, f"MEI_{mei}")}
        if mei == 14:
            if len(pdu) < 4:
                raise Malformed("read device identification request shorter than 4 bytes")
            fields["device_id_code"] = pdu[2]
            fields["object_id"] = pdu[3]
        else:
            fields["data"] = bytes(pdu[2:])
        return fields
    return {"data": bytes(pdu[1:])}


def response(function: int, pdu: bytes, pending: Fields | None) -> Fields:
    """Fields of a normal response PDU; ``pending`` is the matching request's fields, if seen."""
    if function in (1, 2):
        count = pdu[1] if len(pdu) > 1 else -1
        if count != len(pdu) - 2:
            raise Malformed(f"read bits byte count {count} does not match {len(pdu) - 2} data bytes")
        quantity = pending.get("quantity") if pending else None
        return {"values": _bits(pdu[2:], quantity if isinstance(quantity, int) else None)}
    if function in (3, 4, 23):
        count = pdu[1] if len(pdu) > 1 else -1
        if count != len(pdu) - 2:
            raise Malformed(f"read registers byte count {count} does not match {len(pdu) - 2} data bytes")
        return {"values": _registers(pdu[2:])}
    if function == 5:
        value = _u16(pdu, 3)
        return {"address": _u16(pdu, 1), "quantity": 1, "values": [1 if value else 0]}
    if function == 6:
        return {"address": _u16(pdu, 1), "quantity": 1, "values": [_u16(pdu, 3)]}
    if function == 7:
        if len(pdu) < 2:
            raise Malformed("read exception status response without a status byte")
        return {"values": [pdu[1]]}
    if function == 8:
        sub_function = _u16(pdu, 1)
        return {
            "sub_function": sub_function,
            "sub_function_name": DIAGNOSTIC_SUB_FUNCTIONS.get(sub_function, f"SUB_FUNCTION_{sub_function}"),
            "data": bytes(pdu[3:]),
        }
    if function == 11:
        return {"values": [_u16(pdu, 1), _u16(pdu, 3)]}
    if function in (12, 17, 20, 21):
        count = pdu[1] if len(pdu) > 1 else -1
        if count != len(pdu) - 2:
            raise Malformed(f"byte count {count} does not match {len(pdu) - 2} data bytes")
        return {"data": bytes(pdu[2:])}
    if function in (15, 16):
        return {"address": _u16(pdu, 1), "quantity": _u16(pdu, 3)}
    if function == 22:
        return {"address": _u16(pdu, 1), "and_mask": _u16(pdu, 3), "or_mask": _u16(pdu, 5)}
    if function == 24:
        count, fifo = _u16(pdu, 1), _u16(pdu, 3)
        if count != len(pdu) - 3 or count != 2 + 2 * fifo:
            raise Malformed(f"FIFO byte count {count} does not fit {fifo} registers")
        return {"quantity": fifo, "values": _registers(pdu[5:])}
    if function == 43:
        return _mei_response(pdu)
    return {"data": bytes(pdu[1:])}


def _mei_response(pdu: bytes) -> Fields:
    if len(pdu) < 2:
        raise Malformed("encapsulated interface transport response without a MEI type")
    mei = pdu[1]
    fields: Fields = {"mei_type": mei, "mei_name": MEI_TYPES.get(mei, f"MEI_{mei}")}
    if mei != 14:
        fields["data"] = bytes(pdu[2:])
        return fields
    if len(pdu) < 7:
        raise Malformed("read device identification response shorter than its 7-byte header")
    fields["device_id_code"] = pdu[2]
    fields["conformity_level"] = pdu[3]
    fields["more_follows"] = pdu[4] == 0xFF
    fields["object_id"] = pdu[5]
    count = pdu[6]
    position = 7
    objects: list[dict[str, object]] = []
    for _ in range(count):
        if position + 2 > len(pdu):
            raise Malformed(f"device identification object list ends at byte {position} of {len(pdu)}")
        object_id, length = pdu[position], pdu[position + 1]
        value = pdu[position + 2 : position + 2 + length]
        if len(value) != length:
            raise Malformed(f"device identification object {object_id} claims {length} bytes, {len(value)} present")
        text = _text(value)
        objects.append({"id": object_id, "value": text})
        column = DEVICE_OBJECTS.get(object_id)
        if column:
            fields[column] = text
        position += 2 + length
    fields["device_objects"] = objects
    return fields

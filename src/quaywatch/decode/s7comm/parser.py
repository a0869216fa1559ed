"""S7comm and S7comm-plus PDU parsing: bytes in, field dictionaries out, no I/O."""

from __future__ import annotations

from quaywatch.decode.s7comm import constants as c

Fields = dict[str, object]


class Malformed(ValueError):
    """The PDU contradicts the protocol's structure."""


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise Malformed(f"{len(data)}-byte PDU ends before offset {offset}")
    return (data[offset] << 8) | data[offset + 1]


def _u32(data: bytes, offset: int) -> int:
    return (_u16(data, offset) << 16) | _u16(data, offset + 2)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("utf-8", "backslashreplace")


def s7(pdu: bytes, continuation: bool = False) -> Fields:
    """One S7comm PDU (protocol id 0x32).

    ``continuation``: a user-data response that continues an earlier one (its data carries
    the rest of the records, without the SZL header).
    """
    if len(pdu) < 10:
        raise Malformed(f"S7 header needs 10 bytes, {len(pdu)} present")
    rosctr = pdu[1]
    fields: Fields = {
        "rosctr_code": rosctr,
        "rosctr": c.ROSCTR.get(rosctr, f"ROSCTR {rosctr}"),
        "pdu_reference": _u16(pdu, 4),
    }
    parameter_length, data_length = _u16(pdu, 6), _u16(pdu, 8)
    header = 12 if rosctr in (2, 3) else 10
    if rosctr in (2, 3):
        if len(pdu) < 12:
            raise Malformed("acknowledgement header needs 12 bytes")
        fields["error_class_code"] = pdu[10]
        fields["error_class"] = c.ERROR_CLASSES.get(pdu[10], f"Error class 0x{pdu[10]:02x}")
        fields["error_code"] = pdu[11]
    parameter = pdu[header : header + parameter_length]
    data = pdu[header + parameter_length : header + parameter_length + data_length]
    if len(parameter) != parameter_length or len(data) != data_length:
        raise Malformed(
            f"parameter {parameter_length} + data {data_length} bytes declared, {len(pdu) - header} present"
        )
    if rosctr == 7:
        fields.update(_userdata(parameter, data, continuation))
    elif parameter:
        fields.update(_job(rosctr, parameter, data))
    return fields


def _job(rosctr: int, parameter: bytes, data: bytes) -> Fields:
    function = parameter[0]
    fields: Fields = {
        "function_code": function,
        "function": c.FUNCTIONS.get(function, f"Function 0x{function:02x}"),
        "controls_plc": function in c.CONTROL_FUNCTIONS,
    }
    if function == 0xF0 and len(parameter) >= 8:
        fields.update(
            max_amq_calling=_u16(parameter, 2), max_amq_called=_u16(parameter, 4), pdu_length=_u16(parameter, 6)
        )
    elif function in (0x04, 0x05):
        count = parameter[1] if len(parameter) > 1 else 0
        fields["item_count"] = count
        if rosctr == 1:
            fields["items"] = _items(parameter[2:], count)
            if function == 0x05:
                fields["values"] = [bytes(value) for _, value in _data_items(data, count)]
        elif function == 0x04:
            returned = _data_items(data, count)
            fields["return_codes"] = [code for code, _ in returned]
            fields["values"] = [bytes(value) for _, value in returned]
        else:
            fields["return_codes"] = list(data[:count])
    elif function in (0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F):
        fields.update(_transfer(function, rosctr, parameter, data))
    elif function in (0x28, 0x29):
        fields.update(_program_invocation(function, parameter))
    return fields


def _items(parameter: bytes, count: int) -> list[Fields]:
    items: list[Fields] = []
    position = 0
    for _ in range(count):
        if position + 2 > len(parameter) or parameter[position] != 0x12:
            raise Malformed(f"variable specification {len(items)} does not start with 0x12")
        length = parameter[position + 1]
        spec = parameter[position + 2 : position + 2 + length]
        if len(spec) != length or length < 1:
            raise Malformed(f"variable specification {len(items)} cut short")
        syntax = spec[0]
        item: Fields = {"syntax_id": syntax}
        if syntax == 0x10 and length >= 10:  # S7ANY
            address = (spec[7] << 16) | (spec[8] << 8) | spec[9]
            area = spec[6]
            item.update(
                transport_size=spec[1],
                length=_u16(spec, 2),
                db=_u16(spec, 4),
                area_code=area,
                area=c.AREAS.get(area, f"Area 0x{area:02x}"),
                byte_offset=address >> 3,
                bit=address & 7,
            )
        items.append(item)
        position += 2 + length
    return items


def _data_items(data: bytes, count: int) -> list[tuple[int, bytes]]:
    """(return code, value bytes) of each data item; lengths in bits for bit/byte/word transport sizes."""
    items = []
    position = 0
    for index in range(count):
        if position + 4 > len(data):
            if position + 1 <= len(data):
                items.append((data[position], b""))  # an error item carries only its return code
                position += 4
                continue
            break
        code, size, length = data[position], data[position + 1], _u16(data, position + 2)
        octets = (length + 7) // 8 if size in (0x03, 0x04, 0x05) else length
        value = data[position + 4 : position + 4 + octets]
        items.append((code, value))
        position += 4 + octets
        if octets % 2 and index < count - 1:
            position += 1  # fill byte between items
    return items


def _filename(name: bytes) -> Fields:
    text = name.decode("ascii", "backslashreplace")
    fields: Fields = {"filename": text}
    if len(text) >= 9 and text.startswith("_"):
        fields["block_type"] = c.BLOCK_TYPES.get(text[1:3].upper(), f"Block type {text[1:3]}")
        fields["block_number"] = text[3:8]
        fields["destination_filesystem"] = c.FILESYSTEMS.get(text[8], text[8])
    return fields


def _transfer(function: int, rosctr: int, parameter: bytes, data: bytes) -> Fields:
    """Upload and download: session ids, file names (block type, number, file system), lengths."""
    fields: Fields = {"function_status": parameter[1] if len(parameter) > 1 else None}
    if len(parameter) >= 8:
        fields["session_id"] = _u32(parameter, 4)
    if len(parameter) > 8:
        length = parameter[8]
        text = parameter[9 : 9 + length]
        if rosctr == 1 and function in (0x1A, 0x1B, 0x1C, 0x1D):
            fields.update(_filename(bytes(text)))
        elif rosctr == 3 and function == 0x1D:
            digits = bytes(text).decode("ascii", "replace")
            fields["block_length"] = int(digits) if digits.isdigit() else None
    if rosctr == 3 and function == 0x1E and len(data) >= 2:
        fields["block_length"] = _u16(data, 0)
    return fields


def _program_invocation(function: int, parameter: bytes) -> Fields:
    """PI services (0x28: start, insert, delete, compress...) and PLC stop (0x29): the service name and its block."""
    if function == 0x29:
        if len(parameter) < 7:
            return {}
        length = parameter[6]
        return {"pi_service": _text(parameter[7 : 7 + length])}
    if len(parameter) < 10:
        return {}
    block_length = _u16(parameter, 8)
    block = parameter[10 : 10 + block_length]
    position = 10 + block_length
    length = parameter[position] if position < len(parameter) else 0
    return {
        "pi_service": _text(parameter[position + 1 : position + 1 + length]),
        "pi_arguments": bytes(block),
    }


def _userdata(parameter: bytes, data: bytes, continuation: bool) -> Fields:
    if len(parameter) < 8 or parameter[:3] != b"\x00\x01\x12":
        raise Malformed("user-data parameter header is not 00 01 12")
    kind, group, subfunction = parameter[5] >> 4, parameter[5] & 0x0F, parameter[6]
    fields: Fields = {
        "function_code": parameter[5],
        "function": f"{c.USERDATA_TYPES.get(kind, f'Type {kind}')}: {c.USERDATA_GROUPS.get(group, f'Group {group}')}",
        "subfunction_code": subfunction,
        "subfunction": c.USERDATA_SUBFUNCTIONS.get((group, subfunction), f"Subfunction 0x{subfunction:02x}"),
        "sequence_number": parameter[7],
        "controls_plc": (group, subfunction) in ((0x7, 0x02), (0x7, 0x04), (0x5, 0x01)),
    }
    if parameter[3] >= 8 and len(parameter) >= 12:
        fields["data_unit_reference"] = parameter[8]
        fields["last_data_unit"] = parameter[9] == 0
        fields["error_code"] = _u16(parameter, 10)
    if kind == 0x8 and continuation:
        fields["continuation"] = True
        if data:
            fields["return_code"] = data[0]
            fields["continuation_data"] = bytes(data[4:])
    elif group == 0x4 and subfunction == 0x01 and len(data) >= 8:
        fields["return_code"] = data[0]
        fields["szl_id"] = _u16(data, 4)
        fields["szl_index"] = _u16(data, 6)
        fields["szl_id_name"] = c.SZL_IDS.get(fields["szl_id"] & 0x0FFF, f"SZL 0x{fields['szl_id']:04x}")  # type: ignore[operator]
        if kind == 0x8 and data[0] == 0xFF and len(data) >= 12:
            fields["szl_record_size"], fields["szl_record_count"] = _u16(data, 8), _u16(data, 10)
            fields["szl_records"] = bytes(data[12:])
            fields.update(_szl_records(fields["szl_id"], data[12:], _u16(data, 8), _u16(data, 10)))  # type: ignore[arg-type]
    elif data:
        fields["return_code"] = data[0]
    return fields


def szl_records(szl_id: int, records: bytes, size: int, count: int) -> Fields:
    """Identification fields from a complete SZL record list (used after multi-part reassembly)."""
    return _szl_records(szl_id, records, size, count)


def _szl_records(szl_id: int, records: bytes, size: int, count: int) -> Fields:
    """Module (0x0011) and component (0x001C) identification: what identifies the PLC."""
    fields: Fields = {}
    if size == 0:
        return fields
    for index in range(min(count, len(records) // size)):
        record = records[index * size : (index + 1) * size]
        number = _u16(record, 0)
        if szl_id & 0x00FF == 0x11 and size >= 28:
            order = _text(record[2:22])
            version = f"V{record[25]}.{record[26]}.{record[27]}" if record[24:25] == b"V" else None
            if number == 1:
                fields["order_number"] = order
            elif number == 6:
                fields["hardware_order_number"] = order
            elif number == 7:
                fields["firmware_version"] = version or f"{record[26]}.{record[27]}"
        elif szl_id & 0x00FF == 0x1C and size >= 34:
            column = c.COMPONENTS.get(number)
            if column:
                fields[column] = _text(record[2:34])
    return fields


def plus(pdu: bytes) -> Fields:
    """S7comm-plus (protocol id 0x72): version, opcode and function; integrity-protected bodies stay opaque."""
    if len(pdu) < 4:
        raise Malformed("S7comm-plus header needs 4 bytes")
    version = pdu[1]
    fields: Fields = {"version": version}
    position = 4
    if version == 3 and len(pdu) > position:
        position += 1 + pdu[position]  # integrity digest
    if position >= len(pdu):
        return fields
    opcode = pdu[position]
    fields["opcode"] = opcode
    fields["opcode_name"] = c.PLUS_OPCODES.get(opcode, f"Opcode 0x{opcode:02x}")
    if opcode in (0x31, 0x32) and position + 5 <= len(pdu):
        function = _u16(pdu, position + 3)
        fields["function_code"] = function
        fields["function"] = c.PLUS_FUNCTIONS.get(function, f"Function 0x{function:04x}")
        if position + 9 <= len(pdu):
            fields["sequence_number"] = _u16(pdu, position + 7)
    return fields

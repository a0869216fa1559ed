"""DNP3 application fragments: header, internal indications, object headers and the values that matter.

Every object header is reported. Values are decoded for what a monitor acts on: control relay
output blocks and pattern control blocks (group 12), analog output blocks (group 41), times
(groups 50 and 52), file-control objects (group 70) and device attributes (group 0). Other
point values are stepped over by size without being decoded, which keeps large responses cheap.
A fragment that contradicts IEEE 1815-2012 yields the fields read so far plus problems; parsing
never raises.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from quaywatch.decode.dnp3 import constants as c

Fields = dict[str, object]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CROB = struct.Struct("<BBIIB")
_ANALOG = {1: struct.Struct("<iB"), 2: struct.Struct("<hB"), 3: struct.Struct("<fB"), 4: struct.Struct("<dB")}
_FILE_COMMAND = struct.Struct("<HH6sHIIHHH")
_FILE_STATUS = struct.Struct("<IIHHB")
_FILE_TRANSPORT = struct.Struct("<II")
_FILE_TRANSPORT_STATUS = struct.Struct("<IIB")
_FILE_DESCRIPTOR = struct.Struct("<HHHI6sHH")
_FILE_AUTHENTICATION = struct.Struct("<HHHHI")
_IIN_BITS = sorted(c.IIN_NAMES.items(), key=lambda item: (item[0] < 0x100, item[0]))
#: Groups whose points are decoded one by one; the others are skipped by size.
_DECODED = frozenset({0, 12, 41, 50, 52, 70})


@dataclass(slots=True)
class Parsed:
    """What one application fragment says."""

    fields: Fields = field(default_factory=dict)
    objects: list[Fields] = field(default_factory=list)
    controls: list[Fields] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _time(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def iin_flags(iin: int) -> list[str]:
    """Names of the internal indication bits set, IIN1 first."""
    return [name for bit, name in _IIN_BITS if iin & bit]


def parse(fragment: bytes) -> Parsed:
    """Parse one reassembled application fragment."""
    parsed = Parsed()
    size = len(fragment)
    if size < 2:
        parsed.problems.append(("truncated_header", f"application fragment of {size} octets, the header needs 2"))
        return parsed
    control, function = fragment[0], fragment[1]
    fields = parsed.fields
    fields["application_control"] = control
    fields["first"] = bool(control & 0x80)
    fields["final"] = bool(control & 0x40)
    fields["confirm"] = bool(control & 0x20)
    fields["unsolicited"] = bool(control & 0x10)
    fields["sequence"] = control & 0x0F
    fields["function_code"] = function
    fields["function"] = c.FUNCTIONS.get(function) or f"UNKNOWN_{function}"
    fields["controls_device"] = function in c.CONTROL_FUNCTIONS
    position = 2
    response = function in c.RESPONSES
    if response:
        if size < 4:
            parsed.problems.append(("truncated_header", f"response fragment of {size} octets, the header needs 4"))
            return parsed
        iin = (fragment[2] << 8) | fragment[3]
        fields["iin"] = iin
        fields["iin_flags"] = iin_flags(iin)
        position = 4
    elif function not in c.FUNCTIONS:
        parsed.problems.append(("unknown_function", f"function code {function} is not defined"))
    _objects(fragment, position, function, response, parsed)
    fields["object_count"] = len(parsed.objects)
    fields["objects"] = [f"g{o['group']}v{o['variation']}" for o in parsed.objects]
    if parsed.problems:
        fields["malformed"] = "; ".join(detail for _, detail in parsed.problems)
    return parsed


def _objects(fragment: bytes, position: int, function: int, response: bool, parsed: Parsed) -> None:
    """Walk the object headers and their data; stop at the first header whose extent cannot be known."""
    size = len(fragment)
    headers_only = not response and function in c.HEADERS_ONLY
    freeze_at_time = not response and function in c.FREEZE_AT_TIME
    number = 0
    objects = parsed.objects
    problems = parsed.problems
    while position < size:
        if position + 3 > size:
            problems.append(("truncated_object_header", f"{size - position} octets at offset {position}"))
            return
        group, variation, qualifier = fragment[position], fragment[position + 1], fragment[position + 2]
        header_offset = position
        position += 3
        prefix_code, range_code = (qualifier >> 4) & 0x07, qualifier & 0x0F
        header: Fields = {
            "header_index": number,
            "group": group,
            "variation": variation,
            "object_name": c.object_name(group, variation),
            "qualifier": qualifier,
            "prefix_code": prefix_code,
            "range_code": range_code,
        }
        objects.append(header)
        number += 1
        range_spec = c.RANGE_CODES.get(range_code)
        prefix_spec = c.PREFIX_CODES.get(prefix_code)
        if range_spec is None or prefix_spec is None:
            problems.append(("invalid_qualifier", f"g{group}v{variation} qualifier 0x{qualifier:02x} is reserved"))
            return
        if qualifier & 0x80:
            problems.append(("reserved_qualifier_bit", f"g{group}v{variation} qualifier 0x{qualifier:02x}"))
        width, kind = range_spec
        if position + width > size:
            problems.append(("truncated_range", f"g{group}v{variation} range field past the end at {position}"))
            return
        start = stop = None
        if kind == "range" or kind == "address":
            half = width >> 1
            start = int.from_bytes(fragment[position : position + half], "little")
            stop = int.from_bytes(fragment[position + half : position + width], "little")
            header["range_start"] = start
            header["range_stop"] = stop
            if stop < start:
                problems.append(("invalid_range", f"g{group}v{variation} range {start}-{stop} ends before it starts"))
                return
            count = stop - start + 1
        elif kind == "all":
            count = 0
        else:
            count = int.from_bytes(fragment[position : position + width], "little")
        header["count"] = count
        position += width
        if kind == "all" or group == c.CLASS_GROUP or (headers_only and kind != "free"):
            continue
        if freeze_at_time and group != 50:
            continue
        if variation == 0 and group != 0 and group not in c.OCTET_GROUPS:
            problems.append(("any_variation_with_data", f"g{group}v0 cannot carry values (offset {header_offset})"))
            return
        end = _object_data(fragment, position, group, variation, count, start, prefix_spec, header, parsed)
        if end < 0:
            return
        position = end


def _object_data(
    fragment: bytes,
    position: int,
    group: int,
    variation: int,
    count: int,
    start: int | None,
    prefix_spec: tuple[int, str],
    header: Fields,
    parsed: Parsed,
) -> int:
    """Step over (and for some groups decode) the objects after one header; -1 when parsing must stop."""
    size = len(fragment)
    prefix_width, prefix_kind = prefix_spec
    problems = parsed.problems
    label = f"g{group}v{variation}"
    if prefix_kind == "size" or group == 0:
        # Each object says its own size: walk them.
        points = []
        for ordinal in range(count):
            if position + prefix_width > size:
                problems.append(("truncated_object", f"{label} object {ordinal} prefix past the end at {position}"))
                return -1
            if prefix_kind == "size":
                length = int.from_bytes(fragment[position : position + prefix_width], "little")
                index = None
            else:
                index = _index(fragment, position, prefix_width, prefix_kind, start, ordinal)
                if position + prefix_width + 2 > size:
                    problems.append(("truncated_object", f"{label} attribute {ordinal} past the end at {position}"))
                    return -1
                length = 2 + fragment[position + prefix_width + 1]
            position += prefix_width
            if position + length > size:
                problems.append(
                    ("truncated_object", f"{label} object {ordinal} of {length} octets past the end at {position}")
                )
                return -1
            points.append((index, fragment[position : position + length]))
            position += length
        _decode(group, variation, points, header, parsed)
        return position
    object_size = c.OBJECT_SIZES.get((group, variation))
    if object_size is None and group in c.OCTET_GROUPS:
        object_size = variation
    if object_size is None:
        problems.append(("unknown_object", f"{label} has no known size; the rest of the fragment is not parsed"))
        header["parse_stopped"] = True
        return -1
    if object_size < 0:
        if prefix_width:
            problems.append(("packed_with_prefix", f"{label} is packed but its qualifier has an index prefix"))
            return -1
        total = (count * -object_size + 7) >> 3
    else:
        total = count * (prefix_width + object_size)
    if position + total > size:
        problems.append(("truncated_object", f"{label}: {count} objects need {total} octets, {size - position} remain"))
        return -1
    if group in _DECODED and object_size > 0:
        step = prefix_width + object_size
        points = [
            (
                _index(fragment, offset, prefix_width, prefix_kind, start, ordinal),
                fragment[offset + prefix_width : offset + step],
            )
            for ordinal, offset in enumerate(range(position, position + total, step))
        ]
        _decode(group, variation, points, header, parsed)
    return position + total


def _index(fragment: bytes, position: int, width: int, kind: str, start: int | None, ordinal: int) -> int | None:
    if kind == "index":
        return int.from_bytes(fragment[position : position + width], "little")
    return None if start is None else start + ordinal


def _decode(group: int, variation: int, points: list[tuple[int | None, bytes]], header: Fields, parsed: Parsed) -> None:
    """Values of the groups a monitor acts on."""
    fields = parsed.fields
    if group == 12 and variation in (1, 2):
        for index, data in points:
            code, repeat, on_time, off_time, status = _CROB.unpack(data)
            parsed.controls.append(
                {
                    "header_index": header["header_index"],
                    "group": group,
                    "variation": variation,
                    "object_name": header["object_name"],
                    "index": index,
                    "control_code": code,
                    "operation": c.OPERATION_TYPES.get(code & 0x0F, f"UNKNOWN_{code & 0x0F}"),
                    "trip_close": c.TRIP_CLOSE[code >> 6],
                    "queue": bool(code & 0x10),
                    "clear": bool(code & 0x20),
                    "count": repeat,
                    "on_time": on_time,
                    "off_time": off_time,
                    "status_code": status & 0x7F,
                    "status": c.CONTROL_STATUS.get(status & 0x7F, f"UNKNOWN_{status & 0x7F}"),
                }
            )
    elif group == 41 and variation in _ANALOG:
        layout = _ANALOG[variation]
        for index, data in points:
            value, status = layout.unpack(data)
            parsed.controls.append(
                {
                    "header_index": header["header_index"],
                    "group": group,
                    "variation": variation,
                    "object_name": header["object_name"],
                    "index": index,
                    "value": float(value),
                    "status_code": status & 0x7F,
                    "status": c.CONTROL_STATUS.get(status & 0x7F, f"UNKNOWN_{status & 0x7F}"),
                }
            )
    elif group == 50 and variation in (1, 2, 3, 4):
        if points and "time_ms" not in fields:
            fields["time_ms"] = _time(points[0][1][:6])
    elif group == 52:
        if points and "delay_ms" not in fields:
            value = _U16.unpack(points[0][1])[0]
            fields["delay_ms"] = value * 1000 if variation == 1 else value
    elif group == 70:
        for _, data in points:
            _file(variation, data, fields, parsed)
    elif group == 0:
        attributes = fields.setdefault("attributes", [])
        assert isinstance(attributes, list)
        for _, data in points:
            kind, length = data[0], data[1]
            attributes.append(
                {
                    "variation": variation,
                    "name": c.ATTRIBUTE_NAMES.get(variation, f"attribute_{variation}"),
                    "type": c.ATTRIBUTE_TYPES.get(kind, f"TYPE_{kind}"),
                    "value": _attribute(kind, data[2 : 2 + length]),
                }
            )


def _attribute(kind: int, raw: bytes) -> str:
    if kind == 1:
        return _text(raw)
    if kind in (2, 3) and 0 < len(raw) <= 8:
        return str(int.from_bytes(raw, "little", signed=kind == 3))
    if kind == 4 and len(raw) in (4, 8):
        return repr(struct.unpack("<f" if len(raw) == 4 else "<d", raw)[0])
    return raw.hex()


def _name(data: bytes, offset: int, length: int, fixed: int, label: str, parsed: Parsed) -> str:
    """A name that the object locates by offset and size from the start of the object."""
    if offset < fixed or offset + length > len(data):
        parsed.problems.append(("invalid_file_object", f"{label} name at {offset}+{length} outside {len(data)}"))
        return _text(data[fixed:])
    return _text(data[offset : offset + length])


def _file(variation: int, data: bytes, fields: Fields, parsed: Parsed) -> None:
    """File-control objects: names, handles, sizes and status of file transfers."""
    label = f"g70v{variation}"
    if variation == 3:
        if len(data) < _FILE_COMMAND.size:
            parsed.problems.append(("invalid_file_object", f"{label} of {len(data)} octets"))
            return
        offset, length, created, permissions, _key, file_size, mode, block, request = _FILE_COMMAND.unpack_from(data)
        fields["file_name"] = _name(data, offset, length, _FILE_COMMAND.size, label, parsed)
        fields["file_created_ms"] = _time(created)
        fields["file_permissions"] = permissions
        fields["file_size"] = file_size
        fields["file_mode"] = c.FILE_MODES.get(mode, f"MODE_{mode}")
        fields["file_block_size"] = block
        fields["file_request_id"] = request
    elif variation == 4:
        if len(data) < _FILE_STATUS.size:
            parsed.problems.append(("invalid_file_object", f"{label} of {len(data)} octets"))
            return
        handle, file_size, block, request, status = _FILE_STATUS.unpack_from(data)
        fields["file_handle"] = handle
        fields["file_size"] = file_size
        fields["file_block_size"] = block
        fields["file_request_id"] = request
        fields["file_status_code"] = status
        fields["file_status"] = c.FILE_STATUS.get(status, f"STATUS_{status}")
        if len(data) > _FILE_STATUS.size:
            fields["file_text"] = _text(data[_FILE_STATUS.size :])
    elif variation == 5:
        if len(data) < _FILE_TRANSPORT.size:
            parsed.problems.append(("invalid_file_object", f"{label} of {len(data)} octets"))
            return
        handle, block = _FILE_TRANSPORT.unpack_from(data)
        fields["file_handle"] = handle
        fields["file_block_number"] = block & 0x7FFFFFFF
        fields["file_last_block"] = bool(block & 0x80000000)
        fields["file_data"] = bytes(data[_FILE_TRANSPORT.size :])
    elif variation == 6:
        if len(data) < _FILE_TRANSPORT_STATUS.size:
            parsed.problems.append(("invalid_file_object", f"{label} of {len(data)} octets"))
            return
        handle, block, status = _FILE_TRANSPORT_STATUS.unpack_from(data)
        fields["file_handle"] = handle
        fields["file_block_number"] = block & 0x7FFFFFFF
        fields["file_last_block"] = bool(block & 0x80000000)
        fields["file_status_code"] = status
        fields["file_status"] = c.FILE_STATUS.get(status, f"STATUS_{status}")
        if len(data) > _FILE_TRANSPORT_STATUS.size:
            fields["file_text"] = _text(data[_FILE_TRANSPORT_STATUS.size :])
    elif variation == 7:
        if len(data) < _FILE_DESCRIPTOR.size:
            parsed.problems.append(("invalid_file_object", f"{label} of {len(data)} octets"))
            return
        offset, length, _kind, file_size, created, permissions, request = _FILE_DESCRIPTOR.unpack_from(data)
        fields["file_name"] = _name(data, offset, length, _FILE_DESCRIPTOR.size, label, parsed)
        fields["file_size"] = file_size
        fields["file_created_ms"] = _time(created)
        fields["file_permissions"] = permissions
        fields["file_request_id"] = request
    elif variation == 8:
        fields["file_name"] = _text(data)
    elif variation == 2:
        if len(data) < _FILE_AUTHENTICATION.size:
            parsed.problems.append(("invalid_file_object", f"{label} of {len(data)} octets"))
            return
        user_offset, user_length, _password_offset, password_length, _key = _FILE_AUTHENTICATION.unpack_from(data)
        # The password travels in clear text; it is deliberately not stored, only that one was sent.
        fields["file_user_name"] = _name(data, user_offset, user_length, _FILE_AUTHENTICATION.size, label, parsed)
        fields["file_password_sent"] = password_length > 0

"""BACnet tagged encoding (ASHRAE 135-2020 clause 20.2): tags, primitive values and their text.

Every reader takes the APDU bytes and an offset and raises :class:`Malformed` (never anything else) when the
encoding contradicts the standard or runs past the end, so that callers turn it into an anomaly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from quaywatch.decode.bacnet import constants as c

PRIMITIVE, OPENING, CLOSING = 0, 1, 2
#: Values kept per property (a long object-list is counted in full, its first values are kept).
MAXIMUM_VALUES = 1024
#: Nesting of constructed values beyond which the value is called malformed.
MAXIMUM_DEPTH = 32


class Malformed(ValueError):
    """The APDU contradicts ASHRAE 135 clause 20."""


@dataclass(frozen=True, slots=True)
class Tag:
    number: int
    context: bool
    kind: int  # PRIMITIVE, OPENING or CLOSING
    lvt: int  # length/value/type field: the value itself for an application boolean
    start: int  # first content octet
    end: int  # octet after the content

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Value:
    """One primitive value: its application tag name, a short text and, for numbers, the number."""

    tag: str
    text: str | None
    number: float | None = None


def tag(data: bytes, position: int) -> Tag:
    """The tag at ``position`` (clause 20.2.1)."""
    size = len(data)
    if position >= size:
        raise Malformed(f"tag expected at offset {position}, past the end ({size} octets)")
    octet = data[position]
    position += 1
    number = octet >> 4
    context = bool(octet & 0x08)
    lvt = octet & 0x07
    if number == 15:
        if position >= size:
            raise Malformed("extended tag number past the end")
        number = data[position]
        position += 1
    if context and lvt == 6:
        return Tag(number, True, OPENING, lvt, position, position)
    if context and lvt == 7:
        return Tag(number, True, CLOSING, lvt, position, position)
    if not context and number == 1:  # application boolean: the value is in the tag (20.2.3)
        return Tag(number, False, PRIMITIVE, lvt, position, position)
    length = lvt
    if lvt == 5:
        if position >= size:
            raise Malformed("extended length past the end")
        length = data[position]
        position += 1
        width = 2 if length == 254 else 4 if length == 255 else 0
        if width:
            if position + width > size:
                raise Malformed("extended length past the end")
            length = int.from_bytes(data[position : position + width], "big")
            position += width
    end = position + length
    if end > size:
        raise Malformed(f"tag {number} at offset {position} announces {length} octets, {size - position} present")
    return Tag(number, context, PRIMITIVE, lvt, position, end)


def peek(data: bytes, position: int, number: int, kind: int = PRIMITIVE) -> Tag | None:
    """The context tag ``number`` of ``kind`` at ``position``, or None if another tag (or the end) is there."""
    if position >= len(data):
        return None
    found = tag(data, position)
    if found.context and found.number == number and found.kind == kind:
        return found
    return None


def expect(data: bytes, position: int, number: int, what: str, kind: int = PRIMITIVE) -> Tag:
    found = peek(data, position, number, kind)
    if found is None:
        raise Malformed(f"{what} (context tag {number}) expected at offset {position}")
    return found


def expect_application(data: bytes, position: int, number: int, what: str) -> Tag:
    found = tag(data, position)
    if found.context or found.kind != PRIMITIVE or found.number != number:
        raise Malformed(f"{what} ({c.APPLICATION_TAGS.get(number)}) expected at offset {position}")
    return found


def unsigned(data: bytes, found: Tag) -> int:
    if not 1 <= found.length <= 8:
        raise Malformed(f"unsigned of {found.length} octets at offset {found.start}")
    return int.from_bytes(data[found.start : found.end], "big")


def signed(data: bytes, found: Tag) -> int:
    if not 1 <= found.length <= 8:
        raise Malformed(f"signed of {found.length} octets at offset {found.start}")
    return int.from_bytes(data[found.start : found.end], "big", signed=True)


def object_identifier(data: bytes, found: Tag) -> tuple[int, int]:
    """(object type, instance) of a 4-octet object identifier (20.2.14)."""
    if found.length != 4:
        raise Malformed(f"object identifier of {found.length} octets at offset {found.start}")
    value = int.from_bytes(data[found.start : found.end], "big")
    return value >> 22, value & 0x3FFFFF


def character_string(data: bytes, found: Tag) -> tuple[str, int]:
    """(text as received, character set) of a character string (20.2.9); undecodable octets are escaped."""
    if found.length < 1:
        raise Malformed(f"character string without its character set at offset {found.start}")
    charset = data[found.start]
    raw = data[found.start + 1 : found.end]
    codec = c.CHARACTER_SETS.get(charset, "utf-8")
    if charset == 1 and len(raw) >= 2:  # DBCS: the code page comes first (20.2.9)
        codec = f"cp{int.from_bytes(raw[:2], 'big')}"
        raw = raw[2:]
    try:
        return raw.decode(codec, "backslashreplace"), charset
    except LookupError:  # a code page Python does not know
        return raw.decode("utf-8", "backslashreplace"), charset


def object_text(object_type: int, instance: int) -> str:
    return f"{c.OBJECT_TYPES.get(object_type, f'object-type-{object_type}')}: {instance}"


def _date(octets: bytes) -> str:
    """Date as month/day/year (20.2.12); 255 (unspecified) shows as '*'."""
    year, month, day, _weekday = octets
    return (
        "/".join("*" if v == 255 else str(v) for v in (month, day)) + "/" + ("*" if year == 255 else str(1900 + year))
    )


def _time(octets: bytes) -> str:
    """Time as hh:mm:ss.hh (20.2.13); 255 (unspecified) shows as '*'."""
    return ":".join("*" if v == 255 else f"{v:02d}" for v in octets[:3]) + (
        "" if octets[3] == 255 else f".{octets[3]:02d}"
    )


def value(data: bytes, found: Tag, property_id: int | None = None) -> Value:
    """An application-tagged primitive as text (20.2.2-20.2.14); context-tagged ones as hex."""
    content = data[found.start : found.end]
    if found.context:
        return Value(f"context-{found.number}", content.hex())
    number = found.number
    name = c.APPLICATION_TAGS.get(number, f"application-{number}")
    if number == 0:
        return Value(name, None)
    if number == 1:
        return Value(name, "true" if found.lvt else "false", float(found.lvt != 0))
    if number == 2:
        count = unsigned(data, found)
        return Value(name, str(count), float(count))
    if number == 3:
        integer = signed(data, found)
        return Value(name, str(integer), float(integer))
    if number == 4:
        if found.length != 4:
            raise Malformed(f"real of {found.length} octets at offset {found.start}")
        (real,) = struct.unpack(">f", content)
        return Value(name, f"{real:f}", real)
    if number == 5:
        if found.length != 8:
            raise Malformed(f"double of {found.length} octets at offset {found.start}")
        (double,) = struct.unpack(">d", content)
        return Value(name, f"{double:f}", double)
    if number == 6:
        return Value(name, content.hex())
    if number == 7:
        text, _charset = character_string(data, found)
        return Value(name, text)
    if number == 8:
        if not content:
            raise Malformed(f"bit string without its unused-bits octet at offset {found.start}")
        unused = content[0]
        if unused > 7 or (unused and len(content) == 1):
            raise Malformed(f"bit string with {unused} unused bits at offset {found.start}")
        bits = "".join("T" if octet & (0x80 >> bit) else "F" for octet in content[1:] for bit in range(8))
        return Value(name, bits[: len(bits) - unused] if unused else bits)
    if number == 9:
        code = unsigned(data, found)
        names = c.ENUMERATED_PROPERTIES.get(property_id) if property_id is not None else None
        text = names.get(code, str(code)) if names is not None else str(code)
        return Value(name, text, float(code))
    if number == 10:
        if found.length != 4:
            raise Malformed(f"date of {found.length} octets at offset {found.start}")
        return Value(name, _date(content))
    if number == 11:
        if found.length != 4:
            raise Malformed(f"time of {found.length} octets at offset {found.start}")
        return Value(name, _time(content))
    if number == 12:
        object_type, instance = object_identifier(data, found)
        return Value(name, object_text(object_type, instance))
    return Value(name, content.hex())  # application tags 13-15 are reserved (20.2.1.4)


def values(data: bytes, position: int, closing: int, property_id: int | None) -> tuple[list[Value], int, int]:
    """The primitives between an opening tag and its closing tag ``closing`` (``position`` is after the opening).

    Constructed values are flattened in order. Returns (kept values, total count, offset after the closing tag).
    """
    kept: list[Value] = []
    count = 0
    depth = 0
    while True:
        found = tag(data, position)
        position = found.end
        if found.kind == OPENING:
            depth += 1
            if depth > MAXIMUM_DEPTH:
                raise Malformed(f"value nested deeper than {MAXIMUM_DEPTH} at offset {found.start}")
            continue
        if found.kind == CLOSING:
            if depth == 0:
                if found.number != closing:
                    raise Malformed(f"closing tag {found.number} where {closing} was due at offset {found.start}")
                return kept, count, position
            depth -= 1
            continue
        count += 1
        if len(kept) < MAXIMUM_VALUES:
            kept.append(value(data, found, property_id))

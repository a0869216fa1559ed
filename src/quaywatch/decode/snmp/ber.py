"""A small bounded reader of the BER subset SNMP uses (ITU-T X.690 clause 8): definite lengths, one-octet tags.

Every read checks its bounds and raises :class:`Malformed` instead of reading past the end; nothing recurses, so
a hostile nesting depth costs nothing.
"""

from __future__ import annotations

#: Longest INTEGER content accepted (SNMP integers are at most 64 bits, Counter64 needs 9 octets with a sign octet).
MAXIMUM_INTEGER = 9
#: Sub-identifiers longer than this are refused (Zeek's asn_oid_subidentifier_too_long; 2**63 needs 9 octets).
MAXIMUM_SUBIDENTIFIER = 9
#: Sub-identifiers rendered per OID (RFC 2578 clause 3.5 allows 128).
MAXIMUM_ARCS = 128

SEQUENCE = 0x30
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
IP_ADDRESS = 0x40
TIMETICKS = 0x43


class Malformed(ValueError):
    """The octets contradict X.690 or the SNMP message structure."""


def tlv(data: bytes, position: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at ``position``, which must end by ``end``."""
    if position + 2 > end:
        raise Malformed(f"element header cut short at offset {position}")
    tag = data[position]
    if tag & 0x1F == 0x1F:
        raise Malformed(f"multi-octet tag 0x{tag:02x} at offset {position}")
    first = data[position + 1]
    start = position + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise Malformed(f"indefinite length at offset {position} (SNMP requires definite lengths)")
    else:
        count = first & 0x7F
        if count > 4 or start + count > end:
            raise Malformed(f"length of {count} octets at offset {position}")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    if start + length > end:
        raise Malformed(f"element at offset {position} claims {length} octets, {end - start} left")
    return tag, start, start + length


def expect(data: bytes, position: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Content bounds of an element that must carry ``tag``."""
    found, start, stop = tlv(data, position, end)
    if found != tag:
        raise Malformed(f"{what}: tag 0x{found:02x} at offset {position}, expected 0x{tag:02x}")
    return start, stop


def integer(data: bytes, start: int, stop: int, signed: bool = True) -> int:
    if not start < stop <= start + MAXIMUM_INTEGER:
        raise Malformed(f"integer of {stop - start} octets at offset {start}")
    return int.from_bytes(data[start:stop], "big", signed=signed)


def read_integer(data: bytes, position: int, end: int, what: str) -> tuple[int, int]:
    """(value, next position) of an INTEGER."""
    start, stop = expect(data, position, end, INTEGER, what)
    return integer(data, start, stop), stop


def oid(data: bytes, start: int, stop: int) -> str:
    """Dotted text of OBJECT IDENTIFIER contents (X.690 clause 8.19)."""
    if start >= stop:
        raise Malformed(f"empty object identifier at offset {start}")
    arcs: list[int] = []
    value = 0
    octets = 0
    for position in range(start, stop):
        octet = data[position]
        if octets == 0 and octet == 0x80:
            raise Malformed(f"object identifier sub-identifier with leading 0x80 at offset {position}")
        value = (value << 7) | (octet & 0x7F)
        octets += 1
        if octets > MAXIMUM_SUBIDENTIFIER:
            raise Malformed(f"object identifier sub-identifier longer than {MAXIMUM_SUBIDENTIFIER} octets")
        if octet & 0x80 == 0:
            if not arcs:
                first = min(value // 40, 2)
                arcs += [first, value - 40 * first]
            else:
                arcs.append(value)
            value = octets = 0
    if octets:
        raise Malformed(f"object identifier ends inside a sub-identifier at offset {stop}")
    if len(arcs) > MAXIMUM_ARCS:
        raise Malformed(f"object identifier of {len(arcs)} sub-identifiers")
    return ".".join(map(str, arcs))

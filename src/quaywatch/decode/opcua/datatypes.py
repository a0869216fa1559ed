"""OPC UA binary encoding of the built-in types (Part 6, 5.2), with bounds checks everywhere.

Every length and array count in a message is attacker-controlled. The reader checks each one against the bytes
left before it allocates or loops, caps arrays (``MAXIMUM_ARRAY``) and nesting (``MAXIMUM_DEPTH``), and raises
``Malformed`` (never IndexError or struct.error) when the data contradicts the encoding, so that the session can
turn it into an anomaly.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from quaywatch.decode.opcua.constants import BUILT_IN_TYPES, status_name

#: Most elements of one array decoded; a longer array is malformed for our purposes (real messages stay far below).
MAXIMUM_ARRAY = 100_000
#: Deepest nesting of Variant / DataValue / DiagnosticInfo / ExtensionObject accepted.
MAXIMUM_DEPTH = 16
#: Longest text kept for a decoded value; longer values are cut and end with "...".
MAXIMUM_VALUE_TEXT = 4096

#: 100-nanosecond ticks between 1601-01-01 and 1970-01-01 (Part 6, 5.2.2.5).
EPOCH_TICKS = 116_444_736_000_000_000
#: Ticks of 9999-12-31T23:59:59: later values mean "max date" (Part 6, 5.2.2.5).
MAXIMUM_TICKS = 2_650_467_743_990_000_000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_GUID = struct.Struct("<IHH8s")
_FOUR_BYTE = struct.Struct("<BH")
_NUMERIC = struct.Struct("<HI")

#: Bytes of one element of the fixed-size built-in types, for skipping arrays without a loop.
FIXED_SIZES = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 4, 11: 8, 13: 8, 14: 16, 19: 4}
#: Fewest bytes an element of the variable-size types can take (bounds array counts before looping).
MINIMUM_SIZES = {12: 4, 15: 4, 16: 4, 17: 2, 18: 2, 20: 6, 21: 1, 22: 3, 23: 1, 24: 1, 25: 1}

_SCALARS: dict[int, struct.Struct] = {
    2: struct.Struct("<b"),
    3: struct.Struct("<B"),
    4: struct.Struct("<h"),
    5: _U16,
    6: _I32,
    7: _U32,
    8: _I64,
    9: _U64,
    10: _F32,
    11: _F64,
}


class Malformed(Exception):
    """The bytes contradict the OPC UA binary encoding."""


@dataclass(slots=True)
class Variant:
    """What a Variant holds, summarised: its type, whether it is an array, and a scalar's value as text."""

    type_name: str
    array_length: int | None = None
    value: str | None = None


def ticks_to_microseconds(ticks: int) -> int | None:
    """DateTime ticks to microseconds since the Unix epoch; None for 'no date' (0) and 'max date'."""
    if ticks <= 0 or ticks >= MAXIMUM_TICKS:
        return None
    return (ticks - EPOCH_TICKS) // 10


def format_guid(raw: bytes) -> str:
    first, second, third, rest = _GUID.unpack(raw)
    return f"{first:08x}-{second:04x}-{third:04x}-{rest[:2].hex()}-{rest[2:].hex()}"


def node_id_text(namespace: int, kind: str, identifier: object) -> str:
    """The standard string form of a NodeId (Part 6, 5.3.1.10): ``i=85``, ``ns=1;s=name``, ``ns=2;g=...``."""
    prefix = f"ns={namespace};" if namespace else ""
    return f"{prefix}{kind}={identifier}"


class Reader:
    """Sequential little-endian reader over one message body."""

    __slots__ = ("data", "end", "position")

    def __init__(self, data: bytes | memoryview, position: int = 0) -> None:
        self.data = data
        self.position = position
        self.end = len(data)

    def remaining(self) -> int:
        return self.end - self.position

    def _need(self, count: int) -> int:
        start = self.position
        if count < 0 or start + count > self.end:
            raise Malformed(f"needs {count} bytes at offset {start}, {self.end - start} left")
        self.position = start + count
        return start

    def take(self, count: int) -> bytes:
        start = self._need(count)
        return bytes(self.data[start : start + count])

    def skip(self, count: int) -> None:
        self._need(count)

    # The fixed-size readers inline the bounds check: they run several times per field of every message.

    def byte(self) -> int:
        start = self.position
        if start >= self.end:
            raise Malformed(f"needs 1 byte at offset {start}, none left")
        self.position = start + 1
        return self.data[start]

    def boolean(self) -> bool:
        return self.byte() != 0

    def uint16(self) -> int:
        start = self.position
        if start + 2 > self.end:
            raise Malformed(f"needs 2 bytes at offset {start}, {self.end - start} left")
        self.position = start + 2
        value: int = _U16.unpack_from(self.data, start)[0]
        return value

    def uint32(self) -> int:
        start = self.position
        if start + 4 > self.end:
            raise Malformed(f"needs 4 bytes at offset {start}, {self.end - start} left")
        self.position = start + 4
        value: int = _U32.unpack_from(self.data, start)[0]
        return value

    def int32(self) -> int:
        start = self.position
        if start + 4 > self.end:
            raise Malformed(f"needs 4 bytes at offset {start}, {self.end - start} left")
        self.position = start + 4
        value: int = _I32.unpack_from(self.data, start)[0]
        return value

    def int64(self) -> int:
        start = self.position
        if start + 8 > self.end:
            raise Malformed(f"needs 8 bytes at offset {start}, {self.end - start} left")
        self.position = start + 8
        value: int = _I64.unpack_from(self.data, start)[0]
        return value

    def double(self) -> float:
        start = self.position
        if start + 8 > self.end:
            raise Malformed(f"needs 8 bytes at offset {start}, {self.end - start} left")
        self.position = start + 8
        value: float = _F64.unpack_from(self.data, start)[0]
        return value

    def datetime(self) -> int | None:
        """A DateTime as microseconds since the Unix epoch (None when unset)."""
        return ticks_to_microseconds(self.int64())

    def length(self) -> int:
        """A String/ByteString length: -1 (null) or a count that fits in the bytes left."""
        size = self.int32()
        if size < -1:
            raise Malformed(f"negative length {size} at offset {self.position - 4}")
        if size > self.end - self.position:
            raise Malformed(f"length {size} at offset {self.position - 4} exceeds the {self.remaining()} bytes left")
        return size

    def bytestring(self) -> bytes | None:
        size = self.length()
        return None if size < 0 else self.take(size)

    def bytestring_length(self) -> int:
        """Skip a ByteString and return its length field (-1 for null): certificates and nonces are not kept."""
        size = self.length()
        if size > 0:
            self.position += size
        return size

    def string(self) -> str | None:
        """A String as received (UTF-8, undecodable bytes backslash-escaped); None for the null string."""
        size = self.length()
        if size < 0:
            return None
        start = self.position
        self.position = start + size
        return bytes(self.data[start : start + size]).decode("utf-8", "backslashreplace")

    def skip_string(self) -> None:
        size = self.length()
        if size > 0:
            self.position += size

    def array_count(self, minimum_size: int = 1) -> int:
        """An array length (-1 null counts as 0), checked against the bytes left and ``MAXIMUM_ARRAY``."""
        count = self.int32()
        if count < 0:
            if count != -1:
                raise Malformed(f"negative array length {count} at offset {self.position - 4}")
            return 0
        if count > MAXIMUM_ARRAY:
            raise Malformed(f"array of {count} elements at offset {self.position - 4} exceeds the cap")
        if count * minimum_size > self.end - self.position:
            raise Malformed(f"array of {count} elements at offset {self.position - 4} exceeds the bytes left")
        return count

    def strings(self) -> list[str | None]:
        return [self.string() for _ in range(self.array_count(4))]

    def guid(self) -> str:
        return format_guid(self.take(16))

    # -- node ids -----------------------------------------------------------------------------------

    def node_id_parts(self, encoding: int | None = None) -> tuple[int, str, object]:
        """(namespace, kind, identifier) of a NodeId; kind is i, s, g or b as in the string form."""
        if encoding is None:
            encoding = self.byte()
        form = encoding & 0x3F
        if form == 0:
            return 0, "i", self.byte()
        if form == 1:
            namespace, number = _FOUR_BYTE.unpack_from(self.data, self._need(3))
            return int(namespace), "i", int(number)
        if form == 2:
            namespace, number = _NUMERIC.unpack_from(self.data, self._need(6))
            return int(namespace), "i", int(number)
        namespace = self.uint16()
        if form == 3:
            return namespace, "s", self.string()
        if form == 4:
            return namespace, "g", self.guid()
        if form == 5:
            raw = self.bytestring()
            return namespace, "b", base64.b64encode(raw).decode("ascii") if raw is not None else ""
        raise Malformed(f"NodeId encoding 0x{encoding:02x} at offset {self.position - 1}")

    def node_id(self) -> str:
        encoding = self.byte()
        if encoding & 0xC0:
            raise Malformed(f"NodeId with ExpandedNodeId flags 0x{encoding:02x} at offset {self.position - 1}")
        return node_id_text(*self.node_id_parts(encoding))

    def expanded_node_id(self) -> str:
        encoding = self.byte()
        namespace, kind, identifier = self.node_id_parts(encoding)
        text = node_id_text(namespace, kind, identifier)
        if encoding & 0x80:
            uri = self.string()
            if uri is not None:
                text = f"nsu={uri};{kind}={identifier}"
        if encoding & 0x40:
            text = f"svr={self.uint32()};{text}"
        return text

    def type_id(self) -> tuple[int | None, str]:
        """The type NodeId that starts a message body or an ExtensionObject: (numeric id in namespace 0, text)."""
        encoding = self.byte()
        namespace, kind, identifier = self.node_id_parts(encoding)
        if encoding & 0x80:
            self.skip_string()
        if encoding & 0x40:
            self.skip(4)
        text = node_id_text(namespace, kind, identifier)
        return (identifier if namespace == 0 and kind == "i" else None), text  # type: ignore[return-value]

    # -- structured built-ins -----------------------------------------------------------------------------

    def qualified_name(self) -> str:
        namespace = self.uint16()
        name = self.string()
        return f"{namespace}:{name}" if namespace else (name or "")

    def localized_text(self) -> tuple[str | None, str | None]:
        """(locale, text) of a LocalizedText."""
        mask = self.byte()
        locale = self.string() if mask & 0x01 else None
        text = self.string() if mask & 0x02 else None
        return locale, text

    def extension_object(self, depth: int = 0) -> tuple[int | None, str, memoryview | None]:
        """(numeric type id, type id text, binary body) of an ExtensionObject; XML bodies are skipped."""
        type_number, type_text = self.type_id()
        encoding = self.byte()
        if encoding == 0:
            return type_number, type_text, None
        if encoding not in (1, 2):
            raise Malformed(f"ExtensionObject encoding {encoding} at offset {self.position - 1}")
        size = self.length()
        if size < 0:
            return type_number, type_text, None
        start = self.position
        self.position = start + size
        body = memoryview(self.data)[start : start + size] if encoding == 1 else None
        return type_number, type_text, body

    def signature_algorithm(self) -> str | None:
        """Skip a SignatureData and return its algorithm URI."""
        algorithm = self.string()
        self.bytestring_length()
        return algorithm

    def diagnostic_info(self, depth: int = 0) -> None:
        """Skip a DiagnosticInfo, following inner ones up to ``MAXIMUM_DEPTH``."""
        while True:
            mask = self.byte()
            # SymbolicId, NamespaceUri, LocalizedText, Locale: one Int32 each.
            self.skip(4 * ((mask & 1) + ((mask >> 1) & 1) + ((mask >> 2) & 1) + ((mask >> 3) & 1)))
            if mask & 0x10:
                self.skip_string()
            if mask & 0x20:
                self.skip(4)
            if not mask & 0x40:
                return
            depth += 1
            if depth > MAXIMUM_DEPTH:
                raise Malformed(f"DiagnosticInfo nested deeper than {MAXIMUM_DEPTH}")

    def diagnostic_infos(self) -> None:
        for _ in range(self.array_count(1)):
            self.diagnostic_info()

    def data_value(self, depth: int = 0) -> tuple[int, Variant | None, int]:
        """(encoding mask, value, status code) of a DataValue; timestamps are skipped."""
        mask = self.byte()
        value = self.variant(depth + 1) if mask & 0x01 else None
        status = self.uint32() if mask & 0x02 else 0
        # Source timestamp (0x04), server timestamp (0x08): DateTime; picoseconds (0x10, 0x20): UInt16.
        self.skip(8 * ((mask >> 2) & 1) + 8 * ((mask >> 3) & 1) + 2 * ((mask >> 4) & 1) + 2 * ((mask >> 5) & 1))
        return mask, value, status

    def variant(self, depth: int = 0) -> Variant:
        """A Variant: type, array length, and the text of a scalar value."""
        if depth > MAXIMUM_DEPTH:
            raise Malformed(f"Variant nested deeper than {MAXIMUM_DEPTH}")
        encoding = self.byte()
        kind = encoding & 0x3F
        name = BUILT_IN_TYPES.get(kind)
        if name is None:
            raise Malformed(f"Variant type {kind} at offset {self.position - 1}")
        if encoding & 0x80:
            count = self.array_count(FIXED_SIZES.get(kind) or MINIMUM_SIZES.get(kind, 1))
            self._skip_values(kind, count, depth)
            result = Variant(name, count)
            if encoding & 0x40:
                self.skip(4 * self.array_count(4))
            return result
        return Variant(name, None, self._scalar_text(kind, depth))

    def _skip_values(self, kind: int, count: int, depth: int) -> None:
        size = FIXED_SIZES.get(kind)
        if size is not None:
            self.skip(size * count)
            return
        for _ in range(count):
            self._scalar_text(kind, depth, keep=False)

    def _scalar_text(self, kind: int, depth: int, keep: bool = True) -> str | None:
        """Read one value of a built-in type; its text when ``keep`` (skipping is cheaper)."""
        if kind == 0:
            return None
        packer = _SCALARS.get(kind)
        if packer is not None:
            number = packer.unpack_from(self.data, self._need(packer.size))[0]
            return (repr(float(number)) if kind in (10, 11) else str(number)) if keep else None
        if kind == 1:
            return ("true" if self.byte() else "false") if keep else None
        if kind in (12, 16):
            if not keep:
                self.skip_string()
                return None
            text = self.string()
            return None if text is None else _cut(text)
        if kind == 15:
            if not keep:
                self.skip_string()
                return None
            raw = self.bytestring()
            return None if raw is None else _cut(raw.hex())
        if kind == 13:
            microseconds = self.datetime()
            if not keep or microseconds is None:
                return None
            return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=microseconds)).isoformat()
        if kind == 14:
            return self.guid()
        if kind == 17:
            return self.node_id()
        if kind == 18:
            return self.expanded_node_id()
        if kind == 19:
            code = self.uint32()
            return f"0x{code:08x} {status_name(code)}" if keep else None
        if kind == 20:
            return self.qualified_name()
        if kind == 21:
            return self.localized_text()[1]
        if depth + 1 > MAXIMUM_DEPTH:
            raise Malformed(f"value nested deeper than {MAXIMUM_DEPTH}")
        if kind == 22:
            return self.extension_object(depth + 1)[1]
        if kind == 23:
            value = self.data_value(depth + 1)[1]
            return value.value if value is not None else None
        if kind == 24:
            return self.variant(depth + 1).value
        self.diagnostic_info(depth + 1)  # kind 25
        return None


def _cut(text: str) -> str:
    return text if len(text) <= MAXIMUM_VALUE_TEXT else text[: MAXIMUM_VALUE_TEXT - 3] + "..."

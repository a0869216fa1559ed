"""DNP3 data link frames: header check, CRC blocks, user data.

The CRC is DNP3's 16-bit CRC (polynomial 0x3D65, reflected 0xA6BC, complemented, least significant
octet first; IEEE 1815-2012 clause 9). It is computed sixteen bits per step with a 65,536-entry
table, so a full 16-octet block costs eight lookups instead of sixteen.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from quaywatch.decode.dnp3.constants import BLOCK, HEADER_LENGTH, MINIMUM_LENGTH

_REFLECTED_POLYNOMIAL = 0xA6BC


def _byte_table() -> list[int]:
    table = []
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = (crc >> 1) ^ _REFLECTED_POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return table


BYTE_TABLE = _byte_table()


def _word_table() -> list[int]:
    # Two octets a, b into the 16-bit register r give T[(t ^ (w >> 8)) & 0xFF] ^ (t >> 8) with
    # w = r ^ (a | b << 8) and t = T[w & 0xFF]: a function of w alone, so one lookup per word.
    byte = BYTE_TABLE
    table = [0] * 65536
    for word in range(65536):
        low = byte[word & 0xFF]
        table[word] = byte[(low ^ (word >> 8)) & 0xFF] ^ (low >> 8)
    return table


WORD_TABLE = _word_table()
_WORDS = {count: struct.Struct(f"<{count}H") for count in range(1, 9)}


def crc(data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> int:
    """DNP3 CRC of ``data[start:end]``, as the value stored little-endian after the block."""
    if end is None:
        end = len(data)
    register = 0
    words = (end - start) >> 1
    table = WORD_TABLE
    position = start
    while words:
        step = 8 if words > 8 else words
        for word in _WORDS[step].unpack_from(data, position):
            register = table[register ^ word]
        position += 2 * step
        words -= step
    if position < end:
        register = BYTE_TABLE[(register ^ data[position]) & 0xFF] ^ (register >> 8)
    return ~register & 0xFFFF


def header_valid(data: bytes | bytearray | memoryview, position: int = 0) -> bool:
    """Start octets 0x05 0x64, a length of at least 5 and a correct header CRC at ``position``."""
    if len(data) < position + HEADER_LENGTH or data[position] != 0x05 or data[position + 1] != 0x64:
        return False
    if data[position + 2] < MINIMUM_LENGTH:
        return False
    return crc(data, position, position + 8) == data[position + 8] | (data[position + 9] << 8)


def frame_size(length: int) -> int:
    """Octets on the wire of a frame whose LENGTH field is ``length`` (>= 5)."""
    user = length - MINIMUM_LENGTH
    return HEADER_LENGTH + user + 2 * ((user + BLOCK - 1) // BLOCK)


@dataclass(slots=True)
class Frame:
    """One data link frame with its CRCs checked and removed."""

    length: int
    control: int
    destination: int
    source: int
    user_data: bytes
    bad_block: int  # index of the first user data block with a wrong CRC, -1 if all are right

    @property
    def from_master(self) -> bool:  # DIR
        return bool(self.control & 0x80)

    @property
    def primary(self) -> bool:  # PRM
        return bool(self.control & 0x40)

    @property
    def function(self) -> int:
        return self.control & 0x0F


def frame(data: bytes | bytearray | memoryview, position: int) -> Frame:
    """The frame at ``position``, whose header was checked with :func:`header_valid` and which is whole."""
    length = data[position + 2]
    control = data[position + 3]
    destination, source = struct.unpack_from("<HH", data, position + 4)
    user = length - MINIMUM_LENGTH
    blocks = []
    bad = -1
    cursor = position + HEADER_LENGTH
    number = 0
    while user > 0:
        size = BLOCK if user > BLOCK else user
        end = cursor + size
        if bad < 0 and crc(data, cursor, end) != data[end] | (data[end + 1] << 8):
            bad = number
        blocks.append(bytes(data[cursor:end]))
        cursor = end + 2
        user -= size
        number += 1
    return Frame(length, control, destination, source, b"".join(blocks), bad)


def build(control: int, destination: int, source: int, user_data: bytes = b"") -> bytes:
    """A frame with correct CRCs: for tests and simulators."""
    header = bytes([0x05, 0x64, MINIMUM_LENGTH + len(user_data), control]) + struct.pack("<HH", destination, source)
    out = bytearray(header + crc(header).to_bytes(2, "little"))
    for start in range(0, len(user_data), BLOCK):
        block = user_data[start : start + BLOCK]
        out += block + crc(block).to_bytes(2, "little")
    return bytes(out)

"""Compiled walkers over capture-file records.

Each walker scans one buffer of file bytes and fills preallocated columns with
the position and metadata of every complete packet record it finds. It stops
at the first record that is cut by the end of the buffer (the caller carries
those bytes into the next buffer) or at the first record it cannot trust (the
caller reports the byte offset). No Python object is made per packet.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Status codes returned by the walkers.
OK = 0  # stopped because the buffer ended (possibly inside a record)
FULL = 1  # output columns are full; call again from ``position``
CORRUPT_LENGTH = 2  # a record length is impossible
NEEDS_PYTHON = 3  # pcapng: a section or interface block the caller must read
BAD_INTERFACE = 4  # pcapng: packet refers to an interface never described

#: Largest record body we accept; larger means a corrupt length field.
MAXIMUM_RECORD = 262_144 * 4


@njit(cache=True, inline="always")
def _u32(buffer: np.ndarray, position: int, big_endian: bool) -> int:
    if big_endian:
        return (
            (np.uint32(buffer[position]) << 24)
            | (np.uint32(buffer[position + 1]) << 16)
            | (np.uint32(buffer[position + 2]) << 8)
            | np.uint32(buffer[position + 3])
        )
    return (
        np.uint32(buffer[position])
        | (np.uint32(buffer[position + 1]) << 8)
        | (np.uint32(buffer[position + 2]) << 16)
        | (np.uint32(buffer[position + 3]) << 24)
    )


@njit(cache=True, nogil=True)  # releases the GIL: the writer and hash threads run meanwhile
def walk_pcap(
    buffer: np.ndarray,
    position: int,
    end: int,
    big_endian: bool,
    nanoseconds: bool,
    snap_length: int,
    offsets: np.ndarray,
    captured_lengths: np.ndarray,
    original_lengths: np.ndarray,
    timestamps: np.ndarray,
    start_index: int,
) -> tuple[int, int, int]:
    """Walk classic pcap records from ``position``; returns (status, next position, count)."""
    count = start_index
    capacity = offsets.shape[0]
    limit = MAXIMUM_RECORD
    if snap_length > limit:
        limit = snap_length
    while True:
        if count >= capacity:
            return FULL, position, count
        if position + 16 > end:
            return OK, position, count
        seconds = _u32(buffer, position, big_endian)
        fraction = _u32(buffer, position + 4, big_endian)
        captured = _u32(buffer, position + 8, big_endian)
        original = _u32(buffer, position + 12, big_endian)
        if (
            captured > limit
            or (nanoseconds and fraction >= 1_000_000_000)
            or (not nanoseconds and fraction >= 1_000_000)
        ):
            return CORRUPT_LENGTH, position, count
        if position + 16 + captured > end:
            return OK, position, count
        offsets[count] = position + 16
        captured_lengths[count] = captured
        original_lengths[count] = original if original >= captured else captured
        if nanoseconds:
            timestamps[count] = np.int64(seconds) * 1_000_000_000 + np.int64(fraction)
        else:
            timestamps[count] = np.int64(seconds) * 1_000_000_000 + np.int64(fraction) * 1000
        count += 1
        position += 16 + captured


@njit(cache=True, nogil=True)  # releases the GIL: the writer and hash threads run meanwhile
def walk_pcapng(
    buffer: np.ndarray,
    position: int,
    end: int,
    big_endian: bool,
    interface_count: int,
    interface_link_types: np.ndarray,
    interface_units_per_second: np.ndarray,
    interface_offsets: np.ndarray,
    offsets: np.ndarray,
    captured_lengths: np.ndarray,
    original_lengths: np.ndarray,
    timestamps: np.ndarray,
    link_types: np.ndarray,
    start_index: int,
) -> tuple[int, int, int]:
    """Walk pcapng blocks; packet blocks become records, section and interface
    blocks hand control back to Python, everything else is skipped."""
    count = start_index
    capacity = offsets.shape[0]
    while True:
        if count >= capacity:
            return FULL, position, count
        if position + 12 > end:
            return OK, position, count
        block_type = _u32(buffer, position, big_endian)
        if block_type == 0x0A0D0D0A or block_type == 0x00000001:
            return NEEDS_PYTHON, position, count
        block_length = _u32(buffer, position + 4, big_endian)
        if block_length < 12 or block_length % 4 != 0 or block_length > MAXIMUM_RECORD + 64:
            return CORRUPT_LENGTH, position, count
        if position + block_length > end:
            return OK, position, count
        if _u32(buffer, position + block_length - 4, big_endian) != block_length:
            return CORRUPT_LENGTH, position, count
        if block_type == 0x00000006 or block_type == 0x00000002:
            # Enhanced packet block (6) or obsolete packet block (2).
            if block_length < 32:
                return CORRUPT_LENGTH, position, count
            if block_type == 6:
                interface = _u32(buffer, position + 8, big_endian)
            else:
                interface = (
                    (buffer[position + 8] << 8) | buffer[position + 9]
                    if big_endian
                    else buffer[position + 8] | (buffer[position + 9] << 8)
                )
            high = np.int64(_u32(buffer, position + 12, big_endian))
            low = np.int64(_u32(buffer, position + 16, big_endian))
            captured = _u32(buffer, position + 20, big_endian)
            original = _u32(buffer, position + 24, big_endian)
            if 28 + captured + 4 > block_length:
                return CORRUPT_LENGTH, position, count
            if interface >= interface_count:
                return BAD_INTERFACE, position, count
            units = interface_units_per_second[interface]
            raw = (high << 32) | low
            raw += interface_offsets[interface] * units
            if units == 1_000_000_000:
                stamp = raw
            elif units == 1_000_000:
                stamp = raw * 1000
            else:
                stamp = np.int64(float(raw) * (1e9 / float(units)))
            offsets[count] = position + 28
            captured_lengths[count] = captured
            original_lengths[count] = original if original >= captured else captured
            timestamps[count] = stamp
            link_types[count] = interface_link_types[interface]
            count += 1
        elif block_type == 0x00000003:
            # Simple packet block: no timestamp, interface 0.
            if interface_count < 1:
                return BAD_INTERFACE, position, count
            original = _u32(buffer, position + 8, big_endian)
            captured = block_length - 16
            if original < captured:
                captured = original
            offsets[count] = position + 12
            captured_lengths[count] = captured
            original_lengths[count] = original
            timestamps[count] = 0
            link_types[count] = interface_link_types[0]
            count += 1
        position += block_length

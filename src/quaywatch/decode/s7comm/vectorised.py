"""The vectorised path for cyclic S7comm polling: Read Variable jobs and their ACK-Data, with S7ANY items.

An HMI or SCADA master reads the same variables many times a second, one TPKT frame per TCP segment, one COTP
data unit per frame. Such segments are recognised and decoded here for a whole batch at once, with rows equal
to what ``S7Session.feed`` returns (S7comm does not pair jobs with acknowledgements, so no state changes).
Every other segment (setup, writes, user data, split frames, items of other syntaxes) goes to the session.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from quaywatch.decode.base import DatagramRows
from quaywatch.decode.s7comm import constants as c

READ_VARIABLE = 0x04
#: Bytes before the S7 header: TPKT (4) and a COTP data TPDU of header length 2 (3).
S7_START = 7
ITEM_BYTES = 12  # 0x12, length 10, S7ANY specification of 10 bytes
JOB, ACK_DATA = 1, 3


@njit(cache=True)
def _u16(buffer: np.ndarray, position: int) -> int:
    return int((np.int64(buffer[position]) << 8) | np.int64(buffer[position + 1]))


@njit(cache=True)
def _shapes(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """0: not decoded here; 1: a Read Variable job of S7ANY items; 3: its ACK-Data with whole items."""
    count = starts.shape[0]
    kinds = np.zeros(count, np.int8)
    for index in range(count):
        start, size = starts[index], lengths[index]
        if size < S7_START + 12 or buffer[start] != 3 or _u16(buffer, start + 2) != size:
            continue
        if buffer[start + 4] != 2 or buffer[start + 5] >> 4 != 0x0F or not buffer[start + 6] & 0x80:
            continue
        pdu = start + S7_START
        if buffer[pdu] != 0x32:
            continue
        rosctr = buffer[pdu + 1]
        header = 12 if rosctr == ACK_DATA else 10
        parameter_length, data_length = _u16(buffer, pdu + 6), _u16(buffer, pdu + 8)
        if (rosctr != JOB and rosctr != ACK_DATA) or S7_START + header + parameter_length + data_length != size:
            continue
        parameter = pdu + header
        if parameter_length < 2 or buffer[parameter] != READ_VARIABLE:
            continue
        items = np.int64(buffer[parameter + 1])
        if items < 1:
            continue
        if rosctr == JOB:
            if parameter_length != 2 + ITEM_BYTES * items:
                continue
            good = True
            for item in range(items):
                spec = parameter + 2 + ITEM_BYTES * item
                if buffer[spec] != 0x12 or buffer[spec + 1] != 10 or buffer[spec + 2] != 0x10:
                    good = False
                    break
            if good:
                kinds[index] = JOB
            continue
        if parameter_length != 2:
            continue
        # Every data item whole (header and value), fill bytes between items, nothing left over.
        position = 0
        data = parameter + 2
        good = True
        for item in range(items):
            if position + 4 > data_length:
                good = False
                break
            transport = buffer[data + position + 1]
            length = _u16(buffer, data + position + 2)
            octets = (length + 7) // 8 if transport == 3 or transport == 4 or transport == 5 else length
            position += 4 + octets
            if position > data_length:
                good = False
                break
            if octets % 2 and item < items - 1:
                position += 1
        if good and position == data_length:
            kinds[index] = ACK_DATA
    return kinds


@njit(cache=True)
def _values(
    buffer: np.ndarray, starts: np.ndarray, item_counts: np.ndarray, item_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Return codes, value offsets and value bytes of every item of every ACK-Data, laid end to end."""
    total = item_offsets[-1]
    codes = np.empty(total, np.int16)
    value_offsets = np.zeros(total + 1, np.int64)
    size = 0
    for index in range(starts.shape[0]):
        data = starts[index] + S7_START + 12 + 2
        position = 0
        for item in range(item_counts[index]):
            transport = buffer[data + position + 1]
            length = _u16(buffer, data + position + 2)
            octets = (length + 7) // 8 if transport == 3 or transport == 4 or transport == 5 else length
            codes[item_offsets[index] + item] = buffer[data + position]
            size += octets
            value_offsets[item_offsets[index] + item + 1] = size
            position += 4 + octets
            if octets % 2 and item < item_counts[index] - 1:
                position += 1
    out = np.empty(size, np.uint8)
    cursor = 0
    for index in range(starts.shape[0]):
        data = starts[index] + S7_START + 12 + 2
        position = 0
        for item in range(item_counts[index]):
            transport = buffer[data + position + 1]
            length = _u16(buffer, data + position + 2)
            octets = (length + 7) // 8 if transport == 3 or transport == 4 or transport == 5 else length
            for offset in range(octets):
                out[cursor + offset] = buffer[data + position + 4 + offset]
            cursor += octets
            position += 4 + octets
            if octets % 2 and item < item_counts[index] - 1:
                position += 1
    return codes, value_offsets, out


@njit(cache=True)
def _items(buffer: np.ndarray, starts: np.ndarray, item_counts: np.ndarray, item_offsets: np.ndarray) -> np.ndarray:
    """Per item of every job: transport size, length, DB, area, byte offset, bit (one row each)."""
    fields = np.empty((item_offsets[-1], 6), np.int64)
    for index in range(starts.shape[0]):
        parameter = starts[index] + S7_START + 10
        for item in range(item_counts[index]):
            spec = parameter + 2 + ITEM_BYTES * item + 2
            address = (np.int64(buffer[spec + 7]) << 16) | (np.int64(buffer[spec + 8]) << 8) | buffer[spec + 9]
            row = item_offsets[index] + item
            fields[row, 0] = buffer[spec + 1]
            fields[row, 1] = _u16(buffer, spec + 2)
            fields[row, 2] = _u16(buffer, spec + 4)
            fields[row, 3] = buffer[spec + 6]
            fields[row, 4] = address >> 3
            fields[row, 5] = address & 7
    return fields


def segment_kinds(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per segment: 0, or the ROSCTR (1 job, 3 ACK-Data) of the Read Variable PDU it holds alone."""
    if starts.shape[0] == 0:
        return np.zeros(0, np.int8)
    return _shapes(buffer, starts.astype(np.int64), lengths.astype(np.int64))


def _names(codes: np.ndarray, names: dict[int, str], fallback: str) -> pa.Array:
    """Names of codes through their distinct values (a handful per batch), as the parser names them."""
    distinct, inverse = np.unique(codes, return_inverse=True)
    labels = pa.array([names.get(code, fallback.format(code)) for code in distinct.tolist()], pa.string())
    return labels.take(pa.array(inverse.astype(np.int32)))


def _offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def decode_segments(
    buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, item_type: pa.DataType
) -> list[tuple[np.ndarray, DatagramRows]]:
    """Job and ACK-Data rows for segments ``segment_kinds`` accepted."""
    starts = starts.astype(np.int64)
    kinds = _shapes(buffer, starts, lengths.astype(np.int64))
    results: list[tuple[np.ndarray, DatagramRows]] = []
    for rosctr in (JOB, ACK_DATA):
        chosen = np.flatnonzero(kinds == rosctr)
        if chosen.shape[0] == 0:
            continue
        at = starts[chosen]
        pdu = at + S7_START
        header = 12 if rosctr == ACK_DATA else 10
        item_counts = buffer[pdu + header + 1].astype(np.int64)
        item_offsets = _offsets(item_counts)
        name = c.ROSCTR[rosctr]
        columns: dict[str, pa.Array] = {
            "rosctr_code": pa.array(np.full(chosen.shape[0], rosctr, np.int16)),
            "rosctr": pa.array([name] * chosen.shape[0], pa.string()),
            "pdu_reference": pa.array((buffer[pdu + 4].astype(np.int32) << 8) | buffer[pdu + 5], pa.int32()),
            "function_code": pa.array(np.full(chosen.shape[0], READ_VARIABLE, np.int16)),
            "function": pa.array([c.FUNCTIONS.get(READ_VARIABLE)] * chosen.shape[0], pa.string()),
            "controls_plc": pa.array(np.full(chosen.shape[0], READ_VARIABLE in c.CONTROL_FUNCTIONS)),
            "item_count": pa.array(item_counts.astype(np.int16)),
        }
        list_offsets = pa.array(item_offsets.astype(np.int32))
        if rosctr == JOB:
            fields = _items(buffer, at, item_counts, item_offsets)
            areas = fields[:, 3]
            struct = pa.StructArray.from_arrays(
                [
                    pa.array(np.full(fields.shape[0], 0x10, np.int16)),
                    pa.array(fields[:, 0].astype(np.int16)),
                    pa.array(fields[:, 1].astype(np.int32)),
                    pa.array(fields[:, 2].astype(np.int32)),
                    pa.array(areas.astype(np.int16)),
                    _names(areas, c.AREAS, "Area 0x{:02x}"),
                    pa.array(fields[:, 4].astype(np.int32)),
                    pa.array(fields[:, 5].astype(np.int16)),
                ],
                fields=list(item_type),
            )
            columns["items"] = pa.ListArray.from_arrays(list_offsets, struct)
        else:
            error_classes = buffer[pdu + 10].astype(np.int64)
            columns["error_class_code"] = pa.array(error_classes.astype(np.int16))
            columns["error_class"] = _names(error_classes, c.ERROR_CLASSES, "Error class 0x{:02x}")
            columns["error_code"] = pa.array(buffer[pdu + 11].astype(np.int32))
            codes, value_offsets, data = _values(buffer, at, item_counts, item_offsets)
            values = pa.BinaryArray.from_buffers(
                pa.binary(),
                codes.shape[0],
                [None, pa.py_buffer(value_offsets.astype(np.int32)), pa.py_buffer(data)],
            )
            columns["return_codes"] = pa.ListArray.from_arrays(list_offsets, pa.array(codes))
            columns["values"] = pa.ListArray.from_arrays(list_offsets, values)
        event_type = name.lower().replace("-", "_")
        handled = np.ones(chosen.shape[0], np.bool_)
        results.append((chosen, DatagramRows(handled, "s7comm", event_type, columns)))
    return results

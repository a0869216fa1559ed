"""The vectorised path for cyclic EtherNet/IP explicit messaging: CIP Read Tag of one symbolic tag.

An HMI reads Logix tags many times a second, one encapsulation message per TCP segment: Send RR Data with a
null address and an unconnected data item, or Send Unit Data with a connected address and a connected data
item. Such segments are recognised and decoded here for a whole batch at once, with ``enip`` and ``cip`` rows
equal to what ``EnipStreamSession.feed`` returns (the stream session keeps no state across messages). Every
other segment (other commands and services, logical paths, Multiple Service Packets) goes to the session.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from quaywatch.decode.base import DatagramRows
from quaywatch.decode.enip import constants as c

READ_TAG = 0x4C
SEND_RR_DATA, SEND_UNIT_DATA = 0x6F, 0x70
REQUEST, RESPONSE = 1, 2
#: Columns of ``_shapes``' answer per segment.
KIND, CONNECTED, CIP_START, CIP_LENGTH = range(4)


@njit(cache=True)
def _u16(buffer: np.ndarray, position: int) -> int:
    return int(np.int64(buffer[position]) | (np.int64(buffer[position + 1]) << 8))


@njit(cache=True)
def _shapes(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per segment: kind (0 other, 1 Read Tag request, 2 its response), connected, CIP start and length."""
    count = starts.shape[0]
    answer = np.zeros((count, 4), np.int64)
    for index in range(count):
        start, size = starts[index], lengths[index]
        if size < 24 + 6 + 2 + 8 + 4:
            continue
        command = _u16(buffer, start)
        if (command != SEND_RR_DATA and command != SEND_UNIT_DATA) or 24 + _u16(buffer, start + 2) != size:
            continue
        items = start + 24 + 6
        if _u16(buffer, items) != 2:
            continue
        first_type, first_length = _u16(buffer, items + 2), _u16(buffer, items + 4)
        second = items + 6 + first_length
        if second + 4 > start + size:
            continue
        second_type, second_length = _u16(buffer, second), _u16(buffer, second + 2)
        if second + 4 + second_length != start + size:
            continue
        if command == SEND_RR_DATA and first_type == 0x0000 and first_length == 0 and second_type == 0x00B2:
            connected, cip, cip_length = 0, second + 4, second_length
        elif command == SEND_UNIT_DATA and first_type == 0x00A1 and first_length == 4 and second_type == 0x00B1:
            connected, cip, cip_length = 1, second + 6, second_length - 2
        else:
            continue
        if cip_length < 2:
            continue
        service = buffer[cip]
        if service == READ_TAG:
            words = np.int64(buffer[cip + 1])
            if words < 1 or 2 + 2 * words > cip_length or buffer[cip + 2] != 0x91:
                continue
            name = np.int64(buffer[cip + 3])
            if 2 + name + (name & 1) != 2 * words:
                continue  # one symbolic segment, and nothing after it in the path
            answer[index, KIND] = REQUEST
        elif service == READ_TAG | 0x80:
            if cip_length < 4 or 4 + 2 * np.int64(buffer[cip + 3]) > cip_length:
                continue
            answer[index, KIND] = RESPONSE
        else:
            continue
        answer[index, CONNECTED] = connected
        answer[index, CIP_START] = cip - start
        answer[index, CIP_LENGTH] = cip_length
    return answer


def segment_kinds(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per segment: 0, or 1/2 for the Read Tag request/response it holds alone."""
    if starts.shape[0] == 0:
        return np.zeros(0, np.int64)
    return _shapes(buffer, starts.astype(np.int64), lengths.astype(np.int64))[:, KIND]


def _le(buffer: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """Little-endian unsigned integers of ``size`` bytes at each position."""
    value = np.zeros(positions.shape[0], np.int64)
    for byte in range(size):
        value |= buffer[positions + byte].astype(np.int64) << (8 * byte)
    return value


def _names(codes: np.ndarray, name: object) -> pa.Array:
    """Names of codes through their distinct values (a handful per batch)."""
    distinct, inverse = np.unique(codes, return_inverse=True)
    labels = pa.array([name(code) for code in distinct.tolist()], pa.string())  # type: ignore[operator]
    return labels.take(pa.array(inverse.astype(np.int32)))


def _binary(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Byte strings ``buffer[start : start + length]`` as one Arrow binary array, gathered without a loop."""
    offsets = np.zeros(starts.shape[0] + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    data = buffer[gather] if gather.shape[0] else np.zeros(0, np.uint8)
    return pa.BinaryArray.from_buffers(
        pa.binary(), starts.shape[0], [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data.tobytes())]
    )


def _texts(values: pa.Array) -> pa.Array:
    """Tag names as the session decodes them (UTF-8, invalid bytes as backslash escapes), once per distinct name."""
    encoded = values.dictionary_encode()
    labels = pa.array([raw.decode("utf-8", "backslashreplace") for raw in encoded.dictionary.to_pylist()], pa.string())
    return labels.take(encoded.indices)


def decode_segments(
    buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> list[tuple[np.ndarray, DatagramRows]]:
    """``enip`` rows for every accepted segment and ``cip`` rows for their Read Tag requests and responses."""
    starts = starts.astype(np.int64)
    shapes = _shapes(buffer, starts, lengths.astype(np.int64))
    everything = np.arange(starts.shape[0])
    commands = _le(buffer, starts, 2)
    status = _le(buffer, starts + 8, 4)
    enip = {
        "command_code": pa.array(commands.astype(np.int32)),
        "command": _names(commands, lambda code: c.COMMANDS.get(code, f"Command 0x{code:04x}")),
        "length": pa.array(_le(buffer, starts + 2, 2).astype(np.int32)),
        "session_handle": pa.array(_le(buffer, starts + 4, 4)),
        "status_code": pa.array(status),
        "status": _names(status, lambda code: c.ENCAPSULATION_STATUS.get(code, f"Status 0x{code:08x}")),
        "sender_context": _binary(buffer, starts + 12, np.full(starts.shape[0], 8, np.int64)),
        "options": pa.array(_le(buffer, starts + 20, 4)),
    }
    results = [(everything, DatagramRows(np.ones(starts.shape[0], np.bool_), "enip", "enip", enip))]
    service = c.service_name(READ_TAG, None)
    for kind, message in ((REQUEST, "request"), (RESPONSE, "response")):
        chosen = np.flatnonzero(shapes[:, KIND] == kind)
        if chosen.shape[0] == 0:
            continue
        count = chosen.shape[0]
        cip = starts[chosen] + shapes[chosen, CIP_START]
        cip_length = shapes[chosen, CIP_LENGTH]
        connected = shapes[chosen, CONNECTED].astype(np.bool_)
        columns: dict[str, pa.Array] = {
            "message": pa.array([message] * count, pa.string()),
            "connected": pa.array(connected),
            "service_code": pa.array(np.full(count, READ_TAG, np.int16)),
            "service": pa.array([service] * count, pa.string()),
            "embedded": pa.array(np.zeros(count, np.bool_)),
            "controls_device": pa.array(np.full(count, READ_TAG in c.CONTROL_SERVICES)),
        }
        # Connected data items: the connection id of the address item before, and the CIP sequence count.
        item_start = starts[chosen] + 24 + 6 + 2
        connection = np.where(connected, _le(buffer, item_start + 4, 4), 0)
        columns["connection_id"] = pa.array(connection, pa.int64(), mask=~connected)
        columns["sequence_count"] = pa.array(
            np.where(connected, _le(buffer, cip - 2, 2), 0), pa.int32(), mask=~connected
        )
        if kind == REQUEST:
            words = buffer[cip + 1].astype(np.int64)
            names = buffer[cip + 3].astype(np.int64)
            columns["tag"] = _texts(_binary(buffer, cip + 4, names))
            body = cip_length - 2 - 2 * words
        else:
            general = buffer[cip + 2].astype(np.int64)
            words = buffer[cip + 3].astype(np.int64)
            columns["status_code"] = pa.array(general.astype(np.int16))
            columns["status"] = _names(general, lambda code: c.GENERAL_STATUS.get(code, f"Status 0x{code:02x}"))
            positions = np.repeat(cip + 4 - 2 * np.r_[0, np.cumsum(words)[:-1]], words) + 2 * np.arange(words.sum())
            extended = _le(buffer, positions, 2).astype(np.int32)
            offsets = np.zeros(count + 1, np.int32)
            np.cumsum(words, out=offsets[1:])
            columns["extended_status"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(extended))
            body = cip_length - 4 - 2 * words
        columns["data_length"] = pa.array(body.astype(np.int32))
        results.append((chosen, DatagramRows(np.ones(count, np.bool_), "cip", message, columns)))
    return results

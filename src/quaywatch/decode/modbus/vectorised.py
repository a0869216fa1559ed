"""The vectorised path for cyclic Modbus/TCP polling: read holding/input registers (functions 3 and 4).

A SCADA master polls the same registers many times a second; each request and each response travels alone
in its TCP segment. Such segments are recognised and decoded here for a whole batch at once; the pairing of
responses with requests runs over the sessions' own pending tables, so rows and session state are exactly
what ``ModbusSession.feed`` produces. Every other segment goes to the session.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from quaywatch.decode.base import DatagramRows, Session
from quaywatch.decode.modbus.constants import FUNCTIONS, MAXIMUM_LENGTH

#: Function codes this path decodes: the read-register polls that dominate cyclic traffic.
POLLED_FUNCTIONS = (3, 4)
#: Request fields a response row inherits, as ``ModbusSession._message`` copies them.
INHERITED = ("address", "quantity", "read_address", "read_quantity", "mei_type", "sub_function")


@njit(cache=True)
def _shapes(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sides: np.ndarray, limit: int) -> np.ndarray:
    """One whole MBAP frame of a function 3/4 request (quantity 1..125) or well-formed response."""
    count = starts.shape[0]
    accepted = np.zeros(count, np.bool_)
    for index in range(count):
        start, size = starts[index], lengths[index]
        if size < 9:
            continue
        if buffer[start + 2] != 0 or buffer[start + 3] != 0:
            continue
        declared = (np.int64(buffer[start + 4]) << 8) | buffer[start + 5]
        if declared > limit or 6 + declared != size:
            continue
        function = buffer[start + 7]
        if function != 3 and function != 4:
            continue
        if sides[index] == 0:
            if declared != 6:
                continue
            quantity = (np.int64(buffer[start + 10]) << 8) | buffer[start + 11]
            accepted[index] = 1 <= quantity <= 125
        else:
            byte_count = np.int64(buffer[start + 8])
            accepted[index] = byte_count == declared - 3 and byte_count % 2 == 0
    return accepted


@njit(cache=True)
def _registers(buffer: np.ndarray, starts: np.ndarray, counts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit register values of each response, laid end to end (``offsets`` per response)."""
    values = np.empty(offsets[-1], np.int32)
    for index in range(starts.shape[0]):
        base = starts[index] + 9
        for register in range(counts[index]):
            values[offsets[index] + register] = (np.int32(buffer[base + 2 * register]) << 8) | buffer[
                base + 2 * register + 1
            ]
    return values


def segment_shapes(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """Segments holding exactly one function 3/4 request or response."""
    if starts.shape[0] == 0:
        return np.zeros(0, np.bool_)
    return _shapes(buffer, starts.astype(np.int64), lengths.astype(np.int64), sides.astype(np.int64), MAXIMUM_LENGTH)


def decode_segments(
    buffer: np.ndarray,
    starts: np.ndarray,
    sides: np.ndarray,
    timestamps: np.ndarray,
    sessions: list[Session],
    max_pending: int,
) -> list[tuple[np.ndarray, DatagramRows]]:
    """Request and response rows for accepted segments, pairing through each session's pending table."""
    starts = starts.astype(np.int64)
    transactions = (buffer[starts].astype(np.int32) << 8) | buffer[starts + 1]
    units = buffer[starts + 6].astype(np.int16)
    functions = buffer[starts + 7].astype(np.int16)
    names = {code: FUNCTIONS[code] for code in POLLED_FUNCTIONS}
    requests = np.flatnonzero(sides == 0)
    responses = np.flatnonzero(sides != 0)
    addresses = (buffer[starts + 8].astype(np.int32) << 8) | buffer[starts + 9]
    quantities = (buffer[starts + 10].astype(np.int32) << 8) | buffer[starts + 11]
    inherited: dict[str, list[object]] = {name: [None] * responses.shape[0] for name in INHERITED}
    matched = np.zeros(responses.shape[0], np.bool_)
    latency: list[float | None] = [None] * responses.shape[0]
    response_rank = np.cumsum(sides != 0) - 1
    # Pairing, in stream order: the same dictionary operations as ModbusSession._message, on its own table.
    for position, session, side, transaction, unit, function, timestamp, address, quantity in zip(
        range(starts.shape[0]), sessions, sides.tolist(), transactions.tolist(), units.tolist(), functions.tolist(),
        timestamps.tolist(), addresses.tolist(), quantities.tolist(), strict=True,
    ):  # fmt: skip
        pending: dict[tuple[int, int], tuple[float, dict[str, object]]] = session.pending
        seconds = timestamp / 1e9
        if side == 0:
            if len(pending) >= max_pending:
                pending.pop(next(iter(pending)))
            pending[(transaction, unit)] = (
                seconds,
                {"function_code": function, "function": names[function], "writes": False, "address": address,
                 "quantity": quantity},
            )  # fmt: skip
            continue
        request = pending.pop((transaction, unit), None)
        if request is None:
            continue
        rank = int(response_rank[position])
        requested_at, fields = request
        matched[rank] = fields.get("function_code") == function
        latency[rank] = max(0.0, seconds - requested_at)
        for name in INHERITED:
            if name in fields:
                inherited[name][rank] = fields[name]
    results: list[tuple[np.ndarray, DatagramRows]] = []
    for chosen, event_type in ((requests, "request"), (responses, "response")):
        if chosen.shape[0] == 0:
            continue
        columns: dict[str, pa.Array] = {
            "transaction_id": pa.array(transactions[chosen], pa.int32()),
            "unit_id": pa.array(units[chosen], pa.int16()),
            "function_code": pa.array(functions[chosen], pa.int16()),
            "function": pa.array([names[f] for f in functions[chosen].tolist()], pa.string()),
            "writes": pa.array(np.zeros(chosen.shape[0], np.bool_)),
        }
        if event_type == "request":
            columns["address"] = pa.array(addresses[chosen], pa.int32())
            columns["quantity"] = pa.array(quantities[chosen], pa.int32())
        else:
            counts = (buffer[starts[chosen] + 8].astype(np.int64)) // 2
            offsets = np.zeros(chosen.shape[0] + 1, np.int64)
            np.cumsum(counts, out=offsets[1:])
            values = _registers(buffer, starts[chosen], counts, offsets)
            columns["values"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
            columns["matched"] = pa.array(matched)
            columns["latency"] = pa.array(latency, pa.float64())
            columns["address"] = pa.array(inherited["address"], pa.int32())
            columns["quantity"] = pa.array(inherited["quantity"], pa.int32())
            for name in ("read_address", "read_quantity", "sub_function"):
                columns[name] = pa.array(inherited[name], pa.int32())
            columns["mei_type"] = pa.array(inherited["mei_type"], pa.int16())
        handled = np.ones(chosen.shape[0], np.bool_)
        results.append((chosen, DatagramRows(handled, "modbus", event_type, columns)))
    return results

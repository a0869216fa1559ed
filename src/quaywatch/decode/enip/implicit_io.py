"""CIP class 0/1 implicit I/O counted per connection: one ``cip_io`` row per connection and second.

A drive and its PLC exchange I/O datagrams on UDP 2222 every few milliseconds, each the same small message with
the next sequence number. A row per datagram would make ``cip_io`` the biggest table of a terminal's store while
saying little more than its count, so the datagrams of one connection (flow, direction, connection id) are folded
per capture second (epoch-aligned, by packet time) into one row: how many, first and last time and packet, first
and last sequence number, sequence gaps and steps back, data length range and total, and the last datagram's data.

Both decoding paths (the session's per-datagram events and ``EnipUdpDecoder.decode_datagrams``) give the same
per-datagram records; the dispatcher hands them to :class:`IoFold` in packet order, batch by batch, so the rows do
not depend on which path decoded a datagram or where the capture windows fall. A connection's sequence numbers
are followed across seconds; a row is written when its second ends (the connection's next datagram falls in
another second) or its flow ends.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from quaywatch.decode.base import Fold

SECOND = 1_000_000_000
WRAP = 1 << 32
#: State columns per open connection (int64).
(BUCKET, COUNT, FIRST_TS, LAST_TS, FIRST_NUMBER, LAST_NUMBER, FIRST_SEQUENCE, LAST_SEQUENCE, HIGHEST, GAPS, BACKWARDS,
 MIN_LENGTH, MAX_LENGTH, BYTES, LAST_RECORD, OPEN) = range(16)  # fmt: skip
STATE_COLUMNS = 16
NULL = -1


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


#: One implicit I/O datagram, as the session and the vectorised path decode it (the fold's input).
DATAGRAM_SCHEMA = pa.schema(
    [
        _field("connection_id", pa.int64(), "sequenced address item: connection id"),
        _field("sequence_number", pa.int64(), "sequenced address item: encapsulation sequence number"),
        _field("data_length", pa.int32(), "connected data item length"),
        _field("data", pa.binary(), "I/O data, as sent"),
    ]
)

#: The stored ``cip_io`` row: one connection's datagrams in one second (ts and packet_number: its last datagram).
IO_SCHEMA = pa.schema(
    [
        _field("connection_id", pa.int64(), "sequenced address item: connection id (NULL: the datagram had none)"),
        _field("datagrams", pa.int64(), "I/O datagrams of this connection and direction in this second"),
        _field("first_ts", pa.timestamp("us", tz="UTC"), "time of the first of them (ts: the last)"),
        _field("first_packet_number", pa.int64(), "packet number of the first of them (packet_number: the last)"),
        _field("first_sequence", pa.int64(), "encapsulation sequence number of the first"),
        _field("last_sequence", pa.int64(), "encapsulation sequence number of the last"),
        _field(
            "sequence_gaps",
            pa.int64(),
            "sequence numbers skipped: a datagram more than one ahead of the highest seen on the connection (also "
            "across seconds) adds the numbers in between",
        ),
        _field("sequence_backwards", pa.int64(), "datagrams whose sequence number repeats or is behind the highest"),
        _field("min_data_length", pa.int32(), "shortest connected data item"),
        _field("max_data_length", pa.int32(), "longest connected data item"),
        _field("data_bytes", pa.int64(), "connected data bytes of all of them"),
        _field("data", pa.binary(), "I/O data of the last datagram, as sent"),
    ]
)


@njit(cache=True)
def _fold(
    slots: np.ndarray, timestamps: np.ndarray, numbers: np.ndarray, sequences: np.ndarray, lengths: np.ndarray,
    state: np.ndarray, out: np.ndarray, out_slots: np.ndarray,
) -> int:  # fmt: skip
    """Add records (in packet order per slot) to the slots' open seconds; closed seconds go to ``out``."""
    emitted = 0
    for index in range(slots.shape[0]):
        slot = slots[index]
        row = state[slot]
        timestamp = timestamps[index]
        bucket = timestamp // SECOND
        if row[OPEN] and row[BUCKET] != bucket:
            out[emitted] = row
            out_slots[emitted] = slot
            emitted += 1
            row[OPEN] = 0
        sequence = sequences[index]
        length = lengths[index]
        if not row[OPEN]:
            row[OPEN] = 1
            row[BUCKET] = bucket
            row[COUNT] = 0
            row[FIRST_TS] = timestamp
            row[FIRST_NUMBER] = numbers[index]
            row[FIRST_SEQUENCE] = sequence
            row[GAPS] = 0
            row[BACKWARDS] = 0
            row[MIN_LENGTH] = NULL
            row[MAX_LENGTH] = NULL
            row[BYTES] = 0
        row[COUNT] += 1
        row[LAST_TS] = timestamp
        row[LAST_NUMBER] = numbers[index]
        row[LAST_SEQUENCE] = sequence
        row[LAST_RECORD] = index
        if sequence != NULL:
            highest = row[HIGHEST]
            if highest == NULL:
                row[HIGHEST] = sequence
            else:
                step = (sequence - highest) % WRAP
                if step == 0 or step >= WRAP // 2:
                    row[BACKWARDS] += 1
                else:
                    row[GAPS] += step - 1
                    row[HIGHEST] = sequence
        if length != NULL:
            row[BYTES] += length
            if row[MIN_LENGTH] == NULL or length < row[MIN_LENGTH]:
                row[MIN_LENGTH] = length
            if length > row[MAX_LENGTH]:
                row[MAX_LENGTH] = length
    return emitted


def _filled(values: pa.Array) -> np.ndarray:
    """An int64 column with NULL as -1 (connection ids, sequence numbers and lengths are never negative)."""
    return np.asarray(values.cast(pa.int64()).fill_null(NULL), np.int64)


class IoFold(Fold):
    """Folds per-datagram I/O records into one row per connection (flow, direction, connection id) and second."""

    table = "cip_io"
    event_type = "io"
    records = DATAGRAM_SCHEMA

    def __init__(self) -> None:
        self.slots: dict[tuple[int, int], int] = {}
        self.state = np.zeros((0, STATE_COLUMNS), np.int64)
        #: Per slot: its key, connection id and the data of its last datagram while that came from an earlier call.
        self.keys: list[int] = []
        self.connections: list[int] = []
        self.carried: list[bytes | None] = []
        self.free: list[int] = []

    def _slot(self, key: int, connection: int) -> int:
        slot = self.slots.get((key, connection))
        if slot is None:
            if self.free:
                slot = self.free.pop()
                self.keys[slot], self.connections[slot], self.carried[slot] = key, connection, None
            else:
                slot = len(self.keys)
                self.keys.append(key)
                self.connections.append(connection)
                self.carried.append(None)
                if slot >= self.state.shape[0]:
                    grown = np.zeros((max(64, 2 * self.state.shape[0]), STATE_COLUMNS), np.int64)
                    grown[: self.state.shape[0]] = self.state
                    self.state = grown
            self.state[slot] = 0
            self.state[slot, HIGHEST] = NULL
            self.slots[(key, connection)] = slot
        return slot

    def add(
        self, keys: np.ndarray, timestamps: np.ndarray, numbers: np.ndarray, columns: dict[str, pa.Array]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, pa.Array]]:
        count = keys.shape[0]
        if count == 0:
            return self._rows(np.zeros((0, STATE_COLUMNS), np.int64), np.zeros(0, np.int64), None)
        connections = _filled(columns["connection_id"])
        composite = (keys.astype(np.int64) << 33) | (connections + 1)
        _, first, inverse = np.unique(composite, return_index=True, return_inverse=True)
        slot_of = np.array(
            [self._slot(int(keys[i]), int(connections[i])) for i in first.tolist()], np.int64
        )  # a few hundred connections at most per batch
        slots = slot_of[inverse.reshape(-1)]
        out = np.empty((count, STATE_COLUMNS), np.int64)
        out_slots = np.empty(count, np.int64)
        emitted = _fold(
            slots, timestamps.astype(np.int64), numbers.astype(np.int64), _filled(columns["sequence_number"]),
            _filled(columns["data_length"]), self.state, out, out_slots,
        )  # fmt: skip
        rows = self._rows(out[:emitted], out_slots[:emitted], columns["data"])
        # Open seconds whose last datagram is in this call keep its data: a later call may close them.
        touched = np.unique(slot_of)
        data = columns["data"]
        for slot in touched.tolist():
            self.carried[slot] = data[int(self.state[slot, LAST_RECORD])].as_py()
            self.state[slot, LAST_RECORD] = NULL
        return rows

    def finish(self, uids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, pa.Array]]:
        """Rows of the open seconds of flows ``uids`` (None: every flow), whose state is then dropped."""
        if uids is None:
            chosen = list(self.slots.items())
        else:
            ended = set(uids.tolist())
            chosen = [(k, s) for k, s in self.slots.items() if k[0] >> 1 in ended]
        if not chosen:
            return self._rows(np.zeros((0, STATE_COLUMNS), np.int64), np.zeros(0, np.int64), None)
        slots = np.array([slot for _, slot in chosen], np.int64)
        open_slots = slots[self.state[slots, OPEN] == 1]
        rows = self._rows(self.state[open_slots].copy(), open_slots, None)
        for key, slot in chosen:
            del self.slots[key]
            self.carried[slot] = None
            self.free.append(slot)
        return rows

    def _rows(
        self, closed: np.ndarray, slots: np.ndarray, data: pa.Array | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, pa.Array]]:
        """Keys, timestamps (ns) and packet numbers of the rows' last datagrams, and the rows' own columns."""
        keys = np.array([self.keys[slot] for slot in slots.tolist()], np.int64)
        connections = np.array([self.connections[slot] for slot in slots.tolist()], np.int64)
        values = [
            data[int(record)].as_py() if record != NULL and data is not None else self.carried[slot]
            for record, slot in zip(closed[:, LAST_RECORD].tolist(), slots.tolist(), strict=True)
        ]
        lengths_null = closed[:, MIN_LENGTH] == NULL
        sequence_null = closed[:, FIRST_SEQUENCE] == NULL
        last_null = closed[:, LAST_SEQUENCE] == NULL
        columns = {
            "connection_id": pa.array(connections, pa.int64(), mask=connections == NULL),
            "datagrams": pa.array(closed[:, COUNT], pa.int64()),
            "first_ts": pa.array(closed[:, FIRST_TS] // 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "first_packet_number": pa.array(closed[:, FIRST_NUMBER], pa.int64()),
            "first_sequence": pa.array(closed[:, FIRST_SEQUENCE], pa.int64(), mask=sequence_null),
            "last_sequence": pa.array(closed[:, LAST_SEQUENCE], pa.int64(), mask=last_null),
            "sequence_gaps": pa.array(closed[:, GAPS], pa.int64()),
            "sequence_backwards": pa.array(closed[:, BACKWARDS], pa.int64()),
            "min_data_length": pa.array(closed[:, MIN_LENGTH], pa.int32(), mask=lengths_null),
            "max_data_length": pa.array(closed[:, MAX_LENGTH], pa.int32(), mask=lengths_null),
            "data_bytes": pa.array(closed[:, BYTES], pa.int64()),
            "data": pa.array(values, pa.binary()),
        }
        return keys, closed[:, LAST_TS], closed[:, LAST_NUMBER], columns

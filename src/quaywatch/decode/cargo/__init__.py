"""Container intelligence in any cleartext payload: ISO 6346 container ids and EDIFACT cargo segments.

Not one protocol's decoder but a content inspector (``transport = "content"``):
the dispatcher hands it every payload of every flow that is not known to be
encrypted (TLS, SSH, RDP, VPNs), whichever decoder claimed the flow, so ids in
an HTTP body, an MQTT publish, an FTP data transfer or a raw TCP stream are all
found. The payloads of a batch are laid end to end per flow direction in
packet order, so an id split across consecutive TCP segments is still found;
different flow directions are separated by a NUL byte. Ids are found by a
compiled scanner (about 1 GB/s) and confirmed by the check digit; EDIFACT
segments (UNH message headers, LOC locations: 9 port of loading, 11 port of
discharge, 147 stowage cell) by literal-prefix patterns.

Limits: an id split across two capture batches (16 MiB windows) or inside a
compressed HTTP body is not seen.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np
import pyarrow as pa
from numba import njit

from quaywatch.decode.base import Decoder, Direction, Event, Session
from quaywatch.decode.cargo.iso6346 import check_digit

TABLE = "cargo_content"
#: Decoders whose flows carry only ciphertext after their handshake: not scanned.
ENCRYPTED = frozenset({"tls", "ssh", "rdp", "openvpn_tcp", "openvpn_udp", "wireguard", "ike", "teamviewer_tcp",
                       "teamviewer_udp", "pptp"})  # fmt: skip
MAX_IDS_PER_BATCH = 1_000_000
TEXT_LIMIT = 80

SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), False, {"doc": "container_id, edifact_message or edifact_location"}),
        pa.field(
            "value",
            pa.string(),
            False,
            {"doc": "normalised id (CSQU3054383); message type and version (COARRI:D:95B); or qualifier:location"},
        ),
        pa.field("valid", pa.bool_(), False, {"doc": "container_id: the ISO 6346 check digit is right"}),
        pa.field("text", pa.string(), True, {"doc": "the bytes as received, up to 80 (untrusted: escape to print)"}),
        pa.field("payload_offset", pa.int64(), True, {"doc": "byte offset of the match in its packet's payload"}),
    ]
)

_EDIFACT = (
    ("edifact_message", re.compile(rb"UNH\+[^'\x00]{1,80}'")),
    ("edifact_location", re.compile(rb"LOC\+(?:9|11|147|76|88)\+[^'\x00]{1,80}'")),
)


@njit(cache=True)
def find_container_ids(data: np.ndarray, out: np.ndarray) -> int:
    """Start offsets of ``AAAU999999 9`` shapes (one optional space after the category and the serial)."""
    size = data.shape[0]
    count = 0
    index = 0
    while index + 11 <= size:
        category = data[index + 3]
        if (
            (category == 85 or category == 74 or category == 90)
            and 65 <= data[index] <= 90
            and 65 <= data[index + 1] <= 90
            and 65 <= data[index + 2] <= 90
            and (index == 0 or not (65 <= data[index - 1] <= 90))
        ):
            position = index + 4
            if position < size and data[position] == 32:
                position += 1
            digits = 0
            while digits < 6 and position < size and 48 <= data[position] <= 57:
                position += 1
                digits += 1
            if digits == 6:
                if position < size and data[position] == 32:
                    position += 1
                if (
                    position < size
                    and 48 <= data[position] <= 57
                    and (position + 1 >= size or not (48 <= data[position + 1] <= 57))
                ):
                    if count < out.shape[0]:
                        out[count] = index
                    count += 1
        index += 1
    return count


@njit(cache=True)
def _lay_out(
    buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, order: np.ndarray, separated: np.ndarray,
    out: np.ndarray, positions: np.ndarray,
) -> int:  # fmt: skip
    """Copy payloads in ``order`` end to end, a NUL before each new flow direction; record each start."""
    cursor = 0
    for rank in range(order.shape[0]):
        index = order[rank]
        if separated[rank]:
            out[cursor] = 0
            cursor += 1
        positions[rank] = cursor
        length = lengths[index]
        out[cursor : cursor + length] = buffer[starts[index] : starts[index] + length]
        cursor += length
    return cursor


def _id_text(window: bytes) -> bytes:
    """The matched id as it appears: eleven letters and digits with at most two single spaces."""
    seen = 0
    for end, byte in enumerate(window, start=1):
        if byte != 32:
            seen += 1
        if seen == 11:
            return window[:end]
    return window


class _NoSession(Session):
    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        return []


class CargoContent(Decoder):
    """ISO 6346 ids and EDIFACT segments in every cleartext payload (a content inspector)."""

    name = "cargo"
    transport = "content"
    tables: ClassVar[dict[str, pa.Schema]] = {TABLE: SCHEMA}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return False  # never claims a flow: it sees every flow's payloads through inspect()

    def session(self) -> Session:
        return _NoSession()

    def inspect(
        self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, keys: np.ndarray
    ) -> list[tuple[int, int, dict[str, object]]]:
        """Matches as (payload index, offset in that payload, fields); ``keys`` groups payloads by flow direction."""
        count = starts.shape[0]
        if count == 0:
            return []
        order = np.lexsort((np.arange(count), keys))
        sorted_keys = keys[order]
        separated = np.r_[False, sorted_keys[1:] != sorted_keys[:-1]]
        out = np.empty(int(lengths.sum()) + int(separated.sum()), np.uint8)
        positions = np.empty(count, np.int64)
        _lay_out(buffer, starts.astype(np.int64), lengths.astype(np.int64), order, separated, out, positions)
        found = np.empty(1024, np.int64)
        total = find_container_ids(out, found)
        if total > found.shape[0]:
            found = np.empty(min(total, MAX_IDS_PER_BATCH), np.int64)
            find_container_ids(out, found)
        matches: list[tuple[int, str, str, bool, bytes]] = []
        data = out.tobytes()
        for start in found[: min(total, found.shape[0])].tolist():
            raw = _id_text(data[start : start + 13])
            value = raw.replace(b" ", b"").decode("ascii")
            matches.append((start, "container_id", value, check_digit(value[:10]) == int(value[10]), raw))
        for kind, pattern in _EDIFACT:
            for match in pattern.finditer(data):
                segment = match.group()[:-1].decode("latin-1")
                elements = segment.split("+")
                if kind == "edifact_message":
                    value = elements[2] if len(elements) > 2 else segment
                    value = ":".join(value.split(":")[:3])
                else:
                    value = f"{elements[1]}:{elements[2].split(':')[0]}" if len(elements) > 2 else segment
                matches.append((match.start(), kind, value, True, match.group()))
        results: list[tuple[int, int, dict[str, object]]] = []
        if not matches:
            return results
        ranks = np.searchsorted(positions, np.array([m[0] for m in matches], np.int64), side="right") - 1
        for (start, kind, value, valid, raw), rank in zip(matches, ranks.tolist(), strict=True):
            payload_index = int(order[rank])
            results.append(
                (
                    payload_index,
                    start - int(positions[rank]),
                    {
                        "kind": kind,
                        "value": value,
                        "valid": valid,
                        "text": raw[:TEXT_LIMIT].decode("utf-8", "backslashreplace"),
                        "payload_offset": start - int(positions[rank]),
                    },
                )
            )
        return results

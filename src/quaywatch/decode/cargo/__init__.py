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

Most payloads hold neither, so a compiled pre-filter first reads every payload
where it lies in the capture window, without copying, for the four bytes any
match starts with (three capital letters and U, J or Z; ``UNH+``; ``LOC+``),
also where those four bytes straddle two payloads of one stream. Only the
payloads such a start lies in, the one before each (for the scanner's look
behind) and the ones after it up to the longest match (``REACH`` bytes) are laid
end to end and scanned: the same matches at the same offsets as scanning
everything (``PREFILTER = False`` scans everything; a test compares both).

Limits: an id split across two capture batches (16 MiB windows) or inside a
compressed HTTP body is not seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
#: Bytes from a match's first byte that hold all of it: LOC+147+, 80 characters and the terminator (89); an id 13.
REACH = 90

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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _within(
    buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, heads: np.ndarray, tails: np.ndarray,
    first_begin: np.ndarray, last_begin: np.ndarray,
) -> None:  # fmt: skip
    """Per payload, read in buffer order (sequentially): the first and last offset where a match can begin and
    end its first four bytes inside it (-1: none), and its first and last three bytes (0 past a short one)."""
    for index in range(starts.shape[0]):
        start = starts[index]
        size = lengths[index]
        first = -1
        last = -1
        for offset in range(3, size):
            d = buffer[start + offset]
            if d == 43:  # +: UNH+ or LOC+?
                a, b, c = buffer[start + offset - 3], buffer[start + offset - 2], buffer[start + offset - 1]
                hit = (a == 85 and b == 78 and c == 72) or (a == 76 and b == 79 and c == 67)
            elif d == 85 or d == 74 or d == 90:  # U, J, Z: an owner code's category?
                a, b, c = buffer[start + offset - 3], buffer[start + offset - 2], buffer[start + offset - 1]
                hit = 65 <= a <= 90 and 65 <= b <= 90 and 65 <= c <= 90
            else:
                continue
            if hit:
                if first < 0:
                    first = offset - 3
                last = offset - 3
        first_begin[index] = first
        last_begin[index] = last
        for k in range(3):
            heads[index, k] = buffer[start + k] if k < size else 0
            tails[index, k] = buffer[start + size - 3 + k] if size - 3 + k >= 0 else 0


@njit(cache=True)
def _begins(a: int, b: int, c: int, d: int) -> bool:
    """Bytes a b c d can begin a match: an owner code and category (AAAU), ``UNH+`` or ``LOC+``."""
    if d == 43:
        return (a == 85 and b == 78 and c == 72) or (a == 76 and b == 79 and c == 67)
    return (d == 85 or d == 74 or d == 90) and 65 <= a <= 90 and 65 <= b <= 90 and 65 <= c <= 90


@njit(cache=True, nogil=True)
def _stream_needs(
    lengths: np.ndarray, order: np.ndarray, separated: np.ndarray, reach: int, heads: np.ndarray, tails: np.ndarray,
    first_begin: np.ndarray, last_begin: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Per payload in stream ``order``: needed, from ``_within``'s answers and the starts that straddle payloads."""
    count = order.shape[0]
    needed = np.zeros(count, np.bool_)
    tail = np.zeros(3, np.int64)  # the stream's last three bytes before the current payload (0: none, as the NUL)
    tail_rank = np.zeros(3, np.int64)
    window = np.zeros(6, np.int64)
    window_rank = np.zeros(6, np.int64)
    first_rank = 0
    position = 0  # bytes of the current stream so far
    covered = 0  # the stream is needed up to this position
    for rank in range(count):
        if separated[rank] or rank == 0:
            tail[:] = 0
            tail_rank[:] = rank
            first_rank = rank
            position = 0
            covered = 0
        index = order[rank]
        size = lengths[index]
        if position < covered:
            needed[rank] = True
        # Starts one to three bytes back, in the stream's payloads before: the stream's tail, then this head.
        for k in range(3):
            window[k] = tail[k]
            window_rank[k] = tail_rank[k]
            window[3 + k] = heads[index, k]
            window_rank[3 + k] = rank
        for w in range(min(size, 3)):  # a fourth byte beyond this payload is tried with the next one
            if _begins(window[w], window[w + 1], window[w + 2], window[w + 3]):
                for earlier in range(max(window_rank[w] - 1, first_rank), rank + 1):
                    needed[earlier] = True
                covered = max(covered, position + w - 3 + reach)
        if first_begin[index] >= 0:
            needed[max(rank - 1, first_rank)] = True  # the byte before a match is looked at
            needed[rank] = True
            covered = max(covered, position + last_begin[index] + reach)
        if size >= 3:
            for k in range(3):
                tail[k] = tails[index, k]
                tail_rank[k] = rank
        else:  # shift by the short payload's bytes
            for k in range(3):
                at = k + size
                if at < 3:
                    tail[k] = tail[at]
                    tail_rank[k] = tail_rank[at]
                else:
                    tail[k] = heads[index, at - 3]
                    tail_rank[k] = rank
        position += size
    return needed


def _needed(
    buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, order: np.ndarray, separated: np.ndarray, reach: int
) -> np.ndarray:
    """Per payload in ``order``: it may hold part of a match of the laid-out stream, or the byte before one.

    Payloads are read where they lie and in buffer order (sequential memory); only their first and last three
    bytes are then followed in stream order, for starts that straddle two payloads.
    """
    count = starts.shape[0]
    heads = np.empty((count, 3), np.int64)
    tails = np.empty((count, 3), np.int64)
    first_begin = np.empty(count, np.int64)
    last_begin = np.empty(count, np.int64)
    _within(buffer, starts, lengths, heads, tails, first_begin, last_begin)
    return _stream_needs(lengths, order, separated, reach, heads, tails, first_begin, last_begin)


def _id_text(window: bytes) -> bytes:
    """The matched id as it appears: eleven letters and digits with at most two single spaces."""
    seen = 0
    for end, byte in enumerate(window, start=1):
        if byte != 32:
            seen += 1
        if seen == 11:
            return window[:end]
    return window


@dataclass(slots=True)
class Scan:
    """What the compiled scan of one batch found: the payloads laid out (``out``) in ``order``, where each starts
    (``positions``) and where container ids start in ``out`` (``found``)."""

    order: np.ndarray
    positions: np.ndarray
    out: np.ndarray
    found: np.ndarray


class _NoSession(Session):
    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        return []


class CargoContent(Decoder):
    """ISO 6346 ids and EDIFACT segments in every cleartext payload (a content inspector)."""

    name = "cargo"
    transport = "content"
    tables: ClassVar[dict[str, pa.Schema]] = {TABLE: SCHEMA}
    #: Scan only the payloads a match can touch (see the module's doc); tests turn it off to compare.
    PREFILTER = True

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return False  # never claims a flow: it sees every flow's payloads through inspect()

    def session(self) -> Session:
        return _NoSession()

    def inspect(
        self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, keys: np.ndarray
    ) -> list[tuple[int, int, dict[str, object]]]:
        """Matches as (payload index, offset in that payload, fields); ``keys`` groups payloads by flow direction."""
        return self.finish(self.scan(buffer, starts, lengths, keys))

    def scan(self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> Scan | None:
        """The compiled part of :meth:`inspect` (pre-filter, lay-out, id scan), which holds no GIL: the dispatcher
        may run it on a second thread while the sessions decode. None when no payload can hold a match."""
        count = starts.shape[0]
        if count == 0:
            return None
        order = np.lexsort((np.arange(count), keys))
        sorted_keys = keys[order]
        separated = np.r_[False, sorted_keys[1:] != sorted_keys[:-1]]
        starts = starts.astype(np.int64)
        lengths = lengths.astype(np.int64)
        if self.PREFILTER:
            needed = _needed(buffer, starts, lengths, order, separated, REACH)
            if not needed.any():
                return None
            # A NUL before each run of needed payloads (each starts a stream of its own, as a new flow direction).
            chosen = np.flatnonzero(needed)
            separated = separated[chosen] | np.r_[True, np.diff(chosen) > 1]
            separated[0] = False
            order = order[chosen]
        out = np.empty(int(lengths[order].sum()) + int(separated.sum()), np.uint8)
        positions = np.empty(order.shape[0], np.int64)
        _lay_out(buffer, starts, lengths, order, separated, out, positions)
        found = np.empty(1024, np.int64)
        total = find_container_ids(out, found)
        if total > found.shape[0]:
            found = np.empty(min(total, MAX_IDS_PER_BATCH), np.int64)
            find_container_ids(out, found)
        return Scan(order, positions, out, found[: min(total, found.shape[0])])

    def finish(self, scan: Scan | None) -> list[tuple[int, int, dict[str, object]]]:
        """The rest of :meth:`inspect`, in Python: check digits, EDIFACT segments and the result rows."""
        if scan is None:
            return []
        order, positions, out, found = scan.order, scan.positions, scan.out, scan.found
        matches: list[tuple[int, str, str, bool, bytes]] = []
        data = out.tobytes()
        for start in found.tolist():
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

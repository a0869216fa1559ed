"""Sans-IO TCP reassembly of one direction of a stream.

Overlapping data: the first bytes received win, which is what Zeek and most
operating-system stacks do; overlaps whose content differs are counted because
they are a classic evasion technique.
"""

from __future__ import annotations

from dataclasses import dataclass

MODULO = 1 << 32
RECENT_BYTES = 65536  # delivered bytes kept to tell a retransmission from a conflicting overlap
HALF = 1 << 31


@dataclass(frozen=True, slots=True)
class StreamData:
    """In-order bytes."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StreamGap:
    """Bytes that were never captured."""

    length: int


StreamPiece = StreamData | StreamGap


def _distance(start: int, end: int) -> int:
    """Signed distance from ``start`` to ``end`` in sequence space."""
    value = (end - start) % MODULO
    return value - MODULO if value >= HALF else value


class StreamReassembler:
    """Turns TCP segments into in-order pieces, with bounded buffering."""

    def __init__(self, max_buffered_bytes: int = 1 << 20, max_buffered_segments: int = 4096) -> None:
        self.max_buffered_bytes = max_buffered_bytes
        self.max_buffered_segments = max_buffered_segments
        self.next_sequence: int | None = None
        self.pending: dict[int, bytes] = {}  # relative offset from next_sequence at insert time -> data
        self.buffered_bytes = 0
        self.delivered_bytes = 0
        self.retransmitted_bytes = 0
        self.overlap_bytes = 0
        self.inconsistent_overlap_bytes = 0
        self.gap_bytes = 0
        self.out_of_order_segments = 0
        self._recent = bytearray()  # tail of delivered data, to compare retransmissions

    def syn(self, sequence_number: int) -> None:
        if self.next_sequence is None:
            self.next_sequence = (sequence_number + 1) % MODULO

    def segment(self, sequence_number: int, data: bytes) -> list[StreamPiece]:
        sequence_number %= MODULO
        if not data:
            return []
        if self.next_sequence is None:
            self.next_sequence = sequence_number
        offset = _distance(self.next_sequence, sequence_number)
        if offset + len(data) <= 0:
            self.retransmitted_bytes += len(data)
            self._compare_recent(offset, data)
            return []
        if offset < 0:
            self._compare_recent(offset, data[:-offset])
            self.overlap_bytes += -offset
            data = data[-offset:]
            offset = 0
        if offset == 0 and not self.pending:
            return [self._deliver(data)]
        self._buffer(offset, data)
        pieces = self._drain()
        if len(self.pending) > self.max_buffered_segments or self.buffered_bytes > self.max_buffered_bytes:
            pieces += self._skip_to_earliest()
        return pieces

    def in_order(self) -> bool:
        """Nothing buffered out of order and the next sequence number known: the next segment can be checked alone."""
        return self.next_sequence is not None and not self.pending

    def advance(self, next_sequence: int, length: int) -> None:
        """``length`` in-order bytes were decoded elsewhere (a vectorised path) up to ``next_sequence``.

        The retransmission comparison window is dropped: bytes it did not see cannot be compared.
        """
        self.next_sequence = next_sequence % MODULO
        self.delivered_bytes += length
        self._recent.clear()

    def acknowledged(self, acknowledgement: int) -> list[StreamPiece]:
        """The receiver acknowledged up to ``acknowledgement``.

        If that lies beyond a hole while later data waits in the buffer, the
        receiver got bytes the capture missed: declare the gap now, so decoding
        resumes at once and events keep the time of the packets that carried them.
        """
        if not self.pending or self.next_sequence is None:
            return []
        if _distance(self.next_sequence, acknowledgement % MODULO) <= 0:
            return []
        return self._skip_to_earliest()

    def missing(self, sequence_number: int, length: int) -> list[StreamPiece]:
        """Bytes a segment carried but the capture's snap length cut off.

        When they are next in the stream they become a gap at once, so the
        decoder resynchronises instead of the stream waiting for data that
        will never come.
        """
        sequence_number %= MODULO
        if length <= 0 or self.next_sequence is None or sequence_number != self.next_sequence:
            return []
        self.next_sequence = (sequence_number + length) % MODULO
        self.gap_bytes += length
        return [StreamGap(length), *self._drain()]

    def finish(self) -> list[StreamPiece]:
        pieces: list[StreamPiece] = []
        while self.pending:
            pieces += self._skip_to_earliest()
        return pieces

    # -- internals --------------------------------------------------------------------

    def _deliver(self, data: bytes) -> StreamData:
        assert self.next_sequence is not None
        self.next_sequence = (self.next_sequence + len(data)) % MODULO
        self.delivered_bytes += len(data)
        recent = self._recent
        recent += data
        if len(recent) > 2 * RECENT_BYTES:
            del recent[: len(recent) - RECENT_BYTES]
        return StreamData(data)

    def _compare_recent(self, offset: int, data: bytes) -> None:
        """Count retransmitted bytes that differ from what was delivered (offset < 0)."""
        start = len(self._recent) + offset
        if start < 0:
            return
        previous = self._recent[start : start + len(data)]
        if previous != data[: len(previous)]:
            self.inconsistent_overlap_bytes += sum(1 for a, b in zip(previous, data, strict=False) if a != b)

    def _buffer(self, offset: int, data: bytes) -> None:
        assert self.next_sequence is not None
        absolute = (self.next_sequence + offset) % MODULO
        if offset > 0:
            self.out_of_order_segments += 1
        # Keep first-received bytes: trim the new segment against what is already buffered.
        for start, existing in list(self.pending.items()):
            begin = _distance(absolute, start)
            end = begin + len(existing)
            if end <= 0 or begin >= len(data):
                continue
            overlap_start, overlap_end = max(begin, 0), min(end, len(data))
            old = existing[overlap_start - begin : overlap_end - begin]
            new = data[overlap_start:overlap_end]
            self.overlap_bytes += len(new)
            if old != new:
                self.inconsistent_overlap_bytes += sum(1 for a, b in zip(old, new, strict=True) if a != b)
            if overlap_start == 0 and overlap_end == len(data):
                return  # fully covered
            if overlap_start == 0:
                data = data[overlap_end:]
                absolute = (absolute + overlap_end) % MODULO
                continue
            # Keep the part before the overlap now; the rest is re-inserted separately.
            tail = data[overlap_end:]
            tail_start = (absolute + overlap_end) % MODULO
            data = data[:overlap_start]
            if tail:
                self._buffer(_distance(self.next_sequence, tail_start), tail)
        if data:
            self.pending[absolute] = data
            self.buffered_bytes += len(data)

    def _drain(self) -> list[StreamPiece]:
        pieces: list[StreamPiece] = []
        while self.pending:
            assert self.next_sequence is not None
            data = self.pending.pop(self.next_sequence, None)
            if data is None:
                # A buffered segment may start before next_sequence after an overlap trim.
                for start in list(self.pending):
                    offset = _distance(self.next_sequence, start)
                    if offset < 0:
                        chunk = self.pending.pop(start)
                        self.buffered_bytes -= len(chunk)
                        if offset + len(chunk) > 0:
                            self.overlap_bytes += -offset
                            self.pending[self.next_sequence] = chunk[-offset:]
                            self.buffered_bytes += len(chunk) + offset
                        else:
                            self.retransmitted_bytes += len(chunk)
                data = self.pending.pop(self.next_sequence, None)
                if data is None:
                    break
            self.buffered_bytes -= len(data)
            pieces.append(self._deliver(data))
        return pieces

    def _skip_to_earliest(self) -> list[StreamPiece]:
        assert self.next_sequence is not None
        earliest = min(self.pending, key=lambda start: _distance(self.next_sequence or 0, start))
        missing = _distance(self.next_sequence, earliest)
        pieces: list[StreamPiece] = []
        if missing > 0:
            self.gap_bytes += missing
            self.next_sequence = earliest
            pieces.append(StreamGap(missing))
        return pieces + self._drain()

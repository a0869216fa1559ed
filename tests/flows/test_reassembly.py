"""TCP reassembly: order, retransmissions, overlaps (first data wins), wraparound, gaps, bounded buffering."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.flows.reassembly import StreamData, StreamGap, StreamPiece, StreamReassembler

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "200"))


def data(pieces: list[StreamPiece]) -> bytes:
    return b"".join(p.data for p in pieces if isinstance(p, StreamData))


def test_in_order_out_of_order_and_retransmission() -> None:
    stream = StreamReassembler()
    assert stream.segment(1000, b"abc") == [StreamData(b"abc")]
    assert stream.segment(1006, b"ghi") == []
    assert data(stream.segment(1003, b"def")) == b"defghi"
    assert stream.segment(1000, b"abc") == []
    assert stream.retransmitted_bytes == 3 and stream.out_of_order_segments == 1


def test_first_data_wins_and_conflicts_are_counted() -> None:
    stream = StreamReassembler()
    stream.segment(0, b"ab")
    stream.segment(4, b"EF")
    pieces = stream.segment(2, b"cdXY")  # overlaps the buffered 'EF' with different bytes
    assert data(pieces) == b"cdEF"
    assert stream.inconsistent_overlap_bytes == 2
    stream.segment(0, b"Zb")  # conflicting retransmission of delivered data
    assert stream.inconsistent_overlap_bytes == 3


def test_sequence_numbers_wrap() -> None:
    stream = StreamReassembler()
    start = (1 << 32) - 2
    assert data(stream.segment(start, b"abcd") + stream.segment(2, b"ef")) == b"abcdef"


def test_gaps_are_reported_at_finish_when_acknowledged_and_when_buffers_overflow() -> None:
    stream = StreamReassembler()
    stream.segment(0, b"abc")
    stream.segment(10, b"xyz")
    assert stream.finish() == [StreamGap(7), StreamData(b"xyz")]
    acked = StreamReassembler()
    acked.segment(0, b"abc")
    acked.segment(10, b"xyz")
    assert acked.acknowledged(5) == [StreamGap(7), StreamData(b"xyz")]
    bounded = StreamReassembler(max_buffered_segments=2)
    bounded.segment(0, b"a")
    pieces = bounded.segment(10, b"b") + bounded.segment(20, b"c") + bounded.segment(30, b"d")
    assert StreamGap(9) in pieces and len(bounded.pending) <= 2


@settings(max_examples=EXAMPLES, deadline=None)
@given(payload=st.binary(min_size=1, max_size=2000), seed=st.integers(0, 2**32 - 1), start=st.integers(0, 2**32 - 1))
def test_any_order_with_duplicates_rebuilds_the_stream(payload: bytes, seed: int, start: int) -> None:
    generator = random.Random(seed)
    cuts = sorted(generator.sample(range(1, len(payload)), min(len(payload) - 1, generator.randint(0, 20))))
    bounds = list(zip([0, *cuts], [*cuts, len(payload)], strict=True))
    segments = [(start + a, payload[a:b]) for a, b in bounds]
    first = segments[0]
    rest = segments[1:] + generator.sample(segments, min(len(segments), 3))  # duplicates
    generator.shuffle(rest)
    stream = StreamReassembler()
    pieces = stream.segment(*first)
    for sequence, chunk in rest:
        pieces += stream.segment(sequence % (1 << 32), chunk)
    pieces += stream.finish()
    assert not any(isinstance(p, StreamGap) for p in pieces)
    assert data(pieces) == payload

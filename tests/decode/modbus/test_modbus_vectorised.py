"""The vectorised path for polled Modbus/TCP gives the rows the sessions give, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.modbus import ModbusDecoder
from quaywatch.store.database import Store
from tests.decode.conversation import WINDOW, Conversation, both_ways, count_vectorised

CLIENT, SERVER = ("10.3.0.5", 40100), ("10.3.0.9", 502)
TRACE = Path("/work/shared/research-data/icsnpp-modbus/testing/traces/modbus_example.pcap")


def _mbap(transaction: int, pdu: bytes, unit: int = 1) -> bytes:
    return transaction.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


def _read(function: int, address: int, quantity: int) -> bytes:
    return bytes([function]) + address.to_bytes(2, "big") + quantity.to_bytes(2, "big")


def _answer(function: int, values: list[int]) -> bytes:
    return bytes([function, 2 * len(values)]) + b"".join(v.to_bytes(2, "big") for v in values)


def _polling_capture(path: Path) -> Path:
    """Cyclic polls with every case that must leave the fast path: writes, a split response, a retransmission,
    an out-of-order pair, an exception, a request never answered, a response to no request, a reused id."""
    connection = Conversation(CLIENT, SERVER)
    send, sequence = connection.send, connection.sequence
    for transaction in range(1, 400):
        function = 3 if transaction % 3 else 4
        quantity = 1 + transaction % 10
        request = _mbap(transaction, _read(function, 100 + transaction % 7, quantity))
        response = _mbap(transaction, _answer(function, [(transaction * 7 + i) & 0xFFFF for i in range(quantity)]))
        if transaction % 50 == 5:  # a write between polls: the session path, then the fast path again
            send(0, _mbap(transaction, b"\x10\x00\x10\x00\x02\x04\x00\x01\x00\x02"))
            send(1, _mbap(transaction, b"\x10\x00\x10\x00\x02"))
        elif transaction % 50 == 10:  # a response split over two segments
            send(0, request)
            send(1, response[:5])
            send(1, response[5:])
        elif transaction % 50 == 15:  # a retransmitted request
            start = sequence[0]
            send(0, request)
            send(0, request, start)
            send(1, response)
        elif transaction % 50 == 20:  # two requests, the second captured first
            second = _mbap(transaction + 1000, _read(3, 1, 2))
            start = sequence[0]
            send(0, second, start + len(request))
            send(0, request, start)
            sequence[0] += len(request) + len(second)
            send(1, response)
            send(1, _mbap(transaction + 1000, _answer(3, [1, 2])))
        elif transaction % 50 == 25:  # an exception response
            send(0, request)
            send(1, _mbap(transaction, bytes([function | 0x80, 2])))
        elif transaction % 50 == 30:  # never answered
            send(0, request)
        elif transaction % 50 == 35:  # a response nobody asked for, and one whose function code differs
            send(1, response)
            send(0, request)
            send(1, _mbap(transaction, _answer(7 - function, [5])))
        elif transaction % 50 == 40:  # a reused transaction id: the later request replaces the earlier one
            send(0, request)
            send(0, _mbap(transaction, _read(function, 9, 1)))
            send(1, _mbap(transaction, _answer(function, [9])))
        else:
            send(0, request)
            send(1, response)
    return connection.write(path)


def _tables(tmp_path: Path, capture: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[list[tuple[object, ...]]]]:
    return both_ways(tmp_path, capture, ModbusDecoder, ("modbus", "anomaly", "flows"), monkeypatch)


def test_polling_rows_are_identical_with_and_without_the_vectorised_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = _polling_capture(tmp_path / "polls.pcap")
    fast, sessions = _tables(tmp_path, capture, monkeypatch)
    assert fast == sessions
    modbus = sessions[0]
    assert len(modbus) > 700
    names = ["ts", "packet_number", "flow_id", "community_id", "client_ip", "client_port", "server_ip"]
    names += ["server_port", "transport", "direction", "event_type"]
    rows = [dict(zip(names, row, strict=False)) for row in modbus]
    kinds = {row["event_type"] for row in rows}
    assert {"request", "response", "exception", "unanswered_request"} <= kinds


def test_vectorised_path_takes_the_polls_and_pairs_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Most segments of a steady poll go the vectorised way, and its responses carry the request's fields."""
    capture = _polling_capture(tmp_path / "polls.pcap")
    calls = count_vectorised(ModbusDecoder, monkeypatch)
    store = Store(tmp_path / "fast.duckdb")
    Analyzer(store, decoders=[ModbusDecoder()], buffer_bytes=WINDOW).analyze(capture)
    assert sum(calls) > 250  # about a third: each special case sends the rest of its 4 KiB window to the session
    row = store.connection.execute(
        'SELECT address, quantity, matched, latency, "values" FROM modbus '
        "WHERE event_type = 'response' AND transaction_id = 101"
    ).fetchone()
    store.close()
    assert row == (103, 2, True, pytest.approx(0.0125, abs=1e-5), [707, 708])


def test_segment_shapes_reject_what_the_fast_path_does_not_decode() -> None:
    payloads = [
        _mbap(1, _read(3, 0, 2)),  # request: accepted
        _mbap(1, _answer(4, [1, 2])),  # response: accepted
        _mbap(1, _read(3, 0, 126)),  # quantity beyond 125: the session flags it
        _mbap(1, _read(6, 0, 2)),  # another function
        _mbap(1, _read(3, 0, 2)) * 2,  # two PDUs in one segment
        _mbap(1, _answer(3, [1, 2]))[:-1],  # cut short
        _mbap(1, b"\x03\x03\x00\x01\x02"),  # odd byte count
    ]
    sides = np.array([0, 1, 0, 0, 0, 1, 1])
    buffer = np.frombuffer(b"".join(payloads), np.uint8)
    lengths = np.array([len(p) for p in payloads])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    accepted = ModbusDecoder().segment_shapes(buffer, starts, lengths, sides)
    assert accepted.tolist() == [True, True, False, False, False, False, False]


def test_the_icsnpp_trace_gives_the_same_rows_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not TRACE.exists():
        pytest.skip(f"research data missing: {TRACE}")
    fast, sessions = _tables(tmp_path, TRACE, monkeypatch)
    assert fast == sessions
    assert len(fast[0]) > 0

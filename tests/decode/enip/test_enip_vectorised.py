"""The vectorised path for polled CIP Read Tag gives the rows the sessions give, row for row."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.enip import EnipTcpDecoder
from quaywatch.store.database import Store
from tests.decode.conversation import WINDOW, Conversation, both_ways, count_vectorised

CLIENT, SERVER = ("10.5.0.5", 40300), ("10.5.0.9", 44818)
TABLES = ("enip", "cip", "anomaly", "flows")
TRACES = Path("/work/shared/research-data/icsnpp-enip/tests/traces")


def _encapsulation(command: int, data: bytes, handle: int = 0x1234, status: int = 0) -> bytes:
    return struct.pack("<HHII8sI", command, len(data), handle, status, b"context!", 0) + data


def _items(*items: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HH", kind, len(data)) + data for kind, data in items)
    return b"\x00\x00\x00\x00\x0a\x00" + struct.pack("<H", len(items)) + body


def _read_tag(name: bytes, elements: int = 1) -> bytes:
    path = b"\x91" + bytes([len(name)]) + name + (b"\x00" if len(name) % 2 else b"")
    return bytes([0x4C, len(path) // 2]) + path + struct.pack("<H", elements)


def _reply(value: bytes, status: int = 0, extended: tuple[int, ...] = ()) -> bytes:
    words = b"".join(struct.pack("<H", word) for word in extended)
    return bytes([0xCC, 0, status, len(extended)]) + words + (b"\xc4\x00" + value if status == 0 else b"")


def _unconnected(cip: bytes) -> bytes:
    return _encapsulation(0x6F, _items((0x0000, b""), (0x00B2, cip)))


def _connected(cip: bytes, connection: int, sequence: int) -> bytes:
    return _encapsulation(
        0x70, _items((0x00A1, struct.pack("<I", connection)), (0x00B1, struct.pack("<H", sequence) + cip))
    )


def _polling_capture(path: Path) -> Path:
    """Read Tag polls, unconnected and connected, with the cases that leave the fast path in between."""
    connection = Conversation(CLIENT, SERVER)
    send = connection.send
    send(0, _encapsulation(0x65, b"\x01\x00\x00\x00"))
    send(1, _encapsulation(0x65, b"\x01\x00\x00\x00"))
    for number in range(1, 300):
        name = [b"CraneStatus", b"Hoist.Load", b"Trolley\xffPos"][number % 3]  # an odd length and a bad byte
        value = struct.pack("<i", number)
        if number % 2:
            request, response = _unconnected(_read_tag(name)), _unconnected(_reply(value))
        else:
            request = _connected(_read_tag(name), 0x1000 + number % 4, number)
            response = _connected(_reply(value), 0x2000 + number % 4, number)
        if number % 40 == 7:  # a write: the session path
            write = b"\x4d\x03\x91\x03Set\x00\xc4\x00\x01\x00" + value
            send(0, _unconnected(write))
            send(1, _unconnected(b"\xcd\x00\x00\x00"))
        elif number % 40 == 11:  # a reply split over two segments
            send(0, request)
            send(1, response[:30])
            send(1, response[30:])
        elif number % 40 == 17:  # two messages in one segment
            send(0, request + request)
            send(1, response + response)
        elif number % 40 == 23:  # a logical path (class, instance, attribute): the session decides
            send(0, _unconnected(b"\x0e\x03\x20\x01\x24\x01\x30\x07"))
            send(1, _unconnected(b"\x8e\x00\x00\x00\x01\x00"))
        elif number % 40 == 29:  # an error reply with extended status words
            send(0, request)
            send(1, _unconnected(_reply(b"", 0x05, (0x0203, 0x0004))))
        elif number % 40 == 31:  # an unknown command: the session's anomaly
            send(0, request)
            send(1, struct.pack("<HHII8sI", 0x0999, 0, 0, 0, b"context!", 0))
        else:
            send(0, request)
            send(1, response)
    return connection.write(path)


def test_polling_rows_are_identical_with_and_without_the_vectorised_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = _polling_capture(tmp_path / "tags.pcap")
    fast, sessions = both_ways(tmp_path, capture, EnipTcpDecoder, TABLES, monkeypatch)
    assert fast == sessions
    enip, cip, anomalies, _ = sessions
    assert len(enip) > 550 and len(cip) > 550 and anomalies


def test_vectorised_path_takes_the_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = _polling_capture(tmp_path / "tags.pcap")
    calls = count_vectorised(EnipTcpDecoder, monkeypatch)
    store = Store(tmp_path / "fast.duckdb")
    Analyzer(store, decoders=[EnipTcpDecoder()], buffer_bytes=WINDOW).analyze(capture)
    rows = store.connection.execute(
        "SELECT message, connected, connection_id, sequence_count, tag, status, data_length FROM cip "
        "WHERE sequence_count = 200 ORDER BY message"
    ).fetchall()
    store.close()
    assert sum(calls) > 100  # a fifth or more: each special case sends the rest of its 4 KiB window to the session
    assert rows == [("request", True, 0x1000, 200, "Trolley\\xffPos", None, 2), ("response", True, 0x2000, 200, None,
                    "Success", 6)]  # fmt: skip


def test_segment_shapes_accept_only_single_read_tag_messages() -> None:
    request = _unconnected(_read_tag(b"Tag1"))
    payloads = [
        request,  # accepted
        _connected(_reply(b"\x01\x00\x00\x00"), 7, 1),  # accepted
        request + request,  # two messages
        request[:-1],  # cut short
        _unconnected(b"\x0e\x03\x20\x01\x24\x01\x30\x07"),  # Get Attribute Single
        _unconnected(b"\x4c\x04\x91\x03Tag\x00\x28\x01\x00\x00\x01\x00"),  # symbolic segment then a member
        _encapsulation(0x65, b"\x01\x00\x00\x00"),  # Register Session
    ]
    buffer = np.frombuffer(b"".join(payloads), np.uint8)
    lengths = np.array([len(p) for p in payloads])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    accepted = EnipTcpDecoder().segment_shapes(buffer, starts, lengths, np.zeros(len(payloads), np.int64))
    assert accepted.tolist() == [True, True, False, False, False, False, False]


@pytest.mark.parametrize("trace", ["enip_cip_example.pcap", "multiple_service_packet_cip.pcapng"])
def test_icsnpp_traces_give_the_same_rows_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trace: str
) -> None:
    if not (TRACES / trace).exists():
        pytest.skip(f"research data missing: {TRACES / trace}")
    fast, sessions = both_ways(tmp_path, TRACES / trace, EnipTcpDecoder, TABLES, monkeypatch)
    assert fast == sessions
    assert fast[0]

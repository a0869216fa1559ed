"""The vectorised path for polled S7comm reads gives the rows the sessions give, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.s7comm import S7Decoder
from quaywatch.store.database import Store
from tests.decode.conversation import WINDOW, Conversation, both_ways, count_vectorised

CLIENT, SERVER = ("10.4.0.5", 40200), ("10.4.0.9", 102)
TABLES = ("s7comm", "cotp", "anomaly", "flows")
TRACES = Path("/work/shared/research-data/icsnpp-s7comm/tests/traces")


def _frame(s7: bytes) -> bytes:
    """TPKT and a COTP data TPDU (EOT) around one S7 PDU."""
    return b"\x03\x00" + (len(s7) + 7).to_bytes(2, "big") + b"\x02\xf0\x80" + s7


def _header(rosctr: int, reference: int, parameter: bytes, data: bytes, error: bytes = b"\x00\x00") -> bytes:
    head = b"\x32" + bytes([rosctr]) + b"\x00\x00" + reference.to_bytes(2, "big")
    head += len(parameter).to_bytes(2, "big") + len(data).to_bytes(2, "big")
    return head + (error if rosctr in (2, 3) else b"") + parameter + data


def _any(area: int, db: int, offset: int, length: int, transport: int = 2) -> bytes:
    """An S7ANY variable specification (0x12, length 10, syntax 0x10)."""
    address = (offset << 3).to_bytes(3, "big")
    head = b"\x12\x0a\x10" + bytes([transport]) + length.to_bytes(2, "big")
    return head + db.to_bytes(2, "big") + bytes([area]) + address


def _read_job(reference: int, items: list[bytes]) -> bytes:
    return _frame(_header(1, reference, b"\x04" + bytes([len(items)]) + b"".join(items), b""))


def _read_ack(reference: int, values: list[tuple[int, int, bytes]], error: bytes = b"\x00\x00") -> bytes:
    """ACK-Data with (return code, transport size, value) items; bit/byte/word sizes count bits."""
    data = b""
    for index, (code, transport, value) in enumerate(values):
        length = len(value) * 8 if transport in (3, 4, 5) else len(value)
        data += bytes([code, transport]) + length.to_bytes(2, "big") + value
        if len(value) % 2 and index < len(values) - 1:
            data += b"\x00"
    return _frame(_header(3, reference, b"\x04" + bytes([len(values)]), data, error))


def _polling_capture(path: Path) -> Path:
    """Cyclic reads of one to three items, with the cases that leave the fast path in between."""
    connection = Conversation(CLIENT, SERVER)
    send = connection.send
    send(0, b"\x03\x00\x00\x16\x11\xe0\x00\x00\x00\x01\x00\xc1\x02\x01\x00\xc2\x02\x01\x02\xc0\x01\x0a")
    send(1, b"\x03\x00\x00\x16\x11\xd0\x00\x01\x00\x01\x00\xc1\x02\x01\x00\xc2\x02\x01\x02\xc0\x01\x0a")
    send(0, _frame(_header(1, 0, b"\xf0\x00\x00\x01\x00\x01\x01\xe0", b"")))
    send(1, _frame(_header(3, 0, b"\xf0\x00\x00\x01\x00\x01\x01\xe0", b"")))
    for reference in range(1, 300):
        items = [_any(0x84, 10 + reference % 3, 4 * i, 2 + i) for i in range(1 + reference % 3)]
        values = [(0xFF, 4, bytes([reference & 0xFF, i])) for i in range(len(items))]
        if reference % 40 == 3:  # odd-length values with fill bytes, a bit item, an error item
            values = [(0xFF, 9, b"\x01\x02\x03"), (0xFF, 3, b"\x01"), (0x0A, 0, b"")][: len(items)]
        job, ack = _read_job(reference, items), _read_ack(reference, values)
        if reference % 40 == 7:  # a write job: the session path
            write = b"\x05\x01" + _any(0x84, 1, 0, 2)
            send(0, _frame(_header(1, reference, write, b"\x00\x04\x00\x10\x00\x07")))
            send(1, _frame(_header(3, reference, b"\x05\x01", b"\xff")))
        elif reference % 40 == 11:  # an ACK-Data split over two segments
            send(0, job)
            send(1, ack[:9])
            send(1, ack[9:])
        elif reference % 40 == 17:  # two frames in one segment
            send(0, job + _read_job(reference + 1000, items[:1]))
            send(1, ack)
        elif reference % 40 == 23:  # an item of another syntax (DB read by symbol, 0xb2): the session decides
            send(0, _read_job(reference, [b"\x12\x0a\xb2" + bytes(7)]))
            send(1, _read_ack(reference, values[:1], b"\x81\x04"))
        elif reference % 40 == 29:  # a truncated ACK-Data: malformed, an anomaly from the session
            send(0, job)
            cut = ack[:-1]
            send(1, b"\x03\x00" + len(cut).to_bytes(2, "big") + cut[4:])
        elif reference % 40 == 31:  # an error class and code on the acknowledgement
            send(0, job)
            send(1, _read_ack(reference, values, b"\x85\x00"))
        else:
            send(0, job)
            send(1, ack)
    return connection.write(path)


def test_polling_rows_are_identical_with_and_without_the_vectorised_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = _polling_capture(tmp_path / "reads.pcap")
    fast, sessions = both_ways(tmp_path, capture, S7Decoder, TABLES, monkeypatch)
    assert fast == sessions
    s7, cotp, anomalies, _ = sessions
    assert len(s7) > 550 and len(cotp) == 2 and anomalies


def test_vectorised_path_takes_the_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = _polling_capture(tmp_path / "reads.pcap")
    calls = count_vectorised(S7Decoder, monkeypatch)
    store = Store(tmp_path / "fast.duckdb")
    Analyzer(store, decoders=[S7Decoder()], buffer_bytes=WINDOW).analyze(capture)
    job, ack = store.connection.execute(
        'SELECT items, "values" FROM s7comm WHERE pdu_reference = 200 ORDER BY rosctr_code'
    ).fetchall()
    store.close()
    assert sum(calls) > 120  # a quarter: each special case sends the rest of its 4 KiB window to the session
    blocks = "Data blocks (DB)"
    expected = [(blocks, 12, 0, 2), (blocks, 12, 4, 3), (blocks, 12, 8, 4)]
    assert [(i["area"], i["db"], i["byte_offset"], i["length"]) for i in job[0]] == expected
    assert ack[1] == [bytes([200, 0]), bytes([200, 1]), bytes([200, 2])]


def test_segment_shapes_accept_only_whole_read_variable_pdus() -> None:
    item = _any(0x84, 1, 0, 2)
    payloads = [
        _read_job(1, [item]),  # accepted
        _read_ack(1, [(0xFF, 4, b"\x00\x01")]),  # accepted
        _read_job(1, [item]) * 2,  # two frames
        _read_ack(1, [(0xFF, 4, b"\x00\x01")])[:-1],  # cut short
        _frame(_header(1, 1, b"\x05\x01" + item, b"\x00\x04\x00\x10\x00\x07")),  # write
        _read_job(1, [b"\x12\x0a\xb2" + bytes(7)]),  # not S7ANY
    ]
    buffer = np.frombuffer(b"".join(payloads), np.uint8)
    lengths = np.array([len(p) for p in payloads])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    accepted = S7Decoder().segment_shapes(buffer, starts, lengths, np.zeros(len(payloads), np.int64))
    assert accepted.tolist() == [True, True, False, False, False, False]


@pytest.mark.parametrize("trace", ["snap7.pcap", "s7ident.pcap"])
def test_icsnpp_traces_give_the_same_rows_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trace: str
) -> None:
    if not (TRACES / trace).exists():
        pytest.skip(f"research data missing: {TRACES / trace}")
    fast, sessions = both_ways(tmp_path, TRACES / trace, S7Decoder, TABLES, monkeypatch)
    assert fast == sessions
    assert fast[0]

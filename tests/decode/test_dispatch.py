"""The dispatcher: content probing, in-order TCP delivery, gaps, UDP datagrams, decoder faults."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import dpkt
import pyarrow as pa

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Decoder, Direction, Event, Session
from quaywatch.store.database import Store
from tests.factories import tcp_frame, udp_frame, write_pcap

ACK, PSH, SYN = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_SYN
LINES = pa.schema([pa.field("line", pa.string(), metadata={"doc": "one text line"})])


class LineSession(Session):
    """Emits one event per newline-terminated line, buffering partial lines."""

    def __init__(self) -> None:
        self.buffers = {Direction.TO_SERVER: b"", Direction.TO_CLIENT: b""}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        buffer = self.buffers[direction] + data
        *lines, rest = buffer.split(b"\n")
        self.buffers[direction] = rest
        return [Event("lines", "line", {"line": line.decode("utf-8", "backslashreplace")}) for line in lines]

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.buffers[direction] = b""
        return []


class LineDecoder(Decoder):
    name = "lines"
    transport = "tcp"
    ports = frozenset({7777})
    tables: ClassVar[dict[str, pa.Schema]] = {"lines": LINES}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return payload.startswith(b"HELLO")

    def session(self) -> Session:
        return LineSession()


class CrashingSession(Session):
    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        raise ValueError("decoder bug")


class CrashingDecoder(Decoder):
    name = "crashy"
    transport = "udp"
    tables: ClassVar[dict[str, pa.Schema]] = {}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return payload.startswith(b"CRASH")

    def session(self) -> Session:
        return CrashingSession()


def run(tmp_path: Path, frames: list[tuple[float, bytes]], decoders: list[Decoder]) -> Store:
    capture = write_pcap(tmp_path / "d.pcap", frames)
    store = Store(tmp_path / "d.duckdb")
    Analyzer(store, decoders=decoders).analyze(capture)
    return store


def segment(sequence: int, data: bytes, port: int = 9000) -> bytes:
    return tcp_frame("10.0.0.1", "10.0.0.2", 40000, port, PSH | ACK, data, sequence=sequence)


def test_out_of_order_and_retransmitted_segments_arrive_in_order(tmp_path: Path) -> None:
    frames = [
        (1.0, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 9000, SYN, sequence=99)),
        (1.1, segment(100, b"HELLO\nfir")),
        (1.3, segment(116, b"third\n")),  # arrives before the second
        (1.2, segment(109, b"st\nsec\n")),  # fills the hole
        (1.4, segment(100, b"HELLO\nfir")),  # retransmission
    ]
    store = run(tmp_path, frames, [LineDecoder()])
    rows = store.connection.execute("SELECT line, server_port, direction FROM lines ORDER BY packet_number").fetchall()
    assert [r[0] for r in rows] == ["HELLO", "first", "sec", "third"]
    assert {r[1] for r in rows} == {9000}, "content decides, not the port"
    assert {r[2] for r in rows} == {"to_server"}
    (application,) = store.connection.execute("SELECT application FROM flows").fetchone()
    assert application == "lines"


def test_gap_is_reported_and_decoding_resumes(tmp_path: Path) -> None:
    frames = [(1.0, segment(100, b"HELLO\n")), (1.1, segment(106, b"lost\n")), (1.2, segment(111, b"after\n"))]
    del frames[1]  # the capture missed one segment
    store = run(tmp_path, frames, [LineDecoder()])
    lines = [r[0] for r in store.connection.execute("SELECT line FROM lines ORDER BY packet_number").fetchall()]
    assert lines == ["HELLO", "after"]
    gaps = store.connection.execute("SELECT protocol, code, detail FROM anomaly WHERE code = 'stream_gap'").fetchall()
    assert gaps == [("lines", "stream_gap", "5 bytes missing from the TO_SERVER stream")]


def test_flows_that_do_not_match_are_not_decoded(tmp_path: Path) -> None:
    frames = [(1.0 + i, segment(100 + 15 * i, b"GET / HTTP/1.1\n", port=7777)) for i in range(3)]
    frames.append((5.0, segment(145, b"HELLO\n", port=7777)))  # too late: three payloads already said no
    store = run(tmp_path, frames, [LineDecoder()])
    assert store.connection.execute("SELECT count(*) FROM lines").fetchone() == (0,)
    assert store.connection.execute("SELECT application FROM flows").fetchone() == (None,)


def test_decoder_exception_becomes_an_anomaly_and_analysis_continues(tmp_path: Path) -> None:
    frames = [(1.0 + i, udp_frame("10.0.0.1", "10.0.0.2", 5000, 6000, b"CRASH")) for i in range(3)]
    store = run(tmp_path, frames, [CrashingDecoder()])
    rows = store.connection.execute("SELECT protocol, code, detail FROM anomaly").fetchall()
    assert rows == [("crashy", "decoder_exception", "ValueError: decoder bug")] * 3
    assert store.connection.execute("SELECT status FROM captures").fetchone() == ("complete",)


def test_segment_cut_by_the_snap_length_becomes_a_gap_at_once(tmp_path: Path) -> None:
    """tcpdump -s 60 keeps only the headers' worth of a segment; the decoder must resynchronise."""
    import struct

    first = segment(100, b"HELLO\n")
    long = segment(106, b"this line is cut by the snap length\n")
    after = segment(142, b"after\n")
    records = b""
    for number, (frame, keep) in enumerate([(first, len(first)), (long, 60), (after, len(after))]):
        records += struct.pack("<IIII", 10 + number, 0, keep, len(frame)) + frame[:keep]
    capture = tmp_path / "snap.pcap"
    capture.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 60, 1) + records)
    store = Store(tmp_path / "d.duckdb")
    Analyzer(store, decoders=[LineDecoder()]).analyze(capture)
    lines = [r[0] for r in store.connection.execute("SELECT line FROM lines ORDER BY packet_number").fetchall()]
    assert lines == ["HELLO", "after"]
    (detail,) = store.connection.execute("SELECT detail FROM anomaly WHERE code = 'stream_gap'").fetchone()
    assert detail == "30 bytes missing from the TO_SERVER stream"


def test_an_acknowledgement_past_a_hole_declares_the_gap_at_once(tmp_path: Path) -> None:
    """The server acknowledged bytes the capture missed: decoding resumes with that packet, not at flow end."""
    frames = [
        (1.0, segment(100, b"HELLO\n")),
        (1.2, segment(111, b"after\n")),  # bytes 106..110 never captured
        (1.3, tcp_frame("10.0.0.2", "10.0.0.1", 9000, 40000, PSH | ACK, b"ok\n", sequence=500, acknowledgement=117)),
        (9.0, segment(117, b"later\n")),
    ]
    store = run(tmp_path, frames, [LineDecoder()])
    rows = store.connection.execute("SELECT line, packet_number FROM lines ORDER BY packet_number, line").fetchall()
    assert ("after", 3) in rows and ("later", 4) in rows
    (gap_packet,) = store.connection.execute("SELECT packet_number FROM anomaly WHERE code = 'stream_gap'").fetchone()
    assert gap_packet == 3


def test_registered_tables_fit_the_envelope_and_each_other() -> None:
    """A decoder column named like an envelope field fails only at write time, with pyarrow's "duplicate field
    names"; a table that two decoders fill (remote_access, cleartext_credentials, cip_io) needs one schema."""
    from quaywatch.decode.registry import all_decoders
    from quaywatch.store.database import ENVELOPE_FIELDS

    envelope = {f.name for f in ENVELOPE_FIELDS}
    seen: dict[str, pa.Schema] = {}
    for decoder in all_decoders():
        for name, schema in decoder.tables.items():
            assert not envelope & set(schema.names), f"{decoder.name}.{name} repeats {envelope & set(schema.names)}"
            assert len(set(schema.names)) == len(schema.names), f"{decoder.name}.{name} repeats a column"
            assert seen.setdefault(name, schema).equals(schema), f"{name} declared differently by {decoder.name}"

"""EtherNet/IP and CIP against CISA ICSNPP-ENIP, byte-at-a-time equivalence, fuzzing, probing."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Direction
from quaywatch.decode.enip import EnipDatagramSession, EnipStreamSession, EnipTcpDecoder, EnipUdpDecoder
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH, Agreement, Row, replay, tcp_streams

ICSNPP = RESEARCH / "icsnpp-enip/tests"
EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
ENVELOPE = ["ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p", "is_orig", "source_h", "source_p", "destination_h",
            "destination_p"]  # fmt: skip
#: ICSNPP's baselines here carry no #fields header; the column order is ICSNPP-ENIP's documented log layout.
LAYOUTS = {
    "enip": [*ENVELOPE, "enip_command_code", "enip_command", "length", "session_handle", "enip_status",
             "sender_context", "options"],
    "cip": [*ENVELOPE, "cip_sequence_count", "direction", "cip_service_code", "cip_service", "cip_status_code",
            "cip_status", "cip_extended_status_code", "cip_extended_status", "class_id", "class_name", "instance_id",
            "attribute_id"],
    "cip_io": [*ENVELOPE, "connection_id", "sequence_number", "data_length", "io_data"],
    "cip_identity": ["ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p", "is_orig", "source_h", "source_p",
                     "destination_h", "destination_p", "encapsulation_version", "socket_address", "socket_port",
                     "vendor_id", "vendor_name", "device_type_id", "device_type_name", "product_code", "revision",
                     "device_status", "serial_number", "product_name", "device_state"],
}  # fmt: skip
CASES = {
    "basic": "enip_cip_example.pcap",
    "multiple_service_request": "multiple_service_packet_cip.pcapng",
    "set_attr_single_service": "set_attribute_single_service_cip.pcapng",
}


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def icsnpp(case: str, table: str) -> list[Row]:
    path = ICSNPP / f"baseline/analyzer.{case}/{table}.log"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line:
            continue
        values = line.split("\t")
        rows.append(
            {n: (None if v == "-" else v) for n, v in zip(LAYOUTS[table][-len(values) :], values, strict=False)}
        )
    return rows


def ours(tmp_path: Path, case: str, table: str) -> list[Row]:
    store = Store(tmp_path / f"{case}.duckdb")
    Analyzer(store, decoders=[EnipTcpDecoder(), EnipUdpDecoder()]).analyze(require(ICSNPP / "traces" / CASES[case]))
    cursor = store.connection.execute(f"SELECT * FROM {table} ORDER BY packet_number")
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    store.close()
    return rows


def hexadecimal(value: object, digits: int) -> str | None:
    return None if value is None else f"0x{int(value):0{digits}x}"  # type: ignore[call-overload]


def check(agreement: Agreement, title: str) -> None:
    print("\n" + agreement.report(title))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0, title
    for name in agreement.fields:
        assert agreement.ratio(name) >= 0.99, agreement.report(title)
    assert sum(agreement.compared.values()) > 0


@pytest.mark.oracle
@pytest.mark.parametrize("case", sorted(CASES))
def test_encapsulation_agrees_with_icsnpp(tmp_path: Path, case: str) -> None:
    mine = [
        {
            "enip_command_code": hexadecimal(r["command_code"], 2),
            "enip_command": r["command"],
            "length": str(r["length"]),
            "session_handle": hexadecimal(r["session_handle"], 8),
            "enip_status": r["status"],
            "sender_context": "0x" + r["sender_context"].hex(),
            "options": hexadecimal(r["options"], 8),
        }
        for r in ours(tmp_path, case, "enip")
    ]
    agreement = Agreement(list(LAYOUTS["enip"][11:]))
    agreement.score(mine, icsnpp(case, "enip"), key=lambda r: (r["enip_command_code"], r["length"]))
    check(agreement, f"icsnpp enip {case}")


@pytest.mark.oracle
@pytest.mark.parametrize("case", sorted(CASES))
def test_cip_agrees_with_icsnpp(tmp_path: Path, case: str) -> None:
    mine = [
        {
            "cip_sequence_count": None if r["sequence_count"] is None else str(r["sequence_count"]),
            "direction": r["message"],
            "cip_service_code": hexadecimal(r["service_code"], 2),
            "cip_service": r["service"],
            "cip_status_code": hexadecimal(r["status_code"], 2),
            "cip_status": r["status"],
            "class_id": hexadecimal(r["class_id"], 2),
            # ICSNPP calls every class it has no name for "unknown", as we do.
            "class_name": r["class_name"],
            "instance_id": hexadecimal(r["instance_id"], 2),
            "attribute_id": hexadecimal(r["attribute_id"], 2),
        }
        for r in ours(tmp_path, case, "cip")
    ]
    theirs = icsnpp(case, "cip")
    agreement = Agreement(list(mine[0]))
    agreement.score(mine, theirs, key=lambda r: (r["cip_sequence_count"], r["direction"], r["cip_service_code"]))
    check(agreement, f"icsnpp cip {case}")


def per_connection(rows: list[Row]) -> list[Row]:
    """ICSNPP's one row per I/O datagram, in packet order, counted per connection as ``cip_io`` stores it."""
    folded: dict[object, Row] = {}
    for row in rows:
        length = int(row["data_length"])  # type: ignore[arg-type]
        known = folded.get(row["connection_id"])
        if known is None:
            folded[row["connection_id"]] = {"connection_id": row["connection_id"], "datagrams": 1,
                                            "first_sequence": row["sequence_number"], "last_sequence":
                                            row["sequence_number"], "min_data_length": length,
                                            "max_data_length": length, "last_data": row["io_data"]}  # fmt: skip
            continue
        known["datagrams"] = int(known["datagrams"]) + 1  # type: ignore[call-overload]
        known["last_sequence"] = row["sequence_number"]
        known["min_data_length"] = min(int(known["min_data_length"]), length)  # type: ignore[call-overload]
        known["max_data_length"] = max(int(known["max_data_length"]), length)  # type: ignore[call-overload]
        known["last_data"] = row["io_data"]
    return list(folded.values())


@pytest.mark.oracle
def test_cip_io_and_identity_agree_with_icsnpp(tmp_path: Path) -> None:
    """cip_io counts I/O per connection and second: summed per connection, it must say what ICSNPP's one row
    per datagram says (count, first and last sequence number, data lengths, the last data)."""
    rows = ours(tmp_path, "basic", "cip_io")
    by_connection: dict[object, list[Row]] = {}
    for r in sorted(rows, key=lambda r: r["first_packet_number"]):
        by_connection.setdefault(hexadecimal(r["connection_id"], 8), []).append(r)
    mine = [
        {
            "connection_id": connection,
            "datagrams": sum(r["datagrams"] for r in seconds),  # type: ignore[misc]
            "first_sequence": str(seconds[0]["first_sequence"]),
            "last_sequence": str(seconds[-1]["last_sequence"]),
            "min_data_length": min(r["min_data_length"] for r in seconds),  # type: ignore[type-var]
            "max_data_length": max(r["max_data_length"] for r in seconds),  # type: ignore[type-var]
            "last_data": seconds[-1]["data"].hex(),  # type: ignore[union-attr]
        }
        for connection, seconds in sorted(by_connection.items(), key=repr)
    ]
    theirs = sorted(per_connection(icsnpp("basic", "cip_io")), key=lambda r: repr(r["connection_id"]))
    io = Agreement(["datagrams", "first_sequence", "last_sequence", "min_data_length", "max_data_length", "last_data"])
    io.score(mine, theirs, key=lambda r: r["connection_id"])
    check(io, "icsnpp cip_io per connection")
    assert sum(r["datagrams"] for r in rows) == 398 and len(rows) < 398 / 4
    (identity,) = ours(tmp_path, "basic", "cip_identity")
    (known,) = icsnpp("basic", "cip_identity")
    mine_identity = {
        "encapsulation_version": str(identity["encapsulation_version"]),
        "socket_address": identity["socket_address"],
        "socket_port": str(identity["socket_port"]),
        "vendor_id": str(identity["vendor_id"]),
        "vendor_name": identity["vendor_name"],
        "device_type_id": str(identity["device_type_id"]),
        "device_type_name": identity["device_type_name"],
        "product_code": str(identity["product_code"]),
        "revision": identity["revision"],
        "device_status": hexadecimal(identity["device_status"], 4),
        "serial_number": hexadecimal(identity["serial_number"], 8),
        "product_name": identity["product_name"],
        "device_state": hexadecimal(identity["device_state"], 4),
    }
    assert mine_identity == {name: known[name] for name in mine_identity}


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    total = 0
    for chunks in tcp_streams(require(ICSNPP / "traces/enip_cip_example.pcap"), 44818):
        whole = replay(EnipStreamSession(), chunks, one_byte=False)
        assert replay(EnipStreamSession(), chunks, one_byte=True) == whole
        total += len(whole)
    assert total > 1000


def test_probe() -> None:
    register = bytes.fromhex("6500040000000000000000000000000000000000000000000100" + "0000")
    assert EnipTcpDecoder().probe(register, Direction.TO_SERVER, 44818)
    assert EnipTcpDecoder().probe(register, Direction.TO_SERVER, 2001)
    assert not EnipTcpDecoder().probe(b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n", Direction.TO_SERVER, 44818)
    # Off the EtherNet/IP port, only whole messages: a proprietary protocol on 5026 in ITI's mb2.pcap starts with
    # its own little-endian length (0x36, 0x73) and looked like Cancel with trailing data.
    proprietary = bytes.fromhex("73000000001200000100") + bytes(105)
    assert not EnipTcpDecoder().probe(proprietary, Direction.TO_SERVER, 5026)
    assert EnipTcpDecoder().probe(register + register, Direction.TO_SERVER, 2001)
    assert not EnipTcpDecoder().probe(register + register[:10], Direction.TO_SERVER, 2001)
    list_identity = bytes.fromhex("6300" + "0000" + "00" * 20)
    assert EnipUdpDecoder().probe(list_identity, Direction.TO_SERVER, 44818)
    assert not EnipUdpDecoder().probe(b"\x12\x34\x01\x00" + bytes(20), Direction.TO_SERVER, 53)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(chunks=st.lists(st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=300)), max_size=20))
def test_random_streams_never_raise(chunks: list[tuple[Direction, bytes]]) -> None:
    session = EnipStreamSession()
    for direction, data in chunks:
        session.feed(data, direction, 0.0)
    session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(command=st.sampled_from([0x63, 0x65, 0x6F, 0x70]), body=st.binary(max_size=400))
def test_well_framed_random_messages_never_raise(command: int, body: bytes) -> None:
    message = command.to_bytes(2, "little") + len(body).to_bytes(2, "little") + bytes(20) + body
    assert EnipStreamSession().feed(message, Direction.TO_SERVER, 0.0)[0].table == "enip"
    EnipDatagramSession().feed(message, Direction.TO_CLIENT, 0.0)
    EnipDatagramSession().feed(body, Direction.TO_CLIENT, 0.0)


def test_udp_decoder_runs_alone(tmp_path: Path) -> None:
    """Its tables exist even without the TCP decoder (`--decoders enip_udp`)."""
    store = Store(tmp_path / "udp.duckdb")
    Analyzer(store, decoders=[EnipUdpDecoder()]).analyze(require(ICSNPP / "traces/enip_cip_example.pcap"))
    assert store.connection.execute("SELECT sum(datagrams) FROM cip_io").fetchone() == (398,)
    store.close()


def send_rr_data(cip: bytes) -> bytes:
    """A Send RR Data encapsulation message carrying ``cip`` in an Unconnected Data Item."""
    items = (0).to_bytes(4, "little") + (10).to_bytes(2, "little") + (2).to_bytes(2, "little")
    items += bytes(4) + (0xB2).to_bytes(2, "little") + len(cip).to_bytes(2, "little") + cip
    return (0x6F).to_bytes(2, "little") + len(items).to_bytes(2, "little") + bytes(20) + items


def test_a_write_routed_through_an_unconnected_send_is_decoded() -> None:
    """CIP Vol 1 3-5.6.1: a Set Attribute Single to the Identity object of the PLC in slot 3 of a backplane."""
    embedded = bytes([0x10, 0x03, 0x20, 0x01, 0x24, 0x01, 0x30, 0x05, 0x01])  # Set Attribute Single, 1/1/5, value
    route = bytes([0x01, 0x00, 0x01, 0x03])  # one word: port 1 (backplane), link 3
    body = bytes([0x07, 0xE9]) + len(embedded).to_bytes(2, "little") + embedded + b"\x00" + route
    unconnected_send = bytes([0x52, 0x02, 0x20, 0x06, 0x24, 0x01]) + body
    rows = [e.fields for e in EnipStreamSession().feed(send_rr_data(unconnected_send), Direction.TO_SERVER, 0.0)]
    cip = [r for r in rows if "service_code" in r]
    assert [(r["service_code"], r["embedded"], r["controls_device"]) for r in cip] == [
        (0x52, False, False),
        (0x10, True, True),
    ]
    assert (cip[1]["class_id"], cip[1]["instance_id"], cip[1]["attribute_id"]) == (1, 1, 5)
    cut = unconnected_send[: -len(route) - 3]
    events = EnipStreamSession().feed(send_rr_data(cut), Direction.TO_SERVER, 0.0)
    assert [e.fields["code"] for e in events if e.table == "anomaly"] == ["malformed_unconnected_send"]


def io_datagram(connection: int, sequence: int, data: bytes, count: int = 2, address_type: int = 0x8002) -> bytes:
    item = count.to_bytes(2, "little") + address_type.to_bytes(2, "little") + (8).to_bytes(2, "little")
    item += connection.to_bytes(4, "little") + sequence.to_bytes(4, "little")
    return item + (0x00B1).to_bytes(2, "little") + len(data).to_bytes(2, "little") + data


def test_vectorised_io_equals_the_session_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher's vectorised path for cyclic I/O gives the rows the session gives, and leaves every
    datagram of another shape (a second item count, another address type, a length that does not end the
    datagram, a cut header) to the session, whose anomalies stay."""
    from quaywatch.decode.dispatch import Dispatcher
    from tests.factories import udp_frame, write_pcap

    payloads = [io_datagram(0x10 + i % 3, i, bytes([i % 256]) * (i % 40)) for i in range(300)]
    payloads += [
        io_datagram(1, 1, b"odd", count=3),
        io_datagram(1, 2, b"odd", address_type=0x8001),
        io_datagram(1, 3, b"odd") + b"\x00",
        io_datagram(1, 4, b"odd")[:15],
    ]
    frames = [
        (1_700_000_000 + i / 100, udp_frame("10.1.0.5", "10.1.0.9", 2222, 2222, p)) for i, p in enumerate(payloads)
    ]
    capture = write_pcap(tmp_path / "io.pcap", frames)
    results = []
    for vectorised, window in ((True, 1 << 20), (False, 1 << 20), (True, 4096)):  # a small window: many batches
        monkeypatch.setattr(Dispatcher, "VECTORISED", vectorised)
        store = Store(tmp_path / f"io-{vectorised}-{window}.duckdb")
        Analyzer(store, decoders=[EnipUdpDecoder()], buffer_bytes=window).analyze(capture)
        results.append(
            [
                store.connection.execute(f"SELECT * EXCLUDE (capture_id) FROM {t} ORDER BY packet_number").fetchall()
                for t in ("cip_io", "anomaly")
            ]
        )
        store.close()
    assert results[0] == results[1] == results[2]
    io_rows, _ = results[0]
    names = ["ts", "packet_number", "flow_id", "community_id", "client_ip", "client_port", "server_ip"]
    names += ["server_port", "transport", "direction", "event_type", "connection_id", "datagrams", "first_ts"]
    names += ["first_packet_number", "first_sequence", "last_sequence", "sequence_gaps", "sequence_backwards"]
    names += ["min_data_length", "max_data_length", "data_bytes", "data"]
    rows = [dict(zip(names, row, strict=True)) for row in io_rows]
    # Every datagram is counted once, the odd ones too (the session reads whatever items they have).
    assert sum(r["datagrams"] for r in rows) == len(payloads)
    # 100 datagrams a second over three connections: one row per connection and second.
    first = next(r for r in rows if r["connection_id"] == 0x11)
    assert (first["first_packet_number"], first["packet_number"], first["datagrams"]) == (2, 98, 33)
    assert (first["first_sequence"], first["last_sequence"], first["sequence_gaps"]) == (1, 97, 2 * 32)
    assert (first["min_data_length"], first["max_data_length"], first["data"]) == (0, 39, bytes([97]) * 17)
    assert first["data_bytes"] == sum(i % 40 for i in range(1, 100, 3)) and first["event_type"] == "io"
    assert first["ts"] - first["first_ts"] == dt.timedelta(seconds=0.96)
    assert len([r for r in rows if r["connection_id"] in (0x10, 0x11, 0x12)]) == 9


def test_io_fold_counts_gaps_steps_back_and_wrap_around_across_seconds() -> None:
    """Sequence numbers are followed per connection across seconds; a datagram without a sequenced address item
    is counted under a NULL connection."""
    import numpy as np
    import pyarrow as pa

    from quaywatch.decode.enip.implicit_io import IoFold

    second = 1_000_000_000
    sequences = [2**32 - 2, 2**32 - 1, 1, 1, 0, 5, 6]  # wrap (skipping 0), a repeat, one behind, a gap of 3
    times = [0, 1, 2, 3, 4, second + 1, second + 2]
    fold = IoFold()
    columns = {
        "connection_id": pa.array([7] * 7 + [None], pa.int64()),
        "sequence_number": pa.array([*sequences, None], pa.int64()),
        "data_length": pa.array([4, 4, 2, 4, 4, 4, 6, None], pa.int32()),
        "data": pa.array([b"a", b"b", b"c", b"d", b"e", b"f", b"g", None], pa.binary()),
    }
    keys = np.array([10] * 8, np.int64)
    first = fold.add(keys, np.array([*times, 5], np.int64), np.arange(1, 9), columns)
    later = fold.finish(np.array([5]))
    assert first[3]["datagrams"].to_pylist() == [5]  # the first second closed when the connection's next came
    assert first[3]["sequence_gaps"].to_pylist() == [1] and first[3]["sequence_backwards"].to_pylist() == [2]
    assert first[3]["min_data_length"].to_pylist() == [2] and first[3]["data"].to_pylist() == [b"e"]
    names = ("connection_id", "datagrams", "sequence_gaps", "first_sequence", "data")
    rows = sorted(zip(*(later[3][name].to_pylist() for name in names), strict=True), key=repr)
    assert rows == [(7, 2, 3, 5, b"g"), (None, 1, 0, None, None)]
    assert fold.finish(None)[0].shape == (0,)

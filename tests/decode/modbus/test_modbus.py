"""Modbus/TCP against Zeek and CISA ICSNPP, byte-at-a-time equivalence, fuzzing, probing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Direction
from quaywatch.decode.modbus import ModbusDecoder, ModbusSession
from quaywatch.decode.modbus.constants import FUNCTIONS
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH, Agreement, Row, read_log, replay, tcp_streams

ZEEK = RESEARCH / "zeek-btest/testing/btest"
ICSNPP = RESEARCH / "icsnpp-modbus/testing"
EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))

#: Zeek btest trace -> baseline modbus.log (one row per PDU: tid, unit, func, pdu_type, exception).
#: exception_handling (fuzz-72.pcap) is compared separately: see test_fuzzed_stream_against_zeek.
ZEEK_CASES = {
    "register_parsing": ZEEK / "Traces/modbus/fuzz-1011.pcap",
    "modbus_and_non_modbus_on_port_502": ZEEK / "Traces/modbus/modbus-and-non-modbus-p502.pcap",
}


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def analyse(tmp_path: Path, capture: Path, before_first_gap: bool = False) -> list[Row]:
    """Our message rows; optionally only those before the first content gap of their flow and direction.

    Zeek's Modbus analyzer stops decoding a connection at its first content gap (Modbus.cc,
    ``if ( had_gap ) return;``); quaywatch resynchronises and goes on, so comparisons with Zeek
    on traces with holes use the part before the gap.
    """
    store = Store(tmp_path / "modbus.duckdb")
    Analyzer(store, decoders=[ModbusDecoder()]).analyze(capture)
    gap_filter = (
        """AND NOT EXISTS (SELECT 1 FROM anomaly a WHERE a.code = 'stream_gap' AND a.flow_id = m.flow_id
                          AND a.packet_number <= m.packet_number)"""
        if before_first_gap
        else ""
    )
    cursor = store.connection.execute(
        f"""SELECT * FROM modbus m WHERE event_type IN ('request', 'response', 'exception') {gap_filter}
           ORDER BY packet_number, event_type DESC"""
    )
    names = [c[0] for c in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    store.close()
    return rows


def zeek_function(row: Row) -> str:
    """Zeek names unknown functions by their raw code, exception bit included."""
    code = int(row["function_code"])
    if code in FUNCTIONS:
        return FUNCTIONS[code]
    return f"unknown-{code | (0x80 if row['event_type'] == 'exception' else 0)}"


def as_zeek(rows: list[Row]) -> list[Row]:
    return [
        {
            "id.orig_p": str(r["client_port"]),
            "tid": str(r["transaction_id"]),
            "unit": str(r["unit_id"]),
            "func": zeek_function(r),
            "pdu_type": "REQ" if r["event_type"] == "request" else "RESP",
            "exception": r["exception"],
        }
        for r in rows
    ]


@pytest.mark.oracle
@pytest.mark.parametrize("case", sorted(ZEEK_CASES))
def test_messages_agree_with_zeek(tmp_path: Path, case: str) -> None:
    trace = require(ZEEK_CASES[case])
    theirs = read_log(ZEEK / f"Baseline/scripts.base.protocols.modbus.{case}/modbus.log")
    ours = as_zeek(analyse(tmp_path, trace))
    agreement = Agreement(["tid", "unit", "func", "pdu_type", "exception"])
    agreement.score(ours, theirs, key=lambda r: (r["id.orig_p"], r["tid"], r["pdu_type"]))
    print("\n" + agreement.report(f"zeek {case}"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in agreement.fields:
        assert agreement.ratio(name) >= 0.99, agreement.report(case)


@pytest.mark.oracle
def test_fuzzed_stream_against_zeek(tmp_path: Path) -> None:
    """fuzz-72.pcap is a fuzzed connection: corrupted sequence and acknowledgement numbers and holes.

    Zeek's Modbus analyzer stops at the first content gap and its reassembler orders the fuzzed
    segments one way; quaywatch resynchronises after gaps (TCP reassembly with first-data-wins and
    acknowledgement-driven gap declaration, see flows/reassembly.py), so it decodes more messages
    and a few in another order. Every exception response Zeek logged must be among ours, all
    fields equal, and most of Zeek's messages must appear identically in ours.
    """
    from collections import Counter

    ours = as_zeek(analyse(tmp_path, require(ZEEK / "Traces/modbus/fuzz-72.pcap")))
    theirs = read_log(ZEEK / "Baseline/scripts.base.protocols.modbus.exception_handling/modbus.log")

    def key(row: Row) -> tuple[str | None, ...]:
        return (row["tid"], row["unit"], row["func"], row["pdu_type"], row["exception"])

    mine, zeek = Counter(map(key, ours)), Counter(map(key, theirs))
    shared = sum((mine & zeek).values())
    print(f"\nfuzz-72: zeek {len(theirs)} messages, quaywatch {len(ours)}, identical {shared}")
    print("  only zeek:", dict(zeek - mine))
    print("  only quaywatch:", dict(mine - zeek))
    assert shared >= 0.75 * len(theirs)
    assert len(ours) >= len(theirs)
    assert sum(1 for r in ours if r["exception"] == "ILLEGAL_FUNCTION") >= 2


def detailed(rows: list[Row]) -> list[Row]:
    """Our request/response rows folded into ICSNPP's modbus_detailed shape (one row per exchange)."""
    requests: dict[tuple[object, object, object], Row] = {}
    folded: list[Row] = []
    for row in rows:
        key = (row["flow_id"], row["transaction_id"], row["unit_id"])
        if row["event_type"] == "request":
            requests[key] = row
            continue
        request = requests.pop(key, {})
        code = int(row["function_code"])
        writes = code in (5, 6, 15, 16)
        reads = code in (1, 2, 3, 4, 5, 6)
        folded.append(
            {
                "tid": str(row["transaction_id"]),
                "unit": str(row["unit_id"]),
                "func": zeek_function(row),
                "address": None if row["address"] is None else str(row["address"]),
                "quantity": None if row["quantity"] is None else str(row["quantity"]),
                "request_values": ",".join(map(str, request["values"])) if writes and request.get("values") else None,
                "response_values": ",".join(map(str, row["values"])) if reads and row["values"] else None,
                "exception_code": row["exception"],
                "request_subfunction_code": _title(request.get("sub_function_name")),
                "mei_type": _title(row["mei_name"]),
            }
        )
    return folded


def _title(name: object) -> str | None:
    """ICSNPP writes names as 'Return Diagnostic Register'; ours are RETURN_DIAGNOSTIC_REGISTER."""
    return None if name is None else str(name).replace("_", " ").title()


def icsnpp_normalised(rows: list[Row]) -> list[Row]:
    for row in rows:
        for name in ("request_subfunction_code", "mei_type"):
            if row.get(name):
                row[name] = str(row[name]).title()
        # ICSNPP writes quantity 0 for file-record functions, whose PDUs carry byte counts, not quantities
        # (Modbus specification 6.14 and 6.15): not a quantity, so not compared.
        if row["func"] in ("READ_FILE_RECORD", "WRITE_FILE_RECORD"):
            row["quantity"] = None
    # ICSNPP logs functions 7 and 17 as two unmatched rows because it does not parse their bodies; we pair them.
    seen: set[tuple[str | None, str | None]] = set()
    unique = []
    for row in rows:
        key = (row["tid"], row["func"])
        if row["func"] in ("READ_EXCEPTION_STATUS", "REPORT_SLAVE_ID") and key in seen:
            continue
        seen.add(key)
        unique.append(row)
    return unique


@pytest.mark.oracle
def test_exchanges_agree_with_icsnpp_modbus_detailed(tmp_path: Path) -> None:
    rows = analyse(tmp_path, require(ICSNPP / "traces/modbus_example.pcap"))
    ours = detailed(rows)
    theirs = icsnpp_normalised(read_log(ICSNPP / "baseline/analyzer.basic/modbus_detailed.log"))
    fields = ["tid", "unit", "func", "address", "quantity", "request_values", "response_values", "exception_code"]
    agreement = Agreement([*fields, "request_subfunction_code", "mei_type"])
    agreement.score(ours, theirs, key=lambda r: (r["tid"], r["func"]))
    print("\n" + agreement.report("icsnpp modbus_detailed"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in agreement.fields:
        assert agreement.ratio(name) >= 0.99, agreement.report("icsnpp")
    assert sum(agreement.compared.values()) > 100


@pytest.mark.oracle
def test_mask_write_and_read_write_multiple_agree_with_icsnpp(tmp_path: Path) -> None:
    rows = analyse(tmp_path, require(ICSNPP / "traces/modbus_example.pcap"))
    masks = read_log(ICSNPP / "baseline/analyzer.basic/modbus_mask_write_register.log")
    ours_masks = [
        {"tid": str(r["transaction_id"]), "request_response": "REQUEST" if r["event_type"] == "request" else "RESPONSE",
         "address": str(r["address"]), "and_mask": str(r["and_mask"]), "or_mask": str(r["or_mask"])}
        for r in rows if r["function_code"] == 22
    ]  # fmt: skip
    agreement = Agreement(["tid", "request_response", "address", "and_mask", "or_mask"])
    agreement.score(ours_masks, masks, key=lambda r: (r["tid"], r["request_response"]))
    multiple = read_log(ICSNPP / "baseline/analyzer.basic/modbus_read_write_multiple_registers.log")
    ours_multiple = []
    for r in rows:
        if r["function_code"] != 23:
            continue
        request = r["event_type"] == "request"
        ours_multiple.append(
            {
                "tid": str(r["transaction_id"]),
                "request_response": "REQUEST" if request else "RESPONSE",
                "write_start_address": str(r["address"]) if request else None,
                "write_registers": ",".join(map(str, r["values"])) if request else None,
                "read_start_address": str(r["read_address"]) if request else None,
                "read_quantity": str(r["read_quantity"]) if request else None,
                "read_registers": None if request else ",".join(map(str, r["values"])),
            }
        )
    second = Agreement(
        ["tid", "request_response", "write_start_address", "write_registers", "read_start_address", "read_quantity",
         "read_registers"]
    )  # fmt: skip
    second.score(ours_multiple, multiple, key=lambda r: (r["tid"], r["request_response"]))
    print("\n" + agreement.report("icsnpp mask write") + "\n" + second.report("icsnpp read/write multiple"))
    for result in (agreement, second):
        assert result.unmatched_ours == result.unmatched_theirs == 0
        assert all(result.ratio(name) == 1.0 for name in result.fields)


@pytest.mark.oracle
def test_device_identification_from_icsnpp_trace(tmp_path: Path) -> None:
    rows = analyse(tmp_path, require(ICSNPP / "traces/modbus_example.pcap"))
    (identity,) = [r for r in rows if r["function_code"] == 43 and r["event_type"] == "response"]
    assert identity["vendor_name"] == "Zeek Modbus Test"
    assert identity["mei_name"] == "READ_DEVICE_IDENTIFICATION"
    assert identity["device_objects"][0] == {"id": 0, "value": "Zeek Modbus Test"}


@pytest.mark.oracle
def test_content_decides_not_the_port(tmp_path: Path) -> None:
    """Zeek's trace mixes Modbus with DCE/RPC, TLS and scanners on port 502: only the Modbus flow is claimed."""
    store = Store(tmp_path / "q.duckdb")
    Analyzer(store, decoders=[ModbusDecoder()]).analyze(require(ZEEK_CASES["modbus_and_non_modbus_on_port_502"]))
    claimed = store.connection.execute(
        "SELECT DISTINCT client_ip FROM flows WHERE application = 'modbus' ORDER BY 1"
    ).fetchall()
    store.close()
    assert claimed == [("10.0.0.9",)]


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    captures = [
        ICSNPP / "traces/modbus_example.pcap",
        *ZEEK_CASES.values(),
        *sorted((ZEEK / "Traces/modbus").glob("*.pcap")),
    ]
    total = 0
    for capture in captures:
        for chunks in tcp_streams(require(capture), 502):
            whole = replay(ModbusSession(), chunks, one_byte=False)
            assert replay(ModbusSession(), chunks, one_byte=True) == whole
            total += len(whole)
    assert total > 100


def test_probe_accepts_modbus_on_any_port_and_rejects_other_protocols() -> None:
    decoder = ModbusDecoder()
    request = bytes.fromhex("000100000006010300000001")
    assert decoder.probe(request, Direction.TO_SERVER, 5020)
    assert decoder.probe(request + bytes.fromhex("000200000006010300000001"), Direction.TO_SERVER, 502)
    assert not decoder.probe(b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n", Direction.TO_SERVER, 502)
    assert not decoder.probe(bytes.fromhex("16030100a5010000a10303") + bytes(40), Direction.TO_SERVER, 502)
    odd_function = bytes.fromhex("000100000006016300000001")  # function 99: not public, not user-defined
    assert not decoder.probe(odd_function, Direction.TO_SERVER, 5020)
    assert decoder.probe(odd_function, Direction.TO_SERVER, 502), "on its own port, framing alone suffices"


def test_write_requests_are_flagged_and_malformed_pdus_are_anomalies() -> None:
    session = ModbusSession()
    events = session.feed(bytes.fromhex("0007000000060106000a1234"), Direction.TO_SERVER, 1.0)
    (write,) = events
    assert (write.event_type, write.fields["function"], write.fields["writes"], write.fields["values"]) == (
        "request", "WRITE_SINGLE_REGISTER", True, [0x1234],
    )  # fmt: skip
    bad = session.feed(bytes.fromhex("000800000006010500010123"), Direction.TO_SERVER, 2.0)  # coil value 0x0123
    assert [e.table for e in bad] == ["modbus", "anomaly"]
    assert "neither 0xFF00 nor 0x0000" in str(bad[1].fields["detail"])
    answered = session.feed(bytes.fromhex("0007000000060106000a1234"), Direction.TO_CLIENT, 1.25)
    assert answered[0].fields["latency"] == pytest.approx(0.25) and answered[0].fields["matched"] is True
    (unanswered, _) = [e for e in session.close() if e.table == "modbus"], None
    assert [e.event_type for e in unanswered] == ["unanswered_request"]


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(chunks=st.lists(st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=300)), max_size=20))
def test_random_streams_never_raise(chunks: list[tuple[Direction, bytes]]) -> None:
    session = ModbusSession()
    for direction, data in chunks:
        for event in session.feed(data, direction, 0.0):
            assert event.table in ("modbus", "anomaly")
    session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(function=st.integers(0, 255), body=st.binary(max_size=260), unit=st.integers(0, 255))
def test_well_framed_random_pdus_never_raise(function: int, body: bytes, unit: int) -> None:
    pdu = bytes([function]) + body[:252]
    frame = (1).to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu
    session = ModbusSession()
    for direction in Direction:
        events = session.feed(frame, direction, 0.0)
        assert events and events[0].table == "modbus"

"""S7comm against CISA ICSNPP-S7comm, byte-at-a-time equivalence, fuzzing, probing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Direction
from quaywatch.decode.s7comm import S7Decoder, S7Session
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH, Agreement, Row, read_log, replay, tcp_streams

ICSNPP = RESEARCH / "icsnpp-s7comm/tests"
TRACES = {"snap7": "snap7.pcap", "s7ident": "s7ident.pcap", "s7comm_plus": "s7comm_plus.pcap"}
EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def rows(tmp_path: Path, trace: str, table: str) -> list[Row]:
    store = Store(tmp_path / f"{trace}.duckdb")
    Analyzer(store, decoders=[S7Decoder()]).analyze(require(ICSNPP / "traces" / TRACES[trace]))
    cursor = store.connection.execute(f"SELECT * FROM {table} ORDER BY packet_number")
    names = [c[0] for c in cursor.description]
    result = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    store.close()
    return result


def hexadecimal(value: object, digits: int = 2) -> str | None:
    return None if value is None else f"0x{int(value):0{digits}x}"  # type: ignore[call-overload]


def icsnpp_reference(value: str | None) -> str | None:
    """ICSNPP reads the S7 PDU reference little-endian; the header field is big-endian (Wireshark's
    s7comm.header.pduref agrees with us on these traces: 256 where ICSNPP logs 1). Swap to compare."""
    if value is None:
        return None
    number = int(value)
    return str(((number & 0xFF) << 8) | (number >> 8))


def _follow_up(row: Row) -> bool:
    """A user-data request asking for the next part of a response: Read SZL without an SZL header."""
    return (
        row["rosctr_code"] == 7
        and row["subfunction"] == "Read SZL"
        and row["szl_id"] is None
        and row["function_code"] >> 4 == 4
    )


def check(agreement: Agreement, title: str) -> None:
    print("\n" + agreement.report(title))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0, title
    for name in agreement.fields:
        assert agreement.ratio(name) >= 0.99, agreement.report(title)


@pytest.mark.oracle
@pytest.mark.parametrize("trace", sorted(TRACES))
def test_s7comm_messages_agree_with_icsnpp(tmp_path: Path, trace: str) -> None:
    ours = [
        {
            "rosctr_code": str(r["rosctr_code"]),
            "rosctr_name": r["rosctr"],
            "pdu_reference": str(r["pdu_reference"]),
            "function_code": hexadecimal(r["function_code"]),
            # Function 0x28 is the program-invocation service: Wireshark's "PI-Service", ICSNPP's "PLC Control".
            "function_name": "PLC Control" if r["function_code"] == 0x28 and r["rosctr_code"] != 7 else r["function"],
            "subfunction_code": hexadecimal(r["subfunction_code"]),
            "subfunction_name": r["subfunction"],
            # ICSNPP names user-data error codes with its own table; the code itself is compared.
            "error_class": r["error_class"] if r["rosctr_code"] in (2, 3) else None,
            "error_code": hexadecimal(r["error_code"]),
        }
        for r in rows(tmp_path, trace, "s7comm")
        # ICSNPP logs neither plain ACKs (ROSCTR 2: no data) nor, of a multi-part user-data exchange, the
        # first response part and the follow-up request; quaywatch has every PDU, and reports the whole
        # SZL list on the last part, as Wireshark does after reassembly.
        if r["rosctr_code"] != 2 and r["last_data_unit"] is not False and not _follow_up(r)
    ]
    theirs = read_log(ICSNPP / f"baseline/analyzer.{trace}/s7comm.log")
    for row in theirs:
        row["pdu_reference"] = icsnpp_reference(row["pdu_reference"])
        if row["rosctr_code"] == "7":
            row["error_class"] = None
    agreement = Agreement(list(ours[0]) if ours else [])
    agreement.score(ours, theirs, key=lambda r: (r["pdu_reference"], r["rosctr_code"]))
    check(agreement, f"icsnpp s7comm {trace}")


@pytest.mark.oracle
@pytest.mark.parametrize("trace", sorted(TRACES))
def test_cotp_connection_pdus_agree_with_icsnpp(tmp_path: Path, trace: str) -> None:
    """quaywatch logs COTP connection management (CR, CC, DR, DC, ER), not every DT: each DT's S7 PDU is in s7comm."""
    ours = [{"pdu_code": hexadecimal(r["pdu_code"]), "pdu_name": r["pdu_name"]} for r in rows(tmp_path, trace, "cotp")]
    theirs = [r for r in read_log(ICSNPP / f"baseline/analyzer.{trace}/cotp.log") if r["pdu_code"] != "0x0f"]
    agreement = Agreement(["pdu_code", "pdu_name"])
    agreement.score(ours, theirs, key=lambda r: r["pdu_code"])
    check(agreement, f"icsnpp cotp {trace}")


@pytest.mark.oracle
def test_szl_reads_agree_with_icsnpp(tmp_path: Path) -> None:
    ours = [
        {
            "pdu_reference": str(r["pdu_reference"]),
            "method": "Request" if r["function_code"] >> 4 == 4 else "Response",
            "szl_id": hexadecimal(r["szl_id"], 4),
            "szl_id_name": r["szl_id_name"],
            "szl_index": hexadecimal(r["szl_index"], 4),
            "return_code": hexadecimal(r["return_code"]),
        }
        for r in rows(tmp_path, "snap7", "s7comm")
        # ICSNPP's read-SZL log leaves out responses split over several data units; ours reports them
        # reassembled on the last part (marked continuation), so those are not compared.
        if r["subfunction"] == "Read SZL"
        and r["szl_id"] is not None
        and r["last_data_unit"] is not False
        and not r["continuation"]
    ]
    theirs = read_log(ICSNPP / "baseline/analyzer.snap7/s7comm_read_szl.log")
    for row in theirs:
        row["pdu_reference"] = icsnpp_reference(row["pdu_reference"])
    agreement = Agreement(["pdu_reference", "method", "szl_id", "szl_id_name", "szl_index", "return_code"])
    agreement.score(ours, theirs, key=lambda r: (r["pdu_reference"], r["method"]))
    check(agreement, "icsnpp read szl")


@pytest.mark.oracle
def test_upload_download_agrees_with_icsnpp(tmp_path: Path) -> None:
    ours = [
        {
            "rosctr": r["rosctr"],
            "pdu_reference": str(r["pdu_reference"]),
            "function_name": r["function"],
            "function_status": hexadecimal(r["function_status"]),
            "session_id": None if r["session_id"] is None else str(r["session_id"]),
            "blocklength": None if r["block_length"] is None else str(r["block_length"]),
            "filename": r["filename"],
            "block_type": r["block_type"],
            "block_number": r["block_number"],
            "destination_filesystem": r["destination_filesystem"],
        }
        for r in rows(tmp_path, "snap7", "s7comm")
        if r["function_code"] in (0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F) and r["rosctr_code"] != 7
    ]
    theirs = read_log(ICSNPP / "baseline/analyzer.snap7/s7comm_upload_download.log")
    for row in theirs:
        row["pdu_reference"] = icsnpp_reference(row["pdu_reference"])
    agreement = Agreement(list(ours[0]))
    agreement.score(ours, theirs, key=lambda r: (r["pdu_reference"], r["rosctr"]))
    check(agreement, "icsnpp upload/download")


@pytest.mark.oracle
def test_module_identity_equals_icsnpp_known_devices(tmp_path: Path) -> None:
    (known,) = read_log(require(ICSNPP / "baseline/analyzer.s7ident/s7comm_known_devices.log"))
    identity: dict[str, object] = {}
    for row in rows(tmp_path, "s7ident", "s7comm"):
        for name in ("automation_system_name", "module_name", "plant_id", "module_serial", "order_number"):
            if row[name] is not None:
                identity.setdefault(name, row[name])
    assert identity["automation_system_name"] == known["automation_system_name"]
    assert identity["module_name"] == known["module_name"]
    assert identity["plant_id"] == known["plant_name"]  # '(empty)' in the log, '' here
    assert identity["module_serial"] == known["module_serial"]
    assert identity["order_number"] == "6ES7 315-2EH14-0AB0"


@pytest.mark.oracle
def test_s7comm_plus_agrees_with_icsnpp(tmp_path: Path) -> None:
    ours = [
        {
            "version": str(r["version"]),
            "opcode": hexadecimal(r["opcode"]),
            "opcode_name": r["opcode_name"],
            "function_code": hexadecimal(r["function_code"], 4),
            "function_name": r["function"],
        }
        for r in rows(tmp_path, "s7comm_plus", "s7comm_plus")
    ]
    theirs = read_log(ICSNPP / "baseline/analyzer.s7comm_plus/s7comm_plus.log")
    agreement = Agreement(list(ours[0]))
    agreement.score(ours, theirs, key=lambda r: (r["opcode"], r["function_code"]))
    check(agreement, "icsnpp s7comm_plus")


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    total = 0
    for trace in TRACES.values():
        for chunks in tcp_streams(require(ICSNPP / "traces" / trace), 102):
            whole = replay(S7Session(), chunks, one_byte=False)
            assert replay(S7Session(), chunks, one_byte=True) == whole
            total += len(whole)
    assert total > 80


def test_probe() -> None:
    decoder = S7Decoder()
    connection_request = bytes.fromhex("0300001611e00000000100c0010ac1020100c2020102")
    assert decoder.probe(connection_request, Direction.TO_SERVER, 102)
    assert decoder.probe(connection_request, Direction.TO_SERVER, 1102)
    assert not decoder.probe(b"GET / HTTP/1.1\r\n\r\n", Direction.TO_SERVER, 102)
    assert not decoder.probe(bytes.fromhex("000100000006010300000001"), Direction.TO_SERVER, 102)  # Modbus
    # IEC 61850 MMS shares ISO-on-TCP port 102 (nDPI's iso9506-1-mms.pcap): its TSAPs are 0x0001 and its data
    # TPDUs carry ISO 8327 sessions, not S7comm's 0x32 or S7comm-plus's 0x72.
    mms_request = bytes.fromhex("0300001611e00000077800c1020001c2020001c0010d")
    mms_data = bytes.fromhex("030000a702f0800d9e0506130100160102140200023302000134020001")
    assert not decoder.probe(mms_request, Direction.TO_SERVER, 102)
    assert not decoder.probe(mms_data, Direction.TO_SERVER, 102)
    assert decoder.probe(bytes.fromhex("0300001902f08032010000050000080000f0000001000101e0"), Direction.TO_SERVER, 102)


def test_plc_stop_is_marked_as_controlling_the_plc() -> None:
    s7 = bytes.fromhex("32010000050000100000") + bytes.fromhex("29000000000009505f50524f4752414d")
    cotp = bytes.fromhex("02f080")
    frame = b"\x03\x00" + (4 + len(cotp) + len(s7)).to_bytes(2, "big") + cotp + s7
    (event,) = S7Session().feed(frame, Direction.TO_SERVER, 1.0)
    assert (event.fields["function"], event.fields["pi_service"], event.fields["controls_plc"]) == (
        "PLC Stop", "P_PROGRAM", True,
    )  # fmt: skip


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(chunks=st.lists(st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=300)), max_size=20))
def test_random_streams_never_raise(chunks: list[tuple[Direction, bytes]]) -> None:
    session = S7Session()
    for direction, data in chunks:
        session.feed(data, direction, 0.0)
    session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(body=st.binary(min_size=1, max_size=400), eot=st.booleans())
def test_well_framed_random_s7_pdus_never_raise(body: bytes, eot: bool) -> None:
    payload = b"\x32" + body
    cotp = bytes([2, 0xF0, 0x80 if eot else 0])
    frame = b"\x03\x00" + (4 + len(cotp) + len(payload)).to_bytes(2, "big") + cotp + payload
    session = S7Session()
    for direction in Direction:
        for event in session.feed(frame, direction, 0.0):
            assert event.table in ("s7comm", "anomaly")

"""DNP3 decoder: specific messages, probing, byte-at-a-time equivalence, fuzzing and the research corpus
against tshark. The oracle comparisons with Zeek, ICSNPP and Suricata are in test_dnp3_oracles.py."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Direction, Event
from quaywatch.decode.dnp3 import Dnp3Session, Dnp3TcpDecoder, Dnp3UdpDecoder, application, constants, link
from quaywatch.store.database import Store
from tests.decode.dnp3.common import ICSNPP, ITI, RESEARCH, SURICATA, ZEEK, decoders, query, require
from tests.decode.oracles import replay, tcp_streams

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
MASTER_CONTROL = 0xC4  # DIR, PRM, unconfirmed user data
OUTSTATION_CONTROL = 0x44

#: SELECT of a latch-on CROB on point 1 (ITI openics/DNP3-SelectOperate.pcap): application fragment.
SELECT_CROB = bytes.fromhex("c1030c0128010001000301640000006400000000")
#: Response to READ class 0 with binary inputs, binary outputs and analog inputs (built from suricata's dnp3-eve).
READ_RESPONSE = bytes.fromhex("c28100000102000004" + "01" * 5 + "1e01000001" + "010a000000" * 2)


def frames(application_fragment: bytes, control: int = MASTER_CONTROL, destination: int = 10, source: int = 1,
           first_sequence: int = 0) -> bytes:  # fmt: skip
    """The link frames carrying one application fragment, split into transport segments of 249 octets."""
    chunks = [application_fragment[i : i + 249] for i in range(0, len(application_fragment), 249)] or [b""]
    out = b""
    for number, chunk in enumerate(chunks):
        header = (0x40 if number == 0 else 0) | (0x80 if number == len(chunks) - 1 else 0)
        header |= (first_sequence + number) & 0x3F
        out += link.build(control, destination, source, bytes([header]) + chunk)
    return out


def tables(events: list[Event], table: str) -> list[dict[str, object]]:
    return [event.fields for event in events if event.table == table]


def codes(events: list[Event]) -> list[str]:
    return [str(event.fields["code"]) for event in events if event.table == "anomaly"]


# -- specific messages -------------------------------------------------------------------------------------


def test_crc_matches_the_captured_frames() -> None:
    # Request Link Status from ITI openics/DNP3-ReadRequest.pcap, header CRC 0x71bd as captured.
    assert link.crc(bytes.fromhex("056405c903000400")) == 0x71BD
    assert link.header_valid(bytes.fromhex("056405c903000400bd71"))
    assert not link.header_valid(bytes.fromhex("056405c903000400bd72"))
    assert link.build(0xC9, 3, 4) == bytes.fromhex("056405c903000400bd71")


def test_select_crob_is_decoded() -> None:
    session = Dnp3Session()
    events = session.feed(frames(SELECT_CROB, destination=4, source=3), Direction.TO_SERVER, 10.0)
    (message,) = tables(events, "dnp3")
    assert message["function"] == "SELECT" and message["sequence"] == 1 and message["controls_device"] is False
    assert (message["link_source"], message["link_destination"], message["link_from_master"]) == (3, 4, True)
    (header,) = tables(events, "dnp3_objects")
    assert (header["group"], header["variation"], header["qualifier"], header["count"]) == (12, 1, 0x28, 1)
    (control,) = tables(events, "dnp3_control")
    assert control == control | {
        "index": 1, "control_code": 3, "operation": "LATCH_ON", "trip_close": "NUL", "queue": False, "clear": False,
        "count": 1, "on_time": 100, "off_time": 100, "status_code": 0, "status": "SUCCESS", "function": "SELECT",
    }  # fmt: skip
    assert not codes(events)
    # The echo, a response with the same sequence, is paired with the request.
    echo = bytes([0xC1, 0x81, 0x00, 0x00]) + SELECT_CROB[2:]
    answered = session.feed(frames(echo, OUTSTATION_CONTROL, destination=3, source=4), Direction.TO_CLIENT, 10.25)
    (response,) = tables(answered, "dnp3")
    assert response["request_function"] == "SELECT" and response["matched"] is True
    assert response["latency"] == pytest.approx(0.25)
    assert tables(answered, "dnp3_control")[0]["function"] == "RESPONSE"


def test_analog_output_and_status_codes() -> None:
    fragment = bytes.fromhex("c305" + "2903" + "17" + "01" + "05") + struct.pack("<fB", 42.5, 0)
    echo = bytes.fromhex("c3810000" + "2903" + "17" + "01" + "05") + struct.pack("<fB", 42.5, 9)
    session = Dnp3Session()
    events = session.feed(frames(fragment), Direction.TO_SERVER, 0.0)
    events += session.feed(frames(echo, OUTSTATION_CONTROL, 1, 10), Direction.TO_CLIENT, 0.1)
    request, response = tables(events, "dnp3_control")
    assert (request["index"], request["value"], request["function"]) == (5, 42.5, "DIRECT_OPERATE")
    assert (response["status_code"], response["status"]) == (9, "NOT_AUTHORIZED")
    assert tables(events, "dnp3")[0]["controls_device"] is True


def test_internal_indications_and_restart_delay() -> None:
    response = bytes.fromhex("c08190" "00" "3402" "07" "01" "e803")  # fmt: skip  # IIN1 0x90, g52v2 1000 ms
    (message,) = tables(Dnp3Session().feed(frames(response, OUTSTATION_CONTROL, 1, 10), Direction.TO_CLIENT, 0), "dnp3")
    assert message["iin"] == 0x9000 and message["iin_flags"] == ["need_time", "device_restart"]
    assert message["delay_ms"] == 1000 and message["matched"] is False


def test_file_open_and_authentication_keep_names_but_not_passwords() -> None:
    name = b"C:/scada/\xffconfig.xml"
    command = struct.pack("<HH6sHIIHHH", 26, len(name), bytes(6), 0o644, 0, 0, 2, 1024, 7) + name
    fragment = bytes.fromhex("c019" "4603" "5b" "01") + struct.pack("<H", len(command)) + command  # fmt: skip
    events = Dnp3Session().feed(frames(fragment), Direction.TO_SERVER, 0)
    (message,) = tables(events, "dnp3")
    assert message["function"] == "OPEN_FILE" and message["file_mode"] == "WRITE"
    assert message["file_name"] == "C:/scada/\\xffconfig.xml"  # kept as received, undecodable octet escaped
    assert (message["file_block_size"], message["file_request_id"], message["file_permissions"]) == (1024, 7, 0o644)
    user, password = b"operator", b"secret"
    authentication = struct.pack("<HHHHI", 12, len(user), 12 + len(user), len(password), 0) + user + password
    header = bytes.fromhex("c11d" "4602" "5b" "01")  # fmt: skip  # AUTHENTICATE_FILE, g70v2, qualifier 0x5B
    fragment = header + struct.pack("<H", len(authentication)) + authentication
    events = Dnp3Session().feed(frames(fragment), Direction.TO_SERVER, 0)
    (message,) = tables(events, "dnp3")
    assert message["file_user_name"] == "operator" and message["file_password_sent"] is True
    assert b"secret" not in repr(events).encode()


def test_device_attributes() -> None:
    fragment = bytes.fromhex("c0810000" "00fc" "00" "0000" "01" "07") + b"ACME AG"  # fmt: skip
    fragment += bytes.fromhex("00f0" "00" "0000" "02" "02" "0008")  # fmt: skip  # max transmit fragment 2048
    (message,) = tables(Dnp3Session().feed(frames(fragment, OUTSTATION_CONTROL, 1, 10), Direction.TO_CLIENT, 0), "dnp3")
    assert message["attributes"] == [
        {"variation": 252, "name": "device_manufacturer_name", "type": "VSTR", "value": "ACME AG"},
        {"variation": 240, "name": "max_transmit_fragment", "type": "UINT", "value": "2048"},
    ]


def test_fragment_reassembled_from_transport_segments() -> None:
    long_response = READ_RESPONSE[:4] + bytes.fromhex("1e02" "01" "0000" "ff00") + bytes(3 * 256)  # fmt: skip
    wire = frames(long_response, OUTSTATION_CONTROL, 1, 10, first_sequence=62)  # sequence wraps 62, 63, 0, 1
    session = Dnp3Session()
    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    events = [event for piece in pieces for event in session.feed(piece, Direction.TO_CLIENT, 0.0)]
    (message,) = tables(events, "dnp3")
    assert message["segments"] == 4 and message["fragment_length"] == len(long_response)
    assert tables(events, "dnp3_objects")[0]["count"] == 256 and not codes(events)


def test_transport_and_link_faults_are_anomalies() -> None:
    wire = frames(READ_RESPONSE + bytes(300), OUTSTATION_CONTROL, 1, 10)
    first, second = wire[: 10 + 250 + 32], wire[10 + 250 + 32 :]
    session = Dnp3Session()
    assert codes(session.feed(second, Direction.TO_CLIENT, 0)) == ["first_segment_missing"]
    assert codes(session.feed(first + first, Direction.TO_CLIENT, 0)) == ["fragment_discarded"]
    broken = bytearray(frames(SELECT_CROB))
    broken[12] ^= 0x01
    assert codes(session.feed(bytes(broken), Direction.TO_SERVER, 0)) == ["bad_data_crc"]
    broken[3] ^= 0x01
    assert codes(session.feed(b"noise" + bytes(broken), Direction.TO_SERVER, 0))[:2] == [
        "invalid_frame_start", "bad_link_crc",
    ]  # fmt: skip
    assert "incomplete_fragment" in codes(session.close())


def test_unknown_object_stops_parsing_with_an_anomaly() -> None:
    fragment = bytes.fromhex("c0810000" "c801" "00" "0001" "aabb" "0102" "00" "0000" "01")  # fmt: skip
    events = Dnp3Session().feed(frames(fragment, OUTSTATION_CONTROL, 1, 10), Direction.TO_CLIENT, 0)
    (header,) = tables(events, "dnp3_objects")
    assert header["parse_stopped"] is True and header["object_name"] == "g200v1"
    assert codes(events) == ["unknown_object"]


def test_link_service_frames_go_to_dnp3_link() -> None:
    request_status = link.build(0xC9, 3, 4)
    reply = link.build(0x0B, 4, 3)
    session = Dnp3Session()
    events = session.feed(request_status, Direction.TO_SERVER, 0) + session.feed(reply, Direction.TO_CLIENT, 0)
    assert [row["function"] for row in tables(events, "dnp3_link")] == ["REQUEST_LINK_STATUS", "LINK_STATUS"]
    assert not codes(events)


def test_gap_resynchronises_on_the_next_frame() -> None:
    session = Dnp3Session()
    wire = frames(SELECT_CROB)
    assert session.feed(wire[:17], Direction.TO_SERVER, 0) == []
    assert session.gap(Direction.TO_SERVER, 100) == []
    events = session.feed(wire[17:] + wire, Direction.TO_SERVER, 0)
    assert len(tables(events, "dnp3")) == 1 and codes(events) == ["invalid_frame_start"]


def test_udp_datagrams_hold_whole_frames() -> None:
    session = Dnp3UdpDecoder().session()
    wire = frames(SELECT_CROB)
    assert len(tables(session.feed(wire + wire, Direction.TO_SERVER, 0), "dnp3")) == 2
    assert codes(session.feed(wire[:-3], Direction.TO_SERVER, 0)) == ["truncated_frame"]


def test_probe_is_content_based() -> None:
    decoder = Dnp3TcpDecoder()
    wire = frames(SELECT_CROB)
    assert decoder.probe(wire, Direction.TO_SERVER, 20000)
    assert decoder.probe(wire[:10], Direction.TO_CLIENT, 20001), "DNP3 on another port is DNP3"
    assert decoder.probe(link.build(0xC9, 3, 4), Direction.TO_SERVER, 4000)
    assert not decoder.probe(b"GET / HTTP/1.1\r\nHost: rtu\r\n\r\n", Direction.TO_SERVER, 20000)
    assert not decoder.probe(bytes.fromhex("000100000006010300000001"), Direction.TO_SERVER, 20000), "Modbus"
    assert not decoder.probe(bytes.fromhex("680e00000000"), Direction.TO_SERVER, 20000), "IEC 104"
    assert not decoder.probe(bytes.fromhex("0564") + bytes(8), Direction.TO_SERVER, 20000), "bad CRC"
    assert not decoder.probe(wire[:9], Direction.TO_SERVER, 20000)
    assert not decoder.probe(b"", Direction.TO_SERVER, 20000)


def test_dnp3_on_another_port_is_claimed(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.duckdb")
    Analyzer(store, decoders=decoders()).analyze(require(ZEEK / "Traces/dnp3/dnp3_read_p20001.pcap"))
    rows = query(store, "SELECT server_port, function FROM dnp3 ORDER BY packet_number")
    store.close()
    assert rows == [{"server_port": 20001, "function": "READ"}, {"server_port": 20001, "function": "RESPONSE"}]


# -- byte at a time ------------------------------------------------------------------------------------------


def _stream_captures() -> list[Path]:
    captures = [ICSNPP / "traces/dnp3_example.pcap", *sorted((ZEEK / "Traces/dnp3").glob("*.pcap"))]
    captures += sorted((ITI / "dnp3").glob("*.pcap")) + sorted((ITI / "openics").glob("DNP3*.pcap"))
    captures += sorted(SURICATA.glob("*/*.pcap"))
    return [capture for capture in captures if capture.exists()]


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    captures = _stream_captures()
    if not captures:
        pytest.skip(f"research data missing under {RESEARCH}")
    total = 0
    chunking = random.Random(1815)
    for capture in captures:
        try:
            streams = tcp_streams(capture, 20000)
        except ValueError:  # not a classic pcap of Ethernet frames (pcapng): covered by the corpus test
            continue
        for chunks in streams:
            whole = replay(Dnp3Session(), chunks, one_byte=False)
            assert replay(Dnp3Session(), chunks, one_byte=True) == whole, capture
            # Arbitrary re-chunking of the same stream (as TCP reassembly may deliver it) changes nothing either.
            for direction in Direction:
                data = b"".join(piece for side, piece, _ in chunks if side == direction)
                cuts = sorted(chunking.sample(range(1, len(data)), min(len(data) - 1, 20))) if len(data) > 1 else []
                pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
                session, reference = Dnp3Session(), Dnp3Session()
                split = [e for piece in pieces for e in session.feed(piece, direction, 0.0)] + session.close()
                assert split == reference.feed(data, direction, 0.0) + reference.close(), capture
            total += len(whole)
    assert total > 2000


# -- fuzzing ---------------------------------------------------------------------------------------------------


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(chunks=st.lists(st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=400)), max_size=20))
def test_random_streams_never_raise(chunks: list[tuple[Direction, bytes]]) -> None:
    for session in (Dnp3Session(), Dnp3Session(datagrams=True)):
        for direction, data in chunks:
            for event in session.feed(b"\x05\x64" + data if len(data) % 3 == 0 else data, direction, 0.0):
                assert event.table in ("dnp3", "dnp3_objects", "dnp3_control", "dnp3_link", "anomaly")
        session.gap(Direction.TO_SERVER, 10)
        session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(body=st.binary(max_size=600), control=st.integers(0, 255), function=st.integers(0, 255))
def test_well_framed_random_fragments_never_raise(body: bytes, control: int, function: int) -> None:
    """Random application fragments with correct CRCs reach the object parser."""
    fragment = bytes([control, function]) + body
    for direction in Direction:
        events = Dnp3Session().feed(frames(fragment), direction, 0.0)
        assert tables(events, "dnp3"), events


_GROUPS = sorted({group for group, _ in constants.OBJECT_SIZES} | {0, 60, 70, 110, 112, 120})
_QUALIFIERS = [0x00, 0x01, 0x06, 0x07, 0x08, 0x17, 0x28, 0x39, 0x5B, 0x1B, 0x0B, 0x03, 0x2A]


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    function=st.sampled_from([0x01, 0x02, 0x03, 0x05, 0x0B, 0x19, 0x81, 0x82, 0x83]),
    headers=st.lists(
        st.tuples(
            st.sampled_from(_GROUPS),
            st.integers(0, 9),
            st.sampled_from(_QUALIFIERS),
            st.binary(max_size=6),
            st.binary(max_size=40),
        ),
        max_size=5,
    ),
)
def test_structured_random_objects_never_raise(
    function: int, headers: list[tuple[int, int, int, bytes, bytes]]
) -> None:
    """Object headers of real groups and qualifiers with random ranges and data reach every value decoder."""
    body = b"".join(
        bytes([group, variation, qualifier]) + span + data for group, variation, qualifier, span, data in headers
    )
    fragment = bytes([0xC0, function]) + (b"\x00\x00" if function & 0x80 else b"") + body
    parsed = application.parse(fragment)
    assert all(isinstance(header.get("count", 0), int) for header in parsed.objects)
    assert bool(parsed.problems) == ("malformed" in parsed.fields)
    events = Dnp3Session().feed(frames(fragment), Direction.TO_SERVER, 0.0)
    assert tables(events, "dnp3")


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_mutated_real_frames_are_anomalies(data: st.DataObject) -> None:
    """Any changed octet of a real frame breaks a CRC: the frame is reported, never decoded silently."""
    wire = bytearray(frames(SELECT_CROB, destination=4, source=3))
    position = data.draw(st.integers(0, len(wire) - 1))
    wire[position] ^= data.draw(st.integers(1, 255))
    session = Dnp3Session()
    events = session.feed(bytes(wire), Direction.TO_SERVER, 0.0) + session.close()
    assert codes(events), f"octet {position} changed without an anomaly"
    assert not tables(events, "dnp3_control")


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_truncated_real_fragments_are_anomalies(data: st.DataObject) -> None:
    """A fragment cut inside an object header or its data (then framed with good CRCs) is flagged."""
    # Each fragment with the offsets where an object header starts: cutting there leaves a valid fragment.
    fragment, boundaries = data.draw(st.sampled_from([(SELECT_CROB, {2}), (READ_RESPONSE, {4, 14})]))
    cut = data.draw(st.integers(min(boundaries) + 1, len(fragment) - 1).filter(lambda n: n not in boundaries))
    events = Dnp3Session().feed(frames(fragment[:cut]), Direction.TO_SERVER, 0.0)
    assert codes(events) and tables(events, "dnp3")[0]["malformed"]


def test_parser_handles_extreme_counts_quickly() -> None:
    # A READ naming four billion points carries no data; a response claiming them must not allocate them.
    parsed = application.parse(bytes.fromhex("c001" "1e01" "09" "ffffffff"))  # fmt: skip
    assert parsed.objects[0]["count"] == 0xFFFFFFFF and not parsed.problems
    parsed = application.parse(bytes.fromhex("c0810000" "0c01" "09" "ffffffff" "00"))  # fmt: skip
    assert [code for code, _ in parsed.problems] == ["truncated_object"]


# -- the research corpus ---------------------------------------------------------------------------------------


def corpus() -> list[Path]:
    found = sorted(path for path in ITI.rglob("*") if path.suffix in (".pcap", ".pcapng", ".cap")
                   and "dnp3" in str(path.relative_to(ITI)).lower())  # fmt: skip
    if not found:
        pytest.skip(f"research data missing under {ITI}")
    return found


#: Captures where tshark counts application fragments we do not. IEEE 1815-2012 clause 9 lets only
#: CONFIRMED_USER_DATA and UNCONFIRMED_USER_DATA frames carry user data; these opendnp3 conformance tests send
#: user data in frames of other (or undefined) link functions to check that the outstation ignores them.
#: tshark dissects their transport and application layers anyway; we record them in dnp3_link with an
#: unexpected_user_data anomaly. (fragments ours, link frames ours, fragments tshark, link frames tshark)
TSHARK_EXCEPTIONS = {
    "dnp3/opendnp3-3/conformance/6.6.2.2/dump.pcap": (2, 5, 4, 3),  # functions 5 and 10 (undefined) with data
    "dnp3/opendnp3-3/conformance/6.6.2.5/dump.pcap": (2, 3, 3, 2),  # TEST_LINK_STATES, RESET and REQUEST_LINK_STATUS
}


def tshark_counts(path: Path) -> tuple[int, int]:
    """Application fragments and frames without a transport header, as tshark's dnp3 dissector sees them."""
    fields = ["-e", "dnp3.al.func", "-e", "dnp3.len", "-e", "dnp3.tr.ctl"]
    result = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-Y", "dnp3", "-T", "fields", "-E", "occurrence=a", *fields],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    fragments = frames_without_data = 0
    for line in result.stdout.splitlines():
        functions, lengths, transports = [*line.split("\t"), "", "", ""][:3]
        fragments += len(functions.split(",")) if functions else 0
        frames_without_data += (len(lengths.split(",")) if lengths else 0) - (
            len(transports.split(",")) if transports else 0
        )
    return fragments, frames_without_data


@pytest.mark.oracle
def test_corpus_has_no_decoder_fault_and_counts_agree_with_tshark(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")
    paths = corpus()
    store = Store(tmp_path / "corpus.duckdb")
    analyzer = Analyzer(store, decoders=decoders())
    identities = {path: analyzer.analyze(path).capture_id for path in paths}
    faults = query(store, "SELECT detail FROM anomaly WHERE code = 'decoder_exception'")
    messages, links, anomalies = (
        Counter({r["capture_id"]: r["n"] for r in query(store, f"SELECT capture_id, count(*) n FROM {t} GROUP BY 1")})
        for t in ("dnp3", "dnp3_link", "anomaly")
    )
    store.close()
    assert not faults, faults
    with ThreadPoolExecutor(max_workers=2) as pool:
        counted = dict(zip(paths, pool.map(tshark_counts, paths), strict=True))
    agree = 0
    print(f"\n{len(paths)} DNP3 captures: fragments and link-only frames, quaywatch vs tshark")
    for path in paths:
        name = str(path.relative_to(ITI))
        identity = identities[path]
        theirs = counted[path]
        ours = (messages[identity], links[identity])
        print(f"  {name:70s} fragments {ours[0]:5d}/{theirs[0]:<5d} link {ours[1]:3d}/{theirs[1]:<3d} "
              f"anomalies {anomalies[identity]}")  # fmt: skip
        if name in TSHARK_EXCEPTIONS:
            assert (*ours, *theirs) == TSHARK_EXCEPTIONS[name]
        else:
            assert ours == theirs, name
            agree += 1
    assert agree == len(paths) - len(TSHARK_EXCEPTIONS) and sum(messages[identities[p]] for p in paths) > 1400

"""Container intelligence in cleartext payloads: ISO 6346 ids (check digit verified) and EDIFACT segments."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dpkt
import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.decode.cargo import CargoContent
from quaywatch.decode.cargo.iso6346 import check_digit, container_id, is_valid
from quaywatch.decode.registry import all_decoders
from quaywatch.store.database import Store

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "200"))
COARRI = (
    b"UNB+UNOA:2+NLRTMTRM+MAEU+251125:1000+42'UNH+1+COARRI:D:95B:UN:ITG14'BGM+45+TRM42+9'"
    b"TDT+20+512W+1++MAEU:172:20+++9811000:146::MAERSK KENDAL'LOC+9+NLRTM:139:6'"
    b"EQD+CN+CSQU3054383+45G1:102:5+2+5'LOC+11+CNSHA:139:6'UNT+7+1'UNZ+1+42'"
)


def test_check_digits_follow_iso_6346() -> None:
    assert check_digit("CSQU305438") == 3  # docs/domain-maritime.md's worked example
    assert check_digit("ZEPU003725") == 5
    # M24 + S30*2 + K21*4 + U32*8 + 7*512 = 4008, and 4008 mod 11 = 4.
    assert container_id("MSKU", 7) == "MSKU0000074" and is_valid("MSKU0000074")
    assert is_valid("CSQU 305438 3") and is_valid("csqu-305438-3")
    assert not is_valid("CSQU3054384") and not is_valid("CSQX3054383") and not is_valid("CSQU305438")


def _inspect(payloads: list[bytes], keys: list[int] | None = None) -> list[tuple[int, int, dict[str, object]]]:
    data = np.frombuffer(b"".join(payloads), np.uint8)
    lengths = np.array([len(p) for p in payloads], np.int64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    group = np.array(keys if keys is not None else [1] * len(payloads), np.int64)
    return CargoContent().inspect(data, starts, lengths, group)


def test_ids_and_edifact_segments_are_found_with_their_offsets() -> None:
    found = _inspect([b"xx" + COARRI])
    kinds = [(fields["kind"], fields["value"], fields["valid"]) for _, _, fields in found]
    assert ("container_id", "CSQU3054383", True) in kinds
    assert ("edifact_message", "COARRI:D:95B", True) in kinds
    assert ("edifact_location", "9:NLRTM", True) in kinds and ("edifact_location", "11:CNSHA", True) in kinds
    for index, offset, fields in found:
        assert index == 0
        assert (b"xx" + COARRI)[offset:].startswith(str(fields["text"]).encode()[:3])


def test_an_id_split_across_segments_of_one_stream_is_found_once_but_not_across_streams() -> None:
    text = b"moves: CSQU305438 3;"
    one_byte = [text[i : i + 1] for i in range(len(text))]
    found = _inspect(one_byte)
    assert [(fields["value"], index) for index, _, fields in found] == [("CSQU3054383", 7)]
    # The same bytes alternating between two flow directions are two streams: no id in either.
    assert _inspect(one_byte, keys=[i % 2 for i in range(len(one_byte))]) == []


def test_a_wrong_check_digit_is_kept_but_marked_invalid() -> None:
    (found,) = _inspect([b"id=CSQU3054384\n"])
    assert found[2]["value"] == "CSQU3054384" and found[2]["valid"] is False


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8), st.lists(st.integers(0, 3), min_size=8, max_size=8))
@pytest.mark.fuzz
def test_any_bytes_give_matches_inside_their_payload_and_never_raise(payloads: list[bytes], keys: list[int]) -> None:
    for index, offset, fields in _inspect(payloads, keys[: len(payloads)]):
        assert 0 <= index < len(payloads) and offset >= 0
        assert fields["kind"] in {"container_id", "edifact_message", "edifact_location"}


def _frame(source: str, destination: str, sport: int, dport: int, sequence: int, payload: bytes, flags: int) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=sequence, ack=1, flags=flags, data=payload)
    packet = dpkt.ip.IP(src=socket.inet_aton(source), dst=socket.inet_aton(destination), p=6, data=segment)
    packet.len = len(bytes(packet))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x00\x0e\x8c\x01\x02\x03", dst=b"\x74\x78\xa6\x00\x00\x01", data=packet))


def test_the_pipeline_scans_every_cleartext_flow_and_skips_encrypted_ones(tmp_path: Path) -> None:
    capture = tmp_path / "cargo.pcap"
    with capture.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        push = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH
        # An FTP-like raw transfer of an EDIFACT file to an outside host, in two segments.
        writer.writepkt(_frame("10.20.0.7", "203.0.113.9", 40001, 9000, 1, COARRI[:120], push), 1.0)
        writer.writepkt(_frame("10.20.0.7", "203.0.113.9", 40001, 9000, 121, COARRI[120:], push), 1.1)
        # A TLS ClientHello followed by a record whose random bytes happen to spell an id: not scanned.
        hello = bytes.fromhex("16030100310100002d0303") + bytes(32) + bytes.fromhex("000002c02f01000000")
        writer.writepkt(_frame("10.20.0.7", "203.0.113.10", 40002, 443, 1, hello, push), 2.0)
        writer.writepkt(
            _frame("10.20.0.7", "203.0.113.10", 40002, 443, 1 + len(hello), b"\x17\x03\x03\x00\x0bCSQU3054383", push),
            2.1,
        )
    database = tmp_path / "q.duckdb"
    store = Store(database)
    Analyzer(store, decoders=all_decoders()).analyze(capture)
    store.close()
    rows = (
        duckdb.connect(str(database))
        .sql("SELECT packet_number, kind, value, server_port FROM cargo_content ORDER BY packet_number, kind, value")
        .fetchall()
    )
    assert (2, "container_id", "CSQU3054383", 9000) in rows  # the id sits in the second segment
    assert (1, "edifact_message", "COARRI:D:95B", 9000) in rows
    assert (2, "edifact_location", "11:CNSHA", 9000) in rows
    assert not [row for row in rows if row[3] == 443], "a TLS flow's records were scanned"


def _both_ways(payloads: list[bytes], keys: list[int]) -> list[list[tuple[int, int, dict[str, object]]]]:
    """Matches with the pre-filter, then scanning every payload."""
    results = [_inspect(payloads, keys)]
    CargoContent.PREFILTER = False
    try:
        results.append(_inspect(payloads, keys))
    finally:
        CargoContent.PREFILTER = True
    return results


def test_the_prefilter_finds_what_scanning_everything_finds() -> None:
    """Matches inside one payload, straddling payloads (also where the first four bytes straddle), after an
    uppercase byte ending the payload before, EDIFACT segments cut into one-byte payloads, between noise."""
    rng = np.random.default_rng(6346)
    noise = [rng.integers(0, 256, int(rng.integers(0, 300)), np.uint8).tobytes() for _ in range(200)]
    text = b"moves: CSQU305438 3; " + COARRI + b" MSKU0000074 XCSQU3054383"
    cuts = [text[i : i + n] for i, n in ((0, 9), (9, 1), (10, 2), (12, 40), (52, 3), (55, 200), (255, 500))]
    one_byte = [text[i : i + 1] for i in range(len(text))]
    payloads = noise[:50] + cuts + noise[50:120] + one_byte + noise[120:] + [b"AB", b"CU123456", b"7", b"LO", b"C+9+X'"]
    for keys in ([1] * len(payloads), [i % 3 for i in range(len(payloads))], list(range(len(payloads)))):
        fast, everything = _both_ways(payloads, keys)
        assert fast == everything
    fast, _ = _both_ways(payloads, [1] * len(payloads))
    values = [fields["value"] for _, _, fields in fast]
    assert values.count("CSQU3054383") == 4 and "ABCU1234567" in values and "9:X" in values


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    payloads=st.lists(
        st.binary(max_size=40) | st.sampled_from([b"CSQU3054383", b"UNH+1+COARRI'", b"LOC+9+NL'", b"ABC", b"U", b"+"]),
        min_size=1, max_size=30,
    ),
    keys=st.lists(st.integers(0, 2), min_size=30, max_size=30),
)  # fmt: skip
@pytest.mark.fuzz
def test_the_prefilter_agrees_on_any_bytes(payloads: list[bytes], keys: list[int]) -> None:
    payloads = [p or b"x" for p in payloads]  # the dispatcher offers non-empty payloads only
    fast, everything = _both_ways(payloads, keys[: len(payloads)])
    assert fast == everything

"""TFTP decoder: hand-built packets, suricata-verify eve tftp, tshark and nDPI on the TFTP captures, fuzzing.

Run with ``-s`` to see the agreement tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.tftp import TABLES, TftpDecoder, TftpSession
from tests.decode.oracles import Agreement, Row
from tests.decode.snmp.common import NDPI, SURICATA, analyse, claimed, ndpi_flows, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
C, S = Direction.TO_SERVER, Direction.TO_CLIENT
CAPTURES = [
    NDPI / "pcap/tftp.pcap",
    SURICATA / "output-eve-tftp-01/input.pcap",
    SURICATA / "tftp-tx-handling-wrq/input.pcap",
]


def feed(*packets: tuple[Direction, bytes]) -> list[Event]:
    session = TftpSession()
    events: list[Event] = []
    for direction, data in packets:
        events += session.feed(data, direction, 1.0)
    return events + session.close()


def test_write_request_with_options_and_transfer_summary() -> None:
    events = feed(
        (C, b"\x00\x02crane.cfg\x00octet\x00blksize\x001024\x00tsize\x002000\x00"),
        (S, b"\x00\x06blksize\x001024\x00"),
        (C, b"\x00\x03\x00\x01" + b"x" * 1024),
        (S, b"\x00\x04\x00\x01"),
        (C, b"\x00\x03\x00\x02" + b"x" * 976),
        (S, b"\x00\x04\x00\x02"),
    )
    request, oack, transfer = (e.fields for e in events)
    assert request["opcode"] == "write" and request["file_name"] == "crane.cfg" and request["mode"] == "octet"
    assert request["options"] == ["blksize=1024", "tsize=2000"] and oack["options"] == ["blksize=1024"]
    assert transfer == {"opcode": "transfer", "data_packets": 2, "ack_packets": 2, "data_bytes": 2000,
                        "last_block": 2, "complete": True}  # fmt: skip


def test_error_and_malformed() -> None:
    [error] = feed((S, b"\x00\x05\x00\x01File not found\x00"))
    assert error.fields["error_code"] == 1 and error.fields["error_message"] == "File not found"
    assert error.fields["error_name"] == "File not found"
    row, bad = feed((C, b"\x00\x01name\x00weird\x00"))
    assert row.fields["malformed"] == "unknown mode 'weird'" and bad.fields["code"] == "malformed_packet"
    assert [e.fields["code"] for e in feed((C, b"\x00\x09abc"))] == ["unknown_opcode"]
    assert [e.fields["code"] for e in feed((C, b"\x00"))] == ["truncated_packet"]
    row, bad = feed((C, b"\x00\x01name\x00oct"))
    assert row.fields["malformed"] == "strings not NUL-terminated"


def test_probe() -> None:
    decoder = TftpDecoder()
    assert decoder.probe(b"\x00\x01boot.img\x00octet\x00", C, 5000)
    assert decoder.probe(b"\x00\x01\x00\x00", C, 69)
    assert not decoder.probe(b"\x00\x01\x00weird\x00", C, 5000)
    assert decoder.probe(b"\x00\x03\x00\x01data", S, 40000)
    assert not decoder.probe(b"\x00\x03\x00\x07data", S, 40000)
    assert decoder.probe(b"\x00\x04\x00\x00", S, 40000)
    assert not decoder.probe(b"GET / HTTP/1.1\r\n", C, 69)


# -- oracles ------------------------------------------------------------------------------------------------------

EVE = {"tftp.file": "file_name", "tftp.mode": "mode", "tftp.packet": "opcode"}


def test_suricata_verify_eve_tftp(tmp_path: Path) -> None:
    """Every eve tftp filter: the request rows (Suricata logs one tftp event per RRQ/WRQ) with file, mode, packet,
    the 5-tuple and pcap_cnt (our packet_number)."""
    agreement = Agreement(
        ["count", "file_name", "mode", "opcode", "src_ip", "src_port", "dest_ip", "dest_port", "pcap_cnt"]
    )
    checks = 0
    for case in sorted(p.parent.name for p in SURICATA.glob("*tftp*/test.yaml")):
        spec = yaml.safe_load((SURICATA / case / "test.yaml").read_text())
        capture = (SURICATA / case / spec.get("pcap", "input.pcap")).resolve()
        rows = analyse(tmp_path, require(capture), [TftpDecoder()], list(TABLES))["tftp"]
        requests = [r for r in rows if r["opcode"] in ("read", "write")]
        for check in spec["checks"]:
            found = check["filter"]
            match = yaml.safe_load(yaml.safe_dump(found["match"]))
            if match.get("event_type") != "tftp":
                continue
            checks += 1
            flat = {f"tftp.{k}": v for k, v in (match.get("tftp") or {}).items()}
            agreement._compare({"count": str(len(requests))}, {"count": str(found["count"])})
            for row in requests:
                mine: Row = {EVE[k]: str(row[EVE[k]]) for k in flat}
                mine.update(src_ip=str(row["client_ip"]), src_port=str(row["client_port"]),
                            dest_ip=str(row["server_ip"]), dest_port=str(row["server_port"]),
                            pcap_cnt=str(row["packet_number"]))  # fmt: skip
                theirs: Row = {EVE[k]: str(v) for k, v in flat.items()}
                theirs.update(
                    {k: str(match[k]) for k in ("src_ip", "src_port", "dest_ip", "dest_port", "pcap_cnt") if k in match}
                )
                agreement._compare(mine, theirs)
    if not checks:
        pytest.skip(f"research data missing: {SURICATA}/*tftp*")
    print("\n" + agreement.report(f"suricata-verify eve tftp ({checks} checks)"))
    for name in agreement.fields:
        assert agreement.ratio(name) >= 0.99


def tshark(capture: Path) -> list[list[str]]:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    command = ["tshark", "-n", "-r", str(capture), "-Y", "tftp", "-T", "fields", "-E", "occurrence=f", "-e",
               "frame.number", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "tftp.opcode", "-e",
               "tftp.source_file", "-e", "tftp.destination_file", "-e", "tftp.type", "-e", "tftp.error.code", "-e",
               "tftp.error.message"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [(line.split("\t") + [""] * 9)[:9] for line in output.splitlines()]


def test_tshark_agreement(tmp_path: Path) -> None:
    """Requests, errors and OACKs by frame (opcode, file name, mode, error code and message); DATA and ACK counts
    per flow against our transfer rows."""
    agreement = Agreement(["opcode", "file_name", "mode", "error_code", "error_message", "data_packets", "ack_packets"])
    names = {"1": "read", "2": "write", "5": "error", "6": "oack"}
    present = [c for c in CAPTURES if c.exists()]
    if not present:
        pytest.skip(f"research data missing: {CAPTURES[0]}")
    for capture in present:
        rows = analyse(tmp_path, capture, [TftpDecoder()], list(TABLES))["tftp"]
        by_frame = {int(r["packet_number"]): r for r in rows if r["opcode"] != "transfer"}  # type: ignore[call-overload]
        counts: dict[frozenset[int], dict[str, int]] = defaultdict(lambda: {"data_packets": 0, "ack_packets": 0})
        for frame, source, destination, opcode, source_file, destination_file, mode, code, message in tshark(capture):
            if opcode in ("3", "4"):
                counts[frozenset([int(source), int(destination)])][
                    "data_packets" if opcode == "3" else "ack_packets"
                ] += 1
                continue
            row = by_frame.get(int(frame), {})
            mine: Row = {
                k: None if row.get(k) is None else str(row[k])
                for k in ("opcode", "file_name", "mode", "error_code", "error_message")
            }
            theirs: Row = {
                "opcode": names.get(opcode, opcode),
                "error_code": code or None,
                "error_message": message or None,
            }
            if opcode in ("1", "2"):
                theirs["file_name"], theirs["mode"] = source_file or destination_file, mode
            agreement._compare(mine, theirs)
        for row in rows:
            if row["opcode"] == "transfer":
                key = frozenset([int(row["client_port"]), int(row["server_port"])])  # type: ignore[call-overload]
                agreement._compare({k: str(row[k]) for k in ("data_packets", "ack_packets")},
                                   {k: str(v) for k, v in counts.pop(key, {}).items()})  # fmt: skip
        agreement.unmatched_theirs += len(counts)
    print("\n" + agreement.report(f"tshark tftp ({len(present)} captures)"))
    assert agreement.unmatched_theirs == 0
    for name in agreement.fields:
        assert agreement.ratio(name) >= 0.99


def test_ndpi_tftp_flows_are_claimed(tmp_path: Path) -> None:
    expected = ndpi_flows("tftp.pcap", "TFTP")
    tables = analyse(tmp_path, require(NDPI / "pcap/tftp.pcap"), [TftpDecoder()], list(TABLES))
    ours = claimed(tables["flows"], "tftp")
    print(f"\nnDPI tftp.pcap: {len(expected & ours)}/{len(expected)} TFTP flows claimed, {len(ours - expected)} more")
    assert expected and expected <= ours


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    packets=st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=80)), max_size=12), opcode=st.integers(0, 7)
)
def test_random_packets_never_raise(packets: list[tuple[Direction, bytes]], opcode: int) -> None:
    events = feed(*[(d, bytes([0, opcode]) + data) for d, data in packets])
    assert all(e.table in ("tftp", "anomaly") for e in events)
    for data in packets:
        TftpDecoder().probe(data[1], C, 69)

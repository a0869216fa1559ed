"""NTP decoder: hand-built headers, tshark on the research captures with NTP and on a capture built here of
modes 3-7 (monlist among them), nDPI classification, fuzzing.

Run with ``-s`` to see the agreement tables.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction
from quaywatch.decode.ntp import TABLES, UNIX_OFFSET, NtpDecoder, NtpSession
from tests.decode.oracles import RESEARCH, Agreement, Row
from tests.decode.snmp.common import NDPI, analyse, claimed, ndpi_flows

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
C, S = Direction.TO_SERVER, Direction.TO_CLIENT
#: Captures in research-data with NTP, found by a bounded scan of every capture for UDP port 123.
CAPTURES = [
    RESEARCH / "iti-ics-security-tools/pcaps/IEC61850/Sample_File_MMS_and_GOOSE.pcap",
    RESEARCH / "iti-ics-security-tools/pcaps/IEC60870-5-104/JavaRMI_and_IEC_Misc.pcap",
]


def header(first: int, stratum: int, poll: int, precision: int, reference: bytes, transmit: float = 0.0) -> bytes:
    seconds = int(transmit) + UNIX_OFFSET if transmit else 0
    fraction = int((transmit % 1) * (1 << 32)) if transmit else 0
    return struct.pack(
        ">BBbbII4s8s8s8sII", first, stratum, poll, precision, 0x00010000, 0x00008000, reference,
        b"\0" * 8, b"\0" * 8, b"\0" * 8, seconds, fraction,
    )  # fmt: skip


def one(data: bytes) -> dict[str, object]:
    return NtpSession().feed(data, S, 1.0)[0].fields


def test_server_reply_fields() -> None:
    row = one(header(0b00_100_100, 2, 6, -23, bytes([192, 168, 7, 1]), 1_700_000_000.5))
    assert (row["leap"], row["version"], row["mode"], row["stratum"]) == ("no_warning", 4, "server", 2)
    assert (row["poll"], row["precision"], row["root_delay"], row["root_dispersion"]) == (6, -23, 1.0, 0.5)
    assert row["reference_id"] == "192.168.7.1" and row.get("kiss_code") is None
    assert row["transmit_time"] == 1_700_000_000.5 and row["origin_time"] is None


def test_primary_reference_clock_and_kiss_code_and_mac() -> None:
    assert one(header(0b11_011_100, 1, 4, -20, b"GPS\0"))["reference_id"] == "GPS"
    assert one(header(0b11_011_100, 1, 4, -20, b"GPS\0"))["leap"] == "unsynchronized"
    kiss = one(header(0b11_100_100, 0, 4, -20, b"RATE"))
    assert kiss["kiss_code"] == "RATE" and kiss["stratum"] == 0
    signed = one(header(0b00_100_011, 0, 4, -20, b"\0\0\0\0") + struct.pack(">I", 7) + b"\x11" * 16)
    assert signed["key_id"] == 7 and signed["extension_bytes"] == 20 and signed["mode"] == "client"


def test_control_and_private_monlist() -> None:
    control = one(bytes([0b00_010_110, 0x02]) + struct.pack(">HHHHH", 9, 0, 0, 0, 7) + b"version")
    assert control["mode"] == "control" and control["control_opcode"] == "read_variables"
    assert control["sequence"] == 9 and control["control_data"] == "version" and control["response"] is False
    monlist = one(bytes([0x17, 0x00, 0x03, 0x2A]) + b"\0" * 44)
    assert monlist["mode"] == "private" and monlist["private_request"] == "mon_getlist_1" and monlist["monlist"]
    assert monlist["private_implementation"] == "xntpd" and monlist["version"] == 2


def test_malformed() -> None:
    events = NtpSession().feed(b"\x23\x00\x00", C, 1.0)
    assert events[0].fields["malformed"] == "3-octet message, the header needs 48"
    assert events[1].fields["code"] == "malformed_message"
    short = NtpSession().feed(bytes([0b00_100_110, 1]) + struct.pack(">HHHHH", 1, 0, 0, 0, 100), C, 1.0)
    assert "exceeds" in str(short[0].fields["malformed"])


def test_probe() -> None:
    decoder = NtpDecoder()
    client = header(0b00_100_011, 0, 0, 0, b"\0\0\0\0")
    assert decoder.probe(client, C, 123) and decoder.probe(client, C, 40000)
    assert not decoder.probe(client[:40], C, 123)
    assert decoder.probe(bytes([0x17, 0x00, 0x03, 0x2A]) + b"\0" * 4, C, 123)
    assert not decoder.probe(bytes([0x17, 0x00, 0x03, 0x2A]) + b"\0" * 4, C, 5000)
    assert not decoder.probe(b"\x00" * 48, C, 123)


# -- tshark differential ------------------------------------------------------------------------------------------

FIELDS = ["leap_code", "version", "mode_code", "stratum", "poll", "precision", "root_delay", "root_dispersion",
          "reference_id", "reference_time", "origin_time", "receive_time", "transmit_time", "key_id",
          "control_opcode_code", "sequence", "association_id", "control_count", "private_request_code",
          "private_implementation_code", "private_items"]  # fmt: skip
TSHARK = {"leap_code": "ntp.flags.li", "version": "ntp.flags.vn", "mode_code": "ntp.flags.mode",
          "stratum": "ntp.stratum", "poll": "ntp.ppoll", "precision": "ntp.precision", "root_delay": "ntp.rootdelay",
          "root_dispersion": "ntp.rootdispersion", "reference_id": "ntp.refid", "reference_time": "ntp.reftime",
          "origin_time": "ntp.org", "receive_time": "ntp.rec", "transmit_time": "ntp.xmt", "key_id": "ntp.keyid",
          "control_opcode_code": "ntp.ctrl.flags2.opcode", "sequence": "ntp.ctrl.sequence",
          "association_id": "ntp.ctrl.associd", "control_count": "ntp.ctrl.count",
          "private_request_code": "ntp.priv.reqcode", "private_implementation_code": "ntp.priv.impl",
          "private_items": "ntp.priv.numitems"}  # fmt: skip


def _time(text: str) -> str | None:
    """tshark's 'Jul 18, 2008 12:34:22.980876772 UTC' as whole milliseconds since the epoch."""
    if not text or text == "NULL":
        return None
    stamp, fraction = text.replace(" UTC", "").rsplit(".", 1)
    moment = datetime.strptime(" ".join(stamp.split()), "%b %d, %Y %H:%M:%S").replace(tzinfo=UTC)
    return str(int(moment.timestamp()) * 1000 + int(fraction[:3]))


def tshark_rows(capture: Path) -> dict[int, Row]:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    command = [
        "tshark",
        "-n",
        "-r",
        str(capture),
        "-Y",
        "ntp",
        "-T",
        "fields",
        "-E",
        "occurrence=f",
        "-e",
        "frame.number",
    ]
    for name in FIELDS:
        command += ["-e", TSHARK[name]]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    out: dict[int, Row] = {}
    for line in output.splitlines():
        frame, *values = line.split("\t")
        row: Row = {name: value or None for name, value in zip(FIELDS, values, strict=True)}
        mode = row["mode_code"]
        for name in ("reference_time", "origin_time", "receive_time", "transmit_time"):
            row[name] = _time(row[name] or "")
        for name in ("root_delay", "root_dispersion"):
            # tshark 4.0 prints both in 1/65536 s units (NTP short format, RFC 5905 figure 3).
            row[name] = None if row[name] is None else f"{int(row[name] or 0) / 65536:.6f}"
        if row["precision"] is not None:
            row["precision"] = str(
                int(row["precision"]) - 256 if int(row["precision"]) > 127 else int(row["precision"])
            )
        if row["reference_id"] is not None:
            # tshark prints the 4 octets as hex; render them as we do (RFC 5905 section 7.3).
            octets = bytes.fromhex(row["reference_id"])
            stratum = int(row["stratum"] or 0)
            row["reference_id"] = (
                None if octets == b"\0\0\0\0" else ".".join(map(str, octets)) if stratum >= 2
                else octets.rstrip(b"\0").decode("ascii", "backslashreplace")
            )  # fmt: skip
        if row["key_id"] is not None:
            row["key_id"] = str(int(row["key_id"], 16))  # tshark shows the key identifier's 4 octets in hex
        if mode in ("6", "7"):
            row["leap_code"] = row["leap_code"] if mode == "6" else None
        out[int(frame)] = row
    return out


def ours(rows: list[dict[str, object]]) -> dict[int, Row]:
    out: dict[int, Row] = {}
    for row in rows:
        view: Row = {n: None if row.get(n) is None else str(row[n]) for n in FIELDS}
        for name in ("reference_time", "origin_time", "receive_time", "transmit_time"):
            value = row.get(name)
            view[name] = None if value is None else str(round(float(value) * 1000 - 0.5))  # type: ignore[arg-type]
        for name in ("root_delay", "root_dispersion"):
            view[name] = None if row.get(name) is None else f"{row[name]:.6f}"
        if row.get("mode_code") == 6:
            view["sequence"] = view["sequence"]
        elif row.get("mode_code") == 7:
            view["sequence"] = None
        out[int(row["packet_number"])] = view  # type: ignore[call-overload]
    return out


def synthetic_capture(path: Path) -> Path:
    """Modes 3 (one with a MAC), 4 (one a RATE kiss), 6 and 7 (monlist request and answer) as a pcap, with dpkt."""
    import dpkt

    payloads = [
        (header(0b00_100_011, 0, 6, -20, b"\0\0\0\0", 1_700_000_000.25), 40000, 123),
        (header(0b00_100_100, 3, 6, -23, bytes([10, 1, 2, 3]), 1_700_000_000.5), 123, 40000),
        (header(0b00_100_100, 1, 6, -23, b"PPS\0", 1_700_000_001.75), 123, 40000),
        (
            header(0b00_100_011, 0, 6, -20, b"\0\0\0\0", 1_700_000_002.0) + struct.pack(">I", 42) + b"\x5a" * 16,
            40003,
            123,
        ),
        (header(0b11_100_100, 0, 6, -20, b"RATE", 1_700_000_002.5), 123, 40003),
        (bytes([0b00_010_110, 0x02]) + struct.pack(">HHHHH", 9, 0, 5, 0, 7) + b"version" + b"\0", 40001, 123),
        (bytes([0x17, 0x00, 0x03, 0x2A]) + b"\0" * 44, 40002, 123),
        (bytes([0x97, 0x00, 0x03, 0x2A]) + struct.pack(">HH", 1, 72) + b"\0" * 72, 123, 40002),
    ]
    writer_file = path.open("wb")
    writer = dpkt.pcap.Writer(writer_file)
    for number, (payload, source, destination) in enumerate(payloads):
        udp = dpkt.udp.UDP(sport=source, dport=destination, data=payload)
        udp.ulen = len(udp)
        addresses = (
            (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
            if destination == 123
            else (b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x01")
        )
        ip = dpkt.ip.IP(src=addresses[0], dst=addresses[1], p=17, data=udp)
        ip.len = len(ip)
        frame = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
        writer.writepkt(bytes(frame), ts=1_700_000_000 + number)
    writer_file.close()
    return path


def test_tshark_agreement(tmp_path: Path) -> None:
    captures = [c for c in CAPTURES if c.exists()] + [synthetic_capture(tmp_path / "ntp-modes.pcap")]
    agreement = Agreement(FIELDS)
    for capture in captures:
        theirs = tshark_rows(capture)
        mine = ours(analyse(tmp_path, capture, [NtpDecoder()], list(TABLES))["ntp"])
        for frame, other in theirs.items():
            if frame not in mine:
                agreement.unmatched_theirs += 1
                continue
            agreement._compare(mine[frame], other)
        agreement.unmatched_ours += len(mine.keys() - theirs.keys())
    print("\n" + agreement.report(f"tshark ntp ({len(captures)} captures, one built here)"))
    assert agreement.unmatched_theirs == agreement.unmatched_ours == 0
    for name in FIELDS:
        assert agreement.ratio(name) >= 0.99, agreement.report("tshark ntp")


def test_ndpi_ntp_flows_are_claimed(tmp_path: Path) -> None:
    """nDPI's default test captures hold no NTP flow (its result files name none); the flows of the research
    captures with NTP are claimed, and every one of them is on port 123."""
    expected = set()
    for result in sorted((NDPI / "result").glob("*.out")):
        expected |= ndpi_flows(result.name.removesuffix(".out"), "NTP")
    assert not expected, "nDPI now has NTP flows: compare them here"
    present = [c for c in CAPTURES if c.exists()]
    if not present:
        pytest.skip(f"research data missing: {CAPTURES[0]}")
    for capture in present:
        flows = analyse(tmp_path, capture, [NtpDecoder()], ["ntp"])["flows"]
        mine = claimed(flows, "ntp")
        on_port = claimed(
            [{**f, "application": "ntp"} for f in flows if 123 in (f["client_port"], f["server_port"])], "ntp"
        )
        assert mine == on_port


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.binary(max_size=120), first=st.integers(0, 255))
def test_random_datagrams_never_raise(data: bytes, first: int) -> None:
    events = NtpSession().feed(bytes([first]) + data, C, 1.0)
    assert events[0].table == "ntp"
    NtpDecoder().probe(bytes([first]) + data, C, 123)

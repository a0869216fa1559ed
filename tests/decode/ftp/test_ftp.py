"""FTP decoder: hand-built sessions, tshark and nDPI differentials on ndpi's ftp.pcap, chunking and fuzzing.

Run with ``-s`` to see the agreement tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.ftp import MAXIMUM_LINE, TABLES, FtpDecoder, FtpSession, credentials
from tests.decode.oracles import Agreement, Row, replay, tcp_streams
from tests.decode.snmp.common import NDPI, analyse, claimed, ndpi_flows, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
CAPTURE = NDPI / "pcap/ftp.pcap"
C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def run(*steps: tuple[Direction, bytes]) -> list[Event]:
    session = FtpSession()
    events: list[Event] = []
    for number, (direction, data) in enumerate(steps):
        events += session.feed(data, direction, float(number))
    return events + session.close()


def table(events: list[Event], name: str = "ftp") -> list[dict[str, object]]:
    return [e.fields for e in events if e.table == name]


def test_login_password_never_stored_and_credentials() -> None:
    events = run(
        (S, b"220 ProFTPD crane-4 FTP\r\n"),
        (C, b"USER admin\r\n"),
        (S, b"331 Password required\r\n"),
        (C, b"PASS s3cret!\r\n"),
        (S, b"230 User admin logged in\r\n"),
    )
    banner, user, password = table(events)
    assert banner.get("command") is None
    assert banner["reply_code"] == 220 and banner["reply_message"] == "ProFTPD crane-4 FTP"
    assert user["command"] == "USER" and user["arg"] == "admin" and user["reply_code"] == 331
    assert password["command"] == "PASS" and "arg" not in password and password["password_length"] == 7
    assert password["password_present"] is True and password["user"] == "admin" and password["latency"] == 1.0
    assert b"s3cret" not in repr(events).encode()
    [login] = table(events, credentials.TABLE)
    assert login == {"protocol": "ftp", "user_name": "admin", "password_present": True, "password_length": 7,
                     "success": True, "evidence": "230 User admin logged in"}  # fmt: skip


def test_failed_login_and_multiline_and_preliminary() -> None:
    events = run(
        (C, b"user root\r\n"),
        (S, b"331 ok\r\n"),
        (C, b"PASS x\r\n"),
        (S, b"530 Login incorrect.\r\n"),
        (C, b"FEAT\r\n"),
        (S, b"211-Features:\r\n MDTM\r\n211-still going\r\n211 End\r\n"),
        (C, b"RETR /fw/crane.bin\r\n"),
        (S, b"150 Opening BINARY mode\r\n"),
        (S, b"226 Transfer complete.\r\n"),
    )
    rows = table(events)
    assert rows[0]["command"] == "USER" and rows[0]["user"] == "root"
    assert table(events, credentials.TABLE)[0]["success"] is False
    feat = rows[2]
    assert feat["reply_code"] == 211 and feat["reply_lines"] == 4 and feat["reply_message"] == "Features:"
    retr = rows[3]
    assert retr["file_name"] == "/fw/crane.bin" and retr["preliminary_code"] == 150 and retr["reply_code"] == 226


def test_data_channel_addresses() -> None:
    events = run(
        (C, b"PORT 10,1,2,3,4,1\r\n"),
        (S, b"200 PORT ok\r\n"),
        (C, b"PASV\r\n"),
        (S, b"227 Entering Passive Mode (192,168,0,9,19,137).\r\n"),
        (C, b"EPSV\r\n"),
        (S, b"229 Entering Extended Passive Mode (|||50021|)\r\n"),
        (C, b"EPRT |2|fe80::1|5282|\r\n"),
        (S, b"200 ok\r\n"),
        (C, b"PORT 300,1,1,1,1,1\r\n"),
        (S, b"501 bad\r\n"),
    )
    port, pasv, epsv, eprt, bad = table(events)
    assert (port["data_address"], port["data_port"], port["passive"]) == ("10.1.2.3", 1025, False)
    assert (pasv["data_address"], pasv["data_port"], pasv["passive"]) == ("192.168.0.9", 5001, True)
    assert (epsv["data_port"], epsv["passive"]) == (50021, True)
    assert (eprt["data_address"], eprt["data_port"]) == ("fe80::1", 5282)
    assert "data_address" not in bad
    assert [e.fields["code"] for e in events if e.table == "anomaly"] == ["bad_port_argument"]


def test_unanswered_long_lines_and_bad_replies() -> None:
    events = run((C, b"NOOP\r\n"), (S, b"hello there\r\n"), (C, b"A" * (MAXIMUM_LINE + 10) + b"\r\nQUIT\r\n"))
    codes = [e.fields["code"] for e in events if e.table == "anomaly"]
    assert codes == ["bad_reply", "line_too_long"]
    assert [(r["command"], r["answered"]) for r in table(events)] == [("NOOP", False), ("QUIT", False)]


def test_abort_with_telnet_synch() -> None:
    events = run((C, b"\xff\xf4\xff\xf2ABOR\r\n"), (S, b"226 Abort successful\r\n"))
    assert [(r["command"], r["reply_code"]) for r in table(events)] == [("ABOR", 226)]


def test_auth_tls_stops_reading() -> None:
    events = run(
        (C, b"AUTH TLS\r\n"),
        (S, b"234 AUTH TLS successful\r\n"),
        (C, b"\x16\x03\x01\x02\x00\x01\n\x00garbage"),
        (S, b"\x16\x03\x03\x00\x5a\x02\n"),
    )
    assert [(r["command"], r["reply_code"]) for r in table(events)] == [("AUTH", 234)]
    assert not [e for e in events if e.table == "anomaly"]


def test_probe() -> None:
    decoder = FtpDecoder()
    assert decoder.probe(b"220 (vsFTPd 3.0.3)\r\n", S, 2121)
    assert decoder.probe(b"220 welcome\r\n", S, 21)
    assert not decoder.probe(b"220 mail.example.com ESMTP Postfix\r\n", S, 25)
    assert decoder.probe(b"USER anonymous\r\n", C, 2121)
    assert not decoder.probe(b"EHLO me\r\n", C, 25)


# -- oracles ------------------------------------------------------------------------------------------------------


def tshark_sequence(capture: Path) -> tuple[list[Row], list[str]]:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    command = ["tshark", "-n", "-r", str(capture), "-Y", "ftp", "-T", "fields", "-E", "occurrence=f",
               "-e", "ftp.request.command", "-e", "ftp.request.arg", "-e", "ftp.response.code"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests: list[Row] = []
    replies: list[str] = []
    for line in output.splitlines():
        verb, arg, code = [*line.split("\t"), "", "", ""][:3]
        if verb:
            requests.append({"command": verb.upper(), "arg": None if verb.upper() == "PASS" else (arg or None)})
        if code:
            replies.append(code)
    return requests, replies


def test_tshark_agreement(tmp_path: Path) -> None:
    """Commands and arguments in order, and the final reply codes in order (1xx replies are ours as
    preliminary_code; tshark lists every reply line with a code, so 1xx codes are dropped from its list)."""
    theirs, their_replies = tshark_sequence(require(CAPTURE))
    rows = analyse(tmp_path, CAPTURE, [FtpDecoder()], list(TABLES))["ftp"]
    ours: list[Row] = [{"command": r["command"], "arg": r["arg"]} for r in rows if r["command"]]  # type: ignore[misc]
    agreement = Agreement(["command", "arg"])
    agreement.score(ours, theirs, key=lambda r: r["command"])
    our_replies = [str(r["reply_code"]) for r in rows if r["reply_code"] is not None]
    final = [code for code in their_replies if not code.startswith("1")]
    replies = Agreement(["reply_code"])
    replies.score(
        [{"reply_code": c} for c in our_replies], [{"reply_code": c} for c in final], key=lambda r: r["reply_code"]
    )
    print("\n" + agreement.report("tshark ftp requests") + "\n" + replies.report("tshark ftp final replies"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0 and replies.unmatched_theirs == 0
    for report in (agreement, replies):
        for name in report.fields:
            assert report.ratio(name) >= 0.99


def test_ndpi_ftp_control_flows_are_claimed(tmp_path: Path) -> None:
    """nDPI's FTP_CONTROL flows are ours. Its FTP_DATA flow (the PASV data connection) carries only file octets,
    no FTP protocol (RFC 959 section 3.2); our ftp rows give its address and port (data_address, data_port)."""
    expected = ndpi_flows("ftp.pcap", "FTP_CONTROL")
    tables = analyse(tmp_path, require(CAPTURE), [FtpDecoder()], list(TABLES))
    ours = claimed(tables["flows"], "ftp")
    data = ndpi_flows("ftp.pcap", "FTP_DATA")
    ports = {r["data_port"] for r in tables["ftp"] if r["data_port"]}
    print(f"\nnDPI ftp.pcap: {len(expected & ours)}/{len(expected)} FTP_CONTROL flows claimed; "
          f"{sum(any(p in ports for _, p in flow) for flow in data)}/{len(data)} FTP_DATA flows announced")  # fmt: skip
    assert expected and expected <= ours and not (ours - expected)
    assert all(any(port in ports for _, port in flow) for flow in data)
    assert [r["user_name"] for r in tables["cleartext_credentials"]] == ["anonymous"]


def test_one_byte_at_a_time_equals_whole() -> None:
    streams = tcp_streams(require(CAPTURE), 21)
    assert streams
    for chunks in streams:
        assert replay(FtpSession(), chunks, True) == replay(FtpSession(), chunks, False)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([C, S]), st.one_of(st.binary(max_size=80), st.sampled_from(
            [b"USER a\r\n", b"PASS b\r\n", b"230 ok\r\n", b"211-x\r\n", b"211 y\r\n", b"PORT 1,2,3,4,5,6\r\n",
             b"227 (1,2,3,4,5,6)\r\n", b"229 (|||7|)\r\n", b"150 go\r\n", b"EPRT |1|x|99999|\r\n"]))),
        max_size=20,
    )
)  # fmt: skip
def test_random_streams_never_raise(steps: list[tuple[Direction, bytes]]) -> None:
    whole = run(*steps)
    session = FtpSession()
    pieces: list[Event] = []
    for number, (direction, data) in enumerate(steps):
        for i in range(len(data)):
            pieces += session.feed(data[i : i + 1], direction, float(number))
    assert pieces + session.close() == whole

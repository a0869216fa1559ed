"""Telnet decoder: hand-built negotiations and logins, tshark (every IAC command and option, and the login
prompts' answers), suricata-verify telnet-01 and nDPI on telnet.pcap, chunking and fuzzing.

Run with ``-s`` to see the agreement tables.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.ftp import credentials
from quaywatch.decode.telnet import TABLES, TelnetDecoder, TelnetSession
from tests.decode.oracles import Agreement, Row, replay, tcp_streams
from tests.decode.snmp.common import NDPI, SURICATA, analyse, claimed, ndpi_flows, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
CAPTURE = NDPI / "pcap/telnet.pcap"
C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def run(*steps: tuple[Direction, bytes]) -> list[Event]:
    session = TelnetSession()
    events: list[Event] = []
    for direction, data in steps:
        events += session.feed(data, direction, 1.0)
    return events + session.close()


def rows(events: list[Event], kind: str) -> list[dict[str, object]]:
    return [e.fields for e in events if e.table == "telnet" and e.event_type == kind]


def test_negotiation_and_subnegotiation() -> None:
    events = run(
        (S, b"\xff\xfd\x18\xff\xfd\x1f"),
        (C, b"\xff\xfb\x18\xff\xfb\x1f\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0"),
        (C, b"\xff\xfa\x18\x00vt\xff\xff100\xff\xf0\xff\xf1"),
    )
    commands = rows(events, "command")
    assert [(c["command"], c.get("option")) for c in commands] == [
        ("DO", "terminal-type"), ("DO", "naws"), ("WILL", "terminal-type"), ("WILL", "naws"), ("SB", "naws"),
        ("SB", "terminal-type"), ("NOP", None),
    ]  # fmt: skip
    assert (commands[4]["window_width"], commands[4]["window_height"]) == (80, 24)
    assert commands[5]["terminal_type"] == "vt\\xff100" and commands[5]["subnegotiation"] == b"\x00vt\xff100"
    [summary] = rows(events, "summary")
    assert summary["server_options"] == ["DO naws", "DO terminal-type"]
    assert summary["client_options"] == ["SB naws", "SB terminal-type", "WILL naws", "WILL terminal-type"]
    assert summary["terminal_type"] == "vt\\xff100" and summary["window_width"] == 80


def test_login_user_and_password_length_only() -> None:
    events = run(
        (S, b"\r\nCrane HMI\r\nLogin: "),
        (C, b"r"), (S, b"r"), (C, b"ox\x7fot\r\x00"), (S, b"oot\r\n"),
        (S, b"Password:"),
        (C, b"hunter22\x08\r\n"),
        (S, b"\r\nLast login: Mon from 10.0.0.1\r\n$ "),
        (C, b"ls\r\n"),
    )  # fmt: skip
    [login] = rows(events, "login")
    assert login == {"user_name": "root", "password_present": True, "password_length": 7}
    [credential] = [e.fields for e in events if e.table == credentials.TABLE]
    assert credential["user_name"] == "root" and credential["success"] is None
    assert b"hunter" not in repr(events).encode()
    assert rows(events, "summary")[0]["login_attempts"] == 1


def test_failed_login_is_recognised() -> None:
    events = run(
        (S, b"login: "), (C, b"admin\r\n"), (S, b"Password: "), (C, b"admin\r\n"),
        (S, b"\r\nLogin incorrect\r\nlogin: "), (C, b"root\r\n"), (S, b"Password:"), (C, b"toor\r\n"), (S, b"\r\n# "),
    )  # fmt: skip
    attempts = [e.fields for e in events if e.table == credentials.TABLE]
    assert [(a["user_name"], a["password_length"], a["success"]) for a in attempts] == [
        ("admin", 5, False), ("root", 4, None)
    ]  # fmt: skip
    assert attempts[0]["evidence"] == "login incorrect"
    assert [r["user_name"] for r in rows(events, "login")] == ["admin", "root"]


def test_prompt_followed_by_text_is_not_a_prompt() -> None:
    events = run((S, b"Last login: Tue Nov 3\r\n$ "), (C, b"uptime\r\n"))
    assert not rows(events, "login")


def test_user_name_without_password_prompt() -> None:
    events = run((S, b"login: "), (C, b"guest\r\n"), (S, b"Welcome\r\n"))
    assert rows(events, "login") == [{"user_name": "guest", "password_present": False}]


def test_bad_subnegotiation_is_an_anomaly() -> None:
    events = run((C, b"\xff\xfa\x18\x00ab\xff\xfbxyz"))
    assert [e.fields["code"] for e in events if e.table == "anomaly"] == ["bad_subnegotiation"]


def test_probe() -> None:
    decoder = TelnetDecoder()
    assert decoder.probe(b"\xff\xfd\x03\xff\xfb\x18", S, 2323)
    assert decoder.probe(b"\r\nlogin: ", S, 23)
    assert not decoder.probe(b"\r\nlogin: ", S, 2323)
    assert not decoder.probe(b"\x16\x03\x01\x02\x00", C, 23)


# -- oracles ------------------------------------------------------------------------------------------------------


#: tshark's option names (packet-telnet.c) -> option numbers.
TSHARK_OPTIONS = {
    "Binary Transmission": 0, "Echo": 1, "Suppress Go Ahead": 3, "Status": 5, "Timing Mark": 6, "Terminal Type": 24,
    "Negotiate About Window Size": 31, "Terminal Speed": 32, "Remote Flow Control": 33, "Linemode": 34,
    "X Display Location": 35, "Environment Option": 36, "Authentication Option": 37, "Encryption Option": 38,
    "New Environment Option": 39,
}  # fmt: skip
_COMMAND = re.compile(r"^ {8}Command: .* \((\d+)\)$")
_OPTION = re.compile(r"^ {8}Subcommand: (.+)$")


def tshark_commands(capture: Path) -> list[Row]:
    """Every IAC command of tshark's telnet tree (-V -O telnet) with the option it names, frame by frame; SE
    (240) is its own entry there and ends our SB row instead, so it is left out."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    output = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-V", "-O", "telnet"], capture_output=True, text=True, check=True
    ).stdout
    out: list[Row] = []
    frame = "0"
    for line in output.splitlines():
        if line.startswith("Frame "):
            frame = line.split()[1].rstrip(":")
        elif found := _COMMAND.match(line):
            if found[1] != "240":
                out.append({"frame": frame, "command_code": found[1], "option_code": None})
        elif (found := _OPTION.match(line)) and out and out[-1]["frame"] == frame:
            option = TSHARK_OPTIONS.get(found[1].strip())
            out[-1]["option_code"] = None if option is None else str(option)
    return out


def tshark_data(capture: Path) -> list[str]:
    command = ["tshark", "-n", "-r", str(capture), "-Y", "telnet.data", "-T", "fields", "-E", "occurrence=a", "-E",
               "aggregator=|", "-e", "telnet.data"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()


def test_tshark_agreement(tmp_path: Path) -> None:
    """Every IAC command with its option, frame by frame; the login from tshark's decoded data: the client line
    after the server's ``login:`` and the length of the one after ``Password:``."""
    theirs = tshark_commands(require(CAPTURE))
    ours = analyse(tmp_path, CAPTURE, [TelnetDecoder()], list(TABLES))["telnet"]
    mine: list[Row] = [
        {"frame": str(r["packet_number"]), "command_code": str(r["command_code"]),
         "option_code": None if r["option_code"] is None else str(r["option_code"])}
        for r in ours if r["event_type"] == "command"
    ]  # fmt: skip
    agreement = Agreement(["frame", "command_code", "option_code"])
    agreement.score(mine, theirs, key=lambda r: (r["frame"], r["command_code"], r["option_code"]))
    user: str | None = None
    length: int | None = None
    prompt = None
    for data in tshark_data(CAPTURE):
        text = data.replace("\\r\\n", "").replace("\\r", "")
        if text.strip().lower().endswith(("login:", "password:")):
            prompt = text.strip().lower()[-6:]
        elif text and prompt:
            if prompt == "login:":
                user = text
            else:
                length = len(text)
            prompt = None
    [login] = [r for r in ours if r["event_type"] == "login"]
    logins = Agreement(["user_name", "password_length"])
    logins._compare({"user_name": login["user_name"], "password_length": str(login["password_length"])},
                    {"user_name": user, "password_length": str(length)})  # fmt: skip
    print("\n" + agreement.report("tshark telnet commands") + "\n" + logins.report("tshark telnet login"))
    # Frame 72 ends with IAC (sent urgent, the Synch of RFC 854 page 9) and frame 73 starts with DM (242): tshark
    # dissects each segment alone and shows the two octets as data; in the reassembled stream they are IAC DM.
    extra = Counter((m["frame"], m["command_code"]) for m in mine) - Counter(
        (t["frame"], t["command_code"]) for t in theirs
    )
    assert extra == Counter({("73", "242"): 1}), extra
    assert agreement.unmatched_ours == 1 and agreement.unmatched_theirs == 0
    assert logins.compared == {"user_name": 1, "password_length": 1}
    for report in (agreement, logins):
        for name in report.fields:
            assert report.ratio(name) >= 0.99


def test_suricata_and_ndpi_flows_are_claimed(tmp_path: Path) -> None:
    """suricata-verify telnet-01 expects one flow with app_proto telnet; nDPI calls the same capture's flow Telnet."""
    suricata = require(SURICATA / "telnet/telnet-01/telnet.pcap")
    ours = claimed(analyse(tmp_path, suricata, [TelnetDecoder()], list(TABLES))["flows"], "telnet")
    expected = ndpi_flows("telnet.pcap", "Telnet")
    tables = analyse(tmp_path, require(CAPTURE), [TelnetDecoder()], list(TABLES))
    mine = claimed(tables["flows"], "telnet")
    [login] = tables[credentials.TABLE]
    assert (login["protocol"], login["user_name"], login["password_length"]) == ("telnet", "fake", 4)
    print(f"\nsuricata-verify telnet-01: {len(ours)}/1 flow; nDPI telnet.pcap: {len(expected & mine)}/{len(expected)}")
    assert len(ours) == 1 and expected and expected <= mine


def test_one_byte_at_a_time_equals_whole() -> None:
    streams = tcp_streams(require(CAPTURE), 23)
    assert streams
    for chunks in streams:
        assert replay(TelnetSession(), chunks, True) == replay(TelnetSession(), chunks, False)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([C, S]), st.one_of(st.binary(max_size=60), st.sampled_from(
            [b"login:", b"Password:", b"\xff\xfa", b"\xff\xf0", b"\xff\xff", b"\r\n", b"\xff\xfb\x01", b"\x7f"]))),
        max_size=25,
    )
)  # fmt: skip
def test_random_streams_never_raise(steps: list[tuple[Direction, bytes]]) -> None:
    whole = run(*steps)
    session = TelnetSession()
    pieces: list[Event] = []
    for direction, data in steps:
        for i in range(len(data)):
            pieces += session.feed(data[i : i + 1], direction, 1.0)
    assert pieces + session.close() == whole

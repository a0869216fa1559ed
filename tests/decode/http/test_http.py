"""HTTP decoder: hand-built exchanges (auth, chunked, pipelining, HEAD, 1xx, CONNECT, Upgrade), probing, HTTP on
the Modbus port, one-byte replay and fuzzing."""

from __future__ import annotations

import base64
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.http import HttpDecoder, HttpSession
from quaywatch.decode.modbus import ModbusDecoder
from quaywatch.decode.registry import all_decoders
from tests.decode.http.common import ZEEK, analyse, require
from tests.decode.oracles import RESEARCH, replay, tcp_streams

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def exchange(*messages: tuple[Direction, bytes]) -> tuple[list[dict[str, object]], list[str]]:
    session = HttpSession()
    events: list[Event] = []
    for index, (direction, data) in enumerate(messages):
        events += session.feed(data, direction, float(index))
    events += session.close()
    rows = [e.fields for e in events if e.table == "http"]
    return rows, [str(e.fields["code"]) for e in events if e.table == "anomaly"]


def test_request_response_fields_and_basic_auth_without_the_password() -> None:
    token = base64.b64encode(b"admin:12345").decode()
    request = (
        "POST /cgi-bin/login HTTP/1.1\r\nHost: 10.1.2.3\r\nUser-Agent: crane-agent/2.1\r\nReferer: http://x/\r\n"
        f"Authorization: Basic {token}\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nMSKU9070323"
    ).encode()
    response = b"HTTP/1.0 403 Forbidden here\r\nServer: Hikvision-Webs\r\nContent-Type: text/html\r\n\r\n<html>no"
    rows, anomalies = exchange((C, request), (S, response))
    (row,) = rows
    assert (row["method"], row["uri"], row["version"], row["host"]) == ("POST", "/cgi-bin/login", "1.1", "10.1.2.3")
    assert (row["user_agent"], row["referrer"], row["request_content_type"]) == (
        "crane-agent/2.1",
        "http://x/",
        "text/plain",
    )
    assert (row["username"], row["password_present"], row["password_length"]) == ("admin", True, 5)
    assert "12345" not in repr(row)
    assert (row["request_body_len"], row["request_body_head"]) == (11, b"MSKU9070323")
    assert (row["status_code"], row["status_msg"], row["server"]) == (403, "Forbidden here", "Hikvision-Webs")
    assert (row["response_body_len"], row["response_body_head"], row["content_type"]) == (8, b"<html>no", "text/html")
    assert anomalies == []  # read-until-close ends normally at close


def test_chunked_pipelined_head_and_interim_responses() -> None:
    requests = (
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n"
        b"PUT /c HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n"
    )
    responses = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    rows, anomalies = exchange((C, requests), (S, responses))
    assert [r["uri"] for r in rows] == ["/a", "/b", "/c"]
    assert [r["trans_depth"] for r in rows] == [1, 2, 3] and [r["pipelined"] for r in rows] == [False, True, True]
    assert (rows[0]["response_body_len"], rows[0]["response_body_head"], rows[0]["response_chunked"]) == (
        11,
        b"hello world",
        True,
    )
    assert rows[1]["response_body_len"] == 0  # HEAD: Content-Length describes a body that is not sent
    assert (rows[2]["request_body_len"], rows[2]["info_code"], rows[2]["status_code"]) == (4, 100, 201)
    assert anomalies == []


def test_connect_and_upgrade_stop_parsing() -> None:
    rows, anomalies = exchange(
        (C, b"CONNECT modem.example:443 HTTP/1.1\r\nHost: modem.example:443\r\n\r\n"),
        (S, b"HTTP/1.1 200 Connection established\r\n\r\n"),
        (C, b"\x16\x03\x01\x02\x00 TLS bytes"),
        (S, b"\x16\x03\x03 more TLS"),
    )
    (row,) = rows
    assert (row["method"], row["upgraded"]) == ("CONNECT", True) and anomalies == []
    rows, anomalies = exchange(
        (C, b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        (S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
        (C, b"\x81\x85abcdefghi"),
    )
    (row,) = rows
    assert (row["upgrade"], row["connection"], row["status_code"], row["upgraded"]) == (
        "websocket",
        "Upgrade",
        101,
        True,
    )
    assert anomalies == []


def test_persistent_connection_unanswered_request_and_response_alone() -> None:
    rows, _ = exchange(
        (C, b"GET /1 HTTP/1.1\r\n\r\n"),
        (S, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (C, b"GET /2 HTTP/1.1\r\n\r\n"),
    )
    assert [(r["uri"], r.get("status_code")) for r in rows] == [("/1", 204), ("/2", None)]
    rows, _ = exchange((S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert rows == [
        {
            "response_version": "1.1",
            "status_code": 200,
            "status_msg": "OK",
            "server": None,
            "content_type": None,
            "location": None,
            "response_body_len": 2,
            "response_body_head": b"ok",
        }
    ]


def test_malformed_messages_become_anomalies() -> None:
    _, anomalies = exchange((C, b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"))
    assert anomalies == ["malformed"]
    _, anomalies = exchange(
        (C, b"GET / HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    )
    assert anomalies == ["malformed"]
    _, anomalies = exchange((C, b"GET / HTTP/1.1\r\nAuthorization: Basic ***\r\n\r\n"))
    assert anomalies == ["bad_authorization"]
    _, anomalies = exchange((C, b"GET / HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    assert anomalies == ["truncated_message"]


def test_probe() -> None:
    decoder = HttpDecoder()
    assert decoder.probe(b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n", C, 502)
    assert decoder.probe(b"M-SEARCH * HTTP/1.1\r\n", C, 1900)
    assert decoder.probe(b"HTTP/1.1 200 OK\r\n", S, 8080)
    assert not decoder.probe(b"FOO / HTTP/1.1\r\n", C, 80)
    assert not decoder.probe(b"GET / RTSP/1.0\r\n", C, 554)
    assert not decoder.probe(b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x01", C, 80)


def test_modbus_probe_does_not_claim_http_on_port_502(tmp_path: Path) -> None:
    """Modbus is asked first on port 502: its MBAP check (protocol id 0 in bytes 2-3) rejects a request line."""
    request = b"GET / HTTP/1.1\r\nHost: 160.97.70.34\r\nUser-Agent: Mozilla/5.0 zgrab/0.x\r\n\r\n"
    assert not ModbusDecoder().probe(request, C, 502)
    capture = require(ZEEK / "Traces/modbus/modbus-and-non-modbus-p502.pcap")
    rows, _ = analyse(tmp_path, capture, decoders=all_decoders())
    (row,) = [r for r in rows if r["event_type"] in ("request", "exchange")]
    assert (row["server_port"], row["method"], row["user_agent"]) == (502, "GET", "Mozilla/5.0 zgrab/0.x")


def test_one_byte_at_a_time_equals_whole_stream() -> None:
    streams = tcp_streams(require(RESEARCH / "suricata-verify/tests/mqtt-events-missing-connect/input.pcap"), 64000)
    streams += tcp_streams(require(ZEEK / "Traces/http/http-single-conn-22.pcap"), 22)
    assert streams
    for chunks in streams:
        whole = replay(HttpSession(), chunks, one_byte=False)
        assert [e for e in whole if e.table == "http"]
        assert replay(HttpSession(), chunks, one_byte=True) == whole


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(pieces=st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=8), prefix=st.booleans())
def test_random_streams_never_raise(pieces: list[tuple[bool, bytes]], prefix: bool) -> None:
    session = HttpSession()
    if prefix:
        session.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", C, 0.0)
        session.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", S, 0.0)
    for index, (server, data) in enumerate(pieces):
        for event in session.feed(data, S if server else C, float(index)):
            assert event.table in ("http", "anomaly")
    session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Authorization", b"Host", b"X"]),
            st.binary(max_size=20).filter(lambda b: b"\n" not in b),
        ),
        max_size=5,
    ),
    body=st.binary(max_size=100),
)
def test_random_headers_never_raise(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    block = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    session = HttpSession()
    events = session.feed(b"PUT /x HTTP/1.1\r\n" + block + b"\r\n" + body, C, 0.0)
    events += session.feed(b"HTTP/1.1 200 OK\r\n" + block + b"\r\n" + body, S, 1.0)
    events += session.close()
    assert all(e.table in ("http", "anomaly") for e in events)


def test_tunnelled_bytes_right_behind_connect_are_not_anomalies() -> None:
    rows, anomalies = exchange(
        (C, b"CONNECT 10.9.9.9:22 HTTP/1.1\r\n\r\nSSH-2.0-OpenSSH_9.6\r\n\x00\x00\x01\x00\x00"),
        (S, b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-OpenSSH_8.0\r\n"),
    )
    assert [(r["method"], r["status_code"], r["upgraded"]) for r in rows] == [("CONNECT", 200, True)]
    assert anomalies == []


def test_content_decides_between_ssh_and_http_whatever_the_port(tmp_path: Path) -> None:
    """SSH on port 80 goes to SSH although HTTP is asked first there; HTTP on port 22 goes to HTTP."""
    from tests.decode.ssh.common import analyse as analyse_ssh

    ssh_rows, _, _ = analyse_ssh(tmp_path, require(ZEEK / "Traces/ssh/ssh-on-port-80.pcap"), all_decoders())
    assert {r["server_port"] for r in ssh_rows if r["event_type"] == "banner"} == {80}
    http_rows, _ = analyse(tmp_path, require(ZEEK / "Traces/http/http-single-conn-22.pcap"), decoders=all_decoders())
    assert [r["server_port"] for r in http_rows] == [22]


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    body=st.binary(max_size=120),
    chunked=st.booleans(),
    noise=st.binary(max_size=40),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_any_split_gives_the_same_events(body: bytes, chunked: bool, noise: bytes, cuts: list[int]) -> None:
    """Well-formed and damaged messages, cut anywhere, decode as when fed whole."""
    framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else None
    framing = framing or b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    client = b"POST /p HTTP/1.1\r\nHost: h\r\n" + framing + b"GET /q HTTP/1.1\n\n" + noise
    server = b"HTTP/1.1 200 OK\r\n" + framing + b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc" + noise

    def run(pieces: list[tuple[Direction, bytes]]) -> list[Event]:
        session = HttpSession()
        events: list[Event] = []
        for direction, data in pieces:
            events += session.feed(data, direction, 0.0)
        return events + session.close()

    bounds = sorted({min(c, len(client)) for c in cuts} | {0, len(client)})
    pieces = [(C, client[a:b]) for a, b in itertools.pairwise(bounds)]
    bounds = sorted({min(c, len(server)) for c in cuts} | {0, len(server)})
    pieces += [(S, server[a:b]) for a, b in itertools.pairwise(bounds)]
    assert run(pieces) == run([(C, client), (S, server)])

"""RTSP decoder: hand-built exchanges, tshark and nDPI on ndpi's RTSP captures, chunking and fuzzing.

Run with ``-s`` to see the agreement tables.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.rtsp import TABLES, RtspDecoder, RtspSession
from tests.decode.oracles import Agreement, Row, replay
from tests.decode.snmp.common import NDPI, analyse, claimed, ndpi_flows, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
CAPTURES = ["rtsp.pcap", "rtsp_setup_http.pcapng"]
C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def run(*steps: tuple[Direction, bytes, float]) -> list[Event]:
    session = RtspSession()
    events: list[Event] = []
    for direction, data, timestamp in steps:
        events += session.feed(data, direction, timestamp)
    return events + session.close()


CREDENTIALS = base64.b64encode(b"admin:12345").decode()
DESCRIBE = (
    f"DESCRIBE rtsp://10.0.0.5/Streaming/Channels/101 RTSP/1.0\r\nCSeq: 3\r\nAuthorization: Basic {CREDENTIALS}\r\n"
    "User-Agent: LibVLC/3.0\r\n\r\n"
).encode()
ANSWER = (
    b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nServer: Hikvision/1.0\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 5\r\n\r\nv=0\r\n"
)


def test_request_response_pairing_and_basic_user_only() -> None:
    events = run(
        (C, b"OPTIONS * RTSP/1.0\r\nCSeq: 2\r\n\r\n", 1.0),
        (C, DESCRIBE, 1.1),
        (S, ANSWER, 1.3),
        (S, b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nPublic: DESCRIBE, SETUP\r\n\r\n", 1.4),
        (S, b"$\x00\x00\x04abcd$\x01\x00\x00", 1.5),
        (C, b"TEARDOWN rtsp://10.0.0.5/ RTSP/1.0\r\nCSeq: 9\r\nSession: 77\r\n\r\n", 2.0),
    )
    describe, options, teardown = (e.fields for e in events)
    assert describe["method"] == "DESCRIBE" and describe["uri"].endswith("/101")  # type: ignore[attr-defined]
    assert describe["user_name"] == "admin" and describe["auth_scheme"] == "Basic"
    assert "12345" not in repr(events)
    assert describe["status_code"] == 200 and describe["server"] == "Hikvision/1.0"
    assert describe["response_body_length"] == 5 and describe["matched"] is True
    assert describe["latency"] == pytest.approx(0.2) and describe["response_content_type"] == "application/sdp"
    assert options["method"] == "OPTIONS" and options["cseq"] == 2 and options["matched"] is True
    assert teardown["matched"] is False and teardown["session"] == "77"


def test_digest_user_and_unsolicited_response_and_setup() -> None:
    events = run(
        (C, b'SETUP rtsp://c/t RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP;unicast;client_port=5000-5001\r\n'
            b'Authorization: Digest username="viewer", realm="IP Camera", response="x"\r\n\r\n', 1.0),
        (S, b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: 12;timeout=60\r\n"
            b"Transport: RTP/AVP;unicast;server_port=6000-6001\r\n\r\n", 1.1),
        (S, b"RTSP/1.0 401 Unauthorized\r\nCSeq: 5\r\nWWW-Authenticate: Basic realm=\"NVR\"\r\n\r\n", 1.2),
    )  # fmt: skip
    setup, unsolicited = (e.fields for e in events)
    assert setup["user_name"] == "viewer" and setup["session"] == "12;timeout=60"
    assert setup["rtsp_transport"] == "RTP/AVP;unicast;server_port=6000-6001"
    assert unsolicited["status_code"] == 401 and unsolicited["www_authenticate"] == 'Basic realm="NVR"'
    assert unsolicited["matched"] is False and "method" not in unsolicited


def test_server_request_answered_by_client() -> None:
    events = run(
        (S, b"ANNOUNCE rtsp://cam/ RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 3\r\n\r\nv=0", 1.0),
        (C, b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n", 1.5),
    )
    [announce] = (e.fields for e in events)
    assert announce["method"] == "ANNOUNCE" and announce["from_server"] is True and announce["matched"] is True
    assert announce["latency"] == 0.5 and announce["request_body_length"] == 3


def test_malformed() -> None:
    events = run((C, b"HELLO\r\n\r\n", 1.0), (S, b"RTSP/1.0 2000 OK\r\n\r\n", 1.0), (C, b"X" * 20000, 2.0))
    assert [e.fields["code"] for e in events] == ["bad_request_line", "bad_status_line", "header_too_long"]
    events = run((C, b"PLAY rtsp://a/ RTSP/1.0\r\nCSeq: 1\r\nContent-Length: x\r\n\r\n", 1.0))
    assert [e.fields.get("code") for e in events if e.table == "anomaly"] == ["bad_content_length"]


def test_probe() -> None:
    decoder = RtspDecoder()
    assert decoder.probe(b"OPTIONS rtsp://cam/ RTSP/1.0\r\nCSeq: 1\r\n\r\n", C, 8000)
    assert decoder.probe(b"RTSP/1.0 200 OK\r\n", S, 554)
    assert not decoder.probe(b"GET / HTTP/1.1\r\n\r\n", C, 554)


# -- oracles ------------------------------------------------------------------------------------------------------

REQUEST = ["method", "uri"]
RESPONSE = ["status_code", "session", "rtsp_transport", "response_content_type", "response_body_length"]


def tshark(capture: Path) -> dict[int, tuple[list[Row], list[Row]]]:
    """Requests and responses per client port, skipping the duplicated frames of the capture (it holds every
    packet several times, as captured on several interfaces; tshark marks the copies as retransmissions)."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    command = ["tshark", "-n", "-r", str(capture), "-Y", "rtsp and not tcp.analysis.retransmission", "-T", "fields",
               "-E", "occurrence=f", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "rtsp.method", "-e", "rtsp.url",
               "-e", "rtsp.status", "-e", "rtsp.session", "-e", "rtsp.transport", "-e", "rtsp.content-type", "-e",
               "rtsp.content-length"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    out: dict[int, tuple[list[Row], list[Row]]] = {}
    for line in output.splitlines():
        source, destination, method, url, status, session, transport, content_type, length = (
            line.split("\t") + [""] * 9
        )[:9]
        if method:
            out.setdefault(int(source), ([], []))[0].append({"method": method, "uri": url})
        elif status:
            out.setdefault(int(destination), ([], []))[1].append(
                {"status_code": status, "session": session or None, "rtsp_transport": transport or None,
                 "response_content_type": content_type or None, "response_body_length": length or "0"}
            )  # fmt: skip
    return out


def test_tshark_agreement(tmp_path: Path) -> None:
    """Per connection: requests in CSeq order (method, URI) and responses (status, Session, Transport,
    Content-Type, Content-Length). Our Session and Transport are the response's where it has them."""
    requests = Agreement(REQUEST)
    responses = Agreement(RESPONSE)
    for name in CAPTURES:
        capture = require(NDPI / "pcap" / name)
        theirs = tshark(capture)
        rows = analyse(tmp_path, capture, [RtspDecoder()], list(TABLES))["rtsp"]
        for port in sorted(theirs.keys() | {int(r["client_port"]) for r in rows}):  # type: ignore[call-overload]
            ordered = sorted((r for r in rows if r["client_port"] == port), key=lambda r: r["cseq"] or 0)  # type: ignore[arg-type, return-value]
            mine_requests: list[Row] = [{"method": r["method"], "uri": r["uri"]} for r in ordered if r["method"]]  # type: ignore[misc]
            mine_responses: list[Row] = [
                {n: None if r[n] is None else str(r[n]) for n in RESPONSE}
                for r in ordered
                if r["status_code"] is not None
            ]
            their_requests, their_responses = theirs.get(port, ([], []))
            requests.score(mine_requests, their_requests, key=lambda r: (r["method"], r["uri"]))
            responses.score(mine_responses, their_responses, key=lambda r: r["status_code"])
    print("\n" + requests.report("tshark rtsp requests") + "\n" + responses.report("tshark rtsp responses"))
    for report in (requests, responses):
        assert report.unmatched_ours == report.unmatched_theirs == 0
        for name in report.fields:
            assert report.ratio(name) >= 0.99


def test_ndpi_rtsp_flows_are_claimed(tmp_path: Path) -> None:
    for name in CAPTURES:
        expected = ndpi_flows(name, "RTSP")
        ours = claimed(analyse(tmp_path, require(NDPI / "pcap" / name), [RtspDecoder()], list(TABLES))["flows"], "rtsp")
        print(f"\nnDPI {name}: {len(expected & ours)}/{len(expected)} RTSP flows claimed, {len(ours - expected)} more")
        assert expected and expected <= ours


def test_one_byte_at_a_time_equals_whole() -> None:
    chunks = [
        (C, DESCRIBE, 1.0),
        (S, ANSWER + b"$\x00\x00\x02xy", 1.2),
        (C, b"PLAY rtsp://a/ RTSP/1.0\r\nCSeq: 4\r\n\r\n", 2.0),
    ]
    assert replay(RtspSession(), chunks, True) == replay(RtspSession(), chunks, False)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([C, S]), st.one_of(st.binary(max_size=60), st.sampled_from(
            [DESCRIBE, ANSWER, b"\r\n\r\n", b"$\x00\x00\x10", b"Content-Length: 9\r\n",
             b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n"]))),
        max_size=15,
    )
)  # fmt: skip
def test_random_streams_never_raise(steps: list[tuple[Direction, bytes]]) -> None:
    chunks = [(d, data, 1.0) for d, data in steps]
    assert replay(RtspSession(), chunks, True) == replay(RtspSession(), chunks, False)

"""Hand-built messages for WireGuard, OpenVPN, IKE, PPTP and TeamViewer (no research capture has them), the
PPTP stream one byte at a time, and fuzzing of every tunnel session."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Session
from quaywatch.decode.ike import IkeDecoder, IkeSession
from quaywatch.decode.openvpn import OpenvpnSession, OpenvpnTcpDecoder, OpenvpnUdpDecoder
from quaywatch.decode.pptp import PptpDecoder, PptpSession
from quaywatch.decode.teamviewer import TeamviewerSession
from quaywatch.decode.wireguard import WireguardDecoder, WireguardSession
from tests.decode.oracles import replay

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
S, C = Direction.TO_SERVER, Direction.TO_CLIENT


def access(events: list) -> list[dict[str, object]]:  # type: ignore[type-arg]
    return [e.fields for e in events if e.table == "remote_access"]


def test_wireguard_handshake() -> None:
    initiation = b"\x01\x00\x00\x00" + b"\xaa\xbb\xcc\xdd" + bytes(140)
    response = b"\x02\x00\x00\x00" + b"\x11\x22\x33\x44" + b"\xaa\xbb\xcc\xdd" + bytes(80)
    assert WireguardDecoder().probe(initiation, S, 40000) and not WireguardDecoder().probe(initiation[:-1], S, 1)
    session = WireguardSession()
    assert session.feed(initiation, S, 0.0) == []
    (row,) = access(session.feed(response, C, 0.0))
    assert (row["method"], row["tunnel_id"]) == ("wireguard", "aabbccdd")
    other = WireguardSession()
    other.feed(initiation, S, 0.0)
    assert other.feed(response.replace(b"\xaa\xbb", b"\x00\x00"), C, 0.0) == []


def test_openvpn_reset_echo_udp_and_tcp() -> None:
    client = b"\x38" + b"\x01" * 8 + b"\x00" + b"\x00\x00\x00\x00"
    server = b"\x40" + b"\x02" * 8 + b"\x01" + b"\x00\x00\x00\x00" + b"\x01" * 8 + b"\x00\x00\x00\x00"
    assert OpenvpnUdpDecoder().probe(client, S, 1194)
    session = OpenvpnSession(stream=False)
    session.feed(client, S, 0.0)
    (row,) = access(session.feed(server, C, 0.0))
    assert row["tunnel_id"] == "01" * 8
    framed = [(S, len(client).to_bytes(2, "big") + client, 0.0), (C, len(server).to_bytes(2, "big") + server, 0.0)]
    assert OpenvpnTcpDecoder().probe(framed[0][1], S, 443)
    assert replay(OpenvpnSession(True), framed, one_byte=True) == replay(OpenvpnSession(True), framed, one_byte=False)
    assert len(access(replay(OpenvpnSession(True), framed, one_byte=False))) == 1


def ike(version: int = 0x20, exchange: int = 34) -> bytes:
    body = b"\x12" * 8 + bytes(8) + bytes([33, version, exchange, 0x08]) + bytes(4)
    return body + (len(body) + 4 + 8).to_bytes(4, "big") + bytes(8)


def test_ike_and_nat_t() -> None:
    assert IkeDecoder().probe(ike(), S, 500)
    assert IkeDecoder().probe(b"\x00\x00\x00\x00" + ike(0x10, 2), S, 4500)
    assert not IkeDecoder().probe(ike()[:-1], S, 500)
    session = IkeSession()
    events = session.feed(b"\x00\x00\x00\x00" + ike(), S, 0.0) + session.feed(b"\xff", S, 0.0)
    (row,) = access(events)
    assert (row["method"], row["version"]) == ("ike", "IKEv2")
    assert [e.fields["exchange"] for e in events if e.table == "ike"] == ["IKE_SA_INIT"]


def sccr(kind: int, host: bytes, vendor: bytes) -> bytes:
    body = b"\x00\x01\x1a\x2b\x3c\x4d" + kind.to_bytes(2, "big") + b"\x00\x00\x01\x00\x01\x00" + bytes(12)
    body += host.ljust(64, b"\x00") + vendor.ljust(64, b"\x00")
    return (len(body) + 2).to_bytes(2, "big") + body


def test_pptp_control_connection() -> None:
    request, reply = sccr(1, b"crane-modem", b"Huawei"), sccr(2, b"vpn", b"Microsoft")
    assert PptpDecoder().probe(request, S, 1723)
    chunks = [(S, request, 0.0), (C, reply, 0.0)]
    events = replay(PptpSession(), chunks, one_byte=False)
    assert events == replay(PptpSession(), chunks, one_byte=True)
    (row,) = access(events)
    assert (row["client_software"], row["server_software"]) == ("Huawei (crane-modem)", "Microsoft (vpn)")


def test_teamviewer_needs_both_tcp_streams_marked_or_four_marked_datagrams() -> None:
    request, answer = b"\x17\x24" + bytes(10), b"\x11\x30" + bytes(4)
    chunks = [(S, request, 0.0), (S, request, 0.0), (C, answer, 0.0)]
    events = replay(TeamviewerSession(True), chunks, one_byte=False)
    assert events == replay(TeamviewerSession(True), chunks, one_byte=True)
    assert len(access(events)) == 1
    assert not access(replay(TeamviewerSession(True), [(S, request, 0.0), (C, b"HTTP/1.1 200", 0.0)], False))
    datagram = bytes(11) + b"\x17\x24" + bytes(5)
    session = TeamviewerSession(False)
    assert not access([e for _ in range(3) for e in session.feed(datagram, S, 0.0)])
    assert access(session.feed(datagram, C, 0.0))


SESSIONS = [
    lambda: WireguardSession(),
    lambda: OpenvpnSession(False),
    lambda: OpenvpnSession(True),
    lambda: IkeSession(),
    lambda: PptpSession(),
    lambda: TeamviewerSession(True),
    lambda: TeamviewerSession(False),
]


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, len(SESSIONS) - 1), chunks=st.lists(st.binary(max_size=200), max_size=8))
def test_random_input_never_raises(which: int, chunks: list[bytes]) -> None:
    session: Session = SESSIONS[which]()
    for index, data in enumerate(chunks):
        for event in session.feed(data, Direction(index % 2), float(index)):
            assert event.table in ("remote_access", "ike", "pptp", "anomaly")
    session.close()

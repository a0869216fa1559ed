"""SSH decoder: hand-built banners and KEXINITs, HASSH, NEWKEYS cut-off, probing, one-byte replay, fuzzing."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.http import HttpDecoder
from quaywatch.decode.modbus import ModbusDecoder
from quaywatch.decode.ssh import NAME_LISTS, SshDecoder, SshSession
from tests.decode.oracles import replay, tcp_streams
from tests.decode.ssh.common import ZEEK, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def packet(payload: bytes, padding: int = 4) -> bytes:
    length = 1 + len(payload) + padding
    return length.to_bytes(4, "big") + bytes([padding]) + payload + b"\x00" * padding


def kexinit(lists: dict[str, str], follows: bool = False) -> bytes:
    body = b"\x14" + b"\xaa" * 16
    for name in NAME_LISTS:
        value = lists.get(name, "").encode()
        body += len(value).to_bytes(4, "big") + value
    return packet(body + bytes([follows]) + b"\x00\x00\x00\x00")


CLIENT_LISTS = {
    "kex_algorithms": "curve25519-sha256,diffie-hellman-group14-sha256",
    "server_host_key_algorithms": "ssh-ed25519,rsa-sha2-512",
    "encryption_client_to_server": "aes128-ctr,aes256-gcm@openssh.com",
    "encryption_server_to_client": "aes256-gcm@openssh.com,aes128-ctr",
    "mac_client_to_server": "hmac-sha2-256",
    "mac_server_to_client": "hmac-sha2-256",
    "compression_client_to_server": "none,zlib@openssh.com",
    "compression_server_to_client": "none",
}
SERVER_LISTS = {
    **CLIENT_LISTS,
    "kex_algorithms": "diffie-hellman-group14-sha256",
    "encryption_client_to_server": "aes256-gcm@openssh.com,aes128-ctr",
}
NEWKEYS = packet(b"\x15")


def rows(events: list[Event], kind: str | None = None) -> list[dict[str, object]]:
    return [e.fields for e in events if e.table == "ssh" and (kind is None or e.event_type == kind)]


def anomalies(events: list[Event]) -> list[str]:
    return [str(e.fields["code"]) for e in events if e.table == "anomaly"]


def test_banner_fields_as_received() -> None:
    events = SshSession().feed(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.1\r\n", C, 0.0)
    (row,) = rows(events, "banner")
    assert row["banner"] == "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.1"
    fields = (row["proto_version"], row["software_version"], row["comments"])
    assert fields == ("2.0", "OpenSSH_8.9p1", "Ubuntu-3ubuntu0.1")
    (odd,) = rows(SshSession().feed(b"SSH-2.0-dropbear\xff\n", S, 0.0), "banner")
    assert odd["software_version"] == "dropbear\\xff" and odd.get("comments") is None


def test_kexinit_lists_hassh_negotiation_and_newkeys_stops_parsing() -> None:
    session = SshSession()
    events = session.feed(b"SSH-2.0-A\r\n" + kexinit(CLIENT_LISTS), C, 0.0)
    events += session.feed(b"SSH-2.0-B\r\n" + kexinit(SERVER_LISTS, follows=True), S, 0.1)
    client, server = rows(events, "kexinit")
    assert client["kex_algorithms"] == ["curve25519-sha256", "diffie-hellman-group14-sha256"]
    assert server["first_kex_packet_follows"] is True and client["first_kex_packet_follows"] is False
    text = (
        "curve25519-sha256,diffie-hellman-group14-sha256;aes128-ctr,aes256-gcm@openssh.com;"
        "hmac-sha2-256;none,zlib@openssh.com"
    )
    assert client["hassh_algorithms"] == text
    assert client["hassh"] == hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
    # HASSHServer hashes the server's server-to-client lists.
    server_text = "diffie-hellman-group14-sha256;aes256-gcm@openssh.com,aes128-ctr;hmac-sha2-256;none"
    assert server["hassh_algorithms"] == server_text
    (chosen,) = rows(events, "negotiated")
    assert (chosen["kex_alg"], chosen["host_key_alg"]) == ("diffie-hellman-group14-sha256", "ssh-ed25519")
    assert (chosen["cipher_alg"], chosen["cipher_alg_server"]) == ("aes128-ctr", "aes256-gcm@openssh.com")
    assert (chosen["mac_alg"], chosen["compression_alg"]) == ("hmac-sha2-256", "none")
    after = session.feed(NEWKEYS + b"\x00\x00\xff\xff garbage that is ciphertext" + kexinit(CLIENT_LISTS), C, 0.2)
    assert [e.event_type for e in after] == ["newkeys"]
    assert session.feed(kexinit(CLIENT_LISTS), C, 0.3) == [] and session.close() == []


def test_pre_banner_lines_from_the_server_and_ssh1() -> None:
    events = SshSession().feed(b"Welcome to the crane PC\r\nauthorised use only\r\nSSH-1.99-Cisco-1.25\r\n", S, 0.0)
    (row,) = rows(events, "banner")
    assert row["proto_version"] == "1.99" and row["pre_banner_bytes"] == 46
    session = SshSession()
    session.feed(b"SSH-1.5-OpenSSH_6.2\n", C, 0.0)
    assert session.feed(b"\x00\x00\x01\x00 ssh1 packet", C, 0.1) == []  # SSH-1 binary packets are not decoded
    assert anomalies(SshSession().feed(b"hello\r\n", C, 0.0)) == ["bad_banner"]


def test_malformed_packets_become_anomalies() -> None:
    session = SshSession()
    session.feed(b"SSH-2.0-x\r\n", C, 0.0)
    assert anomalies(session.feed(b"\xff\xff\xff\xff\x04", C, 0.1)) == ["bad_packet_length"]
    session = SshSession()
    cut = packet(b"\x14" + b"\x00" * 16 + b"\x00\x00\x10\x00abc")
    assert anomalies(session.feed(b"SSH-2.0-x\r\n" + cut, C, 0.0)) == ["malformed_kexinit"]
    session = SshSession()
    session.feed(b"SSH-2.0-x\r\n\x00\x00", C, 0.0)
    assert anomalies(session.close()) == ["truncated_message"]


def test_probe() -> None:
    decoder = SshDecoder()
    assert decoder.probe(b"SSH-2.0-OpenSSH_9.6\r\n", S, 22)
    assert decoder.probe(b"SSH-1.99-Cisco-1.25\r\n", C, 2222)
    assert decoder.probe(b"banner text\r\nSSH-2.0-OpenSSH\r\n", S, 22)
    assert not decoder.probe(b"SSH is great\r\n", C, 22)
    assert not decoder.probe(b"GET / HTTP/1.1\r\n\r\n", C, 22)
    # The Modbus probe (asked first on port 502) needs protocol id 0 in bytes 2-3: neither SSH nor HTTP has it.
    assert not ModbusDecoder().probe(b"SSH-2.0-OpenSSH_9.6\r\n", C, 502)
    assert not HttpDecoder().probe(b"SSH-2.0-OpenSSH_9.6\r\n", C, 80)


def test_one_byte_at_a_time_equals_whole_stream() -> None:
    streams = tcp_streams(require(ZEEK / "Traces/ssh/ssh_kex_curve25519.pcap"), 22)
    streams += tcp_streams(require(ZEEK / "Traces/ssh/server-pre-banner-data.pcap"), 22)
    assert streams
    for chunks in streams:
        whole = replay(SshSession(), chunks, one_byte=False)
        assert rows(whole, "negotiated")
        assert replay(SshSession(), chunks, one_byte=True) == whole


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(pieces=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=8), banner=st.booleans())
def test_random_streams_never_raise(pieces: list[tuple[bool, bytes]], banner: bool) -> None:
    session = SshSession()
    if banner:
        session.feed(b"SSH-2.0-fuzz\r\n", C, 0.0)
        session.feed(b"SSH-2.0-fuzz\r\n", S, 0.0)
    for index, (server, data) in enumerate(pieces):
        for event in session.feed(data, S if server else C, float(index)):
            assert event.table in ("ssh", "anomaly")
    session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(lists=st.lists(st.binary(max_size=40), min_size=10, max_size=10), cut=st.integers(0, 400))
def test_truncated_kexinits_become_anomalies(lists: list[bytes], cut: int) -> None:
    body = b"\x14" + b"\x00" * 16 + b"".join(len(v).to_bytes(4, "big") + v for v in lists) + b"\x00" * 5
    body = body[: min(cut, len(body))]
    events = SshSession().feed(b"SSH-2.0-x\r\n" + packet(body), C, 0.0)
    complete = len(body) >= 17 + sum(4 + len(v) for v in lists) + 1
    assert bool(rows(events, "kexinit")) == (complete and body[:1] == b"\x14")
    if body[:1] == b"\x14" and not complete:
        assert "malformed_kexinit" in anomalies(events)


def test_pipeline_rows_carry_the_envelope(tmp_path: Path) -> None:
    from tests.decode.ssh.common import analyse

    found, anomaly_rows, _ = analyse(tmp_path, ZEEK / "Traces/ssh/ssh_version_199.pcap")
    assert {r["event_type"] for r in found} >= {"banner", "kexinit", "negotiated"}
    assert all(r["flow_id"] and r["server_port"] == 22 for r in found)
    assert not [a for a in anomaly_rows if a["protocol"] == "ssh"]


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(pre=st.binary(max_size=60), noise=st.binary(max_size=60), cuts=st.lists(st.integers(0, 900), max_size=6))
def test_any_split_gives_the_same_events(pre: bytes, noise: bytes, cuts: list[int]) -> None:
    """Pre-banner lines, banners, KEXINITs, NEWKEYS and trailing noise, cut anywhere, decode as when fed whole."""
    server = pre + b"\r\nSSH-2.0-s\r\n" + kexinit(SERVER_LISTS) + NEWKEYS + noise
    client = b"SSH-2.0-c\r\n" + kexinit(CLIENT_LISTS) + noise

    def run(pieces: list[tuple[Direction, bytes]]) -> list[Event]:
        session = SshSession()
        events: list[Event] = []
        for direction, data in pieces:
            events += session.feed(data, direction, 0.0)
        return events + session.close()

    split = []
    for direction, data in ((S, server), (C, client)):
        bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
        split += [(direction, data[a:b]) for a, b in itertools.pairwise(bounds)]
    assert run(split) == run([(S, server), (C, client)])

"""TLS decoder: hand-built records, the published JA4 vector, probing, one byte at a time, truncation and fuzzing."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.tls import TlsDecoder, TlsSession, cipher_suite_names
from quaywatch.decode.tls.fingerprints import is_grease, ja4
from tests.decode.oracles import replay, tcp_streams
from tests.decode.tls import synthetic
from tests.decode.tls.common import TRACES, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def vec(data: bytes, size: int = 2) -> bytes:
    return len(data).to_bytes(size, "big") + data


def ext(kind: int, body: bytes) -> bytes:
    return u16(kind) + vec(body)


def handshake(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def record(kind: int, fragment: bytes, version: int = 0x0301) -> bytes:
    return bytes([kind]) + u16(version) + vec(fragment)


CIPHERS = [0x0A0A, 0x1301, 0x1302, 0xC02F, 0x002F]
CLIENT_EXTENSIONS = (
    ext(0x2A2A, b"")
    + ext(0, vec(b"\x00" + vec(b"crane4.zpmc.example")))
    + ext(10, vec(b"".join(map(u16, [0x3A3A, 29, 23]))))
    + ext(11, vec(b"\x00", 1))
    + ext(13, vec(b"".join(map(u16, [0x0403, 0x0804]))))
    + ext(16, vec(vec(b"h2", 1) + vec(b"http/1.1", 1)))
    + ext(43, vec(b"".join(map(u16, [0x4A4A, 0x0304, 0x0303])), 1))
)
CLIENT_HELLO = handshake(
    1,
    u16(0x0303)
    + bytes(32)
    + vec(bytes(range(32)), 1)
    + vec(b"".join(map(u16, CIPHERS)))
    + vec(b"\x00", 1)
    + vec(CLIENT_EXTENSIONS),
)
SERVER_HELLO = handshake(
    2,
    u16(0x0303) + bytes(32) + vec(b"", 1) + u16(0x1301) + b"\x00" + vec(ext(43, u16(0x0304)) + ext(51, bytes(36))),
)


def rows(events: list[Event], table: str = "tls") -> list[dict[str, object]]:
    return [e.fields for e in events if e.table == table]


def test_client_hello_fields_and_fingerprints() -> None:
    session = TlsSession()
    events = session.feed(record(22, CLIENT_HELLO), C, 0.0)
    (row,) = rows(events)
    assert row["server_name"] == "crane4.zpmc.example" and row["alpn"] == ["h2", "http/1.1"]
    assert row["legacy_version"] == 0x0303 and row["supported_versions"] == [0x4A4A, 0x0304, 0x0303]
    assert row["cipher_suites"] == CIPHERS and row["extensions"] == [0x2A2A, 0, 10, 11, 13, 16, 43]
    assert row["supported_groups"] == [0x3A3A, 29, 23] and row["ec_point_formats"] == [0]
    assert row["signature_algorithms"] == [0x0403, 0x0804] and row["session_id_length"] == 32
    assert row["ja3"] == "771,4865-4866-49199-47,0-10-11-13-16-43,29-23,0"
    assert str(row["ja4"]).startswith("t13d0406h2_")
    assert row["ja4_r"] == "t13d0406h2_002f,1301,1302,c02f_000a,000b,000d,002b_0403,0804"
    assert not rows(events, "anomaly")


def test_server_hello_tls13_then_everything_is_encrypted() -> None:
    session = TlsSession()
    session.feed(record(22, CLIENT_HELLO), C, 0.0)
    events = session.feed(record(22, SERVER_HELLO, 0x0303) + record(20, b"\x01") + record(23, bytes(50)), S, 0.1)
    hello, ccs, data = rows(events)
    assert (hello["version"], hello["version_name"], hello["cipher_suite_name"]) == (
        0x0304,
        "TLS 1.3",
        "TLS_AES_128_GCM_SHA256",
    )
    assert hello["ja3s"] == "771,4865,43-51" and hello["ja4s_r"] == "t130200_1301_002b,0033"
    assert ccs["content_type"] == 20 and data["encrypted"] is True
    assert session.feed(record(23, bytes(20)) + record(21, bytes(19)), S, 0.2)[0].fields["encrypted"] is True
    (summary,) = rows(session.close())
    assert (summary["data_records_to_client"], summary["data_bytes_to_client"]) == (2, 70)


def test_handshake_message_spanning_records_and_chunks() -> None:
    half = len(CLIENT_HELLO) // 2
    stream = record(22, CLIENT_HELLO[:half]) + record(22, CLIENT_HELLO[half:])
    whole = TlsSession().feed(stream, C, 0.0)
    pieces = TlsSession()
    split = [e for i in range(0, len(stream), 7) for e in pieces.feed(stream[i : i + 7], C, 0.0)]
    assert rows(whole) == rows(split) and rows(whole)[0]["server_name"] == "crane4.zpmc.example"


def test_published_ja4_vector() -> None:
    """FoxIO's documented Chrome example: JA4_r and its JA4 (as published with the raw string)."""
    ciphers = [
        int(c, 16)
        for c in [
            "002f",
            "0035",
            "009c",
            "009d",
            "1301",
            "1302",
            "1303",
            "c013",
            "c014",
            "c02b",
            "c02c",
            "c02f",
            "c030",
            "cca8",
            "cca9",
        ]
    ]
    extensions = [
        int(e, 16)
        for e in [
            "0005",
            "000a",
            "000b",
            "000d",
            "0012",
            "0017",
            "001b",
            "0023",
            "002b",
            "002d",
            "0033",
            "44cd",
            "fe0d",
            "ff01",
        ]
    ]
    signatures = [int(s, 16) for s in ["0403", "0804", "0401", "0503", "0805", "0501", "0806", "0601"]]
    fingerprint, _raw = ja4(0x0303, [0x0304, 0x0303], True, ciphers, [*extensions, 0, 16], b"h2", signatures)
    assert fingerprint == "t13d1516h2_8daaf6152771_d8a2da3f94cd"
    assert ja4(0x0301, [], False, [], [], None, [])[0] == "t10i000000_000000000000_000000000000"


def test_alerts_sslv2_and_grease() -> None:
    (alert,) = rows(TlsSession().feed(record(21, b"\x02\x28"), S, 0.0))
    assert (alert["alert_level"], alert["alert_name"], alert["encrypted"]) == (2, "handshake_failure", False)
    body = b"\x01" + u16(0x0301) + u16(6) + u16(0) + u16(16) + b"\x00\x00\x2f\x01\x00\x80" + bytes(16)
    sslv2 = bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body
    assert TlsDecoder().probe(sslv2, C, 443)
    (hello,) = rows(TlsSession().feed(sslv2, C, 0.0))
    assert hello["sslv2_format"] is True and hello["cipher_suites"] == [0x2F, 0x010080]
    assert is_grease(0xFAFA) and not is_grease(0x0A1A) and cipher_suite_names()[0xCCA8].startswith("TLS_ECDHE_RSA")


def test_certificate_that_cannot_be_parsed_is_an_anomaly() -> None:
    chain = vec(vec(b"\x30\x03\x02\x01\x01", 3) + vec(b"not a certificate", 3), 3)
    events = TlsSession().feed(record(22, handshake(11, chain)), S, 0.0)
    certificates = rows(events, "tls_certificate")
    assert [c["position"] for c in certificates] == [0, 1] and all("subject" not in c for c in certificates)
    assert [e.fields["code"] for e in events if e.table == "anomaly"] == ["unparsable_certificate"] * 2


def test_probe_decides_by_content() -> None:
    decoder = TlsDecoder()
    assert decoder.probe(record(22, CLIENT_HELLO), C, 502)
    assert decoder.probe(record(22, SERVER_HELLO, 0x0303), S, 40000)
    assert not decoder.probe(record(23, bytes(40)), C, 443)
    assert not decoder.probe(b"GET / HTTP/1.1\r\n\r\n", C, 443)
    assert not decoder.probe(b"\x03\x00\x00\x13\x0e\xe0\x00\x00", C, 3389)  # TPKT / X.224 in front of RDP's TLS


def test_garbage_stream_is_an_anomaly() -> None:
    events = TlsSession().feed(b"\x16\x07\x07\x00\x05hello", C, 0.0)
    assert [e.fields["code"] for e in events] == ["bad_record_header"]


@pytest.mark.parametrize("trace", sorted(TRACES))
def test_one_byte_at_a_time_equals_whole(trace: str) -> None:
    capture, port = TRACES[trace]
    compared = 0
    for chunks in tcp_streams(require(capture), port):
        start = next((i for i, (d, data, _) in enumerate(chunks) if TlsDecoder().probe(data, d, port)), None)
        if start is None:
            continue
        whole = replay(TlsSession(), chunks[start:], one_byte=False)
        assert replay(TlsSession(), chunks[start:], one_byte=True) == whole
        compared += len(whole)
    assert compared > 0


def test_truncation_at_every_length_never_raises() -> None:
    stream = record(22, CLIENT_HELLO)
    for size in range(len(stream)):
        session = TlsSession()
        events = session.feed(stream[:size], C, 0.0) + session.close()
        assert size < 5 or any(e.table == "anomaly" for e in events), size


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 600), st.sampled_from([0, 1]))
def test_fuzz_never_raises(tail: bytes, cut: int, side: int) -> None:
    data = (record(22, CLIENT_HELLO) + tail)[: cut + 5] if side else record(22, tail) + tail
    session = TlsSession()
    events = session.feed(data, Direction(side), 0.0) + session.close()
    assert all(isinstance(e, Event) for e in events)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_fuzz_hello_bodies_give_rows_or_anomalies(body: bytes) -> None:
    for kind in (1, 2, 11):
        events = TlsSession().feed(record(22, handshake(kind, body)), C, 0.0)
        if kind != 11:
            assert events and all(e.table in ("tls", "anomaly") for e in events)


def test_one_byte_at_a_time_on_openssl_handshakes(tmp_path: Path) -> None:
    chain = synthetic.make_chain(tmp_path)
    chunks = synthetic.handshake(chain, ssl.TLSVersion.TLSv1_2, "crane4.terminal.example", ["h2"])
    stream = [(Direction(side), data, 0.0) for side, data in chunks]
    whole = replay(TlsSession(), stream, one_byte=False)
    assert replay(TlsSession(), stream, one_byte=True) == whole
    assert len([e for e in whole if e.table == "tls_certificate"]) == 3
    assert not [e for e in whole if e.table == "anomaly"]


def test_anydesk_is_identified_by_its_certificate_or_its_relay_name(tmp_path: Path) -> None:
    """AnyDesk's sessions are TLS: a certificate with subject CN=AnyDesk Client (TLS 1.2, the certificate is in
    clear) or a ClientHello naming one of its relays makes one remote_access row; an ordinary server none."""

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.decode.tls import synthetic
    from tests.decode.tls.common import analyse

    key = ec.generate_private_key(ec.SECP256R1())
    certificate = synthetic._certificate("AnyDesk Client", "AnyDesk Client", key, key, 0x42, leaf=False)
    certfile, keyfile = tmp_path / "anydesk.pem", tmp_path / "anydesk-key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    anydesk = synthetic.Chain(certfile, keyfile, [certificate])
    ordinary = synthetic.make_chain(tmp_path)
    capture = tmp_path / "anydesk.pcap"
    synthetic.write_pcap(
        capture,
        [
            (50001, 7070, synthetic.handshake(anydesk, ssl.TLSVersion.TLSv1_2, None, [])),
            (50002, 443, synthetic.handshake(ordinary, ssl.TLSVersion.TLSv1_3, "relay-5f3a.net.anydesk.com", [])),
            (50003, 443, synthetic.handshake(ordinary, ssl.TLSVersion.TLSv1_2, "crane4.terminal.example", [])),
        ],
    )
    rows = analyse(tmp_path, capture)["remote_access"]
    assert [(r["client_port"], r["method"]) for r in rows] == [(50001, "anydesk"), (50002, "anydesk")]
    assert "CN=AnyDesk Client" in rows[0]["evidence"] and "net.anydesk.com" in rows[1]["evidence"]

"""Small real captures for the detection tests: cleartext logins, HTTP Basic and SNMP, written with dpkt."""

from __future__ import annotations

import base64
from pathlib import Path

import dpkt

from tests.factories import tcp_frame, udp_frame, write_pcap

SYN, SYNACK, ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, dpkt.tcp.TH_ACK
PUSH = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK


def tcp_session(
    client: str, server: str, client_port: int, server_port: int, exchanges: list[tuple[str, bytes]]
) -> list[bytes]:
    """A handshake then each (side, payload) with consistent sequence numbers; side is 'c' or 's'."""
    client_sequence, server_sequence = 1000, 5000
    frames = [
        tcp_frame(client, server, client_port, server_port, SYN, sequence=client_sequence - 1),
        tcp_frame(
            server,
            client,
            server_port,
            client_port,
            SYNACK,
            sequence=server_sequence - 1,
            acknowledgement=client_sequence,
        ),
        tcp_frame(
            client, server, client_port, server_port, ACK, sequence=client_sequence, acknowledgement=server_sequence
        ),
    ]
    for side, payload in exchanges:
        if side == "c":
            frames.append(
                tcp_frame(client, server, client_port, server_port, PUSH, payload, client_sequence, server_sequence)
            )
            client_sequence += len(payload)
        else:
            frames.append(
                tcp_frame(server, client, server_port, client_port, PUSH, payload, server_sequence, client_sequence)
            )
            server_sequence += len(payload)
    return frames


def ftp_login(client: str, server: str, client_port: int, user: str) -> list[bytes]:
    return tcp_session(
        client,
        server,
        client_port,
        21,
        [
            ("s", b"220 crane PLC FTP ready\r\n"),
            ("c", f"USER {user}\r\n".encode()),
            ("s", b"331 Password required\r\n"),
            ("c", b"PASS hunter2\r\n"),
            ("s", b"230 Logged in\r\n"),
        ],
    )


def http_basic(client: str, server: str, client_port: int, user: str) -> list[bytes]:
    token = base64.b64encode(f"{user}:secret".encode()).decode()
    request = f"GET /config HTTP/1.1\r\nHost: {server}\r\nAuthorization: Basic {token}\r\n\r\n".encode()
    return tcp_session(
        client,
        server,
        client_port,
        80,
        [
            ("c", request),
            ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
    )


def snmp_get(client: str, server: str, community: bytes, request_id: int) -> bytes:
    """An SNMPv2c get-request for sysDescr.0, BER-encoded by hand."""
    oid = bytes([0x06, 0x08, 0x2B, 6, 1, 2, 1, 1, 1, 0])
    varbind = bytes([0x30, len(oid) + 2]) + oid + b"\x05\x00"
    varbinds = bytes([0x30, len(varbind)]) + varbind
    body = bytes([0x02, 0x01, request_id, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]) + varbinds
    pdu = bytes([0xA0, len(body)]) + body
    message = b"\x02\x01\x01" + bytes([0x04, len(community)]) + community + pdu
    return udp_frame(client, server, 40000 + request_id, 161, bytes([0x30, len(message)]) + message)


def credentials_capture(path: Path, start: float = 1_700_000_000.0) -> Path:
    """Packets 1-8: FTP login 10.0.0.20 -> 10.0.0.40 (USER at 5, PASS at 7); 9-13 HTTP Basic to 10.0.0.41 (request 12);
    14: SNMP get with 'public' to 10.0.0.42; 15: SNMP get with a site community (not default) to 10.0.0.42;
    16-23: a second FTP login (user 'ftp') from 10.0.0.20 to 10.0.0.40 ten seconds later (PASS at 22)."""
    frames = ftp_login("10.0.0.20", "10.0.0.40", 50001, "admin")
    frames += http_basic("10.0.0.20", "10.0.0.41", 50002, "operator")
    frames.append(snmp_get("10.0.0.20", "10.0.0.42", b"public", 1))
    frames.append(snmp_get("10.0.0.20", "10.0.0.42", b"qw-site-7f3", 2))
    timed = [(start + index * 0.01, frame) for index, frame in enumerate(frames)]
    later = ftp_login("10.0.0.20", "10.0.0.40", 50003, "ftp")
    timed += [(start + 10 + index * 0.01, frame) for index, frame in enumerate(later)]
    return write_pcap(path, timed)

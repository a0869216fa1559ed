"""Real OpenSSL handshakes (Python's ssl module over memory BIOs) written into a pcap, for the oracle tests.

Nothing touches the network: client and server run in-process; their bytes are wrapped in Ethernet/IPv4/TCP with
dpkt, segmented at 1,400 bytes, so records and handshake messages span TCP segments and the 20 kB certificate
chain spans TLS records. The certificates are made here with ``cryptography`` so the expected values are known.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import dpkt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SAN_NAMES = [f"crane{i}.terminal.example" for i in range(700)]  # ~20 kB of names: the chain spans records
SAN_IPS = ["10.20.30.40", "2001:db8::7"]
NOT_BEFORE = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2036, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Quay Test"), x509.NameAttribute(NameOID.COMMON_NAME, common)]
    )


def _certificate(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
                 serial: int, leaf: bool) -> x509.Certificate:  # fmt: skip
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=not leaf, path_length=None), critical=True)
    )
    if leaf:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in SAN_NAMES]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SAN_IPS]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass
class Chain:
    certfile: Path
    keyfile: Path
    certificates: list[x509.Certificate]


def make_chain(folder: Path) -> Chain:
    root_key = ec.generate_private_key(ec.SECP384R1())
    middle_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Quay Root", "Quay Root", root_key, root_key, 0x01, leaf=False)
    middle = _certificate("Quay Intermediate", "Quay Root", middle_key, root_key, 0x0ABCDEF0123, leaf=False)
    leaf = _certificate("crane4.terminal.example", "Quay Intermediate", leaf_key, middle_key, 0x7F00FF, leaf=True)
    certfile, keyfile = folder / "chain.pem", folder / "key.pem"
    certfile.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, middle, root)))
    keyfile.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Chain(certfile, keyfile, [leaf, middle, root])


def handshake(
    chain: Chain, maximum: ssl.TLSVersion, server_name: str | None, alpn: list[str]
) -> list[tuple[int, bytes]]:
    """(0 client->server / 1 server->client, bytes) of one full handshake, a request and a reply, in order."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(chain.certfile, chain.keyfile)
    server_context.set_alpn_protocols(["h2"])
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    client_context.maximum_version = maximum
    if alpn:
        client_context.set_alpn_protocols(alpn)
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in, client out, server in, server out
    client = client_context.wrap_bio(bios[0], bios[1], server_hostname=server_name)
    server = server_context.wrap_bio(bios[2], bios[3], server_side=True)
    chunks: list[tuple[int, bytes]] = []

    def pump() -> None:
        for side, source, target in ((0, bios[1], bios[2]), (1, bios[3], bios[0])):
            data = source.read()
            if data:
                chunks.append((side, data))
                target.write(data)

    done = [False, False]
    for _ in range(20):
        for index, end in enumerate((client, server)):
            if not done[index]:
                try:
                    end.do_handshake()
                    done[index] = True
                except ssl.SSLWantReadError:
                    pass
            pump()
        if all(done):
            break
    client.write(b"GET /status HTTP/1.1\r\nHost: crane4\r\n\r\n")
    pump()
    server.read(4096)
    server.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    pump()
    client.read(4096)
    pump()
    return chunks


def write_pcap(path: Path, connections: list[tuple[int, int, list[tuple[int, bytes]]]]) -> None:
    """One TCP connection per (client port, server port, chunks), with handshake, 1,400-byte segments and FIN."""
    client_ip, server_ip = bytes([10, 1, 1, 10]), bytes([10, 1, 1, 20])
    mac_c, mac_s = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    timestamp = 1_800_000_000.0
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)

        def emit(side: int, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b"") -> None:
            nonlocal timestamp
            timestamp += 0.001
            tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, data=data)
            src, dst = (client_ip, server_ip) if side == 0 else (server_ip, client_ip)
            ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=tcp)
            ip.len = len(bytes(ip))
            frame = dpkt.ethernet.Ethernet(
                src=mac_c if side == 0 else mac_s, dst=mac_s if side == 0 else mac_c, data=ip
            )
            writer.writepkt(bytes(frame), timestamp)

        for cport, sport, chunks in connections:
            seq = [1000, 5000]
            ports = [(cport, sport), (sport, cport)]
            emit(0, cport, sport, seq[0] - 1, 0, dpkt.tcp.TH_SYN)
            emit(1, sport, cport, seq[1] - 1, seq[0], dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
            emit(0, cport, sport, seq[0], seq[1], dpkt.tcp.TH_ACK)
            for side, data in chunks:
                for start in range(0, len(data), 1400):
                    piece = data[start : start + 1400]
                    emit(side, *ports[side], seq[side], seq[1 - side], dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, piece)
                    seq[side] += len(piece)
            emit(0, cport, sport, seq[0], seq[1], dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
            emit(1, sport, cport, seq[1], seq[0] + 1, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
            emit(0, cport, sport, seq[0] + 1, seq[1] + 1, dpkt.tcp.TH_ACK)

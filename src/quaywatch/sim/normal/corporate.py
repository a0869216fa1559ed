"""Corporate IT: office laptops browse the internet and use the TOS web client.

Sessions are Poisson per laptop at a rate that follows the work hours and a
day rhythm (a lunch dip, a quiet evening), with few sessions outside them.
Each session resolves its name at corp-dns first, then opens one TCP
connection: mostly HTTPS (TLS 1.2 with SNI, the server's certificate chain,
ECDHE key exchange, then encrypted application data of lognormal page
sizes), some cleartext HTTP/1.1, and a share to the TOS web client on tos-app
(HTTPS across the firewall into the TOS zone).

Certificates are real DER X.509 built with ``cryptography``: an ECDSA P-256
key derived from the seed and the domain, signed deterministically by a
simulated issuing CA (illustrative names, data/sim/services.yaml), once per
domain and run, so captures are identical for a seed.

Accounting buckets: "dns"; "tls" and "http" for segments that complete a
record or message; "tcp" for handshakes, ACKs, FINs and middle segments
(streams.py).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quaywatch.sim.engine import SimulationContext, Source
from quaywatch.sim.frames import FrameBlock, client_hello, office_tls_client, server_hello, tls_record
from quaywatch.sim.model import Device
from quaywatch.sim.normal.background import dns_lookup, services
from quaywatch.sim.normal.streams import TcpStream, merge
from quaywatch.sim.pending import PendingFrames

CIPHER = 0xC02B  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
GCM_OVERHEAD = 24  # explicit nonce 8 + tag 16
MAX_RECORD = 16384
CURVE_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 (SEC 2)


def derived_key(seed: int, name: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key that depends only on the run's seed and a name (deterministic captures)."""
    digest = hashlib.sha256(f"quaywatch-sim:{seed}:{name}".encode()).digest()
    return ec.derive_private_key(int.from_bytes(digest, "big") % (CURVE_ORDER - 1) + 1, ec.SECP256R1())


def _name(common_name: str, organization: str, country: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@lru_cache(maxsize=256)
def certificate_chain(seed: int, domain: str, issuer: tuple[str, str, str], not_before: float) -> tuple[bytes, bytes]:
    """DER of (leaf for ``domain``, its issuing CA), deterministic for the seed."""
    ca_key = derived_key(seed, "ca:" + issuer[0])
    ca_name = _name(*issuer)
    start = dt.datetime.fromtimestamp(not_before, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def serial(text: str) -> int:
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big") >> 1

    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(serial(f"{seed}:{issuer[0]}"))
        .not_valid_before(start - dt.timedelta(days=400))
        .not_valid_after(start + dt.timedelta(days=3000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    leaf_key = derived_key(seed, domain)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(serial(f"{seed}:{domain}"))
        .not_valid_before(start - dt.timedelta(days=30))
        .not_valid_after(start + dt.timedelta(days=60))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return leaf.public_bytes(serialization.Encoding.DER), ca.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True)
class Destination:
    server: Device
    domain: str
    kind: str  # https, http, tos


class CorporateBrowsing(Source):
    """Web and TLS sessions of the office laptops, each after its DNS lookup."""

    name = "corporate"

    def __init__(self, context: SimulationContext) -> None:
        super().__init__(context)
        self.data = services()["corporate"]
        self.pending = PendingFrames()
        self.laptops = self.model.find(role="workstation", zone="corporate-it")
        self.resolver = next((d for d in self.model.devices if d.name == "corp-dns"), None)
        self.websites = [device for device in self.model.devices if device.external and device.role == "website"]
        self.tos = next((d for d in self.model.devices if d.name == "tos-app"), None)
        self.sessions = self._schedule() if self.laptops and self.resolver and self.websites else []
        self.next_session = 0

    def _rate(self, moment: float) -> float:
        """Sessions per hour per laptop at ``moment``."""
        local = self.model.local_time(moment)
        if not self.model.work_hours.contains(local):
            return float(self.data["sessions_per_hour_off"])
        rhythm = self.data["day_rhythm"].get(f"{local.hour:02d}", 1.0)
        return float(self.data["sessions_per_hour_work"]) * float(rhythm)

    def _schedule(self) -> list[tuple[float, int]]:
        """(start, laptop index) of every session of the run, by thinning a Poisson process at the peak rate."""
        peak = float(self.data["sessions_per_hour_work"]) * max(1.0, *map(float, self.data["day_rhythm"].values()))
        total = peak * len(self.laptops) / 3600
        span = self.context.end - self.context.start
        count = int(self.random.poisson(total * span))
        times = np.sort(self.random.uniform(self.context.start, self.context.end, count))
        keep = self.random.uniform(0, 1, count)
        owners = self.random.integers(0, len(self.laptops), count)
        return [
            (float(moment), int(owner))
            for moment, chance, owner in zip(times, keep, owners, strict=True)
            if chance < self._rate(float(moment)) / peak
        ]

    def _destination(self) -> Destination:
        draw = float(self.random.uniform())
        if self.tos is not None and draw < float(self.data["tos_share"]):
            return Destination(self.tos, f"{self.tos.name}.{self.model.domain}", "tos")
        site = self.websites[int(self.random.integers(len(self.websites)))]
        kind = "http" if draw > 1 - float(self.data["http_share"]) else "https"
        return Destination(site, site.domain, kind)

    def _session(self, moment: float, laptop: Device) -> list[FrameBlock]:
        assert self.resolver is not None
        target = self._destination()
        internal = not target.server.external
        ttl = 300 if internal else int(self.random.integers(60, 3600))
        blocks = dns_lookup(
            self.context, self.random, laptop, self.resolver, moment, target.domain, [target.server.ip], ttl, internal
        )
        now = blocks[-1].timestamps[0] + float(self.random.uniform(0.001, 0.01))
        client, server = self.context.endpoints(laptop, target.server)
        round_trip = float(self.random.uniform(0.0008, 0.003) if internal else self.random.uniform(0.012, 0.045))
        port = 80 if target.kind == "http" else 443
        stream = TcpStream(
            client, server, int(self.random.integers(49152, 65536)), port,
            int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31)), round_trip,
        )  # fmt: skip
        opened, now = stream.handshake(now)
        blocks += opened
        requests = int(self.random.integers(1, 5))
        if target.kind == "http":
            for _ in range(requests):
                exchanged, now = self._http(stream, now + float(self.random.uniform(0.001, 0.5)), target)
                blocks += exchanged
        else:
            exchanged, now = self._tls(stream, now, target, requests)
            blocks += exchanged
        closed, _ = stream.close(now + float(self.random.uniform(0.05, 2.0)))
        return blocks + closed

    def _page_size(self) -> int:
        size = float(
            self.random.lognormal(
                np.log(float(self.data["response_bytes_median"])), float(self.data["response_bytes_sigma"])
            )
        )
        return int(min(max(size, 300.0), float(self.data["response_bytes_max"])))

    def _http(self, stream: TcpStream, moment: float, target: Destination) -> tuple[list[FrameBlock], float]:
        path = self.data["paths"][int(self.random.integers(len(self.data["paths"])))]
        agent = self.data["user_agents"][int(self.random.integers(len(self.data["user_agents"])))]
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {target.domain}\r\nUser-Agent: {agent}\r\n"
            "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
            "Accept-Language: nl-NL,nl;q=0.9,en-US;q=0.8,en;q=0.7\r\nAccept-Encoding: identity\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
        body = html_page(target.domain, path, self._page_size())
        server = self.data["http_servers"][int(self.random.integers(len(self.data["http_servers"])))]
        response = (
            f"HTTP/1.1 200 OK\r\nServer: {server}\r\nDate: {email.utils.formatdate(moment, usegmt=True)}\r\n"
            f"Content-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode() + body
        return stream.exchange(moment, request, response, "http", stream.round_trip, gap=0.0001)

    def _tls(
        self, stream: TcpStream, moment: float, target: Destination, requests: int
    ) -> tuple[list[FrameBlock], float]:
        site = self.model.name
        issuer_data = self.data["internal_issuer" if target.kind == "tos" else "web_issuer"]
        issuer = (
            str(issuer_data["common_name"]),
            str(issuer_data["organization"]).format(site=site),
            str(issuer_data["country"]),
        )
        leaf, ca = certificate_chain(self.context.seed, target.domain, issuer, self.context.start)
        client_random = self.random.bytes(32)
        server_random = self.random.bytes(32)
        browser = office_tls_client(stream.sides[0].mac)  # each laptop keeps its browser
        hello = tls_record(22, client_hello(target.domain, client_random, browser), 0x0301)
        certificates = b"".join(len(der).to_bytes(3, "big") + der for der in (leaf, ca))
        certificate = (
            b"\x0b" + (len(certificates) + 3).to_bytes(3, "big") + (len(certificates)).to_bytes(3, "big") + certificates
        )
        public = self.random.bytes(32)
        parameters = b"\x03\x00\x1d\x20" + public  # named curve x25519 and the server's ephemeral key
        signature = derived_key(self.context.seed, target.domain).sign(
            client_random + server_random + parameters, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        )
        key_exchange_body = parameters + b"\x04\x03" + len(signature).to_bytes(2, "big") + signature
        key_exchange = b"\x0c" + len(key_exchange_body).to_bytes(3, "big") + key_exchange_body
        flight = [tls_record(22, server_hello(server_random, CIPHER)), tls_record(22, certificate),
                  tls_record(22, key_exchange), tls_record(22, b"\x0e\x00\x00\x00")]  # fmt: skip
        blocks, now = stream.send(0, moment, hello, "tls")
        answer, now = stream.send(
            1, now + stream.round_trip, b"".join(flight), "tls", _ends(flight), 0.0001, 2, _starts(flight)
        )
        blocks += answer
        second = [tls_record(22, b"\x10\x00\x00\x21\x20" + self.random.bytes(32)), tls_record(20, b"\x01"),
                  tls_record(22, self.random.bytes(40))]  # fmt: skip
        sent, now = stream.send(0, now + 0.0003, b"".join(second), "tls", _ends(second))
        blocks += sent
        finished = [tls_record(20, b"\x01"), tls_record(22, self.random.bytes(40))]
        answer, now = stream.send(1, now + stream.round_trip, b"".join(finished), "tls", _ends(finished))
        blocks += answer
        for _ in range(requests):
            request = [tls_record(23, self.random.bytes(int(self.random.integers(420, 1300)) + GCM_OVERHEAD))]
            remaining = self._page_size()
            records = []
            while remaining > 0:
                size = min(remaining, MAX_RECORD)
                records.append(tls_record(23, self.random.bytes(size + GCM_OVERHEAD)))
                remaining -= size
            exchanged, now = stream.exchange(
                now + float(self.random.uniform(0.001, 0.8)), b"".join(request), b"".join(records), "tls",
                stream.round_trip + float(self.random.uniform(0.002, 0.08)), response_ends=_ends(records), gap=0.0001,
                response_starts=_starts(records),
            )  # fmt: skip
            blocks += exchanged
        alert, now = stream.send(
            0, now + float(self.random.uniform(0.5, 5.0)), tls_record(21, self.random.bytes(26)), "tls"
        )
        return blocks + alert, now

    def window(self, start: float, end: float) -> list[FrameBlock]:
        blocks: list[FrameBlock] = []
        while self.next_session < len(self.sessions) and self.sessions[self.next_session][0] < end:
            moment, owner = self.sessions[self.next_session]
            self.next_session += 1
            if moment >= start:
                blocks += self._session(moment, self.laptops[owner])
        self.pending.add(blocks)
        return merge(self.pending.take(end))

    def policy(self) -> dict[str, list[dict[str, Any]]]:
        if not self.laptops:
            return {}
        zone = self.laptops[0].zone
        conduits: list[dict[str, Any]] = [
            {"name": f"{zone}-web-tls", "from": zone, "to": "external", "protocol": "tls", "ports": [443],
             "initiator": "from", "description": "office browsing over HTTPS through the firewall"},
            {"name": f"{zone}-web-http", "from": zone, "to": "external", "protocol": "http", "ports": [80],
             "initiator": "from", "description": "office browsing over cleartext HTTP"},
        ]  # fmt: skip
        if self.tos is not None:
            conduits.append(
                {"name": f"{zone}-tos-web", "from": zone, "to": self.tos.zone, "protocol": "tls", "ports": [443],
                 "initiator": "from", "description": "the TOS web client (HTTPS to tos-app)"}
            )  # fmt: skip
        destinations = [
            {
                "name": "corporate-websites",
                "reason": "staff web browsing",
                "cidrs": sorted({f"{site.ip}/32" for site in self.websites}),
                "domains": sorted({site.domain for site in self.websites if site.domain}),
                "zones": [zone],
            }
        ]
        return {"conduits": conduits, "external_destinations": destinations}


def _ends(records: list[bytes]) -> list[int]:
    """Offsets where each record ends in their concatenation (the accounting bucket rule)."""
    return np.cumsum([len(record) for record in records]).tolist()


def _starts(records: list[bytes]) -> list[int]:
    return [0, *_ends(records)[:-1]]


def html_page(domain: str, path: str, size: int) -> bytes:
    """A plain HTML page of about ``size`` octets."""
    head = '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    head += f"<title>{domain}{path}</title>\n</head>\n<body>\n"
    paragraph = "<p>Port and logistics news, schedules and updates for terminal partners and visitors.</p>\n"
    tail = "</body>\n</html>\n"
    repeats = max(0, (size - len(head) - len(tail)) // len(paragraph))
    return (head + paragraph * repeats + tail).encode()

"""D5 DNS tunnelling: fires on the labelled exfiltration capture, stays quiet on real benign DNS traffic.

Every capture goes through the real pipeline (Analyzer into a DuckDB store on tmp_path) and the detection reads
the store. The per-capture table is printed for the closing note (``pytest -s``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import struct
from pathlib import Path
from typing import Any

import dpkt
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.dns import DnsTcpDecoder, DnsUdpDecoder
from quaywatch.detect import attack, dns_tunnelling
from quaywatch.detect.alert import Alert
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.dns_tunnelling import ALERT_SCORE, detect, measure, registered_domain
from quaywatch.store.database import Store
from tests.factories import udp_frame, write_pcap

RESEARCH = Path(__file__).resolve().parents[2].parent / "shared" / "research-data"
NDPI = RESEARCH / "ndpi/tests/cfgs/default/pcap"
ITI = RESEARCH / "iti-ics-security-tools/pcaps"
ZEEK = RESEARCH / "zeek-btest/testing/btest/Traces"

#: nDPI's DNS exfiltration sample: nDPI flags it "Susp DNS Traffic, Susp Entropy, Non-Printable/Invalid Chars".
EXFILTRATION = NDPI / "dns-exf.pcap"
#: Real captures whose DNS is ordinary: public names, mDNS and LLMNR chatter of Windows engineering stations.
BENIGN = {
    "ndpi dns.pcap": NDPI / "dns.pcap",
    "ndpi malformed_dns.pcap": NDPI / "malformed_dns.pcap",
    "iti C37.118 c37118_1100_unclean.pcap": ITI / "C37.118/C37118/c37118_1100_unclean.pcap",
    "iti S7Comm wrapup.pcapng": ITI / "s7/S7Comm/wrapup.pcapng",
    "iti beckoff addrouteuse444444444.pcapng": ITI / "beckoff/addrouteuse444444444.pcapng",
    "iti MELSEC melsoft_UDP_unclean_1.pcap": ITI / "MELSEC/melsoft_UDP_unclean_1.pcap",
    "zeek modbusSmall.pcap": ZEEK / "modbus/modbusSmall.pcap",
}

RESULTS: list[tuple[str, int, int, str, str]] = []


def _analyse(tmp_path: Path, capture: Path, name: str) -> list[Alert]:
    """The capture through the real pipeline, D5 over its store, and a row of the per-capture table."""
    if not capture.exists():
        pytest.skip(f"research data missing: {capture}")
    store = Store(tmp_path / f"{capture.stem}.duckdb")
    Analyzer(store, decoders=[DnsUdpDecoder(), DnsTcpDecoder()]).analyze(capture)
    store.flush()
    row = store.connection.execute("SELECT count(*) FROM dns").fetchone()
    alerts = detect(store.connection, DetectionContext())
    measured = measure(store.connection, every_domain=True)
    highest = max(measured, key=lambda item: item.score, default=None)
    best = f"{highest.score:.2f} {highest.group.domain}" if highest else "-"
    RESULTS.append((name, int(row[0]) if row else 0, len(alerts), best, f"{len(measured)}"))
    store.close()
    return alerts


def test_registered_domain_follows_the_public_suffix_list() -> None:
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"
    assert registered_domain("x.y.test.txt.") == "test.txt"  # unknown TLD: counted as a public suffix
    assert registered_domain("e1234.dscb.akamaiedge.net") == "dscb.akamaiedge.net"  # a CDN customer (private PSL)


def test_the_suffix_list_holds_the_rules_the_library_builds() -> None:
    """_suffix_list encodes only the non-ASCII rules: the same rule set as ``PublicSuffixList()`` parsing its whole
    bundled list, so every name gets the same registered domain."""
    from publicsuffixlist import PublicSuffixList

    whole, ours = PublicSuffixList(), dns_tunnelling._suffix_list()
    assert ours._publicsuffix == whole._publicsuffix
    assert ours._maxlabel == whole._maxlabel
    for name in ("www.example.co.uk", "xn--80ak6aa92e.xn--p1ai", "a.b.kawasaki.jp", "city.kawasaki.jp", "x.test.txt"):
        assert registered_domain(name) == (whole.privatesuffix(name) or ".".join(name.split(".")[-2:]))


def test_fires_on_ndpi_dns_exfiltration_sample(tmp_path: Path) -> None:
    alerts = _analyse(tmp_path, EXFILTRATION, "ndpi dns-exf.pcap (exfiltration)")
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.key == {"client_ip": "192.168.2.225", "domain": "test.txt"}
    assert alert.detection == "D5.dns-tunnelling"
    assert alert.score >= ALERT_SCORE and alert.severity == "medium"
    assert [attack.technique(technique).name for technique in alert.techniques] == [
        "Standard Application Layer Protocol",
        "Exfiltration Over Alternative Protocol",
    ]
    values = alert.evidence.values
    assert values["example_names"] == [
        "H4sICN03*2QAA3Rlc3QudHh0AAvJyCxWAKJEheLU5KLUEoW0zJxULgAge-.4S2FgAAAA==-.test.txt"
    ]
    assert values["longest_label"] == 58 and values["queries"] == 1 and values["encoded_character_names"] == 1
    assert alert.evidence.packet_numbers == [1]
    assert alert.evidence.community_ids == ["1:ZHAjxEz7icNibOL9isu6Z4eoh8E="]
    components = {component.name: component for component in alert.score_components}
    assert components["longest_label"].value == 1.0 and components["encoded_characters"].value == 1.0
    assert sum(component.weight for component in alert.score_components) == pytest.approx(1.0)
    assert all(component.explanation.endswith(".") for component in alert.score_components)


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_quiet_on_benign_dns_captures(tmp_path: Path, name: str) -> None:
    alerts = _analyse(tmp_path, BENIGN[name], name)
    assert RESULTS[-1][1] > 0, "the capture must hold DNS for this to mean anything"
    assert alerts == []


def _query(identifier: int, name: bytes, query_type: int, response: bool = False, rcode: int = 0) -> bytes:
    flags = (0x8180 | rcode) if response else 0x0100
    labels = b"".join(bytes([len(label)]) + label for label in name.split(b".")) + b"\x00"
    return struct.pack("!HHHHHH", identifier, flags, 1, 0, 0, 0) + labels + struct.pack("!HH", query_type, 1)


def _tunnel(start: float, parent: bytes, port: int = 53, query_type: int = 10) -> list[tuple[float, bytes]]:
    """400 queries (and NXDOMAIN answers) whose names carry base32 chunks of random-looking data, as iodine's do."""
    frames: list[tuple[float, bytes]] = []
    for index in range(400):
        data = hashlib.sha256(b"%d" % index).digest() + hashlib.sha256(b"+%d" % index).digest()  # compressed data
        chunk = base64.b32encode(data).rstrip(b"=").lower()
        name = chunk[:63] + b"." + chunk[63:] + b"." + parent
        timestamp = start + index * 0.5
        query = _query(index, name, query_type)
        frames.append((timestamp, udp_frame("10.1.1.50", "10.1.1.1", 30000 + index, port, query)))
        answer = _query(index, name, query_type, response=True, rcode=3)
        frames.append((timestamp + 0.01, udp_frame("10.1.1.1", "10.1.1.50", port, 30000 + index, answer)))
    return frames


@pytest.mark.parametrize(
    ("parent", "port", "query_type"),
    [
        (b"t.tunnel.local", 53, 10),  # RFC 6762 .local
        (b"t.tunnel.example", 5353, 10),  # multicast DNS
        (b"t.tunnel.example", 5355, 10),  # LLMNR
        (b"t.tunnel.example", 53, 12),  # PTR
        (b"168.192.in-addr.arpa", 53, 10),  # reverse zone
        (b"t.tunnel.home.arpa", 53, 10),  # RFC 8375
    ],
)
def test_local_names_services_and_reverse_lookups_are_left_out(
    tmp_path: Path, parent: bytes, port: int, query_type: int
) -> None:
    """The same tunnel-shaped traffic, under names and ports that never reach an upstream resolver: no alert."""
    frames = _tunnel(dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC).timestamp(), parent, port, query_type)
    capture = write_pcap(tmp_path / "local.pcap", frames)
    store = Store(tmp_path / "local.duckdb")
    Analyzer(store, decoders=[DnsUdpDecoder(), DnsTcpDecoder()]).analyze(capture)
    store.flush()
    assert store.connection.execute("SELECT count(*) FROM dns").fetchone() == (800,)
    assert detect(store.connection, DetectionContext()) == []
    store.close()


def test_iodine_like_tunnel_scores_high_and_busy_cdn_client_stays_quiet(tmp_path: Path) -> None:
    """A NULL-record tunnel sending 400 chunks of base32 data, beside a client resolving real CDN and cloud names."""
    start = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC).timestamp()
    frames = _tunnel(start, b"t.tunnel.example")
    benign = [
        b"a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6-1234567890.eu-west-1.elb.amazonaws.com",
        b"e1234.dscb.akamaiedge.net",
        b"_dmarc.example.com",
        b"selector1._domainkey.example.com",
        b"_ldap._tcp.dc._msdcs.corp.example.com",
        b"10.1.1.1.in-addr.arpa",
        b"printer.local",
        b"Brother HL-L2350DW series [0123456789ab]._ipp._tcp.local",  # DNS-SD instance: long label, spaces
        b"b.a.9.8.7.6.5.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
    ] + [b"r%d---sn-4g5e6nz%d.googlevideo.com" % (index % 9, index) for index in range(150)]
    for index, name in enumerate(benign):
        query_type = 16 if name.startswith(b"_d") or b"_domainkey" in name else 12 if b"arpa" in name else 1
        frame = udp_frame("10.1.1.60", "10.1.1.1", 40000 + index, 53, _query(5000 + index, name, query_type))
        frames.append((start + index * 0.2, frame))
    frames.sort()
    tunnel_queries = [
        number for number, (_, frame) in enumerate(frames, 1) if b"\x0a\x01\x01\x32\x0a\x01\x01\x01" in frame
    ]
    capture = write_pcap(tmp_path / "tunnel.pcap", frames)
    alerts = _analyse(tmp_path, capture, "synthetic NULL tunnel + busy CDN client")
    assert [alert.key for alert in alerts] == [{"client_ip": "10.1.1.50", "domain": "tunnel.example"}]
    alert = alerts[0]
    assert alert.severity == "high" and alert.score >= 0.8
    assert alert.evidence.values["distinct_names"] == 400
    assert alert.evidence.values["nxdomain_responses"] == 400
    assert len(alert.evidence.values["example_names"]) == 5
    assert alert.evidence.values["example_names"][0].endswith(".t.tunnel.example")
    assert alert.evidence.packet_numbers == tunnel_queries[:20]  # the first 20 queries, in capture order


def test_packet_derived_domain_is_escaped_in_key_and_title(tmp_path: Path) -> None:
    """A terminal escape sequence in the registered domain must not reach the alert unescaped."""
    name = b"aGVsbG8gd29ybGQgZnJvbSB0aGUgY3JhbmUgcGxjIGhlcmUgYW5kIHRoZXJl==.x\x1b[2J.com"
    frames = [(1_700_000_000.0, udp_frame("10.1.1.70", "10.1.1.1", 30001, 53, _query(7, name, 16)))]
    alerts = _analyse(tmp_path, write_pcap(tmp_path / "hostile.pcap", frames), "synthetic hostile domain")
    assert [alert.key["domain"] for alert in alerts] == ["x\\x1b[2j.com"]  # names are case-insensitive
    assert "\x1b" not in alerts[0].title and "\x1b" not in alerts[0].explanation
    assert "\x1b" not in "".join(alerts[0].evidence.values["example_names"])


def test_no_dns_table_means_no_alerts(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty.duckdb")
    assert detect(store.connection, DetectionContext()) == []
    store.close()


def teardown_module() -> None:
    """The per-capture figures for the closing note (visible with -s)."""
    if RESULTS:
        print("\nD5 DNS tunnelling per capture")
        print(f"{'capture':<42} {'dns rows':>8} {'domains':>7} {'alerts':>6}  highest score (any client, domain)")
        for name, messages, alerts, best, domains in RESULTS:
            print(f"{name:<42} {messages:>8} {domains:>7} {alerts:>6}  {best}")


def test_lowest_distinct_ids_are_exact_or_unsure() -> None:
    heap = dns_tunnelling.LOWEST_WITH_REPEATS
    assert dns_tunnelling._lowest_distinct(None, 10) == []
    assert dns_tunnelling._lowest_distinct(["c", "a", "b", "a"], 10) == ["a", "b", "c"]  # every id of the group
    distinct = [f"f{index:03d}" for index in range(heap)]
    assert dns_tunnelling._lowest_distinct(distinct, 10) == distinct[:10]
    repeated = sorted(distinct[:5] * (heap // 5))
    assert dns_tunnelling._lowest_distinct(repeated, 10) is None  # higher ids may hide behind the repeats


def _reference_evidence(con: Any, client: str, domain: str) -> tuple[list[int], list[str], list[str]]:
    """The alert's first 20 query packets in time order and its 10 lowest flow and Community ids, row by row."""
    rows = con.execute(
        "SELECT ts, capture_id, packet_number, flow_id, community_id, query_name FROM dns "
        "WHERE event_type = 'query' AND client_ip = ?",
        [client],
    ).fetchall()
    rows = [row for row in rows if registered_domain(row[5]) == domain]
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    flows = sorted({row[3] for row in rows if row[3] is not None})[: dns_tunnelling.EVIDENCE_FLOWS]
    communities = sorted({row[4] for row in rows if row[4] is not None})[: dns_tunnelling.EVIDENCE_FLOWS]
    return [row[2] for row in rows[: dns_tunnelling.EVIDENCE_PACKETS]], flows, communities


@pytest.mark.parametrize("few_communities", [0, dns_tunnelling.FEW_COMMUNITIES])
@pytest.mark.parametrize("client_ports", [400, 3, 1])
def test_evidence_is_the_first_queries_and_lowest_flows(
    tmp_path: Path, client_ports: int, few_communities: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many flows (each query its own), and few flows holding many queries (a reused source port): same evidence,
    whether the evidence step groups by Community ID (few of them) or not (``few_communities`` 0)."""
    monkeypatch.setattr(dns_tunnelling, "FEW_COMMUNITIES", few_communities)
    start = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC).timestamp()
    frames = []
    for timestamp, frame in _tunnel(start, b"t.tunnel.example"):
        packet = dpkt.ethernet.Ethernet(frame)
        datagram = packet.data.data
        if datagram.dport == 53:
            datagram.sport = 30000 + datagram.sport % client_ports
        else:
            datagram.dport = 30000 + datagram.dport % client_ports
        datagram.sum = 0
        frames.append((timestamp, bytes(packet)))
    store = Store(tmp_path / "ports.duckdb")
    Analyzer(store, decoders=[DnsUdpDecoder(), DnsTcpDecoder()]).analyze(write_pcap(tmp_path / "ports.pcap", frames))
    store.flush()
    alerts = detect(store.connection, DetectionContext())
    assert [alert.key for alert in alerts] == [{"client_ip": "10.1.1.50", "domain": "tunnel.example"}]
    packets, flows, communities = _reference_evidence(store.connection, "10.1.1.50", "tunnel.example")
    assert len(flows) == min(client_ports, dns_tunnelling.EVIDENCE_FLOWS)
    assert alerts[0].evidence.packet_numbers == packets
    assert alerts[0].evidence.flow_ids == flows
    assert alerts[0].evidence.community_ids == communities
    store.close()

"""Policy evaluation on a real store: zones by CIDR, VLAN and MAC, conduit verdicts and external destinations."""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest

from quaywatch.policy.evaluate import evaluate_policy, zone_of
from quaywatch.policy.load import load_policy_text
from quaywatch.policy.model import Policy
from quaywatch.store.database import Store
from tests.assets.test_inventory import analysed, with_macs
from tests.factories import tcp_frame, udp_frame, write_pcap

ROUTER_MAC = b"\x00\x00\x5e\x00\x01\x01"
WEATHER_MAC = b"\x00\x80\xa3\x12\x34\x56"
HIKVISION_MAC = b"\x44\x19\xb6\x00\x00\x10"
QUECTEL_MAC = b"\x50\x80\x4a\x00\x00\x30"  # netaddr: 50-80-4A is Quectel Wireless Solutions Co.,Ltd.
APPROVED_BY_CIDR, APPROVED_BY_NAME, UNAPPROVED = "93.184.216.34", "151.101.1.10", "45.33.32.156"

POLICY = """\
version: 1
zones:
  - {name: crane, purdue: 1, cidrs: [10.10.1.0/24]}
  - {name: crane-safety, purdue: 0, cidrs: [10.10.1.128/25]}
  - {name: cms, purdue: 2, cidrs: [10.20.0.0/24]}
  - {name: engineering, purdue: 3, vlans: [140]}
  - {name: weather, purdue: 1, macs: ["00:80:a3:12:34:56"]}
  - {name: tos, purdue: 4, cidrs: [10.50.0.0/24]}
  - {name: cctv, purdue: 2, cidrs: [10.60.0.0/24]}
conduits:
  - {name: cms-to-crane, from: cms, to: crane, protocol: tcp/102, initiator: from}
  - {name: eng-to-crane, from: engineering, to: crane, protocol: s7comm, ports: [102]}
external_destinations:
  - {name: edi-partners, reason: EDI, cidrs: [93.184.216.0/24], zones: [tos]}
  - {name: edi-by-name, reason: EDI by name, domains: [edi.example-line.com], zones: [tos]}
"""


def policy() -> Policy:
    loaded, problems = load_policy_text(POLICY)
    assert not [p for p in problems if p.severity == "error"], problems
    return loaded


def _mac(ip: str) -> bytes:
    """A unicast MAC per local host (the last two octets of the address)."""
    a, b = (int(part) for part in ip.split(".")[2:])
    return bytes([0x02, 0x00, 0x00, 0x00, a, b])


def connect(client: str, server: str, port: int, index: int, client_mac: bytes | None = None,
            vlan: int | None = None) -> list[bytes]:  # fmt: skip
    """SYN and SYN-ACK of one connection; public servers sit behind the router's MAC."""
    client_mac = client_mac or _mac(client)
    server_mac = ROUTER_MAC if not server.startswith(("10.", "192.168.")) else _mac(server)
    syn = tcp_frame(client, server, 40000 + index, port, dpkt.tcp.TH_SYN, sequence=100, vlan=vlan)
    synack = tcp_frame(server, client, port, 40000 + index, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, sequence=500,
                       acknowledgement=101, vlan=vlan)  # fmt: skip
    return [with_macs(syn, client_mac, server_mac), with_macs(synack, server_mac, client_mac)]


def dns_exchange(client: str, resolver: str, name: str, answer: str) -> list[bytes]:
    query = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    response = dpkt.dns.DNS(
        id=7, op=dpkt.dns.DNS_RA, qr=dpkt.dns.DNS_R, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)],
        an=[dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=60, ip=bytes(int(x) for x in answer.split(".")))],
    )  # fmt: skip
    return [
        with_macs(udp_frame(client, resolver, 5353, 53, bytes(query)), _mac(client), _mac(resolver)),
        with_macs(udp_frame(resolver, client, 53, 5353, bytes(response)), _mac(resolver), _mac(client)),
    ]


def site_capture(path: Path) -> Path:
    """Ten flows, one per verdict case (see the test names)."""
    frames: list[bytes] = []
    cases = [
        ("10.20.0.10", "10.10.1.10", 102, None, None),  # allowed: cms-to-crane
        ("10.10.1.10", "10.20.0.10", 102, None, None),  # violation: initiator reversed
        ("10.10.1.10", "10.50.0.5", 443, None, None),  # violation: no conduit
        ("192.168.50.5", "10.10.1.10", 102, None, 140),  # allowed: eng-to-crane, engineering by VLAN
        ("10.10.1.10", "10.10.1.11", 502, None, None),  # intra-zone
        ("10.50.0.5", APPROVED_BY_CIDR, 443, None, None),  # external allowed by CIDR
        ("10.10.1.11", APPROVED_BY_CIDR, 443, None, None),  # external unapproved: zone not allowed
        ("10.10.1.11", UNAPPROVED, 80, None, None),  # external unapproved
        ("10.99.0.7", "10.10.1.200", 502, WEATHER_MAC, None),  # weather by MAC -> crane-safety (most specific)
        ("10.60.0.10", UNAPPROVED, 443, HIKVISION_MAC, None),  # a camera talking to the internet
        ("10.10.1.50", "10.10.1.10", 5000, QUECTEL_MAC, None),  # a cellular module in the crane zone
    ]
    for index, (client, server, port, mac, vlan) in enumerate(cases):
        frames += connect(client, server, port, index, mac, vlan)
    frames += dns_exchange("10.50.0.5", "10.50.0.2", "edi.example-line.com", APPROVED_BY_NAME)
    frames += connect("10.50.0.5", APPROVED_BY_NAME, 443, 99)  # external allowed by the DNS name
    return write_pcap(path, [(1_700_000_000 + index * 0.01, frame) for index, frame in enumerate(frames)])


@pytest.fixture
def evaluated(tmp_path: Path) -> Store:
    store = analysed(tmp_path, site_capture(tmp_path / "site.pcap"))
    evaluate_policy(store, policy())
    return store


def verdicts(store: Store) -> dict[tuple[str, str, int], tuple[str, str | None, str]]:
    rows = store.connection.execute("""
        SELECT f.client_ip, f.server_ip, f.server_port, p.verdict, p.conduit, p.reason
        FROM flow_policy p JOIN flows f USING (capture_id, flow_id)
    """).fetchall()
    return {(c, s, port): (verdict, conduit, reason) for c, s, port, verdict, conduit, reason in rows}


def test_zones_by_cidr_vlan_and_mac(evaluated: Store) -> None:
    zones = dict(
        (ip, (zone, purdue, ot, matched_by))
        for ip, zone, purdue, ot, matched_by in evaluated.connection.execute(
            "SELECT ip, zone, purdue, ot, matched_by FROM host_zones"
        ).fetchall()
    )
    assert zones["10.10.1.10"] == ("crane", 1.0, True, "cidr")
    assert zones["10.10.1.200"] == ("crane-safety", 0.0, True, "cidr")  # the /25 beats the /24
    assert zones["192.168.50.5"] == ("engineering", 3.0, True, "vlan")
    assert zones["10.99.0.7"] == ("weather", 1.0, True, "mac")
    assert zones["10.50.0.5"] == ("tos", 4.0, False, "cidr")  # Purdue 4 is IT, not OT
    assert zones[UNAPPROVED] == ("external", None, False, "external")
    (count,) = evaluated.connection.execute("SELECT count(*) - count(DISTINCT ip) FROM host_zones").fetchone()  # type: ignore[misc]
    assert count == 0


def test_a_remote_address_does_not_inherit_its_routers_mac_or_vlan() -> None:
    loaded = policy()
    assert zone_of(loaded, "10.99.0.7", ["00:80:a3:12:34:56"]).zone == "weather"
    assert zone_of(loaded, "10.99.0.8", [], [140]).zone == "engineering"
    assert zone_of(loaded, "10.99.0.9").zone == "unzoned"
    assert zone_of(loaded, "8.8.8.8").zone == "external"


def test_conduit_allowed_violation_and_initiator_reversed(evaluated: Store) -> None:
    found = verdicts(evaluated)
    assert found[("10.20.0.10", "10.10.1.10", 102)][:2] == ("allowed", "cms-to-crane")
    verdict, conduit, reason = found[("10.10.1.10", "10.20.0.10", 102)]
    assert (verdict, conduit) == ("violation", "cms-to-crane")
    assert reason.startswith("Initiator reversed") and "only zone cms" in reason
    verdict, conduit, reason = found[("10.10.1.10", "10.50.0.5", 443)]
    assert (verdict, conduit) == ("violation", None) and "No conduit joins zone crane and zone tos" in reason
    # decoder conduit, handshake only: nothing to identify, the port decides
    assert found[("192.168.50.5", "10.10.1.10", 102)][:2] == ("allowed", "eng-to-crane")
    assert found[("10.99.0.7", "10.10.1.200", 502)][0] == "violation"
    assert found[("10.10.1.10", "10.10.1.11", 502)][0] == "intra_zone"


def test_external_destinations_by_cidr_by_dns_name_and_unapproved(evaluated: Store) -> None:
    found = verdicts(evaluated)
    verdict, conduit, reason = found[("10.50.0.5", APPROVED_BY_CIDR, 443)]
    assert (verdict, conduit) == ("external_allowed", "edi-partners") and "93.184.216.0/24" in reason
    verdict, conduit, reason = found[("10.50.0.5", APPROVED_BY_NAME, 443)]
    assert (verdict, conduit) == ("external_allowed", "edi-by-name")
    assert "edi.example-line.com (a DNS answer" in reason
    assert found[("10.10.1.11", APPROVED_BY_CIDR, 443)][0] == "external_unapproved"  # only tos may reach it
    verdict, conduit, reason = found[("10.10.1.11", UNAPPROVED, 80)]
    assert (verdict, conduit) == ("external_unapproved", None) and "no external destination approves" in reason


def test_every_flow_gets_one_verdict_and_reevaluation_replaces(evaluated: Store) -> None:
    con = evaluated.connection
    (flows,) = con.execute("SELECT count(*) FROM flows").fetchone()  # type: ignore[misc]
    (judged, distinct) = con.execute("SELECT count(*), count(DISTINCT flow_id) FROM flow_policy").fetchone()  # type: ignore[misc]
    assert flows == judged == distinct
    before = con.execute("SELECT * FROM flow_policy ORDER BY flow_id").fetchall()
    summary = evaluate_policy(evaluated, policy())
    assert con.execute("SELECT * FROM flow_policy ORDER BY flow_id").fetchall() == before
    assert summary.verdicts["violation"] == 3 and summary.verdicts["external_allowed"] == 2

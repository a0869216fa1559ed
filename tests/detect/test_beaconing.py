"""D4 end to end: a real pcap (dpkt) through ``Analyzer`` into DuckDB, the inventory, then ``beaconing.detect``.

The capture holds six hours of a small OT cell: an HMI polling a PLC over Modbus/TCP, a SCADA master opening a
new Modbus connection to a second PLC every 60 s (periodic, internal: must stay quiet), a workstation browsing an
external site at random, and the PLC itself beaconing to an external address every 300 s ± 20% with 20% of its
beats missed: the one alert expected.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.assets.inventory import build_inventory
from quaywatch.decode.registry import all_decoders
from quaywatch.detect import beaconing
from quaywatch.detect.alert_store import write_alerts
from quaywatch.detect.context import DetectionContext
from quaywatch.policy.model import ExternalDestination, Policy, Zone
from quaywatch.store.database import Store
from tests.factories import tcp_frame, udp_frame, write_pcap

HMI, PLC, PLC2, WORKSTATION = "10.10.1.10", "10.10.1.20", "10.10.1.21", "10.20.0.5"
CAMERA, RESOLVER, C2_NAME = "10.10.1.30", "10.10.1.1", "telemetry.c2-cdn.net"
VENDOR_NAME = "update.vendor-cloud.net"  # the PLC's beacon resolves this name to C2 first
C2, WEBSITE = "185.199.108.10", "151.101.1.69"  # public: documentation ranges are not global addresses
HOURS = 6.0
SYN, ACK, PSH, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN


def mac(ip: str) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, int(ip.rsplit(".", 1)[1])])


def tcp(client: str, server: str, *args: object, **kwargs: object) -> bytes:
    """tcp_frame with a MAC per host, so the inventory sees one device per address."""
    raw = tcp_frame(client, server, *args, **kwargs)  # type: ignore[arg-type]
    return mac(server) + mac(client) + raw[12:]


def dns_query(start: float, client: str, name: str, transaction: int) -> tuple[float, bytes]:
    query = dpkt.dns.DNS(id=transaction, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    raw = udp_frame(client, RESOLVER, 1_024 + transaction, 53, bytes(query))  # a new source port: a new flow
    return start, mac(RESOLVER) + mac(client) + raw[12:]


def dns_answer(start: float, client: str, name: str, transaction: int, address: str) -> tuple[float, bytes]:
    answer = dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=60, ip=socket.inet_aton(address))
    response = dpkt.dns.DNS(
        id=transaction, qr=dpkt.dns.DNS_R, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)], an=[answer]
    )
    raw = udp_frame(RESOLVER, client, 53, 1_024 + transaction, bytes(response))
    return start, mac(client) + mac(RESOLVER) + raw[12:]


def connection(start: float, client: str, server: str, client_port: int, port: int, payload: bytes) -> list:
    """A short TCP connection: handshake, one request and answer, close."""
    return [
        (start, tcp(client, server, client_port, port, SYN, sequence=100)),
        (start + 0.01, tcp(server, client, port, client_port, SYN | ACK, sequence=500, acknowledgement=101)),
        (start + 0.02, tcp(client, server, client_port, port, PSH | ACK, payload, 101, 501)),
        (start + 0.05, tcp(server, client, port, client_port, PSH | ACK, b"k" * 40, 501, 101 + len(payload))),
        (start + 0.06, tcp(client, server, client_port, port, FIN | ACK, sequence=101 + len(payload))),
    ]


def modbus_read(transaction: int) -> tuple[bytes, bytes]:
    request = struct.pack(">HHHBBHH", transaction, 0, 6, 1, 3, 0, 4)
    response = struct.pack(">HHHBBB", transaction, 0, 11, 1, 3, 8) + bytes(8)
    return request, response


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    rng = np.random.default_rng(7)
    frames: list = []
    duration = HOURS * 3600
    # HMI polls the PLC every 5 s on one long connection.
    frames.append((0.0, tcp(HMI, PLC, 40_000, 502, SYN, sequence=1)))
    frames.append((0.001, tcp(PLC, HMI, 502, 40_000, SYN | ACK, sequence=9, acknowledgement=2)))
    for index, start in enumerate(np.arange(1.0, duration, 5.0)):
        request, response = modbus_read(index % 65_536)
        frames.append((start, tcp(HMI, PLC, 40_000, 502, PSH | ACK, request, 2 + 12 * index, 10)))
        frames.append((start + 0.004, tcp(PLC, HMI, 502, 40_000, PSH | ACK, response, 10 + 17 * index, 2)))
    # SCADA reconnects to a second PLC every 60 s: periodic, but internal.
    for index, start in enumerate(np.arange(3.0, duration, 60.0) + rng.normal(0, 0.05, int(duration / 60))):
        frames += connection(float(start), HMI, PLC2, 41_000 + index, 502, modbus_read(index)[0])
    # A workstation browses an external site: Poisson requests.
    start = 0.0
    for index in range(10_000):
        start += float(rng.exponential(120.0))
        if start >= duration:
            break
        frames += connection(start, WORKSTATION, WEBSITE, 50_000 + index, 443, b"G" * int(rng.integers(300, 2_000)))
    # The PLC beacons out: every 300 s ± 20 %, 20 % of beats missed.
    beats = 0
    start = 100.0
    for index in range(10_000):
        start += 300.0 * (1 + float(rng.uniform(-0.2, 0.2)))
        if start >= duration:
            break
        if rng.random() < 0.2:
            continue
        frames.append(dns_query(start - 0.5, PLC, VENDOR_NAME, 20_000 + index))  # looked up before each beat
        frames.append(dns_answer(start - 0.49, PLC, VENDOR_NAME, 20_000 + index, C2))
        frames += connection(start, PLC, C2, 60_000 + index, 443, b"B" * int(rng.integers(180, 200)))
        beats += 1
    # A camera looks its controller's name up every 600 s ± 10 % through the site resolver: a beacon by name only
    # (the flows go to the internal resolver, which the prior keeps quiet).
    start = 50.0
    for index in range(10_000):
        start += 600.0 * (1 + float(rng.uniform(-0.1, 0.1)))
        if start >= duration:
            break
        frames.append(dns_query(start, CAMERA, C2_NAME, index))
    # The HMI looks the historian up every 120 s as its cache expires: periodic, but the name is a site service.
    for index, start in enumerate(np.arange(20.0, duration, 120.0)):
        frames.append(dns_query(float(start), HMI, "historian.port.example", 40_000 + index))
        frames.append(dns_answer(float(start) + 0.01, HMI, "historian.port.example", 40_000 + index, "10.10.1.5"))
    frames.sort(key=lambda frame: frame[0])
    path = write_pcap(tmp_path_factory.mktemp("beacon") / "cell.pcap", ((1_780_000_000 + t, f) for t, f in frames))
    return path, beats


@pytest.fixture(scope="module")
def analysed(capture: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The capture analysed once (``quaywatch analyze``'s Analyzer and Store); tests copy the database."""
    database = tmp_path_factory.mktemp("store") / "q.duckdb"
    store = Store(database)
    Analyzer(store, decoders=all_decoders()).analyze(capture[0])
    store.close()
    return database


@pytest.mark.parametrize("inventory", [True, False], ids=["with-assets", "flows-only"])
def test_one_alert_per_beacon(capture: tuple[Path, int], analysed: Path, tmp_path: Path, inventory: bool) -> None:
    beats = capture[1]
    shutil.copy(analysed, tmp_path / "q.duckdb")
    store = Store(tmp_path / "q.duckdb")
    if inventory:
        build_inventory(store)
    alerts = beaconing.detect(store.connection, DetectionContext())
    assert [alert.key for alert in alerts] == [
        {"client_ip": PLC, "server_ip": C2, "server_port": "443", "transport": "tcp"},
        {"client_ip": CAMERA, "query_name": C2_NAME},
    ]
    alert, by_name = alerts
    assert alert.evidence.values["names"] == [VENDOR_NAME]  # its name beacons too: merged, not a second alert
    assert by_name.evidence.values["period_seconds"] == pytest.approx(600.0, rel=0.1)
    assert by_name.evidence.events[0].table == "dns" and by_name.evidence.packet_numbers
    assert alert.detection == "D4.beaconing" and alert.techniques == ["T0869", "T1071"]
    assert alert.evidence.values["period_seconds"] == pytest.approx(300.0, rel=0.1)
    assert alert.evidence.values["missed_beats"] == pytest.approx(0.2, abs=0.12)
    assert alert.count == beats
    assert len(alert.evidence.flow_ids) == min(50, beats)
    assert len(alert.evidence.community_ids) == min(50, beats)
    assert all(number > 0 for number in alert.evidence.packet_numbers)
    flow_id, packet = alert.evidence.events[0].flow_id, alert.evidence.events[0].packet_number
    row = store.connection.execute("SELECT server_ip, first_packet FROM flows WHERE flow_id = ?", [flow_id]).fetchone()
    assert row == (C2, packet)  # the evidence points at the right flow and packet
    assert f"every {alert.evidence.values['period_seconds']:.0f} s (5.0 min) ± " in alert.title
    assert write_alerts(store.connection, [beaconing.DETECTION], alerts, alerts[0].last_seen) == 2  # storable
    if inventory:
        assert "PLC" in alert.title  # the inventory made it a PLC (it serves Modbus)...
        assert alert.severity in ("high", "critical")  # ...which should never talk outward
        assert alert.score_components[-1].value == pytest.approx(1.3)
    store.close()


def test_nothing_without_flows(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty.duckdb")
    assert beaconing.detect(store.connection, DetectionContext()) == []
    store.close()


def test_policy_approved_destinations_stay_quiet(analysed: Path, tmp_path: Path) -> None:
    """Vendor telemetry the policy approves (by address, or by a *.suffix that also matches the apex) is expected."""
    shutil.copy(analysed, tmp_path / "q.duckdb")
    store = Store(tmp_path / "q.duckdb")
    vendor = ExternalDestination(name="vendor", reason="telemetry", cidrs=(ipaddress.ip_network("185.199.108.0/24"),))
    cloud = ExternalDestination(name="cloud", reason="camera cloud", domains=("*.c2-cdn.net",))
    policy = Policy(external_destinations=(vendor, cloud))
    assert beaconing.detect(store.connection, DetectionContext(policy=policy)) == []
    apex_only = Policy(
        external_destinations=(ExternalDestination(name="c", reason="r", domains=("*.telemetry.c2-cdn.net",)),)
    )
    alerts = beaconing.detect(store.connection, DetectionContext(policy=apex_only))
    assert [alert.key.get("query_name") for alert in alerts] == [None]  # the name is the apex of the wildcard
    store.close()


def test_policy_zones_make_the_plc_ot(analysed: Path, tmp_path: Path) -> None:
    """Without an inventory, policy zones alone say the client is OT; the alert names the zone."""
    shutil.copy(analysed, tmp_path / "q.duckdb")
    store = Store(tmp_path / "q.duckdb")
    cell = Zone(name="crane-cell", purdue=1, cidrs=(ipaddress.ip_network("10.10.1.0/24"),))
    alerts = beaconing.detect(store.connection, DetectionContext(policy=Policy(zones=(cell,))))
    assert [alert.zones for alert in alerts] == [["crane-cell", "external"], ["crane-cell"]]
    assert alerts[0].score_components[-1].value == 1.0  # OT zone, but no role: neutral prior, no "PLC" claim
    store.close()


def test_store_without_dns_or_assets(analysed: Path, tmp_path: Path) -> None:
    """Tables the detection can use but does not need may be absent: the address beacon is still found."""
    shutil.copy(analysed, tmp_path / "q.duckdb")
    store = Store(tmp_path / "q.duckdb")
    store.connection.execute("DROP TABLE dns")
    alerts = beaconing.detect(store.connection, DetectionContext())
    assert [alert.key["server_ip"] for alert in alerts] == [C2]
    assert "names" not in alerts[0].evidence.values
    store.close()


@pytest.mark.parametrize(
    ("verdicts", "quiet"),
    [
        ("CASE WHEN server_ip = '{c2}' THEN 'external_allowed' ELSE 'violation' END", True),  # a policy conduit
        (
            "CASE WHEN server_ip = '{c2}' AND ts <> (SELECT max(ts) FROM flows WHERE server_ip = '{c2}') "
            "THEN 'external_allowed' ELSE 'violation' END",
            False,
        ),  # one flow of the pair is not allowed
        ("CASE WHEN server_ip = '{c2}' THEN 'allowed' ELSE 'violation' END", True),
        ("'violation'", False),
    ],
    ids=["all-allowed", "one-not-allowed", "conduit", "none-allowed"],
)
def test_policy_allowed_conduits_stay_quiet(analysed: Path, tmp_path: Path, verdicts: str, quiet: bool) -> None:
    """A pair all of whose flows ``flow_policy`` allows (judged only for pairs that could alert) is expected."""
    shutil.copy(analysed, tmp_path / "q.duckdb")
    store = Store(tmp_path / "q.duckdb")
    con = store.connection
    con.execute(
        "CREATE TABLE flow_policy AS SELECT capture_id, flow_id, client_ip, server_ip, "
        f"{verdicts.format(c2=C2)} AS verdict FROM flows"
    )
    if quiet:  # flows the policy evaluation never judged do not count either way
        con.execute(
            "DELETE FROM flow_policy WHERE flow_id IN (SELECT min(flow_id) FROM flows WHERE server_ip = ?)", [C2]
        )
    alerts = beaconing.detect(con, DetectionContext())
    assert any(alert.key.get("server_ip") == C2 for alert in alerts) is not quiet
    if quiet:  # the address is expected, so its name is what is left of the beacon: an alert by name
        assert {"client_ip": PLC, "query_name": VENDOR_NAME} in [alert.key for alert in alerts]
    store.close()

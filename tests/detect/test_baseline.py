"""D8 baseline deviation on a capture written with dpkt: Modbus polling learned, then new things after it.

The learning period sees an HMI poll a PLC (function 3, holding registers 0-9). After it: the HMI reads registers
100-104 (a new range), writes register 5 with function 6 (a new function code, inside the learned range), a new
host writes register 200 (one alert for the device, its pair, protocol, function and range folded in), and the HMI
opens the PLC's web server on port 80 (a new talker pair, its new protocol http folded in). The real pipeline
(Analyzer, Store) builds the store.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import struct
from pathlib import Path

import dpkt
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.detect import attack
from quaywatch.detect.baseline import BASELINE_TABLE, detect, learned_operations, learning_end
from quaywatch.detect.context import DetectionContext
from quaywatch.store.database import Store
from tests.factories import write_pcap

HMI, PLC, INTRUDER = "10.0.0.10", "10.0.0.20", "10.0.0.30"
MACS = {HMI: "02:00:00:00:00:10", PLC: "02:00:00:00:00:20", INTRUDER: "02:00:00:00:00:30"}
START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)


class Connection:
    """One TCP connection whose segments carry consistent sequence numbers, as a real stack sends them."""

    def __init__(self, frames: list[tuple[float, bytes]], client: str, server: str, client_port: int, port: int):
        self.frames, self.client, self.server = frames, client, server
        self.ports = (client_port, port)
        self.sequence = {client: 1000, server: 5000}
        self.transaction = 0

    def _send(self, at: float, source: str, flags: int, payload: bytes = b"") -> None:
        destination = self.server if source == self.client else self.client
        source_port, destination_port = self.ports if source == self.client else self.ports[::-1]
        segment = dpkt.tcp.TCP(
            sport=source_port,
            dport=destination_port,
            flags=flags,
            seq=self.sequence[source],
            ack=self.sequence[destination],
            data=payload,
        )
        self.sequence[source] += len(payload) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        packet = dpkt.ip.IP(
            src=socket.inet_aton(source),
            dst=socket.inet_aton(destination),
            p=dpkt.ip.IP_PROTO_TCP,
            ttl=64,
            data=segment,
        )
        packet.len = 20 + len(bytes(segment))
        frame = dpkt.ethernet.Ethernet(
            src=bytes.fromhex(MACS[source].replace(":", "")),
            dst=bytes.fromhex(MACS[destination].replace(":", "")),
            type=dpkt.ethernet.ETH_TYPE_IP,
            data=packet,
        )
        self.frames.append((START.timestamp() + at, bytes(frame)))

    def open(self, at: float) -> Connection:
        self._send(at, self.client, dpkt.tcp.TH_SYN)
        self._send(at + 0.001, self.server, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
        self._send(at + 0.002, self.client, dpkt.tcp.TH_ACK)
        return self

    def send(self, at: float, source: str, payload: bytes) -> None:
        self._send(at, source, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, payload)

    def modbus(self, at: float, request: bytes, response: bytes) -> None:
        self.transaction += 1
        for offset, source, pdu in ((0.0, self.client, request), (0.005, self.server, response)):
            header = struct.pack("!HHHB", self.transaction, 0, len(pdu) + 1, 1)
            self._send(at + offset, source, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, header + pdu)


def read(address: int, quantity: int) -> tuple[bytes, bytes]:
    return struct.pack("!BHH", 3, address, quantity), struct.pack("!BB", 3, 2 * quantity) + b"\x00\x01" * quantity


def write(address: int, value: int) -> tuple[bytes, bytes]:
    pdu = struct.pack("!BHH", 6, address, value)
    return pdu, pdu


def build(path: Path, rehearse_at: float | None = None) -> Path:
    """Polling from t=0 to t=100 s, the new things at t=200..230; ``rehearse_at`` plays them once during learning."""
    frames: list[tuple[float, bytes]] = []
    polling = Connection(frames, HMI, PLC, 40000, 502).open(0.0)
    for second in range(1, 101, 10):
        polling.modbus(second, *read(0, 10))

    def deviations(at: float, ports: tuple[int, int]) -> None:
        polling.modbus(at, *read(100, 5))
        polling.modbus(at + 10, *write(5, 1))
        Connection(frames, INTRUDER, PLC, ports[0], 502).open(at + 20).modbus(at + 20.1, *write(200, 7))
        web = Connection(frames, HMI, PLC, ports[1], 80).open(at + 30)
        web.send(at + 30.01, HMI, b"GET / HTTP/1.1\r\nHost: 10.0.0.20\r\n\r\n")
        web.send(at + 30.02, PLC, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    if rehearse_at is not None:
        deviations(rehearse_at, (41000, 41001))
    deviations(200.0, (40001, 40002))
    frames.sort()
    return write_pcap(path, frames)


def _store(tmp_path: Path, capture: Path) -> Store:
    store = Store(tmp_path / f"{capture.stem}.duckdb")
    Analyzer(store).analyze(capture)
    store.flush()
    return store


def test_new_items_after_learning_become_one_alert_each(tmp_path: Path) -> None:
    store = _store(tmp_path, build(tmp_path / "deviations.pcap"))
    assert learning_end(store.connection) is None  # no learning period chosen: D8 stays silent
    assert detect(store.connection, DetectionContext()) == []
    until = learning_end(store.connection, {"learning_share": 0.2})
    assert until is not None
    span = dt.timedelta(seconds=230.02)  # last packet: the port-80 HTTP response
    assert abs((until - START) - span * 0.2) < dt.timedelta(milliseconds=1)  # the first 20% of the span

    store.connection.execute(  # the policy stage's zone map, as policy/evaluate.py writes it (columns used here)
        "CREATE TABLE host_zones AS SELECT * FROM (VALUES (?, 'crane-cell'), (?, 'crane-cell'), (?, 'unzoned'), "
        "('203.0.113.9', 'external')) AS zones(ip, zone)",
        [HMI, PLC, INTRUDER],
    )
    alerts = detect(store.connection, DetectionContext(options={"learning_share": 0.2}))
    found = {alert.key["kind"]: alert for alert in alerts}
    assert [alert.key for alert in alerts] == [
        {"kind": "device", "ip": INTRUDER, "mac": MACS[INTRUDER]},
        {"kind": "talker_pair", "client_ip": HMI, "server_ip": PLC, "server_port": "80", "transport": "tcp"},
        {"kind": "function_code", "protocol": "modbus", "client_ip": HMI, "server_ip": PLC, "code": "6"},
        {
            "kind": "register_range",
            "client_ip": HMI,
            "server_ip": PLC,
            "unit_id": "1",
            "address_space": "holding_registers",
        },
    ]
    first_seen = {kind: (alert.first_seen - START).total_seconds() for kind, alert in found.items()}
    assert first_seen == pytest.approx(
        {"device": 220.0, "talker_pair": 230.0, "function_code": 210.0, "register_range": 200.0}, abs=0.01
    )

    device = found["device"]
    assert device.detection == "D8.baseline-deviation.device" and device.severity == "medium"
    assert sorted(item["kind"] for item in device.evidence.values["also_new"]) == [
        "function_code",
        "protocol",
        "register_range",
        "talker_pair",
    ]
    # the intruder's SYN (its flow, pair and protocol) and its write (function and range), each once
    assert [event.table for event in device.evidence.events] == ["flows", "modbus"]
    assert len(set(device.evidence.packet_numbers)) == len(device.evidence.packet_numbers) == 2
    assert device.evidence.community_ids and device.evidence.flow_ids
    assert [item["item"] for item in found["talker_pair"].evidence.values["also_new"]] == [
        f"protocol http from {HMI} to {PLC}"
    ]
    assert found["function_code"].evidence.values["also_new"] == []
    assert found["device"].assets == [PLC, INTRUDER] and found["device"].zones == ["crane-cell", "unzoned"]
    assert found["talker_pair"].zones == ["crane-cell"]
    registers = found["register_range"]
    assert registers.evidence.values["new_ranges"] == ["100-104"]
    assert registers.evidence.values["learned_ranges"] == ["0-9"]
    assert registers.techniques == ["T0861"]
    assert found["function_code"].evidence.values["code_name"] == "WRITE_SINGLE_REGISTER"
    for alert in alerts:
        assert all(attack.technique(technique) for technique in alert.techniques)
        assert alert.evidence.events and alert.evidence.events[0].packet_number in alert.evidence.packet_numbers

    rows = store.connection.execute(
        f"SELECT kind, item_key, range_start, range_end FROM {BASELINE_TABLE} ORDER BY kind, item_key"
    ).fetchall()
    kinds = {row[0] for row in rows}
    assert kinds == {"device", "talker_pair", "protocol", "function_code", "register_range"}
    assert [(row[2], row[3]) for row in rows if row[0] == "register_range"] == [(0, 9)]
    assert {json.loads(row[1])["ip"] for row in rows if row[0] == "device"} == {HMI, PLC}
    store.close()


def test_the_same_traffic_inside_the_learning_period_gives_no_alert(tmp_path: Path) -> None:
    store = _store(tmp_path, build(tmp_path / "rehearsed.pcap", rehearse_at=20.0))
    until = START + dt.timedelta(seconds=150)
    assert detect(store.connection, DetectionContext(options={"learning_until": until})) == []
    assert detect(store.connection, DetectionContext(options={"learning_until": until.isoformat()})) == []
    store.close()


def test_learned_operations_for_judging_commands_without_a_policy(tmp_path: Path) -> None:
    store = _store(tmp_path, build(tmp_path / "operations.pcap"))
    learned = learned_operations(store.connection, START + dt.timedelta(seconds=150))
    assert learned["function_codes"] == {("modbus", HMI, PLC): frozenset({"3"})}
    assert learned["register_ranges"] == {(HMI, PLC, 1, "holding_registers"): [(0, 9)]}
    everything = learned_operations(store.connection, START + dt.timedelta(days=1))
    assert everything["function_codes"][("modbus", INTRUDER, PLC)] == frozenset({"6"})
    assert everything["register_ranges"][(HMI, PLC, 1, "holding_registers")] == [(0, 9), (100, 104)]
    store.close()


def test_an_empty_store_gives_no_alert(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty.duckdb")
    assert detect(store.connection, DetectionContext(options={"learning_share": 0.2})) == []
    store.close()


RESEARCH = Path(__file__).resolve().parents[2].parent / "shared" / "research-data"
#: One small real capture per ICS protocol whose function codes are learned, with codes each one holds.
REAL_CAPTURES = {
    "s7comm": ("icsnpp-s7comm/tests/traces/snap7.pcap", {"job 4", "job 5", "job 240", "userdata 68"}),
    "dnp3": ("icsnpp-dnp3/testing/traces/dnp3_example.pcap", {"1", "3", "4"}),
    "opcua": (
        "icsnpp-opcua-binary/tests/traces/open62541_client-server_mainloop.pcap",
        {"ReadRequest", "WriteRequest", "CallRequest"},
    ),
    "iec104": ("iti-ics-security-tools/pcaps/IEC60870-5-104/TestDissectIec104.pcap", {"100", "45", "3"}),
    "enip": ("icsnpp-enip/tests/traces/multiple_service_packet_cip.pcapng", {"10", "3"}),
}


def test_function_codes_are_learned_from_real_captures_of_every_ics_protocol(tmp_path: Path) -> None:
    """The per-protocol SQL (S7comm jobs and user data, CIP services, DNP3, IEC 104 types, OPC UA services)."""
    store = Store(tmp_path / "real.duckdb")
    analyzer = Analyzer(store)
    for relative, _ in REAL_CAPTURES.values():
        capture = RESEARCH / relative
        if not capture.exists():
            pytest.skip(f"research data missing: {capture}")
        analyzer.analyze(capture)
    store.flush()
    learned = learned_operations(store.connection, dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    by_protocol: dict[str, set[str]] = {}
    for (protocol, _, _), codes in learned["function_codes"].items():
        by_protocol.setdefault(protocol, set()).update(codes)
    for protocol, (_, expected) in REAL_CAPTURES.items():
        assert expected <= by_protocol.get(protocol, set()), protocol
    store.close()

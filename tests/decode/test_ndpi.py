"""Every flow of nDPI's sample captures against nDPI's own classification, with all decoders registered.

nDPI's ``result/*.out`` files list each flow with the protocol its deep inspection found. Two checks:

* Recall: of the flows nDPI classifies by content (``Confidence: DPI``) as a protocol we decode, at least 95% are
  claimed by our decoder of that protocol; the issues ask for this per protocol class.
* Quiet elsewhere: a flow nDPI classifies as a protocol we have no decoder for (Syslog, CoAP, FINS, HART-IP ...)
  is claimed by none of ours, since a decoder that claims foreign traffic writes false events.

Run with ``-s`` for the table.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.registry import all_decoders
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

pytestmark = pytest.mark.oracle

NDPI = RESEARCH / "ndpi/tests/cfgs/default"

#: nDPI protocol name -> our decoders that may claim such a flow (flows.application).
OURS = {
    "Modbus": {"modbus"},
    "S7Comm": {"s7comm"},
    "S7CommPlus": {"s7comm"},
    "EthernetIP": {"enip", "enip_udp"},
    "CIP": {"enip_udp"},
    "DNP3": {"dnp3"},
    "IEC60870": {"iec104"},
    "OPC-UA": {"opcua"},
    "MQTT": {"mqtt"},
    "BACnet": {"bacnet"},
    "DNS": {"dns"},
    "TLS": {"tls"},
    "HTTP": {"http"},
    "SSH": {"ssh"},
    "DHCP": {"dhcp"},
    "DHCPV6": {"dhcpv6"},
    "SNMP": {"snmp"},
    "NTP": {"ntp"},
    "RTSP": {"rtsp"},
    "FTP_CONTROL": {"ftp"},
    "Telnet": {"telnet"},
    "TFTP": {"tftp"},
    "RDP": {"rdp"},
    "VNC": {"vnc"},
    "GTP": {"gtp"},
    "IPSec": {"ike", "gtp"},  # nDPI's IPSec flow in these samples is ESP inside GTP-U: the outer flow is GTP
    "OpenVPN": {"openvpn_udp", "openvpn_tcp"},
    "WireGuard": {"wireguard"},
    "TeamViewer": {"teamviewer_tcp", "teamviewer_udp"},
    "PPTP": {"pptp"},
}
#: (capture, server port) -> why our decoders leave a flow that nDPI classifies as one of ours.
EXPLAINED_MISSES = {
    ("coap_mqtt.pcap", 17501): (
        "three connections that hold only MQTT PINGREQ/PINGRESP (c0 00 / d0 00) on port 17501: off port 1883 our "
        "MQTT probe needs a CONNECT, since two bytes are too little to claim a flow by; nDPI accepts the ping"
    ),
}
#: nDPI classes we decode on purpose in no flow of their own, with the reason.
NOT_FLOWS = {
    "FTP_DATA": "an FTP data connection carries file bytes; its addresses are in the control connection's rows",
}
LINE = re.compile(
    r"^\s+\d+\s+(TCP|UDP)\s+(\S+)\s+<->\s+(\S+)\s+\[proto: ([^\]]+)\].*?\[Confidence: ([^\]]+)\]"
)  # fmt: skip


def endpoint(text: str) -> tuple[str, int]:
    address, port = text.rsplit(":", 1)
    return address.strip("[]"), int(port)


def ndpi_flows() -> list[tuple[Path, str, frozenset[tuple[str, int]], str]]:
    """(capture, transport, endpoints, nDPI's protocol: the inner one of a "GTP:IPSec" style label)."""
    if not NDPI.exists():
        pytest.skip(f"research data missing: {NDPI}")
    flows = []
    for result in sorted((NDPI / "result").glob("*.out")):
        capture = NDPI / "pcap" / result.name.removesuffix(".out")
        for line in result.read_text(errors="replace").splitlines():
            match = LINE.match(line)
            if not match or match.group(5) != "DPI" or not capture.exists():
                continue
            transport, first, second, protocol = match.group(1, 2, 3, 4)
            name = protocol.split("/", 1)[1].split(".")[0]
            flows.append((capture, transport.lower(), frozenset({endpoint(first), endpoint(second)}), name))
    return flows


def test_our_decoders_claim_the_flows_ndpi_classifies(tmp_path: Path) -> None:
    flows = ndpi_flows()
    store = Store(tmp_path / "ndpi.duckdb")
    analyzer = Analyzer(store, decoders=all_decoders())
    claimed: dict[tuple[Path, str, frozenset[tuple[str, int]]], set[str]] = {}
    for capture in sorted({f[0] for f in flows}):
        identity = analyzer.analyze(capture).capture_id
        store.flush()
        rows = store.connection.execute(
            "SELECT transport, client_ip, client_port, server_ip, server_port, application FROM flows "
            "WHERE capture_id = ?",
            [identity],
        ).fetchall()
        for transport, client_ip, client_port, server_ip, server_port, application in rows:
            key = (capture, transport, frozenset({(client_ip, client_port), (server_ip, server_port)}))
            claimed.setdefault(key, set())
            if application:
                claimed[key].add(application)
    store.close()
    recall: Counter[str] = Counter()
    total: Counter[str] = Counter()
    missed, foreign, skipped = [], [], Counter()
    reasons = dict(NOT_FLOWS)
    for capture, transport, endpoints, name in flows:
        ours = claimed.get((capture, transport, endpoints), set())
        if name in NOT_FLOWS:
            skipped[name] += 1
        elif name in OURS:
            total[name] += 1
            ports = {port for _, port in endpoints}
            reason = next((r for (c, p), r in EXPLAINED_MISSES.items() if c == capture.name and p in ports), None)
            if ours & OURS[name]:
                recall[name] += 1
            elif reason:
                total[name] -= 1
                skipped[f"{name} in {capture.name}"] += 1
                reasons[f"{name} in {capture.name}"] = reason
            else:
                missed.append(f"{capture.name} {transport} {sorted(endpoints)} {name}: ours {sorted(ours) or 'none'}")
        elif ours:
            foreign.append(f"{capture.name} {transport} {sorted(endpoints)} nDPI {name}: claimed by {sorted(ours)}")
        else:
            recall["(not ours, quiet)"] += 1
    print(f"\nnDPI flows classified by content: {len(flows)}")
    for name in sorted(total):
        print(f"  {name:14s} {recall[name]:3d}/{total[name]:<3d}")
    print(f"  flows of protocols we do not decode, left unclaimed: {recall['(not ours, quiet)']}")
    print(*[f"  not compared: {n} ({c}): {reasons[n]}" for n, c in skipped.items()], sep="\n")
    print(*[f"  missed: {m}" for m in missed], *[f"  foreign: {f}" for f in foreign], sep="\n")
    assert sum(total.values()) >= 50, "the nDPI samples should hold many flows of our protocols"
    assert sum(recall[n] for n in total) >= 0.95 * sum(total.values()), missed
    for name in total:
        assert recall[name] >= 0.95 * total[name], f"{name}: {missed}"
    assert not foreign, foreign

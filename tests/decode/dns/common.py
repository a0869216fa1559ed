"""Shared pieces of the DNS tests: the captures with DNS in the research data, and running the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.dns import DnsTcpDecoder, DnsUdpDecoder
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

Record = dict[str, object]
NDPI = RESEARCH / "ndpi/tests/cfgs/default"

#: Every capture under 3 MB in the research data where tshark 4.0 finds DNS, mDNS or LLMNR
#: (`tshark -Y "dns || mdns || llmnr"` over each file; dns2tcp_tunnel.pcap is TLS on 443 and has none).
CAPTURES = [
    "ndpi/tests/cfgs/default/pcap/dns.pcap",
    "ndpi/tests/cfgs/default/pcap/dns-exf.pcap",
    "ndpi/tests/cfgs/default/pcap/malformed_dns.pcap",
    "iti-ics-security-tools/pcaps/C37.118/C37118/c37118_1100_unclean.pcap",
    "iti-ics-security-tools/pcaps/C37.118/C37118/c37_pmu_unclean.pcap",
    "iti-ics-security-tools/pcaps/s7/S7Comm/wrapup.pcapng",
    "iti-ics-security-tools/pcaps/beckoff/addrouteuse444444444.pcapng",
    "iti-ics-security-tools/pcaps/beckoff/addroute.pcapng",
    "iti-ics-security-tools/pcaps/beckoff/beckoffiplinktc2.pcapng",
    "iti-ics-security-tools/pcaps/beckoff/beckoffaddroute.pcapng",
    "iti-ics-security-tools/pcaps/beckoff/addroute1.pcapng",
    "iti-ics-security-tools/pcaps/beckoff/invokeid12.pcapng",
    "iti-ics-security-tools/pcaps/MELSEC/melsoft_UDP_unclean_1.pcap",
    "iti-ics-security-tools/pcaps/profinet/Profinet_Failed.pcap",
    "zeek-btest/testing/btest/Traces/modbus/modbusSmall.pcap",
    "zeek-btest/testing/btest/Traces/tunnels/gtp/gtp7_ipv6.pcap",
    "zeek-btest/testing/btest/Traces/tunnels/gtp/gtp3_false_gtp.pcap",
    "icsnpp-opcua-binary/tests/traces/open62541_client-server_mainloop.pcap",
    "icsnpp-opcua-binary/pcaps/open62541_client-server_mainloop.pcap",
    "icsnpp-opcua-binary/pcaps/open62541_discover_getendpoints_discover_urls.pcap",
    "suricata-verify/tests/ssh-hassh/input.pcap",
    "suricata-verify/tests/ssh-banner-only/input.pcap",
]


def present() -> list[Path]:
    paths = [RESEARCH / name for name in CAPTURES if (RESEARCH / name).exists()]
    if not paths:
        pytest.skip(f"research data missing: none of the DNS captures is under {RESEARCH}")
    return paths


def query(store: Store, sql: str) -> list[Record]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _has(store: Store, table: str) -> bool:
    found = store.connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()
    return bool(found and found[0])


def analyse(tmp_path: Path, capture: Path) -> dict[str, list[Record]]:
    """The dns, anomaly and flows tables of one capture through the real pipeline."""
    store = Store(tmp_path / f"{capture.parent.name}_{capture.stem}.duckdb")
    Analyzer(store, decoders=[DnsUdpDecoder(), DnsTcpDecoder()]).analyze(capture)
    tables = {
        "dns": query(store, "SELECT * FROM dns ORDER BY packet_number, message_id") if _has(store, "dns") else [],
        "anomaly": query(store, "SELECT * FROM anomaly ORDER BY packet_number") if _has(store, "anomaly") else [],
        "flows": query(store, "SELECT * FROM flows"),
    }
    store.close()
    return tables


def require_tshark() -> None:
    import shutil

    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")


def analyse_many(tmp_path: Path, captures: list[Path]) -> tuple[dict[Path, list[Record]], dict[Path, int]]:
    """The dns rows and the packet count of each capture, all analysed into one store (a store per capture costs
    more than the analysis). A capture whose content repeats an earlier one shares its rows and count."""
    store = Store(tmp_path / "dns_corpus.duckdb")
    analyser = Analyzer(store, decoders=[DnsUdpDecoder(), DnsTcpDecoder()])
    results = {capture: analyser.analyze(capture) for capture in captures}
    rows = (
        query(store, "SELECT * FROM dns ORDER BY capture_id, packet_number, message_id") if _has(store, "dns") else []
    )
    counts = dict(store.connection.execute("SELECT capture_id, packets FROM captures").fetchall())
    store.close()
    decoded = {
        capture: [r for r in rows if r["capture_id"] == result.capture_id] for capture, result in results.items()
    }
    return decoded, {capture: int(counts[result.capture_id]) for capture, result in results.items()}

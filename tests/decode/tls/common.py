"""Shared pieces of the TLS tests: the traces with TLS handshakes and running the analyser on one."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.tls import TABLES, TlsDecoder
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

ZEEK = RESEARCH / "zeek-btest/testing/btest"
NDPI = RESEARCH / "ndpi/tests/cfgs/default"

#: Every capture in research-data with a TLS handshake over TCP (a bounded byte scan for a handshake record header
#: followed by a hello, confirmed with tshark), and the port tshark must be told is TLS (``-d``) where it would
#: otherwise decode RDP/TPKT or Modbus. Left out: rdpeudp*.pcap (TLS inside RDP-UDP, not TCP), gtp6_gtp_0x32.pcap
#: (inside a GTP-U tunnel, which the ingest does not open), wincc_s400_production.pcapng (a false byte match: S7).
TRACES = {
    "rdp-to-ssl": (ZEEK / "Traces/rdp/rdp-to-ssl.pcap", 3389),
    "rdp-no-cookie-mstshash": (ZEEK / "Traces/rdp/rdp-no-cookie-mstshash.pcap", 3389),
    "modbus-and-non-modbus-p502": (ZEEK / "Traces/modbus/modbus-and-non-modbus-p502.pcap", 502),
    "dns2tcp_tunnel": (NDPI / "pcap/dns2tcp_tunnel.pcap", 443),
}

Record = dict[str, object]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def analyse(tmp_path: Path, capture: Path) -> dict[str, list[Record]]:
    """The tls, tls_certificate and anomaly rows of one capture, in capture order, through the real pipeline."""
    store = Store(tmp_path / f"{capture.stem}.duckdb")
    Analyzer(store, decoders=[TlsDecoder()]).analyze(require(capture))
    tables: dict[str, list[Record]] = {}
    for name in [*TABLES, "anomaly"]:
        exists = store.connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchone()
        if not (exists and exists[0]):
            tables[name] = []
            continue
        cursor = store.connection.execute(f"SELECT * FROM {name} ORDER BY packet_number")
        names = [column[0] for column in cursor.description]
        tables[name] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    store.close()
    return tables

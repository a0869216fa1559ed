"""Shared pieces of the DNP3 tests: oracle locations and running the analyser on a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Decoder
from quaywatch.decode.dnp3 import TABLES, Dnp3TcpDecoder, Dnp3UdpDecoder
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

ICSNPP = RESEARCH / "icsnpp-dnp3/testing"
ZEEK = RESEARCH / "zeek-btest/testing/btest"
SURICATA = RESEARCH / "suricata-verify/tests/dnp3"
ITI = RESEARCH / "iti-ics-security-tools/pcaps"
AUTOMAYT = RESEARCH / "automayt-ICS-pcap/DNP3"

Record = dict[str, object]
ORDER = {
    "dnp3": "packet_number, flow_id, message_id",
    "dnp3_objects": "packet_number, flow_id, message_id, header_index",
    "dnp3_control": "packet_number, flow_id, message_id, header_index",
    "dnp3_link": "packet_number, flow_id",
    "anomaly": "packet_number",
}


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def decoders() -> list[Decoder]:
    return [Dnp3TcpDecoder(), Dnp3UdpDecoder()]


def query(store: Store, sql: str) -> list[Record]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def analyse(tmp_path: Path, capture: Path) -> dict[str, list[Record]]:
    """Every DNP3 table (and the anomalies) of one capture, in capture order."""
    store = Store(tmp_path / f"{capture.stem}.duckdb")
    Analyzer(store, decoders=decoders()).analyze(require(capture))
    tables = {}
    for name in [*TABLES, "anomaly"]:
        exists = store.connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchone()
        tables[name] = query(store, f"SELECT * FROM {name} ORDER BY {ORDER[name]}") if exists and exists[0] else []
    store.close()
    return tables

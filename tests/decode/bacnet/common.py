"""Shared pieces of the BACnet tests: oracle locations and running the analyser on a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.bacnet import TABLES, BacnetDecoder
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

ICSNPP = RESEARCH / "icsnpp-bacnet/testing"
ITI = RESEARCH / "iti-ics-security-tools/pcaps"
NDPI = RESEARCH / "ndpi/tests/cfgs/default/pcap"

Record = dict[str, object]
ORDER = {
    "bacnet": "packet_number, flow_id, message_id",
    "bacnet_discovery": "packet_number, flow_id, message_id",
    "bacnet_property": "packet_number, flow_id, message_id",
    "bacnet_device_control": "packet_number, flow_id, message_id",
    "anomaly": "packet_number",
}


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def query(store: Store, sql: str) -> list[Record]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def analyse(tmp_path: Path, capture: Path) -> dict[str, list[Record]]:
    """Every BACnet table (and the anomalies) of one capture, in capture order, through the real pipeline."""
    store = Store(tmp_path / f"{capture.stem}.duckdb")
    Analyzer(store, decoders=[BacnetDecoder()]).analyze(require(capture))
    tables = {}
    for name in [*TABLES, "anomaly"]:
        exists = store.connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchone()
        tables[name] = query(store, f"SELECT * FROM {name} ORDER BY {ORDER[name]}") if exists and exists[0] else []
    store.close()
    return tables

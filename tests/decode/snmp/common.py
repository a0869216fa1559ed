"""Shared pieces of the SNMP (and FTP, telnet, TFTP, NTP, RTSP) tests: the real pipeline and nDPI flow lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Decoder
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

ZEEK = RESEARCH / "zeek-btest/testing/btest"
SURICATA = RESEARCH / "suricata-verify/tests"
NDPI = RESEARCH / "ndpi/tests/cfgs/default"

Record = dict[str, object]
Endpoints = frozenset[tuple[str, int]]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def analyse(tmp_path: Path, capture: Path, decoders: list[Decoder], tables: list[str]) -> dict[str, list[Record]]:
    """The named tables (plus anomaly and flows) of one capture through the real pipeline, in packet order."""
    store = Store(tmp_path / f"{capture.name}-{len(list(tmp_path.iterdir()))}.duckdb")
    Analyzer(store, decoders=decoders).analyze(require(capture))
    out: dict[str, list[Record]] = {}
    for name in [*tables, "anomaly", "flows"]:
        exists = store.connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchone()
        if not exists or not exists[0]:
            out[name] = []
            continue
        order = "ts, flow_id" if name == "flows" else "packet_number"
        cursor = store.connection.execute(f"SELECT * FROM {name} ORDER BY {order}")
        columns = [column[0] for column in cursor.description]
        out[name] = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    store.close()
    return out


def ndpi_flows(capture: str, protocol: str) -> set[Endpoints]:
    """The flows nDPI's result file for ``capture`` classifies as ``protocol`` (master or application)."""
    result = require(NDPI / "result" / f"{capture}.out").read_text()
    line = re.compile(
        r"(?:TCP|UDP) \[?([0-9a-f.:]+?)\]?:(\d+) <?-> \[?([0-9a-f.:]+?)\]?:(\d+) .*?\[proto: [0-9.]+/([A-Za-z0-9_.]+)\]"
    )
    found = set()
    for text in result.splitlines():
        match = line.search(text)
        if match and protocol in match[5].split("."):
            found.add(frozenset([(match[1], int(match[2])), (match[3], int(match[4]))]))
    return found


def claimed(flows: list[Record], application: str) -> set[Endpoints]:
    return {
        frozenset([(str(f["client_ip"]), int(f["client_port"])), (str(f["server_ip"]), int(f["server_port"]))])  # type: ignore[call-overload]
        for f in flows
        if f.get("application") == application
    }

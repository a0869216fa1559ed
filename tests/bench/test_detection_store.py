"""bench/detection_store.py: the million-flow store must stay a faithful, joinable copy of its seed."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import duckdb

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("detection_store", ROOT / "bench" / "detection_store.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["detection_store"] = module
    spec.loader.exec_module(module)
    return module


def _seed(path: Path) -> None:
    start = dt.datetime(2025, 11, 25, 8, 55, tzinfo=dt.UTC)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE captures (capture_id VARCHAR, sha256 VARCHAR, first_ts TIMESTAMPTZ, last_ts TIMESTAMPTZ)")
    con.execute("INSERT INTO captures VALUES ('c', 'h', ?, ?)", [start, start + dt.timedelta(seconds=300)])
    con.execute("CREATE TABLE flows (capture_id VARCHAR, flow_id VARCHAR, client_ip VARCHAR, ts TIMESTAMPTZ)")
    con.execute("INSERT INTO flows VALUES ('c', 'f1', '10.10.1.40', ?), ('c', 'f2', '10.10.1.41', ?)", [start, start])
    con.execute("CREATE TABLE flow_policy (capture_id VARCHAR, flow_id VARCHAR, verdict VARCHAR)")
    con.execute("INSERT INTO flow_policy VALUES ('c', 'f1', 'violation'), ('c', 'f2', 'allowed')")
    con.execute("CREATE TABLE cip_io (capture_id VARCHAR, ts TIMESTAMPTZ)")  # read by no detection: copied once
    con.execute("INSERT INTO cip_io VALUES ('c', ?)", [start])
    con.execute("CREATE TABLE assets (asset_id VARCHAR, first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ)")
    con.execute("INSERT INTO assets VALUES ('a', ?, ?)", [start, start + dt.timedelta(seconds=300)])
    con.close()


def test_copies_are_shifted_captures_whose_flows_still_join_their_verdicts(tmp_path: Path) -> None:
    seed, out = tmp_path / "seed.duckdb", tmp_path / "out.duckdb"
    _seed(seed)
    counts = _module().build(seed, out, flows=5, threads=1)
    assert counts["flows"] == 6 and counts["flow_policy"] == 6 and counts["captures"] == 3 and counts["cip_io"] == 1
    con = duckdb.connect(str(out), read_only=True)
    joined = con.execute(
        "SELECT count(*), count(DISTINCT (capture_id, flow_id)) FROM flows JOIN flow_policy USING (capture_id, flow_id)"
    ).fetchone()
    assert joined == (6, 6)  # every copy's flow meets its own verdict, and only it
    spans = con.execute(
        "SELECT capture_id, epoch(min(ts)) - epoch((SELECT min(ts) FROM flows)) FROM flows GROUP BY 1 ORDER BY 2"
    ).fetchall()
    assert [offset for _, offset in spans] == [0, 300, 600]  # one five-minute capture after another
    addresses = con.execute("SELECT DISTINCT client_ip FROM flows ORDER BY 1").fetchall()
    assert addresses == [("10.10.1.40",), ("10.10.1.41",)]  # addresses kept: the inventory and zones stay true
    last_seen = con.execute("SELECT epoch(last_seen - first_seen) FROM assets").fetchone()
    assert last_seen == (900,)  # the asset is seen over the whole replicated period

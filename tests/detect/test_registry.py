"""The engine: a statistical module plugs in next to the rules; host_context joins assets and policy zones."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

from quaywatch.detect.alert import Alert
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import build_context_views, run_detections
from quaywatch.policy.load import load_policy
from tests.detect.simulated_d6_d7 import analysed

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def test_module_runs_after_rules_and_is_skipped_without_its_tables() -> None:
    con = duckdb.connect()
    seen: list[Any] = []

    def detect(connection: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
        seen.append(context.now)
        return [Alert("D4.beaconing", "beacon", {"client_ip": "10.0.0.5"}, "high", 0.8, ["T0869"], NOW, NOW, 3, "x")]

    module = SimpleNamespace(DETECTION="D4.beaconing", REQUIRES=("flows",), detect=detect, __name__="beaconing")
    summary = run_detections(con, DetectionContext(now=NOW), rules=[], modules=[module])  # type: ignore[list-item]
    assert summary.skipped == {"D4.beaconing": "no table flows in the store"} and seen == []
    con.execute("CREATE TABLE flows (flow_id VARCHAR)")
    summary = run_detections(con, DetectionContext(now=NOW), rules=[], modules=[module])  # type: ignore[list-item]
    assert summary.alerts == {"D4.beaconing": 1} and seen == [NOW]
    assert con.execute("SELECT detection, count FROM alerts").fetchall() == [("D4.beaconing", 3)]


def test_host_context_prefers_policy_zones_and_falls_back_to_roles() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE assets (asset_id VARCHAR, ips VARCHAR[], role VARCHAR, maker VARCHAR, "
        "maker_country VARCHAR, listed VARCHAR[], maker_roles VARCHAR[])"
    )
    con.execute(
        "INSERT INTO assets VALUES ('a1', ['10.0.0.40'], 'PLC', 'Schneider', 'FR', [], []), "
        "('a2', ['10.0.0.9'], 'workstation', NULL, NULL, [], []), "
        "('a3', ['10.0.0.7'], 'workstation', NULL, NULL, [], [])"
    )
    build_context_views(con)
    rows = dict(con.execute("SELECT ip, ot FROM host_context").fetchall())
    assert rows == {"10.0.0.40": True, "10.0.0.9": False, "10.0.0.7": False}
    con.execute("CREATE TABLE host_zones (ip VARCHAR, zone VARCHAR, purdue DOUBLE, ot BOOLEAN, source VARCHAR)")
    con.execute(
        "INSERT INTO host_zones VALUES ('10.0.0.7', 'crane', 1, true, 'policy'), "
        "('10.0.0.99', 'crane', 1, true, 'policy')"
    )
    build_context_views(con)
    rows = {r[0]: r[1:] for r in con.execute("SELECT ip, ot, zone, asset_id FROM host_context").fetchall()}
    assert rows["10.0.0.7"] == (True, "crane", "a3")  # the policy says OT whatever the role
    assert rows["10.0.0.99"] == (True, "crane", None)  # a zone address with no asset yet


def test_summary_times_every_detection_that_ran_and_only_those() -> None:
    """Per-detection seconds are how the benchmark finds the slow detection; a skipped one has no time."""
    con = duckdb.connect()
    con.execute("CREATE TABLE flows (flow_id VARCHAR)")

    def slow(connection: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
        connection.execute("SELECT sum(range) FROM range(3000000)").fetchall()
        return []

    timed = SimpleNamespace(DETECTION="D4.beaconing", REQUIRES=("flows",), detect=slow, __name__="beaconing")
    absent = SimpleNamespace(DETECTION="D5.dns-tunnelling", REQUIRES=("dns",), detect=slow, __name__="dns")
    summary = run_detections(con, DetectionContext(now=NOW), rules=[], modules=[timed, absent])  # type: ignore[list-item]
    assert set(summary.seconds) == {"context", "D4.beaconing", "write"}
    assert summary.seconds["D4.beaconing"] > 0
    assert summary.to_dict()["seconds"]["D4.beaconing"] == round(summary.seconds["D4.beaconing"], 6)


def test_workers_give_the_same_alerts_in_the_same_order(tmp_path: Path) -> None:
    """Detections on two threads, each with a cursor of its own: the alerts equal those of one, row for row."""
    scenarios: list[tuple[str, dict[str, Any]]] = [
        ("sabotage", {}),
        ("container-exfiltration", {}),
        ("cellular-modem", {}),
    ]
    database = analysed(tmp_path, seed=31, duration=90, scenarios=scenarios)
    policy = load_policy(tmp_path / "policy.yaml")[0]
    results = []
    for workers in (1, 2):
        copy = tmp_path / f"workers-{workers}.duckdb"
        shutil.copy(database, copy)
        con = duckdb.connect(str(copy))
        try:
            context = DetectionContext(policy=policy, now=NOW, options={"learning_share": 0.3})
            summary = run_detections(con, context, workers=workers)
            rows = con.execute("SELECT * FROM alerts ORDER BY occurrence_id").fetchall()
        finally:
            con.close()
        assert not summary.failed, summary.failed
        results.append((rows, summary.alerts, sorted(summary.seconds)))
    assert results[0] == results[1]
    assert len(results[0][0]) >= 5 and {name.split(".")[0] for name in results[0][1] if results[0][1][name]} >= {
        "D1", "D6", "D7", "D8"}  # fmt: skip


def test_a_module_in_parts_runs_them_on_workers_and_combines_them_in_order() -> None:
    """``PARTS``: each part is a task of its own (so two workers can share a long module), ``combine`` gets their
    results in ``PARTS`` order whatever order they finished in, and one worker gives the same alerts."""
    ran: list[tuple[str, str]] = []

    def detect_part(connection: duckdb.DuckDBPyConnection, context: DetectionContext, part: str) -> list[str]:
        connection.execute("SELECT sum(range) FROM range(200000)").fetchall()
        ran.append((part, threading.current_thread().name))
        return [part]

    def combine(context: DetectionContext, results: list[list[str]]) -> list[Alert]:
        names = [name for result in results for name in result]
        return [Alert("D4.beaconing", "parts", {"parts": ",".join(names)}, "low", 0.5, ["T0869"], NOW, NOW, 1, "x")]

    def detect(connection: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
        return combine(context, [detect_part(connection, context, part) for part in parted.PARTS])

    parted = SimpleNamespace(DETECTION="D4.beaconing", REQUIRES=(), PARTS={"small": 0.1, "large": 0.3},
                             detect_part=detect_part, combine=combine, detect=detect, __name__="beaconing")  # fmt: skip
    keys = []
    for workers in (1, 2):
        ran.clear()
        con = duckdb.connect()
        summary = run_detections(con, DetectionContext(now=NOW), rules=[], modules=[parted], workers=workers)  # type: ignore[list-item]
        keys.append(con.execute("SELECT key_json FROM alerts").fetchall())
        assert summary.alerts == {"D4.beaconing": 1} and not summary.failed
        assert summary.seconds["D4.beaconing"] > 0
        if workers == 2:  # the costlier part starts first, each part on a worker of its own
            assert [part for part, _ in ran] in (["large", "small"], ["small", "large"])
            assert all(name.startswith("detect-") for _, name in ran)
    assert keys[0] == keys[1] == [('{"parts": "small,large"}',)]


def test_a_failing_part_fails_its_module_and_the_others_still_run() -> None:
    def detect_part(connection: duckdb.DuckDBPyConnection, context: DetectionContext, part: str) -> list[str]:
        if part == "broken":
            connection.execute("SELECT no_such_column FROM range(1)")
        return [part]

    def combine(context: DetectionContext, results: list[list[str]]) -> list[Alert]:
        return []

    parted = SimpleNamespace(DETECTION="D4.beaconing", REQUIRES=(), PARTS={"fine": 0.2, "broken": 0.1},
                             detect_part=detect_part, combine=combine, __name__="beaconing")  # fmt: skip
    other = SimpleNamespace(DETECTION="D5.dns-tunnelling", REQUIRES=(), detect=lambda con, context: [],
                            __name__="dns_tunnelling")  # fmt: skip
    summary = run_detections(duckdb.connect(), DetectionContext(now=NOW), rules=[], modules=[parted, other], workers=2)  # type: ignore[list-item]
    assert set(summary.failed) == {"D4.beaconing"} and "no_such_column" in summary.failed["D4.beaconing"]
    assert summary.alerts == {"D5.dns-tunnelling": 0}


def test_the_cycle_collector_pauses_for_the_run_and_comes_back_as_it_was() -> None:
    """Off while detections run, on workers too; afterwards as before, also when a module raises and when the
    caller had it off; a cycle made during the run is collected once it is back on."""
    import gc
    import weakref

    seen: list[bool] = []
    made: list[weakref.ref[Any]] = []

    class Node:
        peer: Any = None

    def detect(connection: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
        seen.append(gc.isenabled())
        first, second = Node(), Node()
        first.peer, second.peer = second, first  # a reference cycle: only the collector frees it
        made.append(weakref.ref(first))
        return []

    def broken(connection: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
        raise RuntimeError("a module bug")

    module = SimpleNamespace(DETECTION="D4.beaconing", REQUIRES=(), detect=detect, __name__="beaconing")
    other = SimpleNamespace(DETECTION="D5.dns-tunnelling", REQUIRES=(), detect=detect, __name__="dns_tunnelling")
    assert gc.isenabled()
    for workers in (1, 2):
        run_detections(duckdb.connect(), DetectionContext(now=NOW), rules=[], modules=[module, other], workers=workers)  # type: ignore[list-item]
        assert gc.isenabled()
    assert seen == [False] * 4
    gc.collect()
    assert all(reference() is None for reference in made)
    failing = SimpleNamespace(DETECTION="D4.beaconing", REQUIRES=(), detect=broken, __name__="beaconing")
    with pytest.raises(RuntimeError, match="a module bug"):
        run_detections(duckdb.connect(), DetectionContext(now=NOW), rules=[], modules=[failing])  # type: ignore[list-item]
    assert gc.isenabled()
    gc.disable()
    try:
        run_detections(duckdb.connect(), DetectionContext(now=NOW), rules=[], modules=[module])  # type: ignore[list-item]
        assert not gc.isenabled()
    finally:
        gc.enable()

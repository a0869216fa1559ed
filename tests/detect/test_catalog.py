"""The run's catalogue reading answers exactly as the catalogue queries it replaces, and only during the run."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import duckdb

from quaywatch.detect import catalog
from quaywatch.detect.alert import Alert
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import build_context_views, run_detections

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _store() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE flows (flow_id VARCHAR, ts TIMESTAMPTZ, server_port INTEGER, tags VARCHAR[])")
    con.execute("CREATE TABLE hosts (host_id VARCHAR, ips VARCHAR[], role VARCHAR)")
    con.execute("CREATE VIEW recent AS SELECT flow_id FROM flows")
    con.execute("CREATE TEMP TABLE scratch (a BIGINT, b STRUCT(x INTEGER))")
    build_context_views(con)
    return con


def _answers(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    names = ("flows", "hosts", "recent", "scratch", "host_context", "absent")
    return {
        "tables": catalog.tables(con),
        "views": catalog.views(con),
        "relations": catalog.relations(con),
        **{f"columns {name}": list(catalog.columns(con, name).items()) for name in names},
    }


def test_reading_answers_like_the_queries() -> None:
    con = _store()
    queried = _answers(con)  # not registered: each helper runs its own catalogue query
    assert {"flows", "hosts", "scratch", "host_context"} <= queried["tables"] and "recent" not in queried["tables"]
    assert {"flows", "recent", "scratch", "host_context"} <= queried["relations"]
    assert queried["columns flows"] == [
        ("flow_id", "VARCHAR"), ("ts", "TIMESTAMP WITH TIME ZONE"), ("server_port", "INTEGER"), ("tags", "VARCHAR[]")
    ]  # fmt: skip
    assert queried["columns absent"] == []
    with catalog.registered(con):
        assert _answers(con) == queried
        con.execute("CREATE TABLE later (x INTEGER)")  # made during the run: not in the reading
        assert "later" not in catalog.tables(con)
    assert "later" in catalog.tables(con)  # the run is over: asked again


def test_registration_is_per_connection() -> None:
    con = _store()
    cursor = con.cursor()
    with catalog.registered(con):
        assert catalog._cached(con) is not None and catalog._cached(cursor) is None
    assert catalog._cached(con) is None


def test_engine_reads_once_and_leaves_nothing_registered() -> None:
    con = _store()
    seen: list[set[str]] = []

    def detect(connection: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
        seen.append(catalog.relations(connection))
        assert catalog._cached(connection) is not None  # the engine registered the connection it runs on
        return []

    module = SimpleNamespace(DETECTION="D4.beaconing", REQUIRES=("flows",), detect=detect, __name__="beaconing")
    for workers in (1, 2):
        run_detections(con, DetectionContext(now=NOW), rules=[], modules=[module, module], workers=workers)  # type: ignore[list-item]
    assert len(seen) == 4 and all({"flows", "host_context"} <= relations for relations in seen)
    assert not catalog._REGISTERED

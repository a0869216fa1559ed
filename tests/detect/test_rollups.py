"""The per-capture summaries (detect/rollups.py): D7, D8 and D4 give the same alerts from them as from the raw rows.

A simulated terminal with sabotage and reconnaissance, cut into two captures and analysed into one store. The
summaries must change nothing: the same alerts with and without them, with a learning period ending between the
captures (every capture read from its summary) and inside one (that capture read raw); and once every capture is
summarised the raw ICS rows are not needed at all.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect import baseline, beaconing, catalog, ics_commands, rollups
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.policy.load import load_policy
from quaywatch.sim.simulate import simulate
from quaywatch.store.database import Store

RAW_TABLES = ("modbus", "s7comm", "cip", "enip", "dnp3", "iec104", "opcua", "profinet_dcp", "bacnet_property",
              "bacnet_device_control")  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rollups")
    simulate(directory, seed=23, duration=120, scale=0.2, scenarios=[("sabotage", {}), ("reconnaissance", {})])
    parts = directory / "parts"
    parts.mkdir()
    subprocess.run(["editcap", "-i", "60", str(directory / "capture.pcapng"), str(parts / "part.pcapng")], check=True)
    database = directory / "db.duckdb"
    result = CliRunner().invoke(
        main,
        ["analyze", *sorted(str(path) for path in parts.iterdir()), "--db", str(database), "--policy",
         str(directory / "policy.yaml"), "--inventory", str(directory / "declared-inventory.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return directory


def _learning_ends(directory: Path) -> dict[str, dt.datetime]:
    """Where the second capture starts (no capture spans it) and half way through the second capture."""
    con = duckdb.connect(str(directory / "db.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT first_ts, last_ts FROM captures ORDER BY first_ts").fetchall()
    finally:
        con.close()
    first, last = rows[1]
    return {"between-captures": first, "inside-a-capture": first + (last - first) / 2}


def _alerts(directory: Path, name: str, options: dict[str, Any], policy: bool, change: str = "") -> list[Any]:
    """D7, D8 and D4 alert rows (without their detection time) on a copy of the store, after ``change`` (SQL)."""
    database = directory / f"{name}.duckdb"
    shutil.copy(directory / "db.duckdb", database)
    con = duckdb.connect(str(database))
    try:
        for statement in filter(None, change.split(";")):
            con.execute(statement)
        site_policy = load_policy(directory / "policy.yaml")[0] if policy else None
        run_detections(con, DetectionContext(policy=site_policy, options=options), rules=[],
                       modules=[baseline, ics_commands, beaconing])  # fmt: skip
        cursor = con.execute("SELECT * EXCLUDE (detected_at) FROM alerts ORDER BY detection, key_json")
        names = [column[0] for column in cursor.description]
        return [json.loads(json.dumps(dict(zip(names, row, strict=True)), default=str)) for row in cursor.fetchall()]
    finally:
        con.close()
        database.unlink()


def test_analysis_summarises_every_capture_once(site: Path) -> None:
    con = duckdb.connect(str(site / "db.duckdb"), read_only=True)
    try:
        captures = {row[0] for row in con.execute("SELECT capture_id FROM captures").fetchall()}
        rolled = con.execute(f"SELECT capture_id, version FROM {rollups.ROLLUP_CAPTURES}").fetchall()
        assert len(captures) >= 2 and sorted(rolled) == sorted(
            (capture, rollups.ROLLUP_VERSION) for capture in captures
        )
        raw_commands = con.execute(
            " UNION ALL ".join(ics_commands.command_sources(catalog.tables(con))).join(["SELECT count(*) FROM (", ")"])
        ).fetchone()
        summarised = con.execute(f"SELECT count(*) FROM {rollups.COMMAND_EVENTS}").fetchone()
        assert raw_commands == summarised and summarised is not None and summarised[0] > 0
        requests = con.execute(
            "SELECT count(*) FROM modbus WHERE event_type = 'request' AND address IS NOT NULL"
        ).fetchone()
        counted = con.execute(f"SELECT sum(count) FROM {rollups.RANGE_SUMMARY}").fetchone()
        assert requests is not None and counted is not None and int(counted[0]) == requests[0] > 0
        evidence = con.execute(f"SELECT max(len(evidence)) FROM {rollups.FUNCTION_SUMMARY}").fetchone()
        assert evidence == (rollups.EVIDENCE_ROWS,)
        per_capture = "SELECT capture_id, count(*) FROM flows GROUP BY ALL ORDER BY ALL"
        summed = f"SELECT capture_id, sum(count) FROM {rollups.FLOW_SUMMARY} GROUP BY ALL ORDER BY ALL"
        assert con.execute(per_capture).fetchall() == con.execute(summed).fetchall()
        columns = ", ".join(rollups.FLOW_KEY_COLUMNS)
        keys = con.execute(f"SELECT count(*), count(DISTINCT key_id), max(key_id) FROM {rollups.FLOW_KEYS}").fetchone()
        distinct = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {columns} FROM flows)").fetchone()
        assert keys is not None and distinct is not None and keys == (distinct[0], distinct[0], distinct[0])
    finally:
        con.close()


def test_reanalysis_replaces_a_capture_summary_instead_of_adding_one(site: Path, tmp_path: Path) -> None:
    database = tmp_path / "again.duckdb"
    shutil.copy(site / "db.duckdb", database)
    part = sorted((site / "parts").iterdir())[0]
    tables = [*rollups.SCHEMAS, *rollups.FLOW_SCHEMAS]
    keys = f"SELECT * FROM {rollups.FLOW_KEYS} ORDER BY key_id"
    before = duckdb.connect(str(database), read_only=True)
    counts = [before.execute(f"SELECT count(*) FROM {table}").fetchone() for table in tables]
    numbered = before.execute(keys).fetchall()
    before.close()
    result = CliRunner().invoke(main, ["analyze", str(part), "--db", str(database), "--force"])
    assert result.exit_code == 0, result.output
    after = duckdb.connect(str(database), read_only=True)
    assert [after.execute(f"SELECT count(*) FROM {table}").fetchone() for table in tables] == counts
    assert after.execute(keys).fetchall() == numbered  # no key added twice, none renumbered
    after.close()


def test_a_new_capture_adds_only_its_new_flow_keys_after_the_others(site: Path, tmp_path: Path) -> None:
    """Keys are numbered on: a capture summarised again, by hand, finds its keys; a flow with a new key gets the
    next number, and one without MACs or application (NULLs) is found again rather than added twice."""
    database = tmp_path / "keys.duckdb"
    shutil.copy(site / "db.duckdb", database)
    store = Store(database)
    try:
        con = store.connection
        first = con.execute("SELECT capture_id FROM captures ORDER BY first_ts LIMIT 1").fetchall()[0][0]
        numbered = con.execute(f"SELECT * FROM {rollups.FLOW_KEYS} ORDER BY key_id").fetchall()
        largest = max(row[0] for row in numbered)
        con.execute(
            "INSERT INTO flows BY NAME SELECT * REPLACE ('198.51.100.7' AS server_ip, NULL AS client_mac, "
            "NULL AS server_mac, NULL AS application, 'extra' AS flow_id) FROM flows WHERE capture_id = ? LIMIT 1",
            [first],
        )
        for _ in range(2):
            rollups.build_rollups(store, first)
        after = con.execute(f"SELECT * FROM {rollups.FLOW_KEYS} ORDER BY key_id").fetchall()
        counted = con.execute(
            f"SELECT count(*), sum(count) FROM {rollups.FLOW_SUMMARY} WHERE capture_id = ?", [first]
        ).fetchall()
        flows = con.execute("SELECT count(*) FROM flows WHERE capture_id = ?", [first]).fetchall()
    finally:
        store.close()
    assert after[: len(numbered)] == numbered and [row[0] for row in after[len(numbered) :]] == [largest + 1]
    assert after[-1][3] == "198.51.100.7" and after[-1][2] is None and after[-1][7] is None
    assert counted[0][1] == flows[0][0]


@pytest.mark.parametrize("until", ["between-captures", "inside-a-capture"])
@pytest.mark.parametrize("policy", [True, False], ids=["policy", "baseline"])
def test_summaries_and_raw_rows_give_the_same_alerts(site: Path, until: str, policy: bool) -> None:
    options = {"learning_until": _learning_ends(site)[until]}
    summarised = _alerts(site, "summarised", options, policy)
    raw = _alerts(site, "raw", options, policy, change=f"DELETE FROM {rollups.ROLLUP_CAPTURES}")
    assert summarised == raw
    detections = {alert["detection"] for alert in summarised}
    assert any(name.startswith("D8.") for name in detections), detections  # the recon sweep is new
    if until == "between-captures":  # read from the function-code summaries alone
        assert "D8.baseline-deviation.function-code" in detections, detections
    if policy or until == "between-captures":  # the sabotage comes before half way through the second capture
        assert "D7.ics-commands" in detections


def test_summaries_alone_suffice_when_no_capture_spans_the_learning_end(site: Path) -> None:
    options = {"learning_until": _learning_ends(site)["between-captures"]}
    summarised = _alerts(site, "summarised", options, policy=True)
    emptied = ";".join(f"DELETE FROM {table}" for table in RAW_TABLES)
    assert _alerts(site, "summaries-only", options, policy=True, change=emptied) == summarised


def test_a_capture_read_raw_keeps_its_rows_without_a_timestamp(site: Path, tmp_path: Path) -> None:
    """The capture spanning the learning end is read raw, named with its time span so that DuckDB skips the other
    captures' row groups: rows without a time (NULL, or 0 from a pcapng simple packet block) are read all the same."""
    until = _learning_ends(site)["inside-a-capture"]
    database = tmp_path / "unstamped.duckdb"
    shutil.copy(site / "db.duckdb", database)
    con = duckdb.connect(str(database))
    try:
        present = catalog.tables(con)
        rolled = rollups.rolled_captures_sql(present, until)
        assert rolled is not None
        (spanning,) = con.execute(f"SELECT capture_id FROM captures WHERE capture_id NOT IN ({rolled})").fetchall()
        for value in ("NULL", "TIMESTAMPTZ '1970-01-01 00:00:00+00'"):
            con.execute(
                f"UPDATE modbus SET ts = {value} WHERE rowid IN (SELECT rowid FROM modbus WHERE capture_id = ? "
                "AND ts IS NOT NULL AND event_type = 'request' LIMIT 3)",
                [spanning[0]],
            )
        filter_ = rollups.raw_filter(con, present, rolled)
        assert filter_ is not None and "BETWEEN" in filter_
        raw = " UNION ALL ".join(baseline.function_code_sources(con, present))
        kept = con.execute(f"SELECT count(*), count(ts) FROM ({raw}) WHERE {filter_}").fetchall()
        listed = con.execute(f"SELECT count(*), count(ts) FROM ({raw}) WHERE capture_id = ?", spanning).fetchall()
    finally:
        con.close()
    assert kept == listed and kept[0][0] > kept[0][1] > 0


@pytest.mark.parametrize("kind", baseline.KINDS[:3])
def test_sightings_count_what_the_observations_hold(site: Path, kind: str) -> None:
    """D8 counts devices, pairs and protocols from ``d8_sightings`` (flows grouped once by both ends, port,
    transport and application): the same counts and times per item as grouping every observation."""
    con = duckdb.connect(str(site / "db.duckdb"), read_only=True)
    until = _learning_ends(site)["inside-a-capture"]
    fields = ", ".join(baseline.KEY_FIELDS[kind])
    try:
        baseline._observations(con, until)
        direct = con.execute(
            f"""SELECT {fields}, count(*) FILTER (WHERE ts < $until), min(ts) FILTER (WHERE ts < $until),
                       max(ts) FILTER (WHERE ts < $until), count(*), min(ts), max(ts)
                FROM d8_observations WHERE kind = '{kind}' GROUP BY ALL ORDER BY ALL""",
            {"until": until},
        ).fetchall()
        counted = con.execute(
            f"""SELECT {fields}, CAST(coalesce(sum(count) FILTER (WHERE learned), 0) AS BIGINT),
                       min(first_ts) FILTER (WHERE learned), max(last_ts) FILTER (WHERE learned),
                       CAST(sum(count) AS BIGINT), min(first_ts), max(last_ts)
                FROM d8_sightings WHERE kind = '{kind}' GROUP BY ALL ORDER BY ALL"""
        ).fetchall()
    finally:
        con.close()
    assert counted == direct and direct


@pytest.mark.parametrize("until", [None, "between-captures", "inside-a-capture"])
@pytest.mark.parametrize("summaries", ["summarised", "unstamped", "raw", "one-raw"])
def test_flow_groups_count_what_the_flows_hold(site: Path, tmp_path: Path, until: str | None, summaries: str) -> None:
    """D8's and D4's flow counts (rollups.flow_groups_sql): the same counts and times per key and side of the
    learning end as grouping every flow: from the summaries alone (a row of the capture spanning the end split by
    its times), with flows without a time (NULL, or 0 from a pcapng simple packet block) in the capture spanning
    the end, from the raw flows alone, or with one capture summarised and the other read raw."""
    database = tmp_path / "groups.duckdb"
    shutil.copy(site / "db.duckdb", database)
    end = None if until is None else _learning_ends(site)[until]
    columns = ", ".join(rollups.FLOW_KEY_COLUMNS)
    side = "" if end is None else "learned, "
    if summaries == "unstamped":
        store = Store(database)
        try:
            spanning = _learning_ends(site)["inside-a-capture"]
            (capture,) = store.connection.execute(
                "SELECT capture_id FROM captures WHERE first_ts <= $end AND last_ts >= $end", {"end": spanning}
            ).fetchall()[0]
            for value in ("NULL", "TIMESTAMPTZ '1970-01-01 00:00:00+00'"):
                store.connection.execute(
                    f"UPDATE flows SET ts = {value} WHERE rowid IN (SELECT rowid FROM flows WHERE capture_id = ? "
                    "AND ts IS NOT NULL AND ts > TIMESTAMPTZ '1970-01-02 00:00:00+00' LIMIT 3)",
                    [capture],
                )
            rollups.build_rollups(store, capture)
        finally:
            store.close()
    con = duckdb.connect(str(database))
    try:
        if summaries == "raw":
            con.execute(f"DELETE FROM {rollups.ROLLUP_CAPTURES}")
        if summaries == "one-raw":
            con.execute(
                f"DELETE FROM {rollups.ROLLUP_CAPTURES} WHERE capture_id = "
                "(SELECT capture_id FROM captures ORDER BY first_ts LIMIT 1)"
            )
        query = rollups.flow_groups_sql(con, catalog.tables(con), end)
        assert rollups.FLOW_SUMMARY in query and ("FROM flows" in query) == (summaries in ("raw", "one-raw"))
        counted = con.execute(
            f"SELECT {columns}, {side}CAST(sum(count) AS BIGINT), min(first_ts), max(last_ts) FROM ({query}) "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        learned = "" if end is None else "ts < $until AS learned, "
        direct = con.execute(
            f"SELECT {columns}, {learned}count(*), min(ts), max(ts) FROM flows GROUP BY ALL ORDER BY ALL",
            {} if end is None else {"until": end},
        ).fetchall()
        pairs = rollups.flow_groups_sql(
            con, catalog.tables(con), keys=("client_ip", "server_ip", "server_port", "transport")
        )
        con.execute(
            "CREATE TEMP TABLE beacon_pairs AS " + beaconing._FLOW_PAIRS.format(counts=pairs),
            [beaconing.MIN_CONNECTIONS],
        )
        beacon_pairs = con.execute("SELECT * FROM beacon_pairs ORDER BY pair").fetchall()
        unstamped = con.execute(
            "SELECT count(*) - count(ts), count(*) FILTER (WHERE ts <= TIMESTAMPTZ '1970-01-01 00:00:00+00') FROM flows"
        ).fetchone()
        raw_pairs = con.execute(
            "SELECT client_ip, server_ip, server_port, transport FROM flows GROUP BY ALL HAVING count(*) >= ? "
            "ORDER BY ALL",
            [beaconing.MIN_CONNECTIONS],
        ).fetchall()
    finally:
        con.close()
    assert counted == direct and direct
    if summaries == "unstamped":
        assert unstamped == (3, 3)
    assert [row[1:] for row in beacon_pairs] == raw_pairs and [row[0] for row in beacon_pairs] == list(
        range(1, len(raw_pairs) + 1)
    )

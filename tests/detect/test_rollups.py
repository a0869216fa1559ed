"""The per-capture summaries (detect/rollups.py): D7 and D8 give the same alerts from them as from the raw rows.

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
from quaywatch.detect import baseline, catalog, ics_commands, rollups
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.policy.load import load_policy
from quaywatch.sim.simulate import simulate

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
    """D7 and D8 alert rows (without their detection time) on a copy of the store, after ``change`` (SQL)."""
    database = directory / f"{name}.duckdb"
    shutil.copy(directory / "db.duckdb", database)
    con = duckdb.connect(str(database))
    try:
        for statement in filter(None, change.split(";")):
            con.execute(statement)
        site_policy = load_policy(directory / "policy.yaml")[0] if policy else None
        run_detections(con, DetectionContext(policy=site_policy, options=options), rules=[],
                       modules=[baseline, ics_commands])  # fmt: skip
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
    finally:
        con.close()


def test_reanalysis_replaces_a_capture_summary_instead_of_adding_one(site: Path, tmp_path: Path) -> None:
    database = tmp_path / "again.duckdb"
    shutil.copy(site / "db.duckdb", database)
    part = sorted((site / "parts").iterdir())[0]
    before = duckdb.connect(str(database), read_only=True)
    counts = [before.execute(f"SELECT count(*) FROM {table}").fetchone() for table in rollups.SCHEMAS]
    before.close()
    result = CliRunner().invoke(main, ["analyze", str(part), "--db", str(database), "--force"])
    assert result.exit_code == 0, result.output
    after = duckdb.connect(str(database), read_only=True)
    assert [after.execute(f"SELECT count(*) FROM {table}").fetchone() for table in rollups.SCHEMAS] == counts
    after.close()


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
        filter_ = baseline._raw_filter(con, present, rolled, until)
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

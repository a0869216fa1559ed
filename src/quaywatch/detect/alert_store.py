"""The ``alerts`` table: writing alerts idempotently with suppression windows, and reading them back.

Identity and occurrences (decided here, documented in docs/detections.md):

* ``alert_id`` is :func:`~quaywatch.detect.alert.alert_identifier` of the detection and its key: the same detection
  over the same hosts is the same alert, run after run.
* Firings of one ``alert_id`` whose time spans are within ``suppression_seconds`` of each other are folded into one
  row: counts summed, first and last seen widened, evidence merged. A firing further away starts a new *occurrence*,
  a row of its own, identified by ``occurrence_id`` = ``alert_id`` + ``@`` + its first-seen time.
* Detections recompute over the whole store, so a run replaces every row of each detection that ran: re-running over
  the same store gives the same rows, never duplicates; a detection that was skipped keeps its earlier rows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import duckdb
import pyarrow as pa

from quaywatch.detect import attack
from quaywatch.detect.alert import ALERTS_TABLE, Alert, EventReference, Evidence, ScoreComponent

#: Evidence lists are capped so one noisy alert cannot grow without bound; the count keeps the true number.
EVIDENCE_LIMIT = 100


def _doc(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable, {"doc": doc})


_TIME = pa.timestamp("us", tz="UTC")

ALERTS_SCHEMA = pa.schema(
    [
        _doc(
            "alert_id",
            pa.string(),
            "stable id: sha256 of detection and key (16 hex digits), the same run after run",
            False,
        ),
        _doc(
            "occurrence_id",
            pa.string(),
            "alert_id@first_seen: one row per occurrence (firings further apart than the suppression window)",
            False,
        ),
        _doc("detection", pa.string(), "catalogue id plus rule or module, e.g. D11.cleartext-login", False),
        _doc("title", pa.string(), "one line; may hold packet-derived text (escape before printing)", False),
        _doc("severity", pa.string(), "info, low, medium, high or critical", False),
        _doc("confidence", pa.float64(), "0-1: how sure the detection is that the condition really holds", False),
        _doc("score", pa.float64(), "0-1 overall score (see score_components)"),
        _doc(
            "techniques",
            pa.list_(pa.struct([pa.field("id", pa.string()), pa.field("name", pa.string())])),
            "ATT&CK ids with their official names (data/attack_ics.yaml)",
        ),
        _doc("first_seen", _TIME, "first firing of this occurrence", False),
        _doc("last_seen", _TIME, "last firing of this occurrence", False),
        _doc("count", pa.int64(), "firings folded into this occurrence (events or matching rows)", False),
        _doc("assets", pa.list_(pa.string()), "asset ids or addresses involved"),
        _doc("zones", pa.list_(pa.string()), "zones involved"),
        _doc("explanation", pa.string(), "why it fired, in plain language (may hold packet-derived text)", False),
        _doc(
            "score_components",
            pa.list_(
                pa.struct(
                    [
                        pa.field("name", pa.string()),
                        pa.field("value", pa.float64()),
                        pa.field("weight", pa.float64()),
                        pa.field("explanation", pa.string()),
                    ]
                )
            ),
            "each part of the score: measured value, weight and a sentence",
        ),
        _doc("flow_ids", pa.list_(pa.string()), "evidence: flows.flow_id (first 100)"),
        _doc("community_ids", pa.list_(pa.string()), "evidence: Community IDs of those flows (first 100)"),
        _doc(
            "events",
            pa.list_(
                pa.struct(
                    [
                        pa.field("table", pa.string()),
                        pa.field("capture_id", pa.string()),
                        pa.field("packet_number", pa.int64()),
                        pa.field("flow_id", pa.string()),
                    ]
                )
            ),
            "evidence: event rows behind the alert, by table, capture and packet number (first 100)",
        ),
        _doc("packet_numbers", pa.list_(pa.int64()), "evidence: packet numbers within the captures (first 100)"),
        _doc("values_json", pa.string(), "evidence values as JSON: field -> first distinct values (packet-derived)"),
        _doc("key_json", pa.string(), "the key fields that identify the alert, as JSON", False),
        _doc("suppression_seconds", pa.int64(), "firings closer than this fold into one occurrence", False),
        _doc("detected_at", _TIME, "when the detection run that wrote it started", False),
    ]
)


def ensure_alerts_table(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``alerts`` unless it exists (the same statement as Store.ensure_table, usable on a bare connection)."""
    empty = ALERTS_SCHEMA.empty_table()  # noqa: F841  (read by DuckDB's replacement scan)
    con.execute(f'CREATE TABLE IF NOT EXISTS "{ALERTS_TABLE}" AS SELECT * FROM empty LIMIT 0')


def fold(alerts: Iterable[Alert]) -> list[Alert]:
    """Fold firings of the same alert within its suppression window into one; farther ones stay apart."""
    by_id: dict[str, list[Alert]] = {}
    for alert in alerts:
        by_id.setdefault(alert.alert_id, []).append(alert)
    folded: list[Alert] = []
    for group in by_id.values():
        group.sort(key=lambda a: a.first_seen)
        current = group[0]
        for alert in group[1:]:
            window = dt.timedelta(seconds=max(current.suppression_seconds, alert.suppression_seconds))
            if alert.first_seen - current.last_seen <= window:
                current = _merge(current, alert)
            else:
                folded.append(current)
                current = alert
        folded.append(current)
    return folded


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    merged = list(dict.fromkeys([*first, *second]))
    return merged[:EVIDENCE_LIMIT]


def _merge(first: Alert, second: Alert) -> Alert:
    values = dict(first.evidence.values)
    for name, value in second.evidence.values.items():
        if isinstance(value, list) and isinstance(values.get(name), list):
            values[name] = _union(values[name], value)[:20]
        else:
            values.setdefault(name, value)
    evidence = Evidence(
        _union(first.evidence.flow_ids, second.evidence.flow_ids),
        _union(first.evidence.community_ids, second.evidence.community_ids),
        _union(first.evidence.events, second.evidence.events),
        _union(first.evidence.packet_numbers, second.evidence.packet_numbers),
        values,
    )
    stronger = second if second.score > first.score else first
    return Alert(
        detection=first.detection,
        title=stronger.title,
        key=first.key,
        severity=stronger.severity,
        confidence=max(first.confidence, second.confidence),
        techniques=_union(first.techniques, second.techniques),
        first_seen=min(first.first_seen, second.first_seen),
        last_seen=max(first.last_seen, second.last_seen),
        count=first.count + second.count,
        explanation=stronger.explanation,
        score=max(first.score, second.score),
        score_components=stronger.score_components,
        assets=_union(first.assets, second.assets),
        zones=_union(first.zones, second.zones),
        evidence=evidence,
        suppression_seconds=max(first.suppression_seconds, second.suppression_seconds),
    )


def occurrence_id(alert: Alert) -> str:
    """``alert_id@first_seen`` in UTC with microseconds, so each occurrence has its own stable row id."""
    return f"{alert.alert_id}@{alert.first_seen.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"


def to_row(alert: Alert, detected_at: dt.datetime) -> dict[str, Any]:
    """The ``alerts`` row of an alert; technique names from the ATT&CK data file (unknown ids raise)."""
    return {
        "alert_id": alert.alert_id,
        "occurrence_id": occurrence_id(alert),
        "detection": alert.detection,
        "title": alert.title,
        "severity": alert.severity,
        "confidence": float(alert.confidence),
        "score": float(alert.score),
        "techniques": [{"id": t, "name": attack.technique_name(t)} for t in alert.techniques],
        "first_seen": alert.first_seen,
        "last_seen": alert.last_seen,
        "count": int(alert.count),
        "assets": list(alert.assets),
        "zones": list(alert.zones),
        "explanation": alert.explanation,
        "score_components": [
            {"name": c.name, "value": float(c.value), "weight": float(c.weight), "explanation": c.explanation}
            for c in alert.score_components
        ],
        "flow_ids": alert.evidence.flow_ids[:EVIDENCE_LIMIT],
        "community_ids": alert.evidence.community_ids[:EVIDENCE_LIMIT],
        "events": [
            {"table": e.table, "capture_id": e.capture_id, "packet_number": e.packet_number, "flow_id": e.flow_id}
            for e in alert.evidence.events[:EVIDENCE_LIMIT]
        ],
        "packet_numbers": alert.evidence.packet_numbers[:EVIDENCE_LIMIT],
        "values_json": json.dumps(alert.evidence.values, default=str, sort_keys=True),
        "key_json": json.dumps(alert.key, sort_keys=True),
        "suppression_seconds": int(alert.suppression_seconds),
        "detected_at": detected_at,
    }


def write_alerts(
    con: duckdb.DuckDBPyConnection, detections: Iterable[str], alerts: list[Alert], detected_at: dt.datetime
) -> int:
    """Replace the rows of every detection in ``detections`` by the folded ``alerts``; returns the rows written."""
    return write_rows(con, detections, alert_rows(alerts, detected_at))


def alert_rows(alerts: Iterable[Alert], detected_at: dt.datetime) -> list[dict[str, Any]]:
    """The ``alerts`` rows of the folded ``alerts``. Alerts of different detections never fold together, so the
    rows of each detection's alerts can be made apart (the engine makes them on the worker that ran it)."""
    return [to_row(alert, detected_at) for alert in fold(alerts)]


def write_rows(con: duckdb.DuckDBPyConnection, detections: Iterable[str], rows: list[dict[str, Any]]) -> int:
    """Replace the rows of every detection in ``detections`` by ``rows`` (:func:`alert_rows`); returns their count."""
    ensure_alerts_table(con)
    names = sorted(set(detections))
    batch = pa.Table.from_pylist(rows, schema=ALERTS_SCHEMA)  # noqa: F841  (DuckDB replacement scan)
    con.execute("BEGIN TRANSACTION")
    try:
        if names:
            con.execute(f'DELETE FROM "{ALERTS_TABLE}" WHERE detection IN ?', [names])
        if rows:
            con.execute(f'INSERT INTO "{ALERTS_TABLE}" BY NAME SELECT * FROM batch')
        con.execute("COMMIT")
    except duckdb.Error:
        con.execute("ROLLBACK")
        raise
    return len(rows)


def from_row(row: dict[str, Any]) -> Alert:
    """An Alert back from its ``alerts`` row (for exports and the report)."""
    return Alert(
        detection=row["detection"],
        title=row["title"],
        key=json.loads(row["key_json"]),
        severity=row["severity"],
        confidence=row["confidence"],
        techniques=[t["id"] for t in row["techniques"] or []],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        count=row["count"],
        explanation=row["explanation"],
        score=row["score"] or 0.0,
        score_components=[ScoreComponent(**c) for c in row["score_components"] or []],
        assets=list(row["assets"] or []),
        zones=list(row["zones"] or []),
        evidence=Evidence(
            list(row["flow_ids"] or []),
            list(row["community_ids"] or []),
            [EventReference(**e) for e in row["events"] or []],
            list(row["packet_numbers"] or []),
            json.loads(row["values_json"] or "{}"),
        ),
        suppression_seconds=row["suppression_seconds"],
    )

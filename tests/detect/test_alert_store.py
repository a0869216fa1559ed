"""Folding within the suppression window, occurrences outside it, and idempotent writes."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from quaywatch.detect.alert import Alert, EventReference, Evidence
from quaywatch.detect.alert_store import fold, from_row, write_alerts

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def firing(minutes: float, count: int = 1, packet: int = 1, host: str = "10.0.0.5") -> Alert:
    when = T0 + dt.timedelta(minutes=minutes)
    return Alert(
        detection="D4.beaconing",
        title=f"beacon from {host}",
        key={"client_ip": host},
        severity="high",
        confidence=0.8,
        techniques=["T0869", "T1071"],
        first_seen=when,
        last_seen=when,
        count=count,
        explanation="regular",
        score=0.7,
        evidence=Evidence(
            flow_ids=[f"f{packet}"],
            events=[EventReference("flows", "c1", packet, f"f{packet}")],
            packet_numbers=[packet],
            values={"period": [300]},
        ),
        suppression_seconds=3600,
    )


def test_fold_within_window_and_split_outside() -> None:
    folded = fold(
        [firing(0, 2, 1), firing(50, 3, 2), firing(100, 1, 3), firing(300, 1, 4), firing(0, 1, 9, "10.0.0.6")]
    )
    by_host: dict[str, list[Alert]] = {}
    for alert in folded:
        by_host.setdefault(alert.key["client_ip"], []).append(alert)
    first, second = sorted(by_host["10.0.0.5"], key=lambda a: a.first_seen)
    # 0, 50 and 100 min chain within 1 h gaps; 300 min is 200 min after the last: a new occurrence.
    assert (first.count, first.first_seen, first.last_seen) == (6, T0, T0 + dt.timedelta(minutes=100))
    assert first.evidence.packet_numbers == [1, 2, 3] and first.evidence.flow_ids == ["f1", "f2", "f3"]
    assert second.count == 1 and second.evidence.packet_numbers == [4]
    assert first.alert_id == second.alert_id and len(by_host["10.0.0.6"]) == 1


def test_write_is_idempotent_and_round_trips() -> None:
    con = duckdb.connect()
    alerts = [firing(0), firing(30), firing(500)]
    assert write_alerts(con, ["D4.beaconing"], alerts, T0) == 2
    assert write_alerts(con, ["D4.beaconing"], alerts, T0) == 2
    rows = con.execute("SELECT occurrence_id, count FROM alerts ORDER BY first_seen").fetchall()
    assert [r[1] for r in rows] == [2, 1] and len({r[0] for r in rows}) == 2
    cursor = con.execute("SELECT * FROM alerts ORDER BY first_seen LIMIT 1")
    names = [c[0] for c in cursor.description]
    back = from_row(dict(zip(names, cursor.fetchone() or (), strict=True)))
    assert back.alert_id == alerts[0].alert_id and back.count == 2 and back.evidence.values == {"period": [300]}
    assert back.evidence.events[0] == EventReference("flows", "c1", 1, "f1")
    # A run of another detection leaves these rows alone; an empty run of this one clears them.
    write_alerts(con, ["D5.dns-tunnelling"], [], T0)
    assert con.execute("SELECT count(*) FROM alerts").fetchone() == (2,)
    write_alerts(con, ["D4.beaconing"], [], T0)
    assert con.execute("SELECT count(*) FROM alerts").fetchone() == (0,)


def test_unknown_technique_is_refused() -> None:
    alert = firing(0)
    alert.techniques = ["T0999"]
    with pytest.raises(KeyError, match="T0999"):
        write_alerts(duckdb.connect(), ["D4.beaconing"], [alert], T0)

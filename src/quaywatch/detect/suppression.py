"""Allowlists and suppressions, applied when alerts are read so that they work retroactively.

A suppression file lists entries that each match on any of: the detection (exact id or a ``*`` glob such as
``D11.*``), key fields (every given field equal), a host (an address, a CIDR or an asset id among the alert's assets
and key values), until a date, always with a reason. Nothing is deleted: ``quaywatch alerts`` hides matched alerts,
says how many, and ``--all`` shows them marked with the reason. docs/detections.md has the format.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import yaml

from quaywatch.policy.load import _Checker
from quaywatch.policy.model import Problem

SUPPRESSIONS_TABLE = "alert_suppressions"
ENTRY_KEYS = ("detection", "key", "host", "until", "reason")

SUPPRESSIONS_SCHEMA = pa.schema(
    [
        pa.field("suppression_id", pa.string(), False, {"doc": "sha256 of file name, line and entry (16 hex digits)"}),
        pa.field("detection", pa.string(), True, {"doc": "detection id or glob (D11.*); NULL: any"}),
        pa.field("key_json", pa.string(), True, {"doc": "key fields that must all be equal, as JSON; NULL: any"}),
        pa.field("host", pa.string(), True, {"doc": "address, CIDR or asset id among the alert's hosts; NULL: any"}),
        pa.field("until", pa.date32(), True, {"doc": "last day it applies; NULL: no end"}),
        pa.field("reason", pa.string(), False, {"doc": "why these alerts are accepted (shown with --all)"}),
        pa.field("source_file", pa.string(), False, {"doc": "name of the suppression file it came from"}),
        pa.field("line", pa.int64(), False, {"doc": "line of the entry in that file"}),
        pa.field("imported_at", pa.timestamp("us", tz="UTC"), False, {"doc": "when the file was stored"}),
    ]
)


class SuppressionError(ValueError):
    """The suppression file is invalid; ``problems`` locates each problem."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Suppression:
    """One entry: every given criterion must hold for an alert to be suppressed."""

    reason: str
    detection: str | None = None
    key: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    until: dt.date | None = None
    source_file: str = ""
    line: int = 0

    def active(self, today: dt.date) -> bool:
        return self.until is None or today <= self.until

    def matches(self, alert: dict[str, Any], today: dt.date) -> bool:
        """``alert`` is an ``alerts`` row (detection, key_json, assets)."""
        if not self.active(today):
            return False
        if self.detection is not None and not fnmatch.fnmatchcase(str(alert["detection"]), self.detection):
            return False
        key = json.loads(alert.get("key_json") or "{}")
        if any(str(key.get(name)) != value for name, value in self.key.items()):
            return False
        return self.host is None or _host_matches(self.host, [*(alert.get("assets") or []), *key.values()])


def _host_matches(host: str, values: list[Any]) -> bool:
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return host in {str(v) for v in values}
    for value in values:
        try:
            if ipaddress.ip_address(str(value)) in network:
                return True
        except ValueError:
            continue
    return False


def load_suppressions_text(text: str, file: str = "suppressions.yaml") -> list[Suppression]:
    """Validate a suppression file given as text; raises :class:`SuppressionError` listing every problem."""
    check = _Checker(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise SuppressionError(
            [Problem(file, mark.line + 1 if mark else 0, "(yaml)", f"not valid YAML: {error}")]
        ) from error
    if root is None:
        return []
    top = check.mapping(root, "", ("version", "suppressions"), ("suppressions",))
    entries: list[Suppression] = []
    for i, node in enumerate(
        check.sequence(top["suppressions"], "suppressions") if top and "suppressions" in top else []
    ):
        path = f"suppressions[{i}]"
        keys = check.mapping(node, path, ENTRY_KEYS, ("reason",))
        if keys is None:
            continue
        if not set(keys) & {"detection", "key", "host"}:
            check.error(node, path, "give at least one of detection, key, host: an entry must not hide every alert")
        key: dict[str, str] = {}
        if "key" in keys:
            if isinstance(keys["key"], yaml.MappingNode):
                key = {str(k.value): check.text(v, f"{path}.key.{k.value}") for k, v in keys["key"].value}
            else:
                check.error(keys["key"], f"{path}.key", "expected a mapping of key fields to values")
        host = check.text(keys.get("host"), f"{path}.host") or None
        if host is not None and "/" in host:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                check.error(keys["host"], f"{path}.host", f"not a CIDR: {host!r}")
        until = None
        if "until" in keys:
            value = check.scalar(keys["until"], f"{path}.until")
            if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
                until = value
            else:
                check.error(keys["until"], f"{path}.until", f"expected a date such as 2027-01-31, got {value!r}")
        reason = check.text(keys.get("reason"), f"{path}.reason").strip()
        if "reason" in keys and not reason:
            check.error(keys["reason"], f"{path}.reason", "a reason is required")
        entries.append(
            Suppression(
                reason,
                check.text(keys.get("detection"), "") or None,
                key,
                host,
                until,
                Path(file).name,
                node.start_mark.line + 1,
            )
        )
    errors = [p for p in check.problems if p.severity == "error"]
    if errors:
        raise SuppressionError(errors)
    return entries


def load_suppressions(path: Path) -> list[Suppression]:
    """Read and validate a suppression file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SuppressionError([Problem(str(path), 0, "(file)", f"cannot read: {error}")]) from error
    return load_suppressions_text(text, str(path))


def store_suppressions(con: duckdb.DuckDBPyConnection, entries: list[Suppression], source_file: str) -> int:
    """Replace the stored entries of ``source_file`` by ``entries``; returns how many were stored."""
    empty = SUPPRESSIONS_SCHEMA.empty_table()  # noqa: F841  (DuckDB replacement scan)
    con.execute(f'CREATE TABLE IF NOT EXISTS "{SUPPRESSIONS_TABLE}" AS SELECT * FROM empty LIMIT 0')
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "suppression_id": hashlib.sha256(
                json.dumps([source_file, e.line, e.detection, e.key, e.host, str(e.until), e.reason]).encode()
            ).hexdigest()[:16],
            "detection": e.detection,
            "key_json": json.dumps(e.key, sort_keys=True) if e.key else None,
            "host": e.host,
            "until": e.until,
            "reason": e.reason,
            "source_file": source_file,
            "line": e.line,
            "imported_at": now,
        }
        for e in entries
    ]
    batch = pa.Table.from_pylist(rows, schema=SUPPRESSIONS_SCHEMA)  # noqa: F841  (DuckDB replacement scan)
    con.execute(f'DELETE FROM "{SUPPRESSIONS_TABLE}" WHERE source_file = ?', [source_file])
    if rows:
        con.execute(f'INSERT INTO "{SUPPRESSIONS_TABLE}" BY NAME SELECT * FROM batch')
    return len(rows)


def stored_suppressions(con: duckdb.DuckDBPyConnection) -> list[Suppression]:
    """The entries stored by ``quaywatch alerts suppress``."""
    present = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [SUPPRESSIONS_TABLE]
    ).fetchall()
    if not present or not present[0][0]:
        return []
    rows = con.execute(
        f'SELECT detection, key_json, host, until, reason, source_file, line FROM "{SUPPRESSIONS_TABLE}" ORDER BY '
        "source_file, line"
    ).fetchall()
    return [
        Suppression(reason, detection, json.loads(key_json) if key_json else {}, host, until, source_file, line)
        for detection, key_json, host, until, reason, source_file, line in rows
    ]


def first_match(suppressions: list[Suppression], alert: dict[str, Any], today: dt.date) -> Suppression | None:
    """The first entry that suppresses ``alert``, or None."""
    return next((entry for entry in suppressions if entry.matches(alert, today)), None)

"""Everything the incident report shows, read from the store into plain values (no HTML here).

Kept apart from rendering so the same facts can feed other outputs (PDF, STIX) later, and so every string stays raw
here: escaping is the renderer's job, done once, by Jinja2's autoescape. Tables that a store may lack (no policy
evaluated, no detection run) give empty sections, never errors.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import duckdb

from quaywatch import __version__
from quaywatch.assets.netmap import UNZONED, build_map, render_svg
from quaywatch.detect import attack
from quaywatch.detect.alert import SEVERITIES
from quaywatch.detect.suppression import first_match, stored_suppressions
from quaywatch.policy.model import EXTERNAL_ZONE, Policy
from quaywatch.yaml_files import load_yaml

#: Incident-report reference data: channels, timing, the 13 fields, detection -> criteria (cited in the file).
REFERENCE_FILE = "incident_report.yaml"

TO_BE_COMPLETED = "to be completed"

#: Incident-report fields list at most this many assets (indicators three times as many); the rest are in sections 3-4.
MAX_LISTED = 12


@dataclass(slots=True)
class IncidentField:
    """One field the Coast Guard, CISA and the FBI ask for: filled from the store, or left to the reporter."""

    identifier: str
    label: str
    values: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.values)


@dataclass(slots=True)
class ReportData:
    """The facts of one report; strings are raw (possibly packet-derived) and escaped only when rendered."""

    title: str
    organisation: str
    site: str
    generated_at: dt.datetime
    version: str
    captures: list[dict[str, Any]]
    packets: int
    flows: int
    first_ts: dt.datetime | None
    last_ts: dt.datetime | None
    assets: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    suppressed: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    incident: list[IncidentField]
    reference: dict[str, Any]
    timeline: list[dict[str, Any]]
    map_svg: str
    map_counts: dict[str, int]
    tables: dict[str, int]
    attack_version: str
    policy_name: str | None
    policy_sha256: str | None
    inventory_sources: list[dict[str, Any]]

    @property
    def by_severity(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Alerts grouped most severe first; empty severities left out."""
        groups = [(level, [a for a in self.alerts if a["severity"] == level]) for level in reversed(SEVERITIES)]
        return [(level, items) for level, items in groups if items]

    @property
    def severity_counts(self) -> dict[str, int]:
        return {level: sum(a["severity"] == level for a in self.alerts) for level in reversed(SEVERITIES)}

    @property
    def timeline_bars(self) -> list[dict[str, Any]]:
        """Each alert as a bar over the capture span: lane (0 = most severe), start and width as fractions 0-1."""
        starts = [t for t in (self.first_ts, *(a["first_seen"] for a in self.alerts)) if t is not None]
        ends = [t for t in (self.last_ts, *(a["last_seen"] for a in self.alerts)) if t is not None]
        if not starts or not ends:
            return []
        origin, span = min(starts), max((max(ends) - min(starts)).total_seconds(), 1e-6)
        lanes = list(reversed(SEVERITIES))
        bars = []
        for alert in self.alerts:
            start = (alert["first_seen"] - origin).total_seconds() / span
            width = (alert["last_seen"] - alert["first_seen"]).total_seconds() / span
            bars.append({"lane": lanes.index(alert["severity"]), "start": start, "width": width, "alert": alert})
        return bars

    @property
    def top_findings(self) -> list[dict[str, Any]]:
        """The five alerts that matter most: most severe, then highest score."""
        return sorted(self.alerts, key=lambda a: (-SEVERITIES.index(a["severity"]), -(a["score"] or 0.0)))[:5]


def reference_data() -> dict[str, Any]:
    """The shipped incident-report reference data."""
    text = resources.files("quaywatch.data").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = load_yaml(text)
    return loaded


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _rows(con: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any] | None = None) -> list[dict[str, Any]]:
    cursor = con.execute(sql, parameters or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _is_public(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.is_global


def _alert_hosts(row: dict[str, Any]) -> list[str]:
    """Addresses and asset ids of an alert: its assets, then every *_ip of its key."""
    key = json.loads(row.get("key_json") or "{}")
    values = [*(row.get("assets") or []), *(v for k, v in key.items() if k.endswith("_ip") or k == "ip")]
    return list(dict.fromkeys(str(v) for v in values))


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def _read_alerts(con: duckdb.DuckDBPyConnection, today: dt.date) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Alerts with suppressions applied as ``quaywatch alerts`` does: (shown, suppressed with their reason)."""
    if "alerts" not in _tables(con):
        return [], []
    rows = _rows(con, "SELECT * FROM alerts ORDER BY first_seen, occurrence_id")
    entries = stored_suppressions(con)
    shown: list[dict[str, Any]] = []
    hidden: list[dict[str, Any]] = []
    for row in rows:
        row["hosts"] = _alert_hosts(row)
        row["values"] = [(name, _value_text(value)) for name, value in json.loads(row["values_json"] or "{}").items()]
        suppression = first_match(entries, row, today)
        if suppression is None:
            shown.append(row)
        else:
            row["suppressed_reason"] = f"{suppression.reason} ({suppression.source_file}:{suppression.line})"
            hidden.append(row)
    return shown, hidden


def _zones_of_hosts(con: duckdb.DuckDBPyConnection, tables: set[str], alerts: list[dict[str, Any]]) -> None:
    """``zones_shown``: the alert's own zones, else the policy zones of its addresses (rules over assets give none)."""
    zone_of: dict[str, str] = {}
    if "host_zones" in tables:
        zone_of = {row["ip"]: row["zone"] for row in _rows(con, "SELECT ip, zone FROM host_zones")}
    for alert in alerts:
        own = list(alert.get("zones") or [])
        alert["zones_shown"] = own or list(dict.fromkeys(zone_of[h] for h in alert["hosts"] if h in zone_of))


def _assets(con: duckdb.DuckDBPyConnection, tables: set[str]) -> list[dict[str, Any]]:
    if "assets" not in tables:
        return []
    if "asset_risk" in tables:
        sql = """SELECT a.*, r.score AS risk_score, r.level AS risk_level, r.reasons AS risk_reasons
                 FROM assets a LEFT JOIN asset_risk r USING (asset_id)
                 ORDER BY r.score DESC NULLS LAST, a.asset_id"""
    else:
        sql = """SELECT a.*, NULL AS risk_score, NULL AS risk_level, NULL AS risk_reasons FROM assets a
                 ORDER BY a.asset_id"""
    return _rows(con, sql)


def _incident(
    reference: dict[str, Any],
    organisation: str,
    site: str,
    alerts: list[dict[str, Any]],
    assets: list[dict[str, Any]],
    con: duckdb.DuckDBPyConnection,
    tables: set[str],
) -> list[IncidentField]:
    """The regulators' fields, filled from the alerts where the store knows the answer."""
    fields = {entry["id"]: IncidentField(entry["id"], entry["label"]) for entry in reference["fields"]}
    if organisation or site:
        fields["entity"].values.append(", ".join(part for part in (organisation, site) if part))
    if alerts:
        first = min(a["first_seen"] for a in alerts)
        last = max(a["last_seen"] for a in alerts)
        detected = max(a["detected_at"] for a in alerts)
        fields["when"].values += [
            f"detected by quaywatch: {_when(detected)}",
            f"activity observed from {_when(first)} to {_when(last)} (estimate from the alerts)",
        ]
    by_asset = {a["asset_id"]: a for a in assets}
    by_ip = {ip: a for a in assets for ip in (a["ips"] or [])}
    zones = sorted({zone for a in alerts for zone in a["zones_shown"]} - {EXTERNAL_ZONE, UNZONED})
    if zones:
        fields["where"].values.append("zones: " + ", ".join(zones))
    involved: dict[str, dict[str, Any]] = {}
    for alert in sorted(alerts, key=lambda a: -SEVERITIES.index(a["severity"])):  # the most severe first
        for host in alert["hosts"]:
            asset = by_asset.get(host) or by_ip.get(host)
            if asset is not None:
                involved[asset["asset_id"]] = asset
    ot = {}
    if "host_zones" in tables:
        ot = {row["ip"]: row["ot"] for row in _rows(con, "SELECT ip, ot FROM host_zones")}
    for asset in list(involved.values())[:MAX_LISTED]:
        ips = asset["ips"] or []
        address = ", ".join(ips[:3]) + (f" (+{len(ips) - 3})" if len(ips) > 3 else "") or asset["mac"] or "-"
        side = ""
        if any(ot.get(ip) for ip in asset["ips"] or []):
            side = " (OT)"
        elif any(ip in ot for ip in asset["ips"] or []):
            side = " (IT)"
        maker = f", {asset['maker']}" if asset.get("maker") else ""
        fields["where"].values.append(f"asset {asset['asset_id']} ({asset['role'] or 'unknown role'}) at {address}")
        fields["what"].values.append(f"{asset['role'] or 'unknown role'}{maker} at {address}{side}")
    if len(involved) > MAX_LISTED:
        more = f"and {len(involved) - MAX_LISTED} more asset(s): see Findings and Assets"
        fields["where"].values.append(more)
        fields["what"].values.append(more)
    suggestions = reference.get("detections", {})
    criteria: list[str] = []
    data: list[str] = []
    for alert in alerts:
        entry = suggestions.get(alert["detection"].split(".")[0], {})
        criteria += entry.get("criteria", [])
        data += entry.get("data", [])
    if criteria:
        fields["criteria"].values.append(
            "suggested from the detections, to confirm: " + ", ".join(dict.fromkeys(criteria))
        )
    if data:
        fields["data"].values += list(dict.fromkeys(data))
    techniques = {t["id"]: t["name"] for a in alerts for t in a["techniques"] or []}
    if techniques:
        fields["access"].values.append(
            "ATT&CK for ICS: " + "; ".join(f"{tid} {name}" for tid, name in sorted(techniques.items()))
        )
    indicators: list[str] = []
    domain_fields = set(reference.get("domain_fields", []))
    for alert in alerts:
        indicators += [f"IP {host}" for host in alert["hosts"] if _is_public(host)]
        values = json.loads(alert["values_json"] or "{}")
        for name, value in values.items():
            if name in domain_fields:
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, str) and not _is_public(item) and "." in item and not item[0].isdigit():
                        indicators.append(f"domain {item}")
        for mac in values.get("mac", []) if isinstance(values.get("mac"), list) else []:
            indicators.append(f"MAC {mac}")
    if "flow_policy" in tables:
        for row in _rows(
            con,
            """SELECT server_ip, string_agg(DISTINCT client_ip, ', ' ORDER BY client_ip) AS clients, count(*) AS flows
               FROM flow_policy WHERE verdict = 'external_unapproved' GROUP BY server_ip
               ORDER BY flows DESC, server_ip LIMIT 20""",
        ):
            if not _is_public(row["server_ip"]):
                continue  # an inbound session to a local host: its public client is already listed
            plain = f"IP {row['server_ip']}"
            annotated = f"{plain} (no approved destination; reached by {row['clients']} in {row['flows']} flow(s))"
            indicators = [annotated if item == plain else item for item in indicators]
            if annotated not in indicators:
                indicators.append(annotated)
    unique = list(dict.fromkeys(indicators))
    fields["indicators"].values += unique[: MAX_LISTED * 3]
    if len(unique) > MAX_LISTED * 3:
        fields["indicators"].values.append(f"and {len(unique) - MAX_LISTED * 3} more: see the alerts' evidence")
    return list(fields.values())


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _timeline(
    captures: list[dict[str, Any]], alerts: list[dict[str, Any]], con: duckdb.DuckDBPyConnection, tables: set[str]
) -> list[dict[str, Any]]:
    """Capture starts and ends, alert first sightings, remote-access sessions, first unapproved external flows."""
    events: list[dict[str, Any]] = []
    for capture in captures:
        if capture["first_ts"] is not None:
            events.append({"ts": capture["first_ts"], "kind": "capture", "severity": "", "text": "capture starts: "
                           + capture["name"]})  # fmt: skip
            events.append({"ts": capture["last_ts"], "kind": "capture", "severity": "", "text": "capture ends: "
                           + capture["name"]})  # fmt: skip
    for alert in alerts:
        events.append(
            {"ts": alert["first_seen"], "kind": "alert", "severity": alert["severity"], "text": alert["title"],
             "anchor": alert["occurrence_id"]}
        )  # fmt: skip
    if "remote_access" in tables:
        for row in _rows(
            con,
            "SELECT ts, method, client_ip, server_ip, user_name FROM remote_access ORDER BY ts LIMIT 200",
        ):
            user = f" as {row['user_name']}" if row.get("user_name") else ""
            events.append(
                {"ts": row["ts"], "kind": "remote access", "severity": "",
                 "text": f"{row['method']} session {row['client_ip']} → {row['server_ip']}{user}"}
            )  # fmt: skip
    if {"flow_policy", "flows"} <= tables:
        for row in _rows(
            con,
            """SELECT min(f.ts) AS ts, p.client_ip, p.client_zone, p.server_ip, count(*) AS flows,
                      string_agg(DISTINCT p.protocol, ', ' ORDER BY p.protocol) AS protocols
               FROM flow_policy p JOIN flows f USING (capture_id, flow_id)
               WHERE p.verdict = 'external_unapproved'
               GROUP BY ALL ORDER BY ts LIMIT 50""",
        ):
            events.append(
                {"ts": row["ts"], "kind": "policy", "severity": "",
                 "text": f"first unapproved external flow {row['client_ip']} ({row['client_zone']}) → "
                 f"{row['server_ip']} over {row['protocols']}, {row['flows']} flow(s)"}
            )  # fmt: skip
    for event in events:
        event.setdefault("anchor", None)
    return sorted(events, key=lambda event: (event["ts"], event["kind"]))


def collect(
    con: duckdb.DuckDBPyConnection,
    policy: Policy | None = None,
    title: str | None = None,
    organisation: str = "",
    policy_name: str | None = None,
    policy_sha256: str | None = None,
    now: dt.datetime | None = None,
) -> ReportData:
    """Read the store (and the policy, when given) into the report's facts."""
    now = now or dt.datetime.now(dt.UTC)
    tables = _tables(con)
    reference = reference_data()
    captures = _rows(con, "SELECT * FROM captures ORDER BY first_ts NULLS LAST, name") if "captures" in tables else []
    alerts, suppressed = _read_alerts(con, now.date())
    _zones_of_hosts(con, tables, [*alerts, *suppressed])
    assets = _assets(con, tables)
    findings: list[dict[str, Any]] = []
    if "inventory_findings" in tables:
        findings = _rows(
            con,
            """SELECT * FROM inventory_findings
               ORDER BY CASE severity WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, kind, finding_id""",
        )
    network = build_map(con, policy)
    site = policy.site if policy is not None and policy.site else ""
    counts = {}
    for table in sorted(tables):
        rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()
        counts[table] = int(rows[0][0]) if rows else 0
    sources: list[dict[str, Any]] = []
    if "declared_assets" in tables:
        sources = _rows(
            con,
            "SELECT source_file, source_sha256, count(*) AS rows, max(imported_at) AS imported_at "
            "FROM declared_assets GROUP BY ALL ORDER BY source_file",
        )
    starts = [c["first_ts"] for c in captures if c["first_ts"] is not None]
    ends = [c["last_ts"] for c in captures if c["last_ts"] is not None]
    return ReportData(
        title=title or ("Incident report" + (f": {site}" if site else "")),
        organisation=organisation,
        site=site,
        generated_at=now,
        version=__version__,
        captures=captures,
        packets=sum(c["packets"] or 0 for c in captures),
        flows=sum(c["flows"] or 0 for c in captures),
        first_ts=min(starts) if starts else None,
        last_ts=max(ends) if ends else None,
        assets=assets,
        alerts=alerts,
        suppressed=suppressed,
        findings=findings,
        incident=_incident(reference, organisation, site, alerts, assets, con, tables),
        reference=reference,
        timeline=_timeline(captures, alerts, con, tables),
        map_svg=render_svg(network, standalone=False),
        map_counts={
            "zones": len(network.zones),
            "nodes": sum(len(zone.nodes) for zone in network.zones),
            "conduits": len(network.conduits),
        },
        tables=counts,
        attack_version=attack.load().version,
        policy_name=policy_name,
        policy_sha256=policy_sha256,
        inventory_sources=sources,
    )

"""D6: container-intelligence leakage (ATT&CK for ICS T0802, T0811, T0882).

Container ids (ISO 6346, check digit verified) and EDIFACT cargo messages tell a smuggler or a thief which box is
where and when it moves. The content inspector writes every match it finds in a cleartext payload to
``cargo_content``; this module groups them per flow and direction, judges each flow against the policy's
``container_data`` rules (where each kind of cargo data may flow: conduits, zones, external partners) using the
policy evaluation's ``flow_policy`` verdicts, and raises one alert per source, destination and kind family for
everything that went elsewhere.

Without a policy (or one with no ``container_data`` section) only ids leaving to a public address are an alert, with
a lower confidence: an internal flow may be the terminal's own business. Encrypted uploads (HTTPS) leave nothing in
``cargo_content``; they are D1's job (an OT host talking to an unapproved external destination).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent
from quaywatch.policy.model import EXTERNAL_ZONE, ContainerDataFlow, Policy

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D6.container-leakage"
REQUIRES = ("cargo_content",)
TECHNIQUES = ["T0802", "T0811", "T0882"]

#: Kind families: the policy's ``container_data.kinds`` names and the ``cargo_content.kind`` values in each.
FAMILIES = {"container_ids": ("container_id",), "edifact": ("edifact_message", "edifact_location")}
#: A random 11-character match passes the ISO 6346 check digit about one time in ten (the digit is a remainder
#: modulo 11, folded to 0-9), so one valid id alone may be chance; two distinct ones almost never are.
MIN_DISTINCT_IDS = 2
CHANCE_PER_ID = 0.1
LISTED_IDS = 20
EVIDENCE_PACKETS = 100
SUPPRESSION_SECONDS = 3600
#: EDIFACT location qualifiers (UN/EDIFACT 3227): 9 place of loading, 11 place of discharge, 147 stowage cell.
LOADING, DISCHARGE = "9", "11"

_QUERY = """
SELECT c.capture_id, c.flow_id, c.community_id, c.client_ip, c.server_ip, c.server_port, c.direction, c.ts,
       c.packet_number, c.kind, c.value, c.valid, {policy_columns}
FROM cargo_content AS c {policy_join}
WHERE c.kind IN ('container_id', 'edifact_message', 'edifact_location')
ORDER BY c.ts, c.packet_number, c.kind, c.value
"""
_POLICY_COLUMNS = "p.verdict, p.conduit, p.client_zone, p.server_zone"
_NO_POLICY_COLUMNS = "NULL AS verdict, NULL AS conduit, NULL AS client_zone, NULL AS server_zone"
_POLICY_JOIN = "LEFT JOIN flow_policy AS p ON p.capture_id = c.capture_id AND p.flow_id = c.flow_id"


@dataclass(slots=True)
class _Group:
    """Cargo data of one family sent by one host to another, over every flow that was not allowed."""

    source: str
    destination: str
    family: str
    source_zone: str | None = None
    destination_zone: str | None = None
    where: str = ""  # zone, "external", "partner <name>" ...
    reasons: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    loading: list[str] = field(default_factory=list)
    discharge: list[str] = field(default_factory=list)
    invalid_ids: int = 0
    rows: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    flows: dict[str, str] = field(default_factory=dict)  # flow id -> community id
    events: list[EventReference] = field(default_factory=list)
    packets: list[int] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)


def _add(items: list[Any], value: Any) -> None:
    if value is not None and value not in items:
        items.append(value)


def _public(ip: str | None) -> bool:
    try:
        return ip is not None and ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


def _family(kind: str) -> str:
    return "container_ids" if kind == "container_id" else "edifact"


def _allowed_by(
    rules: Iterable[ContainerDataFlow], family: str, verdict: str | None, conduit: str | None,
    source_zone: str | None, destination_zone: str | None,
) -> str | None:  # fmt: skip
    """The container_data rule that allows data of this family on this flow, or None."""
    for rule in rules:
        if family not in rule.kinds:
            continue
        if verdict == "allowed" and conduit and conduit in rule.conduits:
            return f"conduit {conduit!r} ({rule.name})"
        if verdict == "external_allowed" and conduit and conduit in rule.partners:
            return f"partner {conduit!r} ({rule.name})"
        zones = set(rule.zones) - {EXTERNAL_ZONE}
        if source_zone in zones and destination_zone in zones:
            return f"zones {source_zone}/{destination_zone} ({rule.name})"
    return None


def _where(verdict: str | None, conduit: str | None, zone: str | None, ip: str) -> str:
    if verdict == "external_allowed" and conduit:
        return f"external destination {conduit!r}, not a container-data partner"
    if zone == EXTERNAL_ZONE or (zone is None and _public(ip)):
        return "external, no approved partner"
    return f"zone {zone}" if zone else "an internal address"


_COMBINATION = ("kind", "direction", "client_ip", "server_ip", "verdict", "conduit", "client_zone", "server_zone")


def _kept(
    rules: Iterable[ContainerDataFlow], judged: bool, kind: str, direction: str | None, client: str | None,
    server: str | None, verdict: str | None, conduit: str | None, client_zone: str | None, server_zone: str | None,
) -> bool:  # fmt: skip
    """Whether rows with these values can count: the per-row test of :func:`detect`, on what it depends on."""
    to_client = direction == "to_client"
    destination = client if to_client else server
    if (server if to_client else client) is None or destination is None:
        return False
    if judged:
        source_zone, destination_zone = (server_zone, client_zone) if to_client else (client_zone, server_zone)
        return _allowed_by(rules, _family(str(kind)), verdict, conduit, source_zone, destination_zone) is None
    return _public(destination)


def _kept_rows(
    con: duckdb.DuckDBPyConnection, sql: str, rules: Iterable[ContainerDataFlow], judged: bool
) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` that can count, in its order.

    The verdict depends only on a few columns with few distinct combinations (a terminal's cargo traffic is mostly
    the same allowed EDI conduits, hundreds of thousands of matches a day): each combination is judged once in
    Python and only the rows of the kept ones are fetched.
    """
    columns = ", ".join(_COMBINATION)
    combinations = con.execute(f"SELECT DISTINCT {columns} FROM ({sql})").fetchall()
    kept = [row for row in combinations if _kept(rules, judged, *row)]
    if not kept:
        return []
    table = pa.table({name: [row[i] for row in kept] for i, name in enumerate(_COMBINATION)})
    table = table.cast(pa.schema([pa.field(name, pa.string()) for name in _COMBINATION]))
    con.register("container_leakage_kept", table)
    try:
        on = " AND ".join(f"q.{name} IS NOT DISTINCT FROM k.{name}" for name in _COMBINATION)
        return con.execute(
            f"SELECT q.* FROM ({sql}) AS q SEMI JOIN container_leakage_kept AS k ON {on} "
            "ORDER BY q.ts, q.packet_number, q.kind, q.value"
        ).fetchall()
    finally:
        con.unregister("container_leakage_kept")


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per source, destination and kind family of cargo data that went where the policy does not allow."""
    present = {str(row[0]) for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    policy: Policy | None = context.policy
    rules = policy.container_data if policy is not None else ()
    judged = bool(rules) and "flow_policy" in present
    sql = _QUERY.format(
        policy_columns=_POLICY_COLUMNS if judged else _NO_POLICY_COLUMNS, policy_join=_POLICY_JOIN if judged else ""
    )
    groups: dict[tuple[str, str, str], _Group] = {}
    for row in _kept_rows(con, sql, rules, judged):
        (capture_id, flow_id, community_id, client, server, server_port, direction, ts, packet, kind, value, valid,
         verdict, conduit, client_zone, server_zone) = row  # fmt: skip
        family = _family(str(kind))
        to_client = direction == "to_client"
        source, destination = (server, client) if to_client else (client, server)
        source_zone, destination_zone = (server_zone, client_zone) if to_client else (client_zone, server_zone)
        if source is None or destination is None:
            continue
        if judged:
            if _allowed_by(rules, family, verdict, conduit, source_zone, destination_zone) is not None:
                continue
            reason = f"no container_data rule allows {family} on this flow (verdict {verdict or 'unknown'})"
        else:
            if not _public(destination):
                continue
            reason = "sent to a public address (no container_data policy to judge against)"
        group = groups.get((source, destination, family))
        if group is None:
            group = _Group(source, destination, family, source_zone, destination_zone)
            group.where = _where(verdict, conduit, destination_zone, destination)
            groups[(source, destination, family)] = group
        _add(group.reasons, reason)
        group.rows += 1
        group.first = ts if group.first is None else min(group.first, ts)
        group.last = ts if group.last is None else max(group.last, ts)
        if flow_id:
            group.flows.setdefault(str(flow_id), str(community_id or ""))
        _add(group.ports, server_port)
        if packet is not None and len(group.packets) < EVIDENCE_PACKETS and int(packet) not in group.packets:
            group.packets.append(int(packet))  # one event per packet, however many matches it held
            group.events.append(EventReference("cargo_content", str(capture_id), int(packet), flow_id))
        if kind == "container_id":
            if valid:
                _add(group.ids, str(value))
            else:
                group.invalid_ids += 1
        elif kind == "edifact_message":
            _add(group.messages, str(value))
        else:
            qualifier, _, location = str(value).partition(":")
            if qualifier == LOADING:
                _add(group.loading, location)
            elif qualifier == DISCHARGE:
                _add(group.discharge, location)
    alerts = []
    for group in groups.values():
        if group.family == "container_ids" and len(group.ids) < MIN_DISTINCT_IDS:
            continue
        if group.family == "edifact" and not group.messages:
            continue
        alerts.append(_alert(group, judged))
    return alerts


def _alert(group: _Group, judged: bool) -> Alert:
    external = group.destination_zone == EXTERNAL_ZONE or (
        group.destination_zone is None and _public(group.destination)
    )
    what = (
        f"{len(group.ids)} distinct valid container id(s)"
        if group.family == "container_ids"
        else f"EDIFACT {', '.join(group.messages)}"
    )
    ports = ""
    if group.loading or group.discharge:
        ports = f" (ports of loading {', '.join(group.loading) or '-'}; discharge {', '.join(group.discharge) or '-'})"
    components: list[ScoreComponent] = []
    if group.family == "container_ids":
        chance = CHANCE_PER_ID ** len(group.ids)
        components.append(
            ScoreComponent(
                "distinct valid container ids", float(len(group.ids)), 0.4,
                f"{len(group.ids)} distinct ids pass the ISO 6346 check digit ({group.invalid_ids} match(es) failed "
                f"it). A random 11-character match passes one time in ten, so {len(group.ids)} passing by chance "
                f"has a probability of about {chance:.0e}.",
            )
        )  # fmt: skip
    else:
        components.append(
            ScoreComponent(
                "EDIFACT messages", float(len(group.messages)), 0.4,
                f"UNH message header(s) {', '.join(group.messages)}{ports}: cargo manifests or moves, not chance text.",
            )
        )  # fmt: skip
    destination_weight = 0.4 if external else 0.25
    components.append(
        ScoreComponent(
            "destination", 1.0 if external else 0.6, destination_weight,
            f"Sent to {group.where}; " + "; ".join(group.reasons) + ".",
        )
    )  # fmt: skip
    components.append(
        ScoreComponent(
            "policy", 1.0 if judged else 0.5, 0.2,
            "Judged against the policy's container_data rules and the flow verdicts."
            if judged
            else "No container_data policy: judged only by the public destination, so confidence is lower.",
        )
    )  # fmt: skip
    # Score: how sure the content is cargo data (chance of the ids), times how bad the destination is.
    chance = CHANCE_PER_ID ** len(group.ids) if group.family == "container_ids" else 0.0
    score = (1.0 - chance) * (0.5 + (0.3 if external else 0.1) + (0.2 if judged else 0.0))
    confidence = (0.9 if external else 0.75) if judged else 0.6
    severity = "high" if external else "medium"
    if not judged:
        severity = "medium"
    first = group.first or dt.datetime.now(dt.UTC)
    values: dict[str, Any] = {
        "family": group.family,
        "distinct_valid_ids": len(group.ids),
        "container_ids": group.ids[:LISTED_IDS],
        "invalid_id_matches": group.invalid_ids,
        "edifact_messages": group.messages[:LISTED_IDS],
        "ports_of_loading": group.loading[:LISTED_IDS],
        "ports_of_discharge": group.discharge[:LISTED_IDS],
        "destination": group.where,
        "source_zone": group.source_zone,
        "destination_zone": group.destination_zone,
        "server_ports": group.ports[:LISTED_IDS],
        "matches": group.rows,
    }
    return Alert(
        detection=DETECTION,
        title=f"{what} sent from {group.source} to {group.destination}",
        key={"source": group.source, "destination": group.destination, "family": group.family},
        severity=severity,
        confidence=confidence,
        techniques=list(TECHNIQUES),
        first_seen=first,
        last_seen=group.last or first,
        count=len(group.flows) or 1,
        explanation=(
            f"{group.source} sent {what}{ports} to {group.destination} ({group.where}) in {len(group.flows)} flow(s). "
            + ("No container_data rule of the policy allows it there. " if judged else "")
            + "Cargo data tells a thief or smuggler which box is where: check what runs on the source and why it "
            "sends there."
        ),
        score=round(score, 3),
        score_components=components,
        assets=[group.source, group.destination],
        zones=[zone for zone in (group.source_zone, group.destination_zone) if zone],
        evidence=Evidence(
            flow_ids=list(group.flows)[:EVIDENCE_PACKETS],
            community_ids=[c for c in dict.fromkeys(group.flows.values()) if c][:EVIDENCE_PACKETS],
            events=group.events,
            packet_numbers=group.packets,
            values=values,
        ),
        suppression_seconds=SUPPRESSION_SECONDS,
    )

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

from quaywatch.detect import catalog
from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent
from quaywatch.policy.model import EXTERNAL_ZONE, ContainerDataFlow, Policy

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D6.container-leakage"
REQUIRES = ("cargo_content",)
#: One-core seconds over the benchmark store (make bench): the engine starts the longest detections first.
COST = 0.23
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

_CARGO_KINDS = "c.kind IN ('container_id', 'edifact_message', 'edifact_location')"
#: The cargo rows grouped per flow and the columns of theirs the verdict depends on (kind, direction, addresses),
#: each group with its rows' row ids; then those groups beside their flow's ``flow_policy`` row(s) (every one, as
#: joining every cargo row with them would give) grouped again per distinct combination of the columns the verdict
#: depends on, each with the row ids of its flow groups. The flow_policy join is between tens of thousands of groups
#: instead of hundreds of thousands of rows, and the second pass reaches the kept rows through the row ids instead
#: of joining cargo_content again on six keys.
_FLOWS = """
CREATE OR REPLACE TEMP TABLE container_leakage_flows AS
SELECT capture_id, flow_id, kind, direction, client_ip, server_ip, list(rowid) AS cargo_rows
FROM cargo_content AS c WHERE {kinds} GROUP BY ALL
"""
_COMBINATIONS = """
CREATE OR REPLACE TEMP TABLE container_leakage_combinations AS
SELECT f.kind, f.direction, f.client_ip, f.server_ip, {policy_columns}, list(f.rowid) AS flow_rows
FROM container_leakage_flows AS f {policy_join} GROUP BY ALL
"""
_POLICY_COLUMNS = "p.verdict, p.conduit, p.client_zone, p.server_zone"
_NO_POLICY_COLUMNS = ", ".join(
    f"NULL::VARCHAR AS {name}" for name in ("verdict", "conduit", "client_zone", "server_zone")
)
_POLICY_JOIN = "LEFT JOIN flow_policy AS p ON p.capture_id = f.capture_id AND p.flow_id = f.flow_id"

#: Everything an alert says, per group (source, destination and kind family, numbered in Python from the kept
#: combinations), over the rows of the kept combinations, reached by row id: one pass in SQL. "First" is in the
#: order of ts, packet number, kind and value (``position``, numbered over the row ids and sort keys alone, the
#: other columns fetched after): the first row's combination gives the zones and the destination's description, and
#: every list holds distinct values in the order they first appear.
_GROUPS_SQL = """
WITH kept_flows AS (
    SELECT k.grp, k.combination, unnest(f.flow_rows) AS flow_row
    FROM container_leakage_combinations AS f JOIN container_leakage_kept AS k ON f.rowid = k.combination_row
),
kept_rows AS (
    SELECT k.grp, k.combination, unnest(f.cargo_rows) AS cargo_row
    FROM kept_flows AS k JOIN container_leakage_flows AS f ON f.rowid = k.flow_row
),
ordered AS (
    SELECT k.grp, k.combination, k.cargo_row,
           row_number() OVER (ORDER BY c.ts, c.packet_number, c.kind, c.value) AS position
    FROM kept_rows AS k JOIN cargo_content AS c ON c.rowid = k.cargo_row
),
kept AS MATERIALIZED (
    SELECT o.grp, o.combination, o.position,
           c.capture_id, c.flow_id, c.community_id, c.server_port, c.ts, c.packet_number, c.kind, c.value, c.valid
    FROM ordered AS o JOIN cargo_content AS c ON c.rowid = o.cargo_row
),
groups AS (
    SELECT grp, min(position) AS position, count(*) AS matches, min(ts) AS first_ts, max(ts) AS last_ts,
           count(*) FILTER (WHERE kind = 'container_id' AND NOT valid) AS invalid_ids
    FROM kept GROUP BY grp
),
combinations AS (
    SELECT grp, list(combination ORDER BY position) AS combinations FROM (
        SELECT grp, combination, min(position) AS position FROM kept GROUP BY ALL
    ) GROUP BY grp
),
flows AS (
    SELECT grp, flow_id, min(position) AS position,
           arg_min_null(community_id, position) AS community
    FROM kept WHERE flow_id <> '' GROUP BY ALL
),
flow_lists AS (
    SELECT grp, count(*) AS flow_count, list(flow_id ORDER BY position)[1:{evidence}] AS flow_ids
    FROM flows GROUP BY grp
),
communities AS (
    SELECT grp, list(community ORDER BY position)[1:{evidence}] AS community_ids FROM (
        SELECT grp, community, min(position) AS position FROM flows WHERE community <> '' GROUP BY ALL
    ) GROUP BY grp
),
ports AS (
    SELECT grp, list(server_port ORDER BY position)[1:{listed}] AS ports FROM (
        SELECT grp, server_port, min(position) AS position FROM kept WHERE server_port IS NOT NULL GROUP BY ALL
    ) GROUP BY grp
),
packets AS (
    SELECT grp,
           list(struct_pack(packet_number, capture_id := origin.capture_id, flow_id := origin.flow_id)
                ORDER BY position)[1:{evidence}] AS packets
    FROM (
        SELECT grp, packet_number, min(position) AS position,
               arg_min(struct_pack(capture_id, flow_id), position) AS origin
        FROM kept WHERE packet_number IS NOT NULL GROUP BY ALL
    ) GROUP BY grp
),
cargo AS (
    SELECT grp, count(*) FILTER (WHERE tag = 'id') AS distinct_ids,
           list(value ORDER BY position) FILTER (WHERE tag = 'id')[1:{listed}] AS ids,
           list(value ORDER BY position) FILTER (WHERE tag = 'message') AS messages,
           list(value ORDER BY position) FILTER (WHERE tag = 'loading') AS loading,
           list(value ORDER BY position) FILTER (WHERE tag = 'discharge') AS discharge
    FROM (
        SELECT grp, tag, CASE WHEN tag IN ('id', 'message') THEN value ELSE substr(value, length(qualifier) + 2) END
                   AS value, min(position) AS position
        FROM (
            SELECT grp, position, value, qualifier,
                   CASE WHEN kind = 'container_id' THEN CASE WHEN valid THEN 'id' END
                        WHEN kind = 'edifact_message' THEN 'message'
                        WHEN qualifier = '{loading}' THEN 'loading'
                        WHEN qualifier = '{discharge}' THEN 'discharge' END AS tag
            FROM (SELECT *, CASE WHEN kind = 'edifact_location' THEN split_part(value, ':', 1) END AS qualifier
                  FROM kept)
        ) WHERE tag IS NOT NULL GROUP BY ALL
    ) GROUP BY grp
)
SELECT * FROM groups
LEFT JOIN combinations USING (grp)
LEFT JOIN flow_lists USING (grp)
LEFT JOIN communities USING (grp)
LEFT JOIN ports USING (grp)
LEFT JOIN packets USING (grp)
LEFT JOIN cargo USING (grp)
ORDER BY groups.position
"""


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
    distinct_ids: int = 0
    ids: list[str] = field(default_factory=list)  # the first LISTED_IDS of them
    messages: list[str] = field(default_factory=list)
    loading: list[str] = field(default_factory=list)
    discharge: list[str] = field(default_factory=list)
    invalid_ids: int = 0
    rows: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    flow_count: int = 0
    flow_ids: list[str] = field(default_factory=list)  # the first EVIDENCE_PACKETS of them
    community_ids: list[str] = field(default_factory=list)  # of those flows' first rows, likewise
    events: list[EventReference] = field(default_factory=list)
    packets: list[int] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # the first LISTED_IDS of them


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


@dataclass(frozen=True, slots=True)
class _Combination:
    """One distinct combination of the columns the verdict depends on, and the group its rows count in."""

    kind: str
    direction: str | None
    client_ip: str | None
    server_ip: str | None
    verdict: str | None
    conduit: str | None
    client_zone: str | None
    server_zone: str | None

    @property
    def to_client(self) -> bool:
        return self.direction == "to_client"

    @property
    def source(self) -> str | None:
        return self.server_ip if self.to_client else self.client_ip

    @property
    def destination(self) -> str | None:
        return self.client_ip if self.to_client else self.server_ip

    @property
    def source_zone(self) -> str | None:
        return self.server_zone if self.to_client else self.client_zone

    @property
    def destination_zone(self) -> str | None:
        return self.client_zone if self.to_client else self.server_zone

    @property
    def family(self) -> str:
        return _family(str(self.kind))


def _kept(rules: Iterable[ContainerDataFlow], judged: bool, combination: _Combination) -> bool:
    """Whether rows with these values count: the per-row test of :func:`detect`, on what it depends on."""
    if combination.source is None or combination.destination is None:
        return False
    if judged:
        found = _allowed_by(
            rules, combination.family, combination.verdict, combination.conduit, combination.source_zone,
            combination.destination_zone,
        )  # fmt: skip
        return found is None
    return _public(combination.destination)


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per source, destination and kind family of cargo data that went where the policy does not allow.

    The verdict depends only on a few columns with few distinct combinations (a terminal's cargo traffic is mostly
    the same allowed EDI conduits, hundreds of thousands of matches a day): each combination is judged once in
    Python, and one aggregation in SQL reads only the rows of the kept ones (by row id) and returns one row per
    alert.
    """
    present = catalog.tables(con)
    policy: Policy | None = context.policy
    rules = policy.container_data if policy is not None else ()
    judged = bool(rules) and "flow_policy" in present
    columns = _POLICY_COLUMNS if judged else _NO_POLICY_COLUMNS
    try:
        con.execute(_FLOWS.format(kinds=_CARGO_KINDS))
        con.execute(_COMBINATIONS.format(policy_columns=columns, policy_join=_POLICY_JOIN if judged else ""))
        found = con.execute(f"SELECT rowid, {', '.join(_COMBINATION)} FROM container_leakage_combinations").fetchall()
        judged_rows = [(int(row[0]), _Combination(*row[1:])) for row in found]
        kept_rows = [(row, combination) for row, combination in judged_rows if _kept(rules, judged, combination)]
        if not kept_rows:
            return []
        kept = [combination for _, combination in kept_rows]
        groups: dict[tuple[str | None, str | None, str], int] = {}
        for combination in kept:
            groups.setdefault((combination.source, combination.destination, combination.family), len(groups))
        table = pa.table(
            {
                "combination_row": pa.array([row for row, _ in kept_rows], pa.int64()),
                "combination": pa.array(range(len(kept)), pa.int32()),
                "grp": pa.array([groups[(item.source, item.destination, item.family)] for item in kept], pa.int32()),
            }
        )
        con.register("container_leakage_kept", table)
        try:
            groups_sql = _GROUPS_SQL.format(
                evidence=EVIDENCE_PACKETS, listed=LISTED_IDS, loading=LOADING, discharge=DISCHARGE
            )
            rows = con.sql(groups_sql).to_arrow_table().to_pylist()
        finally:
            con.unregister("container_leakage_kept")
    finally:
        con.execute("DROP TABLE IF EXISTS container_leakage_combinations")
        con.execute("DROP TABLE IF EXISTS container_leakage_flows")
    alerts = []
    for row in rows:
        group = _group(row, [kept[index] for index in row["combinations"]], judged)
        if group.family == "container_ids" and group.distinct_ids < MIN_DISTINCT_IDS:
            continue
        if group.family == "edifact" and not group.messages:
            continue
        alerts.append(_alert(group, judged))
    return alerts


def _group(row: dict[str, Any], combinations: list[_Combination], judged: bool) -> _Group:
    """A :class:`_Group` from one row of :data:`_GROUPS_SQL` and its combinations in the order they first appear."""
    first = combinations[0]
    source, destination = first.source, first.destination
    assert source is not None and destination is not None  # a kept combination has both
    group = _Group(source, destination, first.family, first.source_zone, first.destination_zone)
    group.where = _where(first.verdict, first.conduit, first.destination_zone, destination)
    for combination in combinations:
        if judged:
            verdict = combination.verdict or "unknown"
            _add(group.reasons, f"no container_data rule allows {group.family} on this flow (verdict {verdict})")
        else:
            _add(group.reasons, "sent to a public address (no container_data policy to judge against)")
    group.distinct_ids = int(row["distinct_ids"] or 0)
    group.ids = list(row["ids"] or [])
    group.messages = list(row["messages"] or [])
    group.loading = list(row["loading"] or [])
    group.discharge = list(row["discharge"] or [])
    group.invalid_ids = int(row["invalid_ids"])
    group.rows = int(row["matches"])
    group.first, group.last = row["first_ts"], row["last_ts"]
    group.flow_count = int(row["flow_count"] or 0)
    group.flow_ids = list(row["flow_ids"] or [])
    group.community_ids = list(row["community_ids"] or [])
    for packet in row["packets"] or []:  # one event per packet, however many matches it held
        number = int(packet["packet_number"])
        group.packets.append(number)
        group.events.append(EventReference("cargo_content", str(packet["capture_id"]), number, packet["flow_id"]))
    group.ports = list(row["ports"] or [])
    return group


def _alert(group: _Group, judged: bool) -> Alert:
    external = group.destination_zone == EXTERNAL_ZONE or (
        group.destination_zone is None and _public(group.destination)
    )
    what = (
        f"{group.distinct_ids} distinct valid container id(s)"
        if group.family == "container_ids"
        else f"EDIFACT {', '.join(group.messages)}"
    )
    ports = ""
    if group.loading or group.discharge:
        ports = f" (ports of loading {', '.join(group.loading) or '-'}; discharge {', '.join(group.discharge) or '-'})"
    components: list[ScoreComponent] = []
    if group.family == "container_ids":
        chance = CHANCE_PER_ID**group.distinct_ids
        components.append(
            ScoreComponent(
                "distinct valid container ids", float(group.distinct_ids), 0.4,
                f"{group.distinct_ids} distinct ids pass the ISO 6346 check digit ({group.invalid_ids} match(es) "
                f"failed it). A random 11-character match passes one time in ten, so {group.distinct_ids} passing "
                f"by chance has a probability of about {chance:.0e}.",
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
    chance = CHANCE_PER_ID**group.distinct_ids if group.family == "container_ids" else 0.0
    score = (1.0 - chance) * (0.5 + (0.3 if external else 0.1) + (0.2 if judged else 0.0))
    confidence = (0.9 if external else 0.75) if judged else 0.6
    severity = "high" if external else "medium"
    if not judged:
        severity = "medium"
    first = group.first or dt.datetime.now(dt.UTC)
    values: dict[str, Any] = {
        "family": group.family,
        "distinct_valid_ids": group.distinct_ids,
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
        count=group.flow_count or 1,
        explanation=(
            f"{group.source} sent {what}{ports} to {group.destination} ({group.where}) in {group.flow_count} flow(s). "
            + ("No container_data rule of the policy allows it there. " if judged else "")
            + "Cargo data tells a thief or smuggler which box is where: check what runs on the source and why it "
            "sends there."
        ),
        score=round(score, 3),
        score_components=components,
        assets=[group.source, group.destination],
        zones=[zone for zone in (group.source_zone, group.destination_zone) if zone],
        evidence=Evidence(
            flow_ids=group.flow_ids,
            community_ids=group.community_ids,
            events=group.events,
            packet_numbers=group.packets,
            values=values,
        ),
        suppression_seconds=SUPPRESSION_SECONDS,
    )

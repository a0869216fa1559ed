"""D4: beaconing (ATT&CK for ICS T0869 Standard Application Layer Protocol, Enterprise T1071).

An implant or an undeclared vendor agent checks in on a clock: every N seconds ± jitter, some beats missed. Every
(client, server, server port, transport) pair of ``flows`` with enough connections, and every (client, queried
name) of ``dns`` queries (a beacon that follows its domain across addresses), is scored by
:func:`quaywatch.detect.beacon_score.beacon_score`, whose components explain the period, the jitter, the missed
beats, the size regularity and the asset-role prior. The prior needs to know what each end is: it reads the
engine's ``host_context`` when present, else ``assets`` and ``host_zones``, else the site policy's zones, else
only whether an address is private; every one of those may be missing.

Only pairs that can alert are read row by row. The score never exceeds the prior, so the pairs (one DuckDB
``GROUP BY`` with at least ``MIN_CONNECTIONS`` rows) whose prior is below the alert score are dropped first, and the
policy's verdicts (``flow_policy``, which can lower the prior) are asked about the rest only. The survivors' times and
sizes come as numpy arrays; those with at least ``MIN_CONNECTIONS`` distinct times are scored in one batch
(:func:`quaywatch.detect.beacon_score.beacon_scores`, equal to ``beacon_score`` per pair, at most ``MAX_GAPS`` gaps
each), and only the first ``EVIDENCE_FLOWS`` rows of each alert have their capture and flow ids read (by row id).
A pair's rows are in time order; equal times are in packet order.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from quaywatch.detect import catalog, rollups
from quaywatch.detect.alert import Alert, EventReference, Evidence
from quaywatch.detect.beacon_score import (
    MIN_CONNECTIONS,
    BeaconScore,
    PairContext,
    beacon_scores,
    never_outward_roles,
    role_prior,
)
from quaywatch.policy.evaluate import OT_PURDUE_MAX, zone_of

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext
    from quaywatch.policy.model import Policy

DETECTION = "D4.beaconing"
REQUIRES = ("flows",)
TECHNIQUES = ["T0869", "T1071"]

#: From this score a pair is an alert. The sweep (tests/detect/test_beacon_score.py) puts every normal series at or
#: below 0.2 (intra-OT polling, capped by its prior) and Poisson or bursty traffic near 0.
ALERT_SCORE = 0.25
#: Severity by score; a never-outward OT role talking to the outside is one step higher (see _severity).
SEVERITY_STEPS = ((0.85, "high"), (0.6, "medium"), (0.0, "low"))
EVIDENCE_FLOWS = 50
#: The engine's scheduling (detect/registry.py): the two independent halves and their one-core seconds over the
#: benchmark store; the names half scores more series.
PARTS = {"flows": 0.12, "names": 0.3}
#: Names that are not destinations: local name services and reverse lookups (RFC 6762, RFC 6761, RFC 1035 3.5).
LOCAL_NAME_SUFFIXES = (".local", ".arpa", ".localhost", ".home.arpa", ".lan", ".internal")

# Three small steps, so that only pairs that can alert are read row by row: the eligible pairs (a few hundred rows),
# the policy verdicts of the pairs whose prior can reach the alert score, then the rows of the pairs still in
# ``beacon_pairs`` (numbers to numpy; the text stays in Arrow until an alert needs its evidence). Rows of one pair are
# in time order, equal times (one beacon opening two sockets in one microsecond) in packet order.
#: The pairs with enough flows, counted from the per-capture flow summary where a capture has one
#: (``rollups.flow_groups_sql``: a few hundred keys per capture instead of every flow).
_FLOW_PAIRS = """
SELECT row_number() OVER (ORDER BY client_ip, server_ip, server_port, transport) AS pair, * FROM (
    SELECT client_ip, server_ip, server_port, transport FROM ({counts}) GROUP BY ALL HAVING sum(count) >= ?
)
"""
_FLOW_ROWS = """
SELECT p.pair, epoch_us(f.ts) AS us, coalesce(f.bytes_to_server, 0) AS size, coalesce(f.first_packet, 0) AS packet,
       {text}
FROM flows AS f JOIN beacon_pairs AS p USING (client_ip, server_ip, server_port, transport)
"""
_FLOW_TEXT = "f.flow_id, f.capture_id"
_FLOW_COMMUNITY = "coalesce(f.community_id, '') AS community_id"
# The policy verdicts: first the (client, server) ends of ``beacon_pairs`` with any allowed flow (``flow_policy``
# carries each flow's own ends, so one scan without a join), then, for the pairs between those ends only, whether the
# policy allows every flow of the (client, server, port).
_ALLOWED_VERDICTS = "('allowed', 'intra_zone', 'external_allowed')"
_ALLOWED_ENDS = f"""
SELECT DISTINCT client_ip, server_ip FROM flow_policy
SEMI JOIN (SELECT DISTINCT client_ip, server_ip FROM beacon_pairs) USING (client_ip, server_ip)
WHERE verdict IN {_ALLOWED_VERDICTS}
"""
_ALLOWED = f"""
WITH ends AS (SELECT unnest(?::VARCHAR[]) AS client_ip, unnest(?::VARCHAR[]) AS server_ip)
SELECT f.client_ip, f.server_ip, f.server_port
FROM (
    SELECT * FROM flows SEMI JOIN (
        SELECT DISTINCT client_ip, server_ip, server_port FROM beacon_pairs SEMI JOIN ends USING (client_ip, server_ip)
    ) USING (client_ip, server_ip, server_port)
) AS f
JOIN (SELECT * FROM flow_policy SEMI JOIN ends USING (client_ip, server_ip)) AS p USING (capture_id, flow_id)
GROUP BY ALL HAVING bool_and(p.verdict IN {_ALLOWED_VERDICTS})
"""
#: The same where flow_policy carries each flow's server port (policy evaluations since it does): no join.
_ALLOWED_BY_PORT = f"""
SELECT client_ip, server_ip, server_port FROM flow_policy
SEMI JOIN (SELECT DISTINCT client_ip, server_ip, server_port FROM beacon_pairs)
    USING (client_ip, server_ip, server_port)
GROUP BY ALL HAVING bool_and(verdict IN {_ALLOWED_VERDICTS})
"""

_DNS_QUERIES = """
SELECT client_ip, lower(query_name) AS name, ts, coalesce(message_length, 0) AS size,
       coalesce(packet_number, -1) AS packet, {text}
FROM dns AS q WHERE event_type = 'query' AND query_name IS NOT NULL AND client_ip IS NOT NULL
"""
_DNS_TEXT = "coalesce(q.flow_id, '') AS flow_id, q.capture_id"
_DNS_COMMUNITY = "coalesce(q.community_id, '') AS community_id"
_DNS_PAIRS = """
SELECT row_number() OVER (ORDER BY client_ip, name) AS pair, * FROM (
    SELECT client_ip, lower(query_name) AS name FROM dns
    WHERE event_type = 'query' AND query_name IS NOT NULL AND client_ip IS NOT NULL
    GROUP BY ALL HAVING count(*) >= ?
)
"""
_DNS_ROWS = (
    "SELECT p.pair, epoch_us(q.ts) AS us, q.size, q.packet, q.* EXCLUDE (client_ip, name, ts, size, packet) "
    "FROM ({queries}) AS q JOIN beacon_names AS p USING (client_ip, name)"
)
# The text of given rows of a table (by DuckDB row id), for evidence: read for the few rows that become evidence only.
# The row ids come as a registered Arrow table: binding thousands as one list parameter costs more than the read.
_TEXT_ROWS = "beacon_text_rows"
_TEXT_BY_ROW = (
    f"SELECT rowid AS row_id, {{text}} FROM {{table}} AS {{alias}} WHERE rowid IN (SELECT row_id FROM {_TEXT_ROWS})"
)


@dataclass(frozen=True, slots=True)
class Host:
    """What the prior needs about one address."""

    role: str | None = None
    zone: str | None = None
    ot: bool = False
    internal: bool = False
    asset_id: str | None = None


def _temporary_or_main(con: duckdb.DuckDBPyConnection) -> set[str]:
    return catalog.tables(con) | catalog.views(con)


def _is_internal(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not address.is_global


def _hosts(
    con: duckdb.DuckDBPyConnection, addresses: set[str], present: set[str], policy: Policy | None
) -> dict[str, Host]:
    """Role, zone and OT flag of each address, from the best source the store has."""
    rows: list[tuple[Any, ...]] = []
    wanted = sorted(addresses)
    if "host_context" in present:
        rows = con.execute(
            "SELECT ip, role, zone, ot, asset_id FROM host_context WHERE ip IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY ip, coalesce(role, 'unknown') <> 'unknown', asset_id",  # the last row, kept, has the role
            [wanted],
        ).fetchall()
    else:
        roles: dict[str, tuple[str | None, str | None]] = {}
        if "assets" in present:
            for ip, role, asset_id in con.execute(
                "SELECT unnest(ips) AS ip, role, asset_id FROM assets ORDER BY role_confidence NULLS FIRST, asset_id"
            ).fetchall():
                roles[str(ip)] = (role, asset_id)
        zones: dict[str, tuple[str | None, bool | None]] = {}
        if "host_zones" in present:
            for ip, zone, ot in con.execute("SELECT ip, zone, ot FROM host_zones").fetchall():
                zones[str(ip)] = (zone, ot)
        for ip in wanted:
            role, asset_id = roles.get(ip, (None, None))
            zone, ot = zones.get(ip, (None, None))
            rows.append((ip, role, zone, ot, asset_id))
    known = {str(row[0]): row for row in rows}
    outward = never_outward_roles()
    hosts: dict[str, Host] = {}
    for ip in wanted:
        _, role, zone, ot, asset_id = known.get(ip, (ip, None, None, None, None))
        if zone is None and policy is not None and policy.zones:
            match = zone_of(policy, ip)
            zone = match.zone
            ot = match.purdue is not None and match.purdue <= OT_PURDUE_MAX
        role_is_ot = bool(role) and str(role).lower() in outward
        internal = _is_internal(ip) or (zone is not None and zone not in ("external", "unzoned"))
        hosts[ip] = Host(role=role, zone=zone, ot=bool(ot) if ot is not None else role_is_ot, internal=internal,
                         asset_id=asset_id)  # fmt: skip
    return hosts


def _allowed_pairs(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str, int]]:
    """(client, server, port) pairs of ``beacon_pairs`` all of whose flows the policy allows: a conduit or an
    approved destination."""
    columns = set(catalog.columns(con, "flow_policy"))
    if "server_port" in columns:
        rows = con.execute(_ALLOWED_BY_PORT).fetchall()
        return {(str(client), str(server), int(port)) for client, server, port in rows}
    ends = con.execute(_ALLOWED_ENDS).fetchall()
    if not ends:
        return set()
    rows = con.execute(_ALLOWED, [[client for client, _ in ends], [server for _, server in ends]]).fetchall()
    return {(str(client), str(server), int(port)) for client, server, port in rows}


def _approved(policy: Policy | None, server_ip: str | None, name: str | None) -> bool:
    """Whether the policy lists the destination (address or name) as an approved external destination."""
    if policy is None:
        return False
    address = None
    if server_ip is not None:
        try:
            address = ipaddress.ip_address(server_ip)
        except ValueError:
            address = None
    for destination in policy.external_destinations:
        if address is not None and any(
            address.version == network.version and address in network for network in destination.cidrs
        ):
            return True
        if name is not None:
            for pattern in destination.domains:
                if name == pattern or (
                    pattern.startswith("*.") and (name.endswith(pattern[1:]) or name == pattern[2:])
                ):
                    return True
    return False


def _pair_context(client: Host, server: Host | None, approved: bool) -> PairContext:
    if server is None:  # a name: the destination is wherever the name points, outside
        return PairContext(client_role=client.role, client_ot=client.ot, approved_destination=approved)
    return PairContext(
        client_role=client.role,
        client_ot=client.ot,
        server_ot=server.ot,
        server_internal=server.internal,
        # Two internal hosts whose zones are not both known are treated as one zone: without a policy we cannot
        # tell OT polling from anything else, and RITA drops these pairs altogether.
        same_zone=client.zone is None
        or server.zone is None
        or client.zone == server.zone
        or "unzoned" in (client.zone, server.zone),
        approved_destination=approved,
    )


def _severity(score: float, context: PairContext) -> str:
    severity = next(name for floor, name in SEVERITY_STEPS if score >= floor)
    if not context.server_internal and (context.client_role or "").lower() in never_outward_roles():
        return {"low": "medium", "medium": "high", "high": "critical"}[severity]
    return severity


def _groups(table: dict[str, Any]) -> list[slice]:
    pairs = table.get("pair")
    if pairs is None or pairs.size == 0:
        return []
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(pairs)) + 1, [pairs.size]])
    return [slice(int(start), int(end)) for start, end in itertools.pairwise(bounds)]


_TEXT_COLUMNS = ("capture_id", "flow_id", "community_id")
_BY_ROW = ("capture_id", "flow_id")  # read by row id for the evidence rows; Community IDs repeat, so come with the rows


class _Rows:
    """The rows of the pairs a query selects: numbers as numpy arrays in row order (pair, then time, then packet
    number); text stays in Arrow, and only the evidence rows of alerts become Python objects.

    With ``text_query`` (a table, not a view), the query returns DuckDB row ids instead of capture and flow ids, and
    those are read by row id for the evidence rows only (:meth:`load`): a few thousand rows instead of every row.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, query: str, text_query: str | None = None) -> None:
        table = con.sql(query).to_arrow_table()
        column = {name: table.column(name).combine_chunks() for name in table.column_names}
        numbers = {name: pc.fill_null(column[name], 0).to_numpy(zero_copy_only=False) for name in ("pair", "size")}
        packet = pc.fill_null(column["packet"], 0).to_numpy(zero_copy_only=False)
        us = column["us"]
        last = np.iinfo(np.int64).max  # a row without a time sorts last, and counts as time 0
        self.order = np.lexsort((packet, pc.fill_null(us, last).to_numpy(zero_copy_only=False), numbers["pair"]))
        self.pair = numbers["pair"][self.order]
        self.us = pc.fill_null(us, 0).to_numpy(zero_copy_only=False)[self.order]
        self.size = numbers["size"][self.order].astype(np.float64)
        self.packet = packet[self.order]
        timed = pc.is_valid(us).to_numpy(zero_copy_only=False)[self.order]
        fresh = np.ones(self.pair.size, dtype=bool)  # the first row of its pair or time
        fresh[1:] = (self.pair[1:] != self.pair[:-1]) | (self.us[1:] != self.us[:-1])
        starts = np.flatnonzero(np.concatenate([[True], self.pair[1:] != self.pair[:-1]])) if self.pair.size else ()
        bounds = [*(int(start) for start in starts), int(self.pair.size)]
        self.spans = {int(self.pair[start]): slice(start, end) for start, end in itertools.pairwise(bounds)}
        #: Distinct times per pair (rows without a time do not count).
        self.times = {int(self.pair[part.start]): int((fresh & timed)[part].sum()) for part in self.spans.values()}
        self.con, self.text_query = con, text_query
        self.text = {name: column[name] for name in _TEXT_COLUMNS if name in column}  # in fetch order
        self.row_ids = column["row_id"].to_numpy(zero_copy_only=False)[self.order] if text_query else None
        self.loaded = np.empty(0, np.int64)  # row ids whose _BY_ROW text is in self.by_row, ascending
        self.by_row: dict[str, pa.Array] = {}

    def load(self, parts: list[slice]) -> None:
        """Read the capture and flow ids of these rows by row id, if not read yet (one query for all of them)."""
        if self.text_query is None or self.row_ids is None:
            return
        wanted = np.unique(np.concatenate([np.empty(0, np.int64), *(self.row_ids[part] for part in parts)]))
        wanted = wanted[~np.isin(wanted, self.loaded)] if self.loaded.size else wanted
        if not wanted.size:
            return
        self.con.register(_TEXT_ROWS, pa.table({"row_id": pa.array(wanted, pa.int64())}))
        try:
            table = self.con.sql(self.text_query).to_arrow_table()
        finally:
            self.con.unregister(_TEXT_ROWS)
        rows = np.concatenate([self.loaded, table.column("row_id").to_numpy(zero_copy_only=False)])
        order = np.argsort(rows, kind="stable")
        self.loaded = rows[order]
        for name in _BY_ROW:
            fetched = table.column(name).combine_chunks()
            both = [self.by_row[name], fetched] if name in self.by_row else [fetched]
            self.by_row[name] = pa.concat_arrays(both).take(pa.array(order))

    def first(self, part: slice) -> slice:
        """The rows of the pair's evidence events."""
        return slice(part.start, min(part.stop, part.start + EVIDENCE_FLOWS))

    def _values(self, name: str, parts: list[slice]) -> list[list[Any]]:
        """The column's values in each part's rows, from one Arrow take for all the parts (a take costs tens of
        microseconds: one per column and alert was a tenth of D4)."""
        if not parts:
            return []
        indices = np.concatenate([np.arange(part.start, part.stop) for part in parts])
        if name in self.text or self.row_ids is None:
            values = self.text[name].take(pa.array(self.order[indices])).to_pylist()
        else:
            rows = self.row_ids[indices]
            positions = np.searchsorted(self.loaded, rows)
            if not ((positions < self.loaded.size).all() and (self.loaded[positions] == rows).all()):
                self.load(parts)
                positions = np.searchsorted(self.loaded, rows)
            values = self.by_row[name].take(pa.array(positions)).to_pylist()
        bounds = np.cumsum([0, *(part.stop - part.start for part in parts)]).tolist()
        return [values[start:end] for start, end in itertools.pairwise(bounds)]

    def evidence(self, parts: list[slice]) -> list[dict[str, Any]]:
        """Per part: the pair's first EVIDENCE_FLOWS events, and its first EVIDENCE_FLOWS distinct flow ids and
        Community IDs (in the order they first appear)."""
        firsts = [self.first(part) for part in parts]
        names = [name for name in _TEXT_COLUMNS if name in self.text or name in _BY_ROW]
        texts = {name: self._values(name, firsts) for name in names}
        found: list[dict[str, Any]] = []
        for number, first in enumerate(firsts):
            packets = self.packet[first].tolist()
            events = [
                {"capture": capture, "packet": packet, "flow": flow}
                for capture, packet, flow in zip(texts["capture_id"][number], packets, texts["flow_id"][number],
                                                 strict=True)
            ]  # fmt: skip
            found.append({"events": events})
        for name, key in (("flow_id", "flow_ids"), ("community_id", "community_ids")):
            distinct = [[str(value) for value in dict.fromkeys(values) if value] for values in texts[name]]
            # Ids repeat: where the first rows hold too few distinct ones, the distinct ones go further.
            further = [
                number
                for number, (values, first, part) in enumerate(zip(distinct, firsts, parts, strict=True))
                if len(values) < EVIDENCE_FLOWS and first.stop < part.stop
            ]
            for number, values in zip(further, self._values(name, [parts[number] for number in further]), strict=True):
                distinct[number] = [str(value) for value in dict.fromkeys(values) if value]
            for number, values in enumerate(distinct):
                found[number][key] = values[:EVIDENCE_FLOWS]
        return found


def _rows(con: duckdb.DuckDBPyConnection, table: str, query: str, text: str, community: str, alias: str) -> _Rows:
    """The rows ``query`` selects; with row ids (capture and flow ids read later) when ``table`` is not a view."""
    tables, views = catalog.tables(con), catalog.views(con)
    if table in tables and table not in views:
        text_query = _TEXT_BY_ROW.format(text=text, table=table, alias=alias)
        return _Rows(con, query.format(text=f"{community}, {alias}.rowid AS row_id"), text_query)
    return _Rows(con, query.format(text=f"{community}, {text}"))


def _evidence(found: dict[str, Any], result: BeaconScore, table: str) -> Evidence:
    events = [
        EventReference(
            table,
            str(event["capture"]),
            int(event["packet"]) if event["packet"] >= 0 else None,
            str(event["flow"]) if event["flow"] else None,
        )
        for event in found["events"]
    ]
    values = {
        "period_seconds": round(result.values["period_seconds"], 3),
        "jitter": round(result.values["jitter"], 3),
        "connections": int(result.values["connections"]),
        "missed_beats": round(result.values["missed_beats"], 3),
        "bytes_regularity": round(result.values["size_regularity"], 3),
        "median_bytes": result.values["median_bytes"],
        "persistence": round(result.values["persistence"], 3),
        "evidence_nats": round(result.values["evidence_nats"], 2),
        "role_prior": result.values["role_prior"],
    }
    return Evidence(
        flow_ids=found["flow_ids"],
        community_ids=found["community_ids"],
        events=events,
        packet_numbers=[int(event["packet"]) for event in found["events"] if event["packet"] >= 0],
        values=values,
    )


def _timestamp(microseconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(microseconds / 1_000_000, dt.UTC)


def _alert(
    microseconds: np.ndarray[Any, Any],
    found: dict[str, Any],
    result: BeaconScore,
    context: PairContext,
    key: dict[str, str],
    destination: str,
    hosts: list[Host],
    table: str,
) -> Alert:
    """``microseconds``: the pair's series times in row order; ``found``: its evidence (see _Rows.evidence)."""
    values = result.values
    client = key["client_ip"]
    role = f" ({context.client_role})" if context.client_role and context.client_role != "unknown" else ""
    every = result.components[0].explanation.split(" with ")[0].removeprefix("Connections come ")
    title = f"{client}{role} beacons to {destination} {every}"
    explanation = (
        f"{client}{role} {'looked up' if table == 'dns' else 'connected to'} {destination} "
        f"{int(values['connections'])} times, {every}, "
        f"{values['missed_beats'] * 100:.0f}% of beats missed; score {result.score:.2f}: "
        + " ".join(component.explanation for component in result.components)
    )
    confidence = round(min(1.0, values["periodicity"] * min(1.0, values["connections"] / 12)), 3)
    return Alert(
        detection=DETECTION,
        title=title,
        key=key,
        severity=_severity(result.score, context),
        confidence=confidence,
        techniques=list(TECHNIQUES),
        first_seen=_timestamp(int(microseconds[0])),
        last_seen=_timestamp(int(microseconds[-1])),
        count=int(values["connections"]),
        explanation=explanation,
        score=result.score,
        score_components=list(result.components),
        assets=[host.asset_id for host in hosts if host.asset_id],
        zones=sorted({host.zone for host in hosts if host.zone}),
        evidence=_evidence(found, result, table),
        suppression_seconds=max(3600, int(values["period_seconds"] * 4)),
    )


def _keep(con: duckdb.DuckDBPyConnection, table: str, numbers: list[int]) -> None:
    con.execute(f"DELETE FROM {table} WHERE pair NOT IN (SELECT unnest(?::BIGINT[]))", [numbers])


def _scores(series: _Rows, parts: list[slice], contexts: list[PairContext]) -> list[BeaconScore]:
    """The beacon score of each pair's series, all pairs in one batch."""
    if not parts:
        return []
    offsets = np.concatenate([[0], np.cumsum([part.stop - part.start for part in parts])]).astype(np.int64)
    times = np.concatenate([series.us[part] for part in parts]) / 1e6
    return beacon_scores(times, np.concatenate([series.size[part] for part in parts]), offsets, contexts)


@dataclass(slots=True)
class _NameAlert:
    """A (client, name) beacon before :func:`combine`: folded into an address alert when the name resolved to it."""

    alert: Alert
    client_ip: str
    name: str
    resolved: set[str]


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """Every beaconing pair of ``flows`` and every beaconing name of ``dns`` whose score reaches ALERT_SCORE.

    The score never exceeds the role prior, so pairs and names whose prior is below the alert score are dropped
    before their series is read; :func:`_allowed_pairs` (which lowers the prior) is asked only about the others.
    """
    return combine(context, [detect_part(con, context, part) for part in PARTS])


def detect_part(con: duckdb.DuckDBPyConnection, context: DetectionContext, part: str) -> list[Any]:
    """One of the independent halves of :func:`detect` (``PARTS``): the address pairs' alerts, or the names'
    candidate alerts (folded into the address alerts by :func:`combine`)."""
    present = _temporary_or_main(con)
    if "flows" not in present:
        return []
    policy = getattr(context, "policy", None)
    options = dict(getattr(context, "options", {}) or {}).get("beaconing", {}) or {}
    threshold = float(options.get("min_score", ALERT_SCORE))
    if part == "flows":
        return _flow_alerts(con, present, policy, threshold)
    if part == "names" and "dns" in present:
        return _name_alerts(con, present, policy, threshold)
    return []


def combine(context: DetectionContext, results: list[list[Any]]) -> list[Alert]:
    """The alerts from the parts' results (``PARTS`` order): a name that resolves to an address that beacons from
    the same client is no alert of its own but is listed in the address alert's ``names``."""
    address_alerts: list[Alert] = list(results[0])
    alerts = list(address_alerts)
    for candidate in results[1]:
        same = [
            alert
            for alert in address_alerts
            if alert.key.get("server_ip") in candidate.resolved and alert.key["client_ip"] == candidate.client_ip
        ]
        if same:  # the name and its address beacon together: one alert, the address one, naming the name
            for alert in same:
                alert.evidence.values.setdefault("names", []).append(candidate.name)
            continue
        alerts.append(candidate.alert)
    return alerts


def _flow_alerts(
    con: duckdb.DuckDBPyConnection, present: set[str], policy: Policy | None, threshold: float
) -> list[Alert]:
    """The beaconing (client, server, port, transport) pairs of ``flows``."""
    counts = rollups.flow_groups_sql(con, present, keys=("client_ip", "server_ip", "server_port", "transport"))
    con.execute("CREATE OR REPLACE TEMP TABLE beacon_pairs AS " + _FLOW_PAIRS.format(counts=counts), [MIN_CONNECTIONS])
    pairs = con.execute("SELECT pair, client_ip, server_ip, server_port, transport FROM beacon_pairs").fetchall()
    pairs.sort(key=lambda row: int(row[0]))
    hosts = _hosts(con, {str(row[column]) for row in pairs for column in (1, 2)}, present, policy)

    # The pairs whose prior can reach the threshold, then the policy's verdicts for those only.
    candidates: list[tuple[int, str, str, int, str, PairContext]] = []
    for number, client_ip, server_ip, port, transport in pairs:
        client_ip, server_ip, port = str(client_ip), str(server_ip), int(port) if port is not None else 0
        pair = _pair_context(hosts[client_ip], hosts[server_ip], _approved(policy, server_ip, None))
        if max(role_prior(pair)[0], role_prior(replace(pair, allowed_conduit=True))[0]) >= threshold:
            candidates.append((int(number), client_ip, server_ip, port, str(transport), pair))
    _keep(con, "beacon_pairs", [row[0] for row in candidates])
    allowed = _allowed_pairs(con) if "flow_policy" in present and candidates else set()
    scored: list[tuple[int, str, str, int, str, PairContext]] = []
    for number, client_ip, server_ip, port, transport, pair in candidates:
        pair = replace(pair, allowed_conduit=(client_ip, server_ip, port) in allowed)
        if role_prior(pair)[0] < threshold:  # the score is at most the prior: intra-OT polling costs nothing
            continue
        scored.append((number, client_ip, server_ip, port, transport, pair))
    alerts: list[Alert] = []
    if scored:
        _keep(con, "beacon_pairs", [row[0] for row in scored])
        series = _rows(con, "flows", _FLOW_ROWS, _FLOW_TEXT, _FLOW_COMMUNITY, "f")
        scored = [row for row in scored if series.times.get(row[0], 0) >= MIN_CONNECTIONS]  # distinct times
        parts = [series.spans[row[0]] for row in scored]
        pending = [
            (row, part, result)
            for row, part, result in zip(scored, parts, _scores(series, parts, [row[5] for row in scored]), strict=True)
            if result.eligible and result.score >= threshold
        ]
        series.load([series.first(part) for _, part, _ in pending])  # the evidence rows' text, in one query
        evidence = series.evidence([part for _, part, _ in pending])
        for ((_, client_ip, server_ip, port, transport, pair), part, result), found in zip(pending, evidence,
                                                                                            strict=True):  # fmt: skip
            key = {"client_ip": client_ip, "server_ip": server_ip, "server_port": str(port), "transport": transport}
            destination = f"{server_ip}:{port}/{transport}" if transport in ("tcp", "udp", "sctp") else server_ip
            ends = [hosts[client_ip], hosts[server_ip]]
            alerts.append(_alert(series.us[part], found, result, pair, key, destination, ends, "flows"))
    con.execute("DROP TABLE IF EXISTS temp.beacon_pairs")
    return alerts


def _name_alerts(
    con: duckdb.DuckDBPyConnection, present: set[str], policy: Policy | None, threshold: float
) -> list[_NameAlert]:
    """The (client, name) beacons of ``dns``, each with the addresses the name resolved to (see :func:`combine`)."""
    con.execute("CREATE OR REPLACE TEMP TABLE beacon_names AS " + _DNS_PAIRS, [MIN_CONNECTIONS])
    try:
        names = con.execute("SELECT pair, client_ip, name FROM beacon_names").fetchall()
        if not names:
            return []
        names.sort(key=lambda row: int(row[0]))
        return _beaconing_names(con, names, _hosts(con, {str(row[1]) for row in names}, present, policy), policy,
                                threshold)  # fmt: skip
    finally:
        con.execute("DROP TABLE IF EXISTS temp.beacon_names")


def _beaconing_names(
    con: duckdb.DuckDBPyConnection,
    names: list[tuple[Any, ...]],
    hosts: dict[str, Host],
    policy: Policy | None,
    threshold: float,
) -> list[_NameAlert]:
    answers = _answers(con)
    candidates: list[tuple[int, str, str, PairContext, set[str]]] = []
    for number, client_ip, name in names:
        client_ip, name = str(client_ip), str(name)
        if "." not in name.strip(".") or name.rstrip(".").endswith(LOCAL_NAME_SUFFIXES):
            continue
        resolved = answers.get((client_ip, name), set())
        if resolved and all(_is_internal(address) for address in resolved):
            continue  # a site service looked up again as its cache expires, not a destination outside
        if any(_approved(policy, address, None) for address in resolved):
            continue  # the name leads to an approved destination
        pair = _pair_context(hosts[client_ip], None, _approved(policy, None, name.rstrip(".")))
        if role_prior(pair)[0] < threshold:  # the score is at most the prior
            continue
        candidates.append((int(number), client_ip, name, pair, resolved))
    if not candidates:
        return []
    _keep(con, "beacon_names", [row[0] for row in candidates])
    series = _rows(con, "dns", _DNS_ROWS.replace("{queries}", _DNS_QUERIES), _DNS_TEXT, _DNS_COMMUNITY, "q")
    candidates = [row for row in candidates if series.times.get(row[0], 0) >= MIN_CONNECTIONS]  # distinct times
    parts = [series.spans[row[0]] for row in candidates]
    results = _scores(series, parts, [row[3] for row in candidates])
    pending = [
        (row, part, result)
        for row, part, result in zip(candidates, parts, results, strict=True)
        if result.eligible and result.score >= threshold
    ]
    series.load([series.first(part) for _, part, _ in pending])  # the evidence rows' text, in one query
    evidence = series.evidence([part for _, part, _ in pending])
    alerts: list[_NameAlert] = []
    for ((_, client_ip, name, pair, resolved), part, result), found in zip(pending, evidence, strict=True):
        key = {"client_ip": client_ip, "query_name": name}
        alert = _alert(series.us[part], found, result, pair, key, f"the name {name}", [hosts[client_ip]], "dns")
        alerts.append(_NameAlert(alert, client_ip, name, resolved))
    return alerts


def _answers(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], set[str]]:
    """Per (client, lower-cased name): the addresses it was given (A/AAAA answers; CNAME targets left out).

    One scan of ``dns`` for every name, rather than one query per candidate name.
    """
    rows = con.execute(
        "SELECT DISTINCT client_ip, lower(query_name), unnest(answer_data) FROM dns WHERE event_type = 'response' "
        "AND client_ip IS NOT NULL AND query_name IS NOT NULL AND answer_data IS NOT NULL"
    ).fetchall()
    addresses: dict[tuple[str, str], set[str]] = {}
    for client_ip, name, text in rows:
        found = addresses.setdefault((str(client_ip), str(name)), set())
        try:
            found.add(str(ipaddress.ip_address(str(text))))
        except ValueError:
            continue
    return addresses

"""D4: beaconing (ATT&CK for ICS T0869 Standard Application Layer Protocol, Enterprise T1071).

An implant or an undeclared vendor agent checks in on a clock: every N seconds ± jitter, some beats missed. Every
(client, server, server port, transport) pair of ``flows`` with enough connections, and every (client, queried
name) of ``dns`` queries (a beacon that follows its domain across addresses), is scored by
:func:`quaywatch.detect.beacon_score.beacon_score`, whose components explain the period, the jitter, the missed
beats, the size regularity and the asset-role prior. The prior needs to know what each end is: it reads the
engine's ``host_context`` when present, else ``assets`` and ``host_zones``, else the site policy's zones, else
only whether an address is private; every one of those may be missing.

The pre-filter (pairs with at least ``MIN_CONNECTIONS`` distinct timestamps) is one DuckDB query; only the
surviving pairs reach the Python loop, and each costs at most ``MAX_GAPS`` gaps of arithmetic.
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

from quaywatch.detect.alert import Alert, EventReference, Evidence
from quaywatch.detect.beacon_score import (
    MIN_CONNECTIONS,
    BeaconScore,
    PairContext,
    beacon_score,
    never_outward_roles,
    role_prior,
)

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
#: Names that are not destinations: local name services and reverse lookups (RFC 6762, RFC 6761, RFC 1035 3.5).
LOCAL_NAME_SUFFIXES = (".local", ".arpa", ".localhost", ".home.arpa", ".lan", ".internal")

# Flows in three steps, so that the million-row sort carries numbers only: the eligible pairs, their series (pair,
# time, size), and the evidence columns of the pairs that score as beacons.
_FLOW_PAIRS = """
SELECT row_number() OVER (ORDER BY client_ip, server_ip, server_port, transport) AS pair, * FROM (
    SELECT client_ip, server_ip, server_port, transport FROM flows GROUP BY ALL HAVING count(DISTINCT ts) >= ?
)
ORDER BY pair
"""
_FLOW_SERIES = """
SELECT p.pair, epoch_us(f.ts) AS us, f.bytes_to_server AS size
FROM flows AS f JOIN beacon_pairs AS p USING (client_ip, server_ip, server_port, transport)
ORDER BY pair, us
"""
_FLOW_EVIDENCE = """
SELECT p.pair, epoch_us(f.ts) AS us, f.flow_id, coalesce(f.community_id, '') AS community_id, f.capture_id,
       f.first_packet AS packet
FROM flows AS f JOIN beacon_pairs AS p USING (client_ip, server_ip, server_port, transport)
WHERE p.pair IN (SELECT unnest(?::BIGINT[]))
ORDER BY pair, us
"""

_DNS_QUERY = """
WITH queries AS (
    SELECT client_ip, lower(query_name) AS name, ts, coalesce(message_length, 0) AS size, flow_id, community_id,
           capture_id, packet_number
    FROM dns WHERE event_type = 'query' AND query_name IS NOT NULL AND client_ip IS NOT NULL
),
eligible AS (
    SELECT *, row_number() OVER (ORDER BY client_ip, name) AS pair FROM (
        SELECT client_ip, name FROM queries GROUP BY ALL HAVING count(DISTINCT ts) >= ?
    )
)
SELECT eligible.pair, q.client_ip, q.name, epoch_us(q.ts) AS us, q.size,
       coalesce(q.flow_id, '') AS flow_id, coalesce(q.community_id, '') AS community_id, q.capture_id,
       coalesce(q.packet_number, -1) AS packet
FROM queries AS q JOIN eligible USING (client_ip, name)
ORDER BY pair, us
"""


@dataclass(frozen=True, slots=True)
class Host:
    """What the prior needs about one address."""

    role: str | None = None
    zone: str | None = None
    ot: bool = False
    internal: bool = False
    asset_id: str | None = None


def _temporary_or_main(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views()").fetchall()
    return {str(row[0]) for row in rows}


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
            from quaywatch.policy.evaluate import OT_PURDUE_MAX, zone_of

            match = zone_of(policy, ip)
            zone = match.zone
            ot = match.purdue is not None and match.purdue <= OT_PURDUE_MAX
        role_is_ot = bool(role) and str(role).lower() in outward
        internal = _is_internal(ip) or (zone is not None and zone not in ("external", "unzoned"))
        hosts[ip] = Host(role=role, zone=zone, ot=bool(ot) if ot is not None else role_is_ot, internal=internal,
                         asset_id=asset_id)  # fmt: skip
    return hosts


def _allowed_pairs(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str, int]]:
    """(client, server, port) pairs all of whose flows the policy allows: a conduit or an approved destination."""
    rows = con.execute(
        "SELECT f.client_ip, f.server_ip, f.server_port FROM flows f JOIN flow_policy p USING (capture_id, flow_id) "
        "GROUP BY ALL HAVING bool_and(p.verdict IN ('allowed', 'intra_zone', 'external_allowed'))"
    ).fetchall()
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


class _Strings:
    """A text column kept in Arrow: only the slices of pairs that become alerts turn into Python objects.

    A million flows' identifiers as Python strings cost seconds; nearly all of them belong to pairs that score
    nothing.
    """

    def __init__(self, array: pa.Array) -> None:
        self.array = array

    def __getitem__(self, part: slice) -> list[Any]:
        return self.array[part].to_pylist()

    def first(self, part: slice) -> Any:
        return self.at(part.start)

    def at(self, index: int) -> Any:
        return self.array[index].as_py()

    def distinct(self) -> list[Any]:
        return pc.unique(self.array).to_pylist()


def _fetch(con: duckdb.DuckDBPyConnection, query: str, parameters: list[Any] | None = None) -> dict[str, Any]:
    """Numbers as numpy arrays, text as :class:`_Strings`."""
    table = con.sql(query, params=[MIN_CONNECTIONS] if parameters is None else parameters).to_arrow_table()
    columns: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        array = column.combine_chunks()
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            columns[name] = _Strings(array)
        else:
            columns[name] = np.asarray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False))
    return columns


def _evidence(rows: dict[str, Any], part: slice, result: BeaconScore, table: str) -> Evidence:
    flow_ids = list(dict.fromkeys(str(value) for value in rows["flow_id"][part] if value))[:EVIDENCE_FLOWS]
    community_ids = list(dict.fromkeys(str(value) for value in rows["community_id"][part] if value))[:EVIDENCE_FLOWS]
    packets = [int(value) for value in rows["packet"][part][:EVIDENCE_FLOWS] if value >= 0]
    events = [
        EventReference(table, str(capture), int(packet) if packet >= 0 else None, str(flow) if flow else None)
        for capture, packet, flow in zip(
            rows["capture_id"][part][:EVIDENCE_FLOWS],
            rows["packet"][part][:EVIDENCE_FLOWS],
            rows["flow_id"][part][:EVIDENCE_FLOWS],
            strict=True,
        )
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
    return Evidence(flow_ids=flow_ids, community_ids=community_ids, events=events, packet_numbers=packets,
                    values=values)  # fmt: skip


def _timestamp(microseconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(microseconds / 1_000_000, dt.UTC)


def _alert(
    rows: dict[str, Any],
    part: slice,
    result: BeaconScore,
    context: PairContext,
    key: dict[str, str],
    destination: str,
    hosts: list[Host],
    table: str,
    evidence: tuple[dict[str, Any], slice] | None = None,
) -> Alert:
    """``rows[part]``: the pair's series; ``evidence``: where its evidence columns are, when not in ``rows``."""
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
    microseconds = rows["us"][part]
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
        evidence=_evidence(*(evidence or (rows, part)), result, table),
        suppression_seconds=max(3600, int(values["period_seconds"] * 4)),
    )


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """Every beaconing pair of ``flows`` and every beaconing name of ``dns`` whose score reaches ALERT_SCORE."""
    present = _temporary_or_main(con)
    if "flows" not in present:
        return []
    policy = getattr(context, "policy", None)
    options = dict(getattr(context, "options", {}) or {}).get("beaconing", {}) or {}
    threshold = float(options.get("min_score", ALERT_SCORE))
    con.execute("CREATE OR REPLACE TEMP TABLE beacon_pairs AS " + _FLOW_PAIRS, [MIN_CONNECTIONS])
    pairs = _fetch(con, "SELECT * FROM beacon_pairs ORDER BY pair", [])
    flows = _fetch(con, _FLOW_SERIES, [])
    names = _fetch(con, _DNS_QUERY) if "dns" in present else {}
    addresses = {str(ip) for column in ("client_ip", "server_ip") if column in pairs for ip in pairs[column].distinct()}
    addresses |= {str(ip) for ip in names["client_ip"].distinct()} if "client_ip" in names else set()
    hosts = _hosts(con, addresses, present, policy)
    allowed = _allowed_pairs(con) if "flow_policy" in present else set()
    answers = _answers(con) if "dns" in present and _groups(names) else {}
    alerts: list[Alert] = []
    pending: list[tuple[int, slice, BeaconScore, PairContext, dict[str, str], str, list[Host]]] = []
    for part in _groups(flows):
        index = int(flows["pair"][part.start]) - 1  # pairs are numbered from 1 in row order of beacon_pairs
        client_ip, server_ip = (
            str(pairs["client_ip"].at(index)),
            str(pairs["server_ip"].at(index)),
        )
        port, transport = int(pairs["server_port"][index]), str(pairs["transport"].at(index))
        client, server = hosts[client_ip], hosts[server_ip]
        pair = replace(
            _pair_context(client, server, _approved(policy, server_ip, None)),
            allowed_conduit=(client_ip, server_ip, port) in allowed,
        )
        if role_prior(pair)[0] < threshold:  # the score is at most the prior: intra-OT polling costs nothing
            continue
        result = beacon_score(flows["us"][part] / 1e6, flows["size"][part].astype(np.float64), pair)
        if not result.eligible or result.score < threshold:
            continue
        key = {"client_ip": client_ip, "server_ip": server_ip, "server_port": str(port), "transport": transport}
        destination = f"{server_ip}:{port}/{transport}" if transport in ("tcp", "udp", "sctp") else server_ip
        pending.append((index + 1, part, result, pair, key, destination, [client, server]))
    evidence = _fetch(con, _FLOW_EVIDENCE, [[number for number, *_ in pending]]) if pending else {}
    spans = {int(evidence["pair"][span.start]): span for span in _groups(evidence)}
    for number, part, result, pair, key, destination, ends in pending:
        alerts.append(_alert(flows, part, result, pair, key, destination, ends, "flows", (evidence, spans[number])))
    con.execute("DROP TABLE IF EXISTS temp.beacon_pairs")
    for part in _groups(names):
        client_ip, name = str(names["client_ip"].first(part)), str(names["name"].first(part))
        if "." not in name.strip(".") or name.rstrip(".").endswith(LOCAL_NAME_SUFFIXES):
            continue
        resolved = answers.get((client_ip, name), set())
        if resolved and all(_is_internal(address) for address in resolved):
            continue  # a site service looked up again as its cache expires, not a destination outside
        if any(_approved(policy, address, None) for address in resolved):
            continue  # the name leads to an approved destination
        client = hosts[client_ip]
        pair = _pair_context(client, None, _approved(policy, None, name.rstrip(".")))
        result = beacon_score(names["us"][part] / 1e6, names["size"][part].astype(np.float64), pair)
        if not result.eligible or result.score < threshold:
            continue
        same = [
            alert for alert in alerts if alert.key.get("server_ip") in resolved and alert.key["client_ip"] == client_ip
        ]
        if same:  # the name and its address beacon together: one alert, the address one, naming the name
            for alert in same:
                alert.evidence.values.setdefault("names", []).append(name)
            continue
        key = {"client_ip": client_ip, "query_name": name}
        alerts.append(_alert(names, part, result, pair, key, f"the name {name}", [client], "dns"))
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

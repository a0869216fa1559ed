"""D1: an OT asset talks to the internet or to a zone no conduit allows (ATT&CK for ICS T0883, T0869, T0885).

Reads the policy evaluation's verdicts (``flow_policy``: ``external_unapproved`` and ``violation``) and keeps the
flows with an OT end (``host_context.ot``). One alert per OT asset and peer, not per flow: a beacon every minute is
one finding with a count, not sixty. A violation between two zones names both zones and, from ``flow_policy.reason``,
why no conduit matched. Severity rises for controllers, drives and weather stations (whose traffic should never leave
their zone) and for outbound connections to the internet.

The internet peer's country and ASN come from the MaxMind DB files the site copied in (``detect --geoip``, config
``geoip``; intel/geoip.py), which the context hands over as ``enrichers``; nothing is downloaded, and without a file
they are "unknown". The file that answered is named in the evidence (``geoip_source``). :data:`ENRICHERS` takes
further functions ``ip -> {"country": ..., "asn": ...}`` for other offline tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quaywatch.detect import catalog
from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D1.unapproved-communication"
REQUIRES = ("flow_policy", "flows")
#: One-core seconds over the benchmark store (make bench): the engine starts the longest detections first.
COST = 0.09
TECHNIQUES = ["T0883", "T0869", "T0885"]
#: Roles whose traffic should never leave their zone (asset_roles.yaml vocabulary): one severity step higher.
CRITICAL_ROLES = frozenset({"PLC", "drive", "weather station"})
EVIDENCE_FLOWS = 100
SEVERITY_STEPS = ("low", "medium", "high", "critical")

#: Destination enrichment hook: functions ip -> {"country": str, "asn": str}; empty offline (see module docstring).
ENRICHERS: list[Callable[[str], dict[str, str]]] = []

# The unapproved flows with an OT end, each with its alert's group: internet peers one by one; inside the site one
# alert per client and server zone, so a sweep is one alert. Grouping happens in DuckDB (a site has hundreds of
# thousands of such flows, and Python would build a record for each); each group brings along its first
# EVIDENCE_FLOWS flows by server and time (a top-N aggregate, no sort of all rows). ``flow_policy`` carries the
# flows' times, ports and Community IDs; a store evaluated before it did is joined back to ``flows``.
_MATCHED = """
SELECT p.verdict, p.client_ip, p.server_ip, p.client_zone, p.server_zone, p.protocol, p.conduit, p.reason,
       p.flow_id, p.community_id, p.capture_id, p.first_packet AS packet, p.ts, p.last_ts, p.server_port,
       coalesce(c.ot, false) AS client_ot, coalesce(s.ot, false) AS server_ot, c.role AS client_role,
       s.role AS server_role, c.asset_id AS client_asset, s.asset_id AS server_asset,
       CASE WHEN p.verdict = 'external_unapproved' THEN p.server_ip ELSE 'zone:' || p.server_zone END AS target
       {row}
FROM {source} AS p
LEFT JOIN host_context AS c ON c.ip = p.client_ip
LEFT JOIN host_context AS s ON s.ip = p.server_ip
WHERE {only} p.verdict IN ('external_unapproved', 'violation') AND (coalesce(c.ot, false) OR coalesce(s.ot, false))
"""
_JOINED = """(
    SELECT p.*{exclude}, f.community_id, f.first_packet, f.ts, f.last_ts, f.server_port
    FROM flow_policy AS p JOIN flows AS f USING (capture_id, flow_id)
    WHERE p.verdict IN ('external_unapproved', 'violation')
)"""
_FLOW_COLUMNS = ("community_id", "first_packet", "ts", "last_ts", "server_port")
_ROW = "struct_pack(" + ", ".join(
    f"{name} := {name}"
    for name in ("client_ip", "server_ip", "client_zone", "server_zone", "client_ot", "server_ot", "client_role",
                 "server_role", "client_asset", "server_asset", "flow_id", "capture_id", "packet")
) + ")"  # fmt: skip
#: What an alert lists of its combinations, the same from either grouping below (_GROUPS, _COMBINED).
_LISTS = """SELECT client_ip, target, CAST(sum(n) AS BIGINT) AS n, min(first_seen) AS first_seen,
           max(last_seen) AS last_seen, bool_or(verdict = 'external_unapproved') AS external,
           list_distinct(list(coalesce(protocol, 'None'))) AS protocols, list(DISTINCT server_port) AS ports,
           list_distinct(list(coalesce(reason, 'None'))) AS reasons, list(DISTINCT server_ip) AS servers,
           list_distinct(list(verdict)) AS verdicts,
           list_distinct(list(conduit) FILTER (WHERE conduit <> '')) AS conduits,
           list_distinct(list(client_role) FILTER (WHERE client_ot)) AS client_roles,
           list_distinct(list(server_role) FILTER (WHERE server_ot)) AS server_roles,
           list_sort(list_distinct(list(server_ip) FILTER (WHERE server_ot)))[1:50] AS ot_servers"""
# A store whose ``flow_policy`` predates the flow columns (joined back to ``flows``, no row ids to read the records
# by): two groupings of the matched flows, the distinct combinations of the values the alert lists (a few hundred,
# however many flows), grouped again into the lists (list_distinct of a plain list where nulls cannot occur or do not
# count: the alert sorts those lists, and a DISTINCT aggregate sets up a hash table of its own, about 1 ms each; ports
# and servers keep theirs, nulls included); and per group its Community IDs and the records of its first
# EVIDENCE_FLOWS flows. A current store takes the one pass of _COMBINED below.
_GROUPS = """
WITH matched AS MATERIALIZED ({matched}),
combinations AS (
    SELECT client_ip, target, protocol, server_port, reason, server_ip, verdict, conduit, client_role, server_role,
           client_ot, server_ot, count(*) AS n, min(ts) AS first_seen, max(last_ts) AS last_seen
    FROM matched GROUP BY ALL
),
lists AS (
    {lists}
    FROM combinations GROUP BY client_ip, target
),
firsts AS (
    SELECT client_ip, target, list(DISTINCT community_id) FILTER (WHERE community_id <> '') AS community_ids,
           min_by({evidence}, struct_pack(server_ip, ts), {limit}) AS evidence
    FROM matched GROUP BY client_ip, target
)
SELECT * FROM lists JOIN firsts USING (client_ip, target) ORDER BY client_ip, target
"""
# From ``flow_policy`` itself, one pass: the unapproved flows grouped by every value an alert lists or keys on (a few
# hundred combinations, however many flows), each with its first EVIDENCE_FLOWS row ids by time; the OT ends joined
# to those combinations rather than to every flow (an address's role and OT-ness are the same on each of its flows);
# the combinations grouped again into the alerts' lists, and their row ids merged into each alert's first
# EVIDENCE_FLOWS by server and time (a combination has one server, so its first rows by time hold every one of the
# alert's first rows it has; a flow without a time sorts last, as in a struct key). The Community ID is a grouping
# key rather than a DISTINCT aggregate, which would make DuckDB copy the flows for a grouping of its own; the
# records of the evidence rows come afterwards (_EVIDENCE).
_COMBINED = """
WITH combinations AS (
    SELECT client_ip, server_ip, verdict, server_zone, protocol, server_port, reason, conduit, community_id,
           count(*) AS n, min(ts) AS first_seen, max(last_ts) AS last_seen,
           min_by(rowid, coalesce(ts, 'infinity'), {limit}) AS policy_rows,
           min(coalesce(ts, 'infinity'), {limit}) AS times
    FROM flow_policy WHERE verdict IN ('external_unapproved', 'violation')
    GROUP BY ALL
),
labelled AS (
    SELECT m.*, CASE WHEN m.verdict = 'external_unapproved' THEN m.server_ip ELSE 'zone:' || m.server_zone END
               AS target,
           coalesce(c.ot, false) AS client_ot, coalesce(s.ot, false) AS server_ot, c.role AS client_role,
           s.role AS server_role
    FROM combinations AS m
    LEFT JOIN host_context AS c ON c.ip = m.client_ip
    LEFT JOIN host_context AS s ON s.ip = m.server_ip
    WHERE coalesce(c.ot, false) OR coalesce(s.ot, false)
),
lists AS (
    {lists},
           list(DISTINCT community_id) FILTER (WHERE community_id <> '') AS community_ids
    FROM labelled GROUP BY client_ip, target
),
firsts AS (
    SELECT client_ip, target, min_by(policy_row, struct_pack(server_ip, ts), {limit}) AS evidence
    FROM (SELECT client_ip, target, server_ip, unnest(policy_rows) AS policy_row, unnest(times) AS ts FROM labelled)
    GROUP BY client_ip, target
)
SELECT * FROM lists JOIN firsts USING (client_ip, target) ORDER BY client_ip, target
"""
#: The records of the evidence flows, by ``flow_policy`` row id.
_EVIDENCE = _MATCHED.format(
    row=f", p.rowid AS policy_row, {_ROW} AS record",
    source="flow_policy",
    only="p.rowid IN (SELECT unnest(?::BIGINT[])) AND",
)


def enrich(ip: str, enrichers: tuple[Callable[[str], dict[str, str]], ...] = ()) -> dict[str, str]:
    """Country and ASN of an address from the context's enrichers (the site's GeoIP files) and the registered
    ones, the first to answer a field winning; "unknown" without any."""
    found: dict[str, str] = {}
    for enricher in (*enrichers, *ENRICHERS):
        found |= {key: value for key, value in enricher(ip).items() if value and key not in found}
    return {"country": "unknown", "asn": "unknown"} | found


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per (client, internet peer) or (client, server zone) of unapproved flows with an OT end."""
    columns = set(catalog.columns(con, "flow_policy"))
    present = [name for name in _FLOW_COLUMNS if name in columns]
    joined = _JOINED.format(exclude=f" EXCLUDE ({', '.join(present)})" if present else "")
    if set(_FLOW_COLUMNS) <= columns:  # the evidence records afterwards, by row id: the groups need fewer columns
        evidence = "policy_row"
        cursor = con.execute(_COMBINED.format(limit=EVIDENCE_FLOWS, lists=_LISTS))
    else:
        matched = _MATCHED.format(source=joined, row="", only="")
        evidence = _ROW
        cursor = con.execute(_GROUPS.format(matched=matched, evidence=evidence, limit=EVIDENCE_FLOWS, lists=_LISTS))
    names = [column[0] for column in cursor.description]
    groups = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    if evidence == "policy_row":
        wanted = sorted({int(row) for group in groups for row in group["evidence"]})
        records = dict(con.execute(f"SELECT policy_row, record FROM ({_EVIDENCE})", [wanted]).fetchall())
        for group in groups:
            group["evidence"] = [records[row] for row in group["evidence"]]
    alerts = []
    for group in groups:
        alerts.append(_alert(list(group.pop("evidence")), group, context.enrichers))
    return alerts


def _alert(
    rows: list[dict[str, Any]], group: dict[str, Any], enrichers: tuple[Callable[[str], dict[str, str]], ...] = ()
) -> Alert:
    """``rows``: the group's first EVIDENCE_FLOWS flows in time order; ``group``: its aggregates (``_GROUPS``)."""
    first = rows[0]
    client, server = first["client_ip"], first["server_ip"]
    external = bool(group["external"])
    count = int(group["n"])
    outbound = external and first["server_zone"] == "external"
    inbound = external and first["client_zone"] == "external"
    ot_side = "client" if first["client_ot"] else "server"
    ot_ip = first[f"{ot_side}_ip"]
    side_role = first[f"{ot_side}_role"]
    zone = first["server_zone"]
    peer = server if ot_side == "client" else client
    peer_info = enrich(peer, enrichers) if external else {}
    protocols = sorted(str(value) for value in group["protocols"])
    ports = sorted(int(value) for value in group["ports"])
    reasons = sorted(str(value) for value in group["reasons"])
    servers = sorted(str(value) for value in group["servers"])
    ot_roles = {*(group["client_roles"] or []), *(group["server_roles"] or [])}
    critical = sorted(role for role in ot_roles if role in CRITICAL_ROLES)
    critical_role = bool(critical)
    ot_role = ", ".join(critical) if critical else side_role

    step = 2 if external else 1  # high for the internet, medium between zones
    if critical_role:
        step += 1
    if outbound and ot_side == "client":
        step = max(step, 2)
    severity = SEVERITY_STEPS[min(step, 3)]
    role_text = f" ({side_role})" if side_role and side_role != "unknown" else ""
    if outbound:
        where = (
            f"the internet host {server} (country {peer_info['country']}, ASN {peer_info['asn']}), "
            "with no external destination of the policy approving it"
        )
        title = f"OT asset {client}{role_text} talks to internet host {server}"
    elif inbound:
        where = (
            f"the internet host {client} (country {peer_info['country']}, ASN {peer_info['asn']}) reaching it, "
            "with no conduit or remote-access path of the policy approving it"
        )
        title = f"Internet host {client} reaches OT asset {server}{role_text}"
    else:
        where = (
            f"zone {first['server_zone']} from zone {first['client_zone']} with no conduit matching "
            f"({'; '.join(reasons[:3])})"
        )
        server = servers[0] if len(servers) == 1 else f"{len(servers)} hosts"
        title = f"{client} (zone {first['client_zone']}) talks to {server} in zone {zone} unapproved"
        where = f"{server} ({', '.join(servers[:10])}) in " + where if len(servers) > 1 else f"{server} in " + where
    explanation = (
        f"{count} flow(s) over {', '.join(protocols)} (server port {', '.join(map(str, ports[:10]))}) between "
        f"OT asset {ot_ip}{role_text} and {where}. Policy reason: {reasons[0]} Check whether this path is in a "
        "contract; if it is, add a conduit or external destination to the policy, else cut it."
    )
    components = [
        ScoreComponent(
            "verdict", 1.0 if external else 0.7, 0.5,
            "the flow crosses the site boundary unapproved" if external else "two zones talk with no conduit",
        ),
        ScoreComponent(
            "direction", 1.0 if outbound else 0.5, 0.2,
            "outbound from OT to the internet: data can leave" if outbound else "inbound or between zones",
        ),
        ScoreComponent(
            "asset_role", 1.0 if critical_role else 0.5, 0.2,
            f"an OT end is a {ot_role}, which should never talk outside its zone"
            if critical_role else f"the OT end's role is {ot_role or 'unknown'}",
        ),
        ScoreComponent("flows", min(count / 10, 1.0), 0.1, f"{count} unapproved flow(s) (10 or more: 1)"),
    ]  # fmt: skip
    score = round(sum(component.value * component.weight for component in components), 3)
    owned = [
        first["client_asset"] if first["client_ot"] else None,
        first["server_asset"] if first["server_ot"] else None,
    ]
    ot_servers = [str(value) for value in group["ot_servers"] or []]
    assets = sorted({ot_ip, *(value for value in owned if value), *ot_servers[:50]})
    evidence = Evidence(
        flow_ids=[row["flow_id"] for row in rows[:EVIDENCE_FLOWS]],
        community_ids=sorted(group["community_ids"] or [])[:EVIDENCE_FLOWS],
        events=[
            EventReference("flows", row["capture_id"], int(row["packet"]), row["flow_id"])
            for row in rows[:EVIDENCE_FLOWS]
        ],
        packet_numbers=[int(row["packet"]) for row in rows[:EVIDENCE_FLOWS]],
        values={
            "verdict": sorted(group["verdicts"]),
            "client_zone": [first["client_zone"]],
            "server_zone": [first["server_zone"]],
            "protocol": protocols[:20],
            "server_port": ports[:20],
            "reason": reasons[:20],
            "conduit": sorted(group["conduits"] or [])[:20],
            **({"peer_country": [peer_info["country"]], "peer_asn": [peer_info["asn"]]} if external else {}),
            **({"geoip_source": [peer_info["geoip_source"]]} if "geoip_source" in peer_info else {}),
        },
    )
    return Alert(
        detection=DETECTION,
        title=title,
        key={"client_ip": client, "server_ip": server} if external else {"client_ip": client, "server_zone": zone},
        severity=severity,
        confidence=0.9 if first["client_zone"] != "unzoned" else 0.7,
        techniques=list(TECHNIQUES),
        first_seen=group["first_seen"],
        last_seen=group["last_seen"],
        count=count,
        explanation=explanation,
        score=score,
        score_components=components,
        assets=assets,
        zones=sorted({first["client_zone"], first["server_zone"]}),
        evidence=evidence,
        suppression_seconds=3600,
    )

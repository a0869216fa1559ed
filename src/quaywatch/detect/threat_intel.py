"""D10: threat intelligence. Imported indicators (``indicators``, intel/indicators.py) matched against the store.

Each indicator type is looked for where the traffic shows it (``OBSERVATIONS``): addresses in flows and DNS answers,
names in DNS queries and answers, TLS SNI, HTTP Host and certificate SANs (exact or a parent domain), URLs in HTTP
requests, JA3/JA3S/JA4/JA4S in TLS hellos, HASSH in SSH key exchanges, certificate hashes, serials, subjects and
issuers. The distinct values of each column are matched in Python (canonical forms, parent domains, CIDR blocks),
then only the matching rows are fetched as evidence, so the cost grows with the distinct values, not the rows.
A row later than the indicator's ``valid_until`` does not match: the feed said the address was clean again by then.
One alert per indicator and host pair; an indicator whose pattern ANDs several terms fires only when every term
was seen between the same two hosts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quaywatch.detect.alert import SEVERITIES, Alert, EventReference, Evidence, ScoreComponent
from quaywatch.intel.indicators import INDICATORS_TABLE, normalise_distinguished_name, normalise_url, reference

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D10.threat-intel"
REQUIRES = (INDICATORS_TABLE,)
EVIDENCE_ROWS = 100

#: Asset id, zone and OT flag of an address (host_context).
HostInfo = tuple[str | None, str | None, bool]
NO_HOST: HostInfo = (None, None, False)


@dataclass(frozen=True, slots=True)
class Observation:
    """Where one kind of indicator shows in the store: table, value expression and the indicator types it serves."""

    table: str
    column: str  # a column name; the value expression below reads it
    types: tuple[str, ...]
    expression: str = ""  # SQL over the table's columns giving the value; default the column itself
    unnest: bool = False  # a list column: each item is a value
    where: str = ""
    packet: str = "packet_number"
    normal: str = "lower"  # how the observed value is made comparable: lower, ip, url, serial, dn, exact

    @property
    def value_sql(self) -> str:
        base = self.expression or f'"{self.column}"'
        return f"unnest({base})" if self.unnest else base


#: The store columns each indicator type is matched against (schema knowledge, not reference data: docs/schema.md).
OBSERVATIONS: tuple[Observation, ...] = (
    Observation("flows", "client_ip", ("ip", "cidr"), packet="first_packet", normal="ip"),
    Observation("flows", "server_ip", ("ip", "cidr"), packet="first_packet", normal="ip"),
    Observation("dns", "answer_data", ("ip", "cidr"), unnest=True, normal="ip"),
    Observation("dns", "query_name", ("domain",)),
    Observation("dns", "answer_names", ("domain",), unnest=True),
    Observation("tls", "server_name", ("domain",)),
    Observation("http", "host", ("domain",), expression=r"regexp_replace(host, ':[0-9]+$', '')"),
    Observation("tls_certificate", "san_dns", ("domain",), unnest=True),
    Observation("http", "uri", ("url",), expression="coalesce(host, server_ip) || ' ' || uri", normal="url"),
    Observation("tls", "ja3_md5", ("ja3", "md5")),
    Observation("tls", "ja3", ("ja3",)),
    Observation("tls", "ja3s_md5", ("ja3s", "md5")),
    Observation("tls", "ja3s", ("ja3s",)),
    Observation("tls", "ja4", ("ja4",)),
    Observation("tls", "ja4_r", ("ja4",)),
    Observation("tls", "ja4s", ("ja4s",)),
    Observation("tls", "ja4s_r", ("ja4s",)),
    Observation("ssh", "hassh", ("hassh", "md5"), where="direction = 'to_server'"),
    Observation("ssh", "hassh", ("hassh_server", "md5"), where="direction = 'to_client'"),
    Observation("tls_certificate", "sha1", ("sha1",)),
    Observation("tls_certificate", "sha256", ("sha256",)),
    Observation("tls_certificate", "serial", ("certificate_serial",), normal="serial"),
    Observation("tls_certificate", "subject", ("certificate_subject",), normal="dn"),
    Observation("tls_certificate", "issuer", ("certificate_issuer",), normal="dn"),
)


@dataclass(frozen=True, slots=True)
class Term:
    """One (type, value) of one AND group of one indicator."""

    indicator: str
    conjunction: int
    type: str
    value: str


def _canonical(observation: Observation, raw: str) -> str | None:
    if observation.normal == "ip":
        try:
            return str(ipaddress.ip_address(raw.strip()))
        except ValueError:
            return None
    if observation.normal == "url":
        host, _, uri = raw.partition(" ")  # HTTP request lines split on spaces: neither part holds one
        return normalise_url(uri if "://" in uri else f"{host}{uri if uri.startswith('/') else '/' + uri}")
    if observation.normal == "serial":
        return raw.lower().replace(":", "").lstrip("0") or "0"
    if observation.normal == "dn":
        return normalise_distinguished_name(raw)
    return raw.strip().lower().rstrip(".") if observation.normal == "lower" else raw


class _Matcher:
    """The indicator terms indexed for exact, parent-domain and CIDR lookups."""

    def __init__(self, terms: list[Term]) -> None:
        self.exact: dict[tuple[str, str], list[Term]] = defaultdict(list)
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Term]] = []
        for term in terms:
            if term.type == "cidr":
                self.networks.append((ipaddress.ip_network(term.value), term))
            else:
                self.exact[(term.type, term.value)].append(term)

    def match(self, observation: Observation, value: str) -> list[Term]:
        found: list[Term] = []
        for kind in observation.types:
            if kind == "cidr":
                address = ipaddress.ip_address(value)
                found += [term for network, term in self.networks if address in network]
            elif kind == "domain":
                labels = value.split(".")
                for start in range(len(labels)):
                    found += self.exact.get((kind, ".".join(labels[start:])), [])
            else:
                found += self.exact.get((kind, value), [])
        return found


def _present(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    rows = con.execute("SELECT table_name, column_name FROM duckdb_columns()").fetchall()
    columns: dict[str, set[str]] = defaultdict(set)
    for table, column in rows:
        columns[str(table)].add(str(column))
    return columns


def _indicators(
    con: duckdb.DuckDBPyConnection,
) -> tuple[dict[str, dict[str, Any]], list[Term], dict[tuple[str, int], int]]:
    """The latest import of each indicator id: its metadata, its terms and the size of each AND group."""
    cursor = con.execute(
        f"""
        SELECT * FROM "{INDICATORS_TABLE}"
        QUALIFY imported_at = max(imported_at) OVER (PARTITION BY indicator_id)
        ORDER BY indicator_id, conjunction, type, value
        """
    )
    names = [column[0] for column in cursor.description]
    metadata: dict[str, dict[str, Any]] = {}
    terms: set[Term] = set()
    sizes: dict[tuple[str, int], int] = {}
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        metadata.setdefault(row["indicator_id"], row)
        terms.add(Term(row["indicator_id"], int(row["conjunction"]), row["type"], row["value"]))
        sizes[(row["indicator_id"], int(row["conjunction"]))] = int(row["terms"])
    return metadata, sorted(terms, key=lambda t: (t.indicator, t.conjunction, t.type, t.value)), sizes


@dataclass(slots=True)
class _Hit:
    """A store row matching one term."""

    term: Term
    table: str
    column: str
    observed: str
    ts: dt.datetime
    capture_id: str
    packet: int | None
    flow_id: str | None
    community_id: str | None
    client_ip: str
    server_ip: str


def _hits(con: duckdb.DuckDBPyConnection, matcher: _Matcher, wanted: set[str]) -> list[_Hit]:
    columns = _present(con)
    hits: list[_Hit] = []
    for observation in OBSERVATIONS:
        have = columns.get(observation.table, set())
        if not wanted & set(observation.types) or observation.column not in have or "client_ip" not in have:
            continue
        where = f"WHERE {observation.where}" if observation.where else ""
        raw_values = con.execute(
            f'SELECT DISTINCT v FROM (SELECT {observation.value_sql} AS v FROM "{observation.table}" {where}) '
            "WHERE v IS NOT NULL"
        ).fetchall()
        matched: dict[str, list[Term]] = {}
        for (raw,) in raw_values:
            canonical = _canonical(observation, str(raw))
            if canonical is not None and (terms := matcher.match(observation, canonical)):
                matched[str(raw)] = terms
        if not matched:
            continue
        rows = con.execute(
            f"""
            SELECT v, ts, capture_id, "{observation.packet}", flow_id, community_id, client_ip, server_ip FROM (
                SELECT *, {observation.value_sql} AS v FROM "{observation.table}" {where}
            ) WHERE v IN (SELECT unnest(?::VARCHAR[])) ORDER BY ts
            """,
            [sorted(matched)],
        ).fetchall()
        for raw, ts, capture, packet, flow, community, client, server in rows:
            for term in matched[str(raw)]:
                hits.append(
                    _Hit(term, observation.table, observation.column, str(raw), ts, str(capture),
                         None if packet is None else int(packet), flow, community, str(client), str(server))
                )  # fmt: skip
    return hits


def _host_context(
    con: duckdb.DuckDBPyConnection, addresses: set[str]
) -> dict[str, tuple[str | None, str | None, bool]]:
    if "host_context" not in {str(row[0]) for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}:
        return {}
    rows = con.execute(
        "SELECT ip, asset_id, zone, ot FROM host_context WHERE ip IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY ip, asset_id",
        [sorted(addresses)],
    ).fetchall()
    return {str(ip): (asset, zone, bool(ot)) for ip, asset, zone, ot in rows}


def severity(confidence: int, indicator_types: list[str], ot_involved: bool) -> str:
    """From the confidence, bounded by the STIX indicator types, one step higher with an OT asset at one end."""
    data = reference()
    level = next(step["severity"] for step in data["severity_steps"] if confidence >= step["min"])
    rank = SEVERITIES.index(level)
    floor, ceiling = 0, len(SEVERITIES) - 1
    for kind in indicator_types:
        rule = data["indicator_types"].get(kind, {})
        if "at_least" in rule:
            floor = max(floor, SEVERITIES.index(rule["at_least"]))
        if "at_most" in rule:
            ceiling = min(ceiling, SEVERITIES.index(rule["at_most"]))
    rank = max(rank, floor)
    if ot_involved and data.get("ot_raises_severity"):
        rank += 1
    return SEVERITIES[max(0, min(rank, ceiling, len(SEVERITIES) - 1))]


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per indicator and (client, server) pair whose every term of one AND group matched in time."""
    metadata, terms, sizes = _indicators(con)
    if not terms:
        return []
    hits = [
        hit
        for hit in _hits(con, _Matcher(terms), {term.type for term in terms})
        if metadata[hit.term.indicator]["valid_until"] is None or hit.ts <= metadata[hit.term.indicator]["valid_until"]
    ]
    groups: dict[tuple[str, str, str], list[_Hit]] = defaultdict(list)
    for hit in hits:
        groups[(hit.term.indicator, hit.client_ip, hit.server_ip)].append(hit)
    hosts = _host_context(con, {ip for _, client, server in groups for ip in (client, server)})
    alerts: list[Alert] = []
    for (indicator, client, server), found in sorted(groups.items()):
        by_group: dict[int, set[Term]] = defaultdict(set)
        for hit in found:
            by_group[hit.term.conjunction].add(hit.term)
        complete = {number for number, seen in by_group.items() if len(seen) == sizes[(indicator, number)]}
        kept = [hit for hit in found if hit.term.conjunction in complete]
        if kept:
            alerts.append(_alert(metadata[indicator], client, server, kept, hosts))
    return alerts


def _alert(
    info: dict[str, Any],
    client: str,
    server: str,
    hits: list[_Hit],
    hosts: dict[str, HostInfo],
) -> Alert:
    data = reference()
    kinds = sorted({hit.term.type for hit in hits})
    client_ot = hosts.get(client, NO_HOST)[2]
    ot_involved = client_ot or hosts.get(server, NO_HOST)[2]
    techniques = list(dict.fromkeys(t for kind in kinds for t in data["techniques"][kind]))
    if client_ot:
        techniques += [t for t in data["ot_client_techniques"] if t not in techniques]
    confidence = int(info["confidence"])
    level = severity(confidence, list(info["indicator_types"] or []), ot_involved)
    matched = sorted({f"{hit.table}.{hit.column} = {hit.observed}" for hit in hits})
    terms = sorted({f"{hit.term.type} {hit.term.value}" for hit in hits})
    label = info["name"] or terms[0]
    description = info["description"] or "no description"
    until = info["valid_until"]
    explanation = (
        f"{len(hits)} record(s) between {client} and {server} match threat indicator {info['indicator_id']} "
        f"({'; '.join(terms)}) from {info['source']} (file {info['source_file']}): {description}. "
        f"Matched: {'; '.join(matched[:5])}{' ...' if len(matched) > 5 else ''}. "
        f"Confidence {confidence}/100"
        + (f", indicator types {', '.join(info['indicator_types'])}" if info["indicator_types"] else "")
        + (f", valid until {until.isoformat()}" if until else "")
        + ". Check what the host runs and block the destination at the firewall if the match is confirmed."
    )
    components = [
        ScoreComponent("indicator_confidence", confidence / 100, 1.0,
                       f"The feed rates this indicator {confidence}/100; the alert's score and confidence are that."),
        ScoreComponent("ot_asset", 1.0 if ot_involved else 0.0, 0.0,
                       "An OT asset is one end of the match: severity one step higher." if ot_involved
                       else "Neither end is a known OT asset: severity as the feed rates it."),
    ]  # fmt: skip
    assets = [hosts.get(ip, NO_HOST)[0] or ip for ip in (client, server)]
    zones = sorted({zone for ip in (client, server) if (zone := hosts.get(ip, NO_HOST)[1])})
    hits.sort(key=lambda hit: (hit.ts, hit.packet or 0))
    evidence = Evidence(
        flow_ids=list(dict.fromkeys(hit.flow_id for hit in hits if hit.flow_id))[:EVIDENCE_ROWS],
        community_ids=list(dict.fromkeys(hit.community_id for hit in hits if hit.community_id))[:EVIDENCE_ROWS],
        events=[EventReference(hit.table, hit.capture_id, hit.packet, hit.flow_id) for hit in hits][:EVIDENCE_ROWS],
        packet_numbers=sorted({hit.packet for hit in hits if hit.packet is not None})[:EVIDENCE_ROWS],
        values={
            "indicator_id": [info["indicator_id"]],
            "indicator_name": [info["name"]] if info["name"] else [],
            "description": [description],
            "source": [info["source"]],
            "source_file": [info["source_file"]],
            "pattern": [info["pattern"]] if info["pattern"] else [],
            "indicator": terms[:20],
            "matched": matched[:20],
            "confidence": [confidence],
            "indicator_types": list(info["indicator_types"] or []),
            "labels": list(info["labels"] or []),
            "kill_chain_phases": list(info["kill_chain_phases"] or []),
            "valid_until": [until.isoformat()] if until else [],
        },
    )
    return Alert(
        detection=DETECTION,
        title=f"Threat indicator {label} seen between {client} and {server}",
        key={"indicator_id": str(info["indicator_id"]), "client_ip": client, "server_ip": server},
        severity=level,
        confidence=confidence / 100 or 0.01,
        techniques=techniques,
        first_seen=hits[0].ts,
        last_seen=hits[-1].ts,
        count=len(hits),
        explanation=explanation,
        score=confidence / 100,
        score_components=components,
        assets=list(dict.fromkeys(assets)),
        zones=zones,
        evidence=evidence,
        suppression_seconds=3600,
    )

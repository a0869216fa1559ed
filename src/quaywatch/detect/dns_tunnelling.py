"""D5: DNS tunnelling and DNS exfiltration (ATT&CK for ICS T0869, Enterprise T1048).

A tunnel or an exfiltration tool has to put its data into the names it asks for, under a domain whose
authoritative server it controls: many distinct, long, random-looking subdomains of one registered domain,
often with record types whose answers carry data (TXT, NULL, CNAME), often for names that do not exist.
Each of those signals is measured per client and registered domain over the whole ``dns`` table and scored
as an explained component; one very suspicious name (a long label of encoded data) is enough to fire, and
so is a large volume of merely odd names.

Normal resolvers stay quiet because the score needs encoded-looking names (a label of at least
``ENCODED_LABEL_OCTETS`` octets, or characters no host name has) before any volume counts, and because local
name services (mDNS, LLMNR, NetBIOS), reverse lookups (PTR, ``*.arpa``) and reserved suffixes (``*.local``)
are left out: the lists are in ``data/dns_tunnelling.yaml`` with their sources.

Registered domains follow the Public Suffix List snapshot bundled with the ``publicsuffixlist`` package
(no fetch: the package reads its own file), so ``a.b.example.co.uk`` counts under ``example.co.uk``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from publicsuffixlist import PSLFILE, PublicSuffixList, encode_idn

from quaywatch.decode.dns.message import escape
from quaywatch.detect import catalog
from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent
from quaywatch.yaml_files import load_yaml

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D5.dns-tunnelling"
REQUIRES = ("dns",)
#: One-core seconds over the benchmark store (make bench): the engine starts the longest detections first.
COST = 0.13
TECHNIQUES = ["T0869", "T1048"]
DATA_FILE = "dns_tunnelling.yaml"

#: The score from which a client and domain become an alert, and from which the alert is high severity.
ALERT_SCORE = 0.5
HIGH_SCORE = 0.8
#: A label this long, or a character outside letters, digits, hyphen (and a leading underscore), marks encoded data.
ENCODED_LABEL_OCTETS = 25
#: Evidence kept per alert: example names, packet numbers, flows.
EXAMPLE_NAMES = 5
EVIDENCE_PACKETS = 20
EVIDENCE_FLOWS = 10
#: Host-name characters (RFC 952, RFC 1123 section 2.1): anything else in a label is a sign of encoded data.
HOST_NAME_OCTETS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass(frozen=True, slots=True)
class ReferenceData:
    """What the data file lists: suffixes, ports and query types to leave out, and tunnel query types."""

    version: str
    local_suffixes: tuple[str, ...]
    local_ports: tuple[int, ...]
    excluded_query_types: tuple[str, ...]
    tunnel_query_types: tuple[str, ...]


@functools.cache
def reference_data() -> ReferenceData:
    """Loaded once: the lists are reference data with sources, not literals in the code."""
    text = resources.files("quaywatch.data").joinpath(DATA_FILE).read_text(encoding="utf-8")
    document: dict[str, Any] = load_yaml(text)
    return ReferenceData(
        version=str(document["version"]),
        local_suffixes=tuple(str(item["suffix"]).lower() for item in document["local_suffixes"]),
        local_ports=tuple(int(item["port"]) for item in document["local_ports"]),
        excluded_query_types=tuple(str(item["type"]) for item in document["excluded_query_types"]),
        tunnel_query_types=tuple(str(item["type"]) for item in document["tunnel_query_types"]),
    )


@functools.cache
def _suffix_list() -> PublicSuffixList:
    """The bundled Public Suffix List (ICANN and private sections: a CDN customer counts as its own domain).

    Built from its rules with the IDNA-encoded spelling added for the non-ASCII ones only: ``PublicSuffixList()``
    encodes all ten thousand rules, an ASCII one to itself, which cost about 30 ms in every process that detects.
    The rule set is the same (tests/detect/test_dns_tunnelling.py compares the two).
    """
    lines = Path(PSLFILE).read_text(encoding="utf-8").splitlines()
    rules = [
        rule for rule in (line.lower().split(" ")[0].rstrip() for line in lines) if rule and not rule.startswith("//")
    ]
    encoded = [
        ("!" if rule.startswith("!") else "") + encode_idn(rule.lstrip("!")) for rule in rules if not rule.isascii()
    ]
    return PublicSuffixList(source=[*rules, *encoded], accept_encoded_idn=False)


def registered_domain(name: str) -> str:
    """The domain a name was registered under: one label below its public suffix; unknown TLDs count as suffixes."""
    name = name.rstrip(".").lower()
    private = _suffix_list().privatesuffix(name)
    if private:
        return str(private)
    labels = name.split(".")
    return ".".join(labels[-2:])


def _clip(value: float) -> float:
    return 0.0 if value != value else min(1.0, max(0.0, value))  # NaN (no data) counts as nothing


def _encoded_characters(label: bytes) -> bool:
    """Characters no host name has; a leading underscore is allowed (SRV, DKIM, DMARC: ``_sip._tcp``)."""
    body = label[1:] if label.startswith(b"_") else label
    return any(octet not in HOST_NAME_OCTETS for octet in body)


@dataclass(slots=True)
class _Name:
    """One distinct query name of a client: where it belongs and what its subdomain part looks like."""

    domain: str
    subdomain: bytes
    longest_label: int
    encoded_characters: bool


def _describe(raw: bytes) -> _Name:
    """Split a name (as received, ASCII lower-cased) into its registered domain, escaped, and its subdomain octets.

    The domain is the alert's key and title, so it is escaped the way ``dns.query_name`` is (control octets,
    spaces and non-ASCII become ``\\xNN``); the subdomain stays raw octets for the length and entropy measures.
    """
    trimmed = raw.rstrip(b".")
    text = trimmed.decode("latin-1")
    cut = max(0, len(text) - len(registered_domain(text)))
    subdomain = trimmed[: cut - 1] if cut > 0 else b""
    labels = [label for label in subdomain.split(b".") if label]
    return _Name(
        domain=".".join(escape(label) for label in trimmed[cut:].split(b".")),
        subdomain=subdomain,
        longest_label=max((len(label) for label in labels), default=0),
        encoded_characters=any(_encoded_characters(label) for label in labels),
    )


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return name in catalog.relations(con)


def _row_filter(data: ReferenceData, table: str = "dns") -> str:
    """The per-message test: upstream queries and responses, no local name services, no excluded query types."""
    ports = ", ".join(str(int(port)) for port in data.local_ports)
    types = ", ".join("'" + name.replace("'", "''") + "'" for name in data.excluded_query_types) or "''"
    return f"""{table}.event_type IN ('query', 'response') AND {table}.query_name_raw IS NOT NULL
              AND {table}.label_count >= 2 AND {table}.client_ip IS NOT NULL
              AND coalesce({table}.server_port, 53) NOT IN ({ports})
              AND coalesce({table}.query_type_name, '') NOT IN ({types})"""


def _client_names(con: duckdb.DuckDBPyConnection, data: ReferenceData) -> None:
    """Per client and distinct query name, the message counts: the one pass over ``dns``.

    A temporary table of one row per client and name (not per message): the later steps read it three times and
    every count of the score adds up from it. A suffix is matched against the name's last one, two or three
    labels, a hash lookup rather than one string test per suffix, once per name rather than once per message.
    Conditional counts and CASE rather than FILTER clauses (a fifth less time over the messages), and responses
    as the rest of the messages (the row filter keeps queries and responses only). ``community_estimate`` (a
    HyperLogLog count of the queries' Community IDs) lets the evidence step pick its grouping (:func:`_evidence`).
    """
    suffixes = ", ".join("'" + suffix.replace("'", "''") + "'" for suffix in data.local_suffixes) or "''"
    tunnel_types = ", ".join("'" + name.replace("'", "''") + "'" for name in data.tunnel_query_types) or "''"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE d5_client_names AS
        SELECT * EXCLUDE (last_labels) FROM (
            SELECT *, string_split(name_key, '.')[-3:] AS last_labels FROM (
                SELECT client_ip, query_name, lower(rtrim(query_name, '.')) AS name_key,
                       any_value(query_name_raw) AS query_name_raw,
                       count_if(event_type = 'query') AS queries,
                       count(*) - count_if(event_type = 'query') AS responses,
                       count_if(rcode_name = 'NXDOMAIN' AND event_type = 'response') AS nxdomain,
                       count_if(query_type_name IN ({tunnel_types}) AND event_type = 'query') AS tunnel_types,
                       min(CASE WHEN event_type = 'query' THEN ts END) AS first_seen,
                       max(CASE WHEN event_type = 'query' THEN ts END) AS last_seen,
                       approx_count_distinct(CASE WHEN event_type = 'query' THEN community_id END)
                           AS community_estimate
                FROM dns WHERE {_row_filter(data)}
                GROUP BY client_ip, query_name
            )
        )
        WHERE last_labels[-1] NOT IN ({suffixes})
          AND array_to_string(last_labels[-2:], '.') NOT IN ({suffixes})
          AND array_to_string(last_labels, '.') NOT IN ({suffixes})
    """)


def _names(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Each distinct name once, split into registered domain and subdomain (the one step done in Python)."""
    keys: list[str] = []
    domains: list[str] = []
    subdomains: list[bytes] = []
    longest: list[int] = []
    encoded: list[bool] = []
    rows = con.execute("SELECT name_key, any_value(query_name_raw) FROM d5_client_names GROUP BY 1").fetchall()
    for key, raw in rows:
        name = _describe(bytes(raw).lower())
        keys.append(key)
        domains.append(name.domain)
        subdomains.append(name.subdomain)
        longest.append(name.longest_label)
        encoded.append(name.encoded_characters)
    return pa.table(
        {
            "name_key": pa.array(keys, pa.string()),
            "domain": pa.array(domains, pa.string()),
            "subdomain": pa.array(subdomains, pa.binary()),
            "subdomain_length": pa.array([len(text) for text in subdomains], pa.int64()),
            "longest_label": pa.array(longest, pa.int64()),
            "encoded": pa.array(encoded, pa.bool_()),
        }
    )


def _entropy(groups: np.ndarray, texts: list[bytes], group_count: int) -> np.ndarray:
    """Shannon entropy (bits per character) of the characters of each group's distinct subdomains, vectorised."""
    if not texts:
        return np.zeros(group_count)
    lengths = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
    octets = np.frombuffer(b"".join(texts), dtype=np.uint8).astype(np.int64)
    owner = np.repeat(groups, lengths)
    keep = octets != ord(".")
    keys, counts = np.unique(owner[keep] * 256 + octets[keep], return_counts=True)
    owners = keys // 256
    totals = np.bincount(owners, weights=counts, minlength=group_count)
    shares = counts / totals[owners]
    return np.bincount(owners, weights=-shares * np.log2(shares), minlength=group_count)


@dataclass(slots=True)
class _Group:
    """The measurements of one client and registered domain."""

    client_ip: str
    domain: str
    queries: int = 0
    responses: int = 0
    nxdomain: int = 0
    tunnel_types: int = 0
    distinct_names: int = 0
    subdomain_octets: int = 0
    longest_label: int = 0
    encoded_names: int = 0
    entropy: float = 0.0
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None


def _components(group: _Group) -> list[ScoreComponent]:
    """The explained score: each signal scaled to 0..1 between a normal and a tunnel-like value, then weighted."""
    span = (group.last_seen - group.first_seen).total_seconds() if group.first_seen and group.last_seen else 0.0
    rate = group.queries / max(span / 60.0, 1.0)
    nxdomain_share = group.nxdomain / group.responses if group.responses else 0.0
    return [
        ScoreComponent(
            "longest_label",
            _clip((group.longest_label - 24) / (52 - 24)),
            0.25,
            f"The longest subdomain label is {group.longest_label} octets; host names stay under 25, tunnels fill "
            "labels towards the 63-octet limit (full at 52).",
        ),
        ScoreComponent(
            "entropy",
            _clip((group.entropy - 3.2) / (4.2 - 3.2)),
            0.20,
            f"The subdomain characters carry {group.entropy:.2f} bits each (Shannon); words stay near 3, hex "
            "reaches 4 and base32/base64 encodings 5 or more (full at 4.2).",
        ),
        ScoreComponent(
            "distinct_subdomains",
            _clip((math.log10(max(group.distinct_names, 1)) - 1) / 2),
            0.15,
            f"{group.distinct_names} distinct names under the domain; a tunnel needs a new name for every chunk "
            "(nothing below 10, full at 1,000).",
        ),
        ScoreComponent(
            "volume",
            _clip((math.log10(max(group.subdomain_octets, 1)) - 3) / 2),
            0.10,
            f"{group.subdomain_octets} octets of distinct subdomain text: the most data the names can have carried "
            "out (nothing below 1 kB, full at 100 kB).",
        ),
        ScoreComponent(
            "query_rate",
            _clip((rate - 5) / (60 - 5)),
            0.05,
            f"{rate:.1f} queries a minute for the domain; a resolver's cache keeps normal clients far lower "
            "(nothing below 5, full at 60).",
        ),
        ScoreComponent(
            "data_record_types",
            _clip(group.tunnel_types / group.queries if group.queries else 0.0),
            0.10,
            f"{group.tunnel_types} of {group.queries} queries ask for TXT, NULL, CNAME or ANY, whose answers carry "
            "the tunnel's return data.",
        ),
        ScoreComponent(
            "nxdomain",
            _clip(nxdomain_share),
            0.05,
            f"{group.nxdomain} of {group.responses} responses are NXDOMAIN: one-way exfiltration needs no answer.",
        ),
        ScoreComponent(
            "encoded_characters",
            _clip(group.encoded_names / group.distinct_names if group.distinct_names else 0.0),
            0.10,
            f"{group.encoded_names} of {group.distinct_names} names hold characters no host name has "
            "(base64 '+/=', '*', binary), the mark of raw encoded data.",
        ),
    ]


def score(components: list[ScoreComponent]) -> float:
    """The weighted sum of the components (the weights add up to 1)."""
    return round(sum(component.value * component.weight for component in components), 4)


def _zones(con: duckdb.DuckDBPyConnection, address: str) -> list[str]:
    """The client's zone when another stage mapped hosts to zones (``host_zones``); none otherwise."""
    if not _table_exists(con, "host_zones"):
        return []
    rows = con.execute("SELECT DISTINCT zone FROM host_zones WHERE ip = ? AND zone IS NOT NULL", [address]).fetchall()
    return sorted(str(row[0]) for row in rows)


_GROUPS_SQL = """
WITH suspect_domains AS (
    SELECT DISTINCT domain FROM d5_names WHERE {suspect}
),
named AS (
    SELECT c.*, n.domain FROM d5_client_names c JOIN d5_names n USING (name_key)
    WHERE n.domain IN (SELECT domain FROM suspect_domains)
),
distinct_names AS (
    SELECT client_ip, domain, name_key, min(first_seen) AS first_ts, arg_min(query_name, first_seen) AS query_name
    FROM named WHERE queries > 0 GROUP BY ALL
),
name_totals AS (
    SELECT d.client_ip, d.domain, count(*) AS distinct_names, sum(n.subdomain_length) AS subdomain_octets,
           max(n.longest_label) AS longest_label, count(*) FILTER (WHERE n.encoded) AS encoded_names,
           list(d.query_name ORDER BY d.first_ts, d.name_key)[1:{examples}] AS examples,
           list(n.subdomain) AS subdomains
    FROM distinct_names d JOIN d5_names n USING (name_key) GROUP BY ALL
),
message_totals AS (
    SELECT client_ip, domain, sum(queries) AS queries, sum(responses) AS responses, sum(nxdomain) AS nxdomain,
           sum(tunnel_types) AS tunnel_types, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
           list_sort(list(first_seen) FILTER (WHERE queries > 0 AND first_seen IS NOT NULL))[{packets}] AS early,
           sum(community_estimate) AS community_estimate
    FROM named GROUP BY ALL
)
SELECT * FROM message_totals JOIN name_totals USING (client_ip, domain)
WHERE queries > 0 AND ({suspect_group})
ORDER BY client_ip, domain
"""

#: The names of the chosen clients and domains, each with the time of its first query.
_CHOSEN_NAMES = """
SELECT c.client_ip, c.query_name, n.domain, c.first_seen
FROM d5_client_names c JOIN d5_names n USING (name_key)
SEMI JOIN d5_chosen AS k ON k.client_ip = c.client_ip AND k.domain = n.domain
WHERE c.queries > 0
"""

#: The evidence of the alerts only, from their own queries: the first queries in time order, and the lowest flow
#: and Community ids with repeats (a small heap per group rather than a set of every flow; :func:`_lowest_distinct`).
_EVIDENCE_SQL = """
SELECT g.client_ip, g.domain, {columns}
FROM dns AS m JOIN ({chosen_names}) AS g ON m.client_ip = g.client_ip AND m.query_name = g.query_name
WHERE m.event_type = 'query' AND {row_filter}
GROUP BY ALL
"""
_PACKETS = """min_by(struct_pack(m.capture_id, m.packet_number, m.flow_id),
                     struct_pack(m.ts, m.capture_id, m.packet_number), {count}) FILTER (WHERE {early}) AS packets"""
_LOWEST = "min(m.{column}, {count}) AS {name}"
_DISTINCT = "list_sort(list(DISTINCT m.{column}) FILTER (WHERE m.{column} IS NOT NULL))[1:{count}] AS {name}"
_IDS = {"flows": "flow_id", "communities": "community_id"}
#: How many lowest ids, repeats included, the evidence step keeps per group to find the lowest distinct ones.
LOWEST_WITH_REPEATS = 2 * EVIDENCE_FLOWS
#: Up to this many Community IDs (estimated) over the alerts' names, the evidence step groups by Community ID.
FEW_COMMUNITIES = 4096

#: The evidence grouped by Community ID as well, when the alerts' queries have few of them (a client that keeps
#: its source port: thousands of queries in each): the lowest distinct ones are then the groups' own keys, where
#: the lowest ids with repeats would all be one id and need a second pass (``unsure``). Each Community ID's first
#: queries by time and lowest flow ids are merged into the alert's, the same rows as one heap over all of them.
_BY_COMMUNITY_SQL = """
SELECT client_ip, domain,
       list_transform(
           list_sort(flatten(list(packets) FILTER (WHERE packets IS NOT NULL)))[1:{packets}],
           lambda packet: struct_pack(capture_id := packet.capture_id, packet_number := packet.packet_number,
                                      flow_id := packet.flow_id)
       ) AS packets,
       list_sort(flatten(list(flows) FILTER (WHERE flows IS NOT NULL)))[1:{lowest}] AS flows,
       coalesce(list_sort(list(community_id) FILTER (WHERE community_id IS NOT NULL))[1:{count}], []) AS communities
FROM (
    SELECT g.client_ip, g.domain, m.community_id,
           min_by(struct_pack(ts := m.ts, capture_id := m.capture_id, packet_number := m.packet_number,
                              flow_id := m.flow_id),
                  struct_pack(m.ts, m.capture_id, m.packet_number), {packets}) FILTER (WHERE m.ts <= $early)
               AS packets,
           min(m.flow_id, {lowest}) AS flows
    FROM dns AS m JOIN ({chosen_names}) AS g ON m.client_ip = g.client_ip AND m.query_name = g.query_name
    WHERE m.event_type = 'query' AND {row_filter}
    GROUP BY ALL
)
GROUP BY client_ip, domain
"""


def _lowest_distinct(lowest: list[str] | None, count: int) -> list[str] | None:
    """The ``count`` lowest distinct ids from the ``LOWEST_WITH_REPEATS`` lowest ones with repeats; None if unsure.

    Every id below the highest of those is among them, so their distinct ones are the group's lowest distinct
    ones, exactly, when there are ``count`` of them or when the group had fewer ids than were kept.
    """
    values = lowest or []
    distinct = sorted(set(values))
    if len(distinct) >= count or len(values) < LOWEST_WITH_REPEATS:
        return distinct[:count]
    return None


@dataclass(slots=True)
class Measurement:
    """One client and registered domain, measured and scored (``gated``: it had an encoded-looking name).

    ``row`` holds the group's aggregates; the evidence columns (``packets``, ``flows``, ``communities``) are
    fetched by :func:`detect` for the alerts only.
    """

    group: _Group
    components: list[ScoreComponent]
    score: float
    gated: bool
    row: dict[str, Any]


def measure(con: duckdb.DuckDBPyConnection, every_domain: bool = False) -> list[Measurement]:
    """Score each client and registered domain; only those with an encoded-looking name unless ``every_domain``.

    A client and domain without one encoded-looking name is never an alert (volume alone is a busy resolver
    client), so detection skips them early, which keeps the aggregation and the entropy step small; a test or an
    analyst asks for ``every_domain`` to see how far below the threshold normal traffic stays.
    """
    try:
        return _measure(con, every_domain)[0]
    finally:
        con.execute("DROP TABLE IF EXISTS d5_client_names")  # the working copy lives in the caller's connection


def _measure(con: duckdb.DuckDBPyConnection, every_domain: bool) -> tuple[list[Measurement], pa.Table | None]:
    """:func:`measure`, leaving ``d5_client_names`` for the evidence step; also returns the names table."""
    if not _table_exists(con, "dns"):
        return [], None
    data = reference_data()
    _client_names(con, data)
    names = _names(con)
    if names.num_rows == 0:
        return [], None
    suspect = f"longest_label >= {ENCODED_LABEL_OCTETS} OR encoded"
    con.register("d5_names", names)
    try:
        sql = _GROUPS_SQL.format(
            examples=EXAMPLE_NAMES,
            packets=EVIDENCE_PACKETS,
            suspect="true" if every_domain else suspect,
            suspect_group="true" if every_domain else f"longest_label >= {ENCODED_LABEL_OCTETS} OR encoded_names > 0",
        )
        candidates = con.sql(sql).to_arrow_table().to_pylist()
        if not candidates:
            return [], names
    finally:
        con.unregister("d5_names")
    # Each group's distinct subdomains came along with its names (``name_totals``): no second look-up.
    texts_of = [row.pop("subdomains") or [] for row in candidates]
    entropy = _entropy(
        np.repeat(np.arange(len(candidates), dtype=np.int64), [len(texts) for texts in texts_of]),
        [text for texts in texts_of for text in texts],
        len(candidates),
    )
    measured = []
    for position, row in enumerate(candidates):
        group = _Group(
            client_ip=str(row["client_ip"]),
            domain=str(row["domain"]),
            queries=int(row["queries"]),
            responses=int(row["responses"]),
            nxdomain=int(row["nxdomain"]),
            tunnel_types=int(row["tunnel_types"]),
            distinct_names=int(row["distinct_names"]),
            subdomain_octets=int(row["subdomain_octets"] or 0),
            longest_label=int(row["longest_label"] or 0),
            encoded_names=int(row["encoded_names"]),
            entropy=float(entropy[position]),
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
        )
        components = _components(group)
        gated = group.longest_label >= ENCODED_LABEL_OCTETS or group.encoded_names > 0
        measured.append(Measurement(group, components, score(components), gated, row))
    return measured, names


def _evidence(con: duckdb.DuckDBPyConnection, names: pa.Table, chosen: list[Measurement]) -> None:
    """Add the evidence columns (``packets``, ``flows``, ``communities``) to the rows of the chosen measurements."""
    if not chosen:
        return
    keys = pa.table(
        {
            "client_ip": pa.array([item.group.client_ip for item in chosen], pa.string()),
            "domain": pa.array([item.group.domain for item in chosen], pa.string()),
        }
    )
    con.register("d5_names", names)
    con.register("d5_chosen", keys)
    try:
        # A time that the first queries of every chosen group fall within. A group of at least 20 names has 20
        # queries no later than the 20th earliest first query of a name (``early``, from _GROUPS_SQL), so its first
        # 20 queries are no later than that; the latest such time over the groups (none when a group has fewer
        # names) limits the rows the ordering step sees.
        bounds = [item.row["early"] for item in chosen]
        early = None if any(bound is None for bound in bounds) else max(bounds)
        estimate = sum(int(item.row["community_estimate"] or 0) for item in chosen)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        if early is not None and estimate <= FEW_COMMUNITIES:
            sql = _BY_COMMUNITY_SQL.format(
                packets=EVIDENCE_PACKETS, lowest=LOWEST_WITH_REPEATS, count=EVIDENCE_FLOWS,
                chosen_names=_CHOSEN_NAMES, row_filter=_row_filter(reference_data(), "m"),
            )  # fmt: skip
            for row in con.sql(sql, params={"early": early}).to_arrow_table().to_pylist():
                rows[row["client_ip"], row["domain"]] = {
                    "packets": row["packets"],
                    "flows": _lowest_distinct(row["flows"], EVIDENCE_FLOWS),
                    "communities": row["communities"],
                }
        else:
            columns = [_PACKETS.format(count=EVIDENCE_PACKETS, early="true" if early is None else "m.ts <= $early")]
            columns += [
                _LOWEST.format(column=column, count=LOWEST_WITH_REPEATS, name=name) for name, column in _IDS.items()
            ]
            parameters = {} if early is None else {"early": early}
            for key, row in _evidence_query(con, columns, parameters).items():
                rows[key] = {"packets": row["packets"]} | {
                    name: _lowest_distinct(row[name], EVIDENCE_FLOWS) for name in _IDS
                }
        unsure = [name for name in _IDS if any(row[name] is None for row in rows.values())]
        if unsure:  # many queries in few flows (DNS over TCP, a reused source port): the distinct ids, counted
            columns = [_DISTINCT.format(column=_IDS[name], count=EVIDENCE_FLOWS, name=name) for name in unsure]
            for key, row in _evidence_query(con, columns, {}).items():
                rows[key].update({name: row[name] for name in unsure if rows[key][name] is None})
    finally:
        con.unregister("d5_chosen")
        con.unregister("d5_names")
    for item in chosen:
        none: dict[str, Any] = {"packets": None, "flows": None, "communities": None}
        item.row.update(rows.get((item.group.client_ip, item.group.domain), none))


def _evidence_query(
    con: duckdb.DuckDBPyConnection, columns: list[str], parameters: dict[str, Any]
) -> dict[tuple[str, str], dict[str, Any]]:
    sql = _EVIDENCE_SQL.format(
        columns=", ".join(columns), chosen_names=_CHOSEN_NAMES, row_filter=_row_filter(reference_data(), "m")
    )
    found = con.sql(sql, params=parameters).to_arrow_table().to_pylist()
    return {(row["client_ip"], row["domain"]): row for row in found}


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per client and registered domain whose names look like a tunnel or an exfiltration channel."""
    try:
        measured, names = _measure(con, every_domain=False)
        chosen = [item for item in measured if item.gated and item.score >= ALERT_SCORE]
        if names is not None:
            _evidence(con, names, chosen)
    finally:
        con.execute("DROP TABLE IF EXISTS d5_client_names")  # the working copy lives in the caller's connection
    alerts = [_alert(con, item.group, item.components, item.score, item.row) for item in chosen]
    return sorted(alerts, key=lambda alert: (-alert.score, alert.key["client_ip"], alert.key["domain"]))


def _alert(
    con: duckdb.DuckDBPyConnection, group: _Group, components: list[ScoreComponent], total: float, row: dict[str, Any]
) -> Alert:
    strongest = sorted(components, key=lambda component: -component.value * component.weight)[:3]
    reasons = " ".join(component.explanation for component in strongest if component.value > 0)
    packets = row["packets"] or []
    assert group.first_seen is not None and group.last_seen is not None  # a group with queries has both
    return Alert(
        detection=DETECTION,
        title=f"DNS tunnelling or exfiltration from {group.client_ip} through {group.domain}",
        key={"client_ip": group.client_ip, "domain": group.domain},
        severity="high" if total >= HIGH_SCORE else "medium",
        confidence=total,
        techniques=list(TECHNIQUES),
        first_seen=group.first_seen,
        last_seen=group.last_seen,
        count=group.queries,
        explanation=(
            f"{group.client_ip} sent {group.queries} queries for {group.distinct_names} distinct names under "
            f"{group.domain} shaped like encoded data (score {total:.2f} of 1, alert from {ALERT_SCORE}). "
            f"{reasons}"
        ),
        score=total,
        score_components=components,
        assets=[group.client_ip],
        zones=_zones(con, group.client_ip),
        evidence=Evidence(
            flow_ids=sorted(row["flows"] or [])[:EVIDENCE_FLOWS],
            community_ids=sorted(row["communities"] or [])[:EVIDENCE_FLOWS],
            events=[
                EventReference("dns", str(packet["capture_id"]), packet["packet_number"], packet["flow_id"])
                for packet in packets
            ],
            packet_numbers=[int(packet["packet_number"]) for packet in packets if packet["packet_number"] is not None],
            values={
                "domain": group.domain,
                "queries": group.queries,
                "responses": group.responses,
                "distinct_names": group.distinct_names,
                "subdomain_octets": group.subdomain_octets,
                "longest_label": group.longest_label,
                "entropy_bits_per_character": round(group.entropy, 3),
                "data_record_type_queries": group.tunnel_types,
                "nxdomain_responses": group.nxdomain,
                "encoded_character_names": group.encoded_names,
                "example_names": list(row["examples"] or []),
                "reference_data_version": reference_data().version,
            },
        ),
    )

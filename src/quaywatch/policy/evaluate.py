"""Evaluate the site policy against the stored traffic: the zone of every address, the verdict of every flow.

Zones are decided once per distinct address in Python (a few thousand addresses, not millions of flows), written as
``host_zones``, and every flow is then judged in one DuckDB query that joins flows with their zones, the conduits,
the approved external destinations, the names the flow was looked up by (DNS answers, TLS SNI, HTTP Host) and the
remote-access paths. Both tables are replaced on every evaluation, so a rerun never duplicates. The rules, in the
order they apply, are in docs/policy.md ("Evaluation").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from quaywatch.assets.inventory import ASSETS_TABLE, build_inventory
from quaywatch.policy.model import EXTERNAL_ZONE, HostMatch, Network, Policy, Zone
from quaywatch.store.database import Store

HOST_ZONES_TABLE = "host_zones"
FLOW_POLICY_TABLE = "flow_policy"

#: Zone of private (non-global) addresses that no zone claims.
UNZONED = "unzoned"
#: Highest Purdue level that is OT: levels 0-3 are the manufacturing zone of the Purdue model (ISA-95 / IEC 62443-1-1);
#: 3.5 is the IT/OT DMZ and 4-5 are business IT.
OT_PURDUE_MAX = 3.0

VERDICTS = ("intra_zone", "allowed", "violation", "external_allowed", "external_unapproved", "no_policy")


def _doc(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable, {"doc": doc})


HOST_ZONES_SCHEMA = pa.schema(
    [
        _doc("ip", pa.string(), "an address seen in flows (client or server)", False),
        _doc("zone", pa.string(), "policy zone; 'external' (public, no zone) or 'unzoned' (private, no zone)", False),
        _doc("purdue", pa.float64(), "Purdue level of the zone (NULL: external, unzoned or not given)"),
        _doc("ot", pa.bool_(), "the zone is OT: purdue <= 3 (3.5, the DMZ, and above are not)", False),
        _doc("source", pa.string(), "what decided the zone: 'policy'", False),
        _doc("matched_by", pa.string(), "mac, oui, cidr, vlan, external or none", False),
        _doc("matched", pa.string(), "the zone member that matched: MAC, OUI prefix, CIDR or VLAN id"),
        _doc("asset_ids", pa.list_(pa.string()), "assets.asset_id of the devices that own the address"),
    ]
)

FLOW_POLICY_SCHEMA = pa.schema(
    [
        _doc("capture_id", pa.string(), "captures.capture_id", False),
        _doc("flow_id", pa.string(), "flows.flow_id", False),
        _doc("client_ip", pa.string(), "flows.client_ip (the initiator)"),
        _doc("server_ip", pa.string(), "flows.server_ip"),
        _doc("client_zone", pa.string(), "host_zones.zone of the client", False),
        _doc("server_zone", pa.string(), "host_zones.zone of the server", False),
        _doc("protocol", pa.string(), "decoder name (flows.application), else transport/port", False),
        _doc(
            "conduit",
            pa.string(),
            "the conduit, external destination or remote-access path that allows it (or the "
            "closest conduit that does not)",
        ),
        _doc(
            "verdict",
            pa.string(),
            "intra_zone, allowed, violation, external_allowed, external_unapproved or no_policy",
            False,
        ),
        _doc("reason", pa.string(), "why, in one sentence naming the conduit or why none matched", False),
        # The flow's own columns that detections group and show, so that they need no join back to flows.
        _doc("transport", pa.string(), "flows.transport"),
        _doc("server_port", pa.int32(), "flows.server_port"),
        _doc("ts", pa.timestamp("us", tz="UTC"), "flows.ts (first packet)"),
        _doc("last_ts", pa.timestamp("us", tz="UTC"), "flows.last_ts"),
        _doc("community_id", pa.string(), "flows.community_id"),
        _doc("first_packet", pa.int64(), "flows.first_packet"),
    ]
)


@dataclass
class EvaluationSummary:
    """Counts for the CLI and tests."""

    addresses: int = 0
    flows: int = 0
    zones: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ZoneMatch:
    """The zone of one address and what put it there."""

    zone: str
    purdue: float | None
    matched_by: str
    matched: str | None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _inside(address: ipaddress.IPv4Address | ipaddress.IPv6Address, network: Network) -> bool:
    return address.version == network.version and address in network


def zone_of(policy: Policy, ip: str, macs: Iterable[str] = (), vlans: Iterable[int] = ()) -> ZoneMatch:
    """The zone of one address: full MAC, then OUI prefix, then the most specific CIDR, then VLAN; file order ties.

    MACs and VLANs are those of the devices that own the address (the inventory's router rule), so a remote address
    never inherits its router's MAC or the VLAN it was seen on.
    """
    macs = [mac.lower() for mac in macs if mac]
    vlans = list(vlans)

    def found(zone: Zone, how: str, what: str) -> ZoneMatch:
        return ZoneMatch(zone.name, zone.purdue, how, what)

    for full in (True, False):
        for zone in policy.zones:
            for pattern in zone.macs:
                if (len(pattern) == 17) == full and any(mac.startswith(pattern) for mac in macs):
                    return found(zone, "mac" if full else "oui", pattern)
    address = _address(ip)
    if address is not None:
        best: tuple[int, Zone, Network] | None = None
        for zone in policy.zones:
            for network in zone.cidrs:
                if _inside(address, network) and (best is None or network.prefixlen > best[0]):
                    best = (network.prefixlen, zone, network)
        if best is not None:
            return found(best[1], "cidr", str(best[2]))
    for zone in policy.zones:
        for vlan in zone.vlans:
            if vlan in vlans:
                return found(zone, "vlan", str(vlan))
    if address is not None and address.is_global:
        return ZoneMatch(EXTERNAL_ZONE, None, "external", None)
    return ZoneMatch(UNZONED, None, "none", None)


def _hosts_contain(hosts: HostMatch, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str | None:
    """The network of ``hosts`` that holds the address, as text."""
    if address is None:
        return None
    return next((str(network) for network in hosts.networks if _inside(address, network)), None)


def _replace(store: Store, name: str, schema: pa.Schema, select: str) -> None:
    """Drop, recreate and fill from a query, in one transaction: readers see the old rows or the new ones."""
    con = store.connection
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f'DROP TABLE IF EXISTS "{name}"')
        store.ensure_table(name, schema)
        con.execute(f'INSERT INTO "{name}" BY NAME {select}')
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _register(store: Store, name: str, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> None:
    store.connection.execute(f"DROP TABLE IF EXISTS {name}")
    rows_table = pa.Table.from_pylist(list(rows), schema=schema)  # noqa: F841  (DuckDB replacement scan)
    store.connection.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM rows_table")


def evaluate_policy(store: Store, policy: Policy) -> EvaluationSummary:
    """Replace ``host_zones`` and ``flow_policy`` from the stored flows; builds the asset inventory if missing."""
    store.flush()
    tables = set(store.tables())
    summary = EvaluationSummary()
    if "flows" not in tables:
        return summary
    if ASSETS_TABLE not in tables:
        build_inventory(store)
    con = store.connection
    owners: dict[str, tuple[list[str], list[int], list[str]]] = {}
    for ip, asset_id, mac, vlans in con.execute(
        f"SELECT ip, asset_id, mac, vlans FROM {ASSETS_TABLE}, unnest(ips) AS u(ip) ORDER BY asset_id"
    ).fetchall():
        macs, vlan_list, ids = owners.setdefault(ip, ([], [], []))
        if mac:
            macs.append(mac)
        vlan_list += list(vlans or [])
        ids.append(asset_id)
    addresses = [
        row[0]
        for row in con.execute("SELECT client_ip FROM flows UNION SELECT server_ip FROM flows ORDER BY 1").fetchall()
        if row[0] is not None
    ]
    zone_rows, cidr_rows, remote_rows = [], [], []
    for ip in addresses:
        macs, vlans, ids = owners.get(ip, ([], [], []))
        match = zone_of(policy, ip, macs, vlans)
        zone_rows.append(
            {
                "ip": ip,
                "zone": match.zone,
                "purdue": match.purdue,
                "ot": match.purdue is not None and match.purdue <= OT_PURDUE_MAX,
                "source": "policy",
                "matched_by": match.matched_by,
                "matched": match.matched,
                "asset_ids": ids,
            }
        )
        address = _address(ip)
        if address is None:
            continue
        for position, destination in enumerate(policy.external_destinations):
            cidr = next((str(n) for n in destination.cidrs if _inside(address, n)), None)
            if cidr is not None:
                cidr_rows.append({"ip": ip, "position": position, "cidr": cidr})
        for position, path in enumerate(policy.remote_access):
            source = _hosts_contain(path.source, address)
            if source is not None:
                remote_rows.append({"ip": ip, "position": position, "side": "source", "network": source})
            target = _hosts_contain(path.destinations, address)
            if target is not None:
                remote_rows.append({"ip": ip, "position": position, "side": "destination", "network": target})
    _register(store, "_zones", zone_rows, HOST_ZONES_SCHEMA)
    _replace(store, HOST_ZONES_TABLE, HOST_ZONES_SCHEMA, "SELECT * FROM _zones")
    _register(store, "_ext_cidr", cidr_rows, pa.schema([("ip", pa.string()), ("position", pa.int64()),
                                                          ("cidr", pa.string())]))  # fmt: skip
    _register(store, "_remote_hosts", remote_rows, pa.schema([("ip", pa.string()), ("position", pa.int64()),
              ("side", pa.string()), ("network", pa.string())]))  # fmt: skip
    _register_policy(store, policy)
    _register_names(store, tables)
    inter_zone = "alert" if policy.default_inter_zone == "alert" else "deny"  # validated: never free text in SQL
    _replace(store, FLOW_POLICY_TABLE, FLOW_POLICY_SCHEMA, _VERDICT_SQL.replace("{inter_zone}", inter_zone))
    for name in ("_zones", "_ext_cidr", "_remote_hosts", "_conduits", "_conduit_ports", "_destinations",
                 "_destination_domains", "_remote_paths", "_flow_names"):  # fmt: skip
        con.execute(f"DROP TABLE IF EXISTS {name}")
    summary.addresses = len(zone_rows)
    for row in zone_rows:
        summary.zones[row["zone"]] = summary.zones.get(row["zone"], 0) + 1
    summary.verdicts = dict(
        con.execute(f"SELECT verdict, count(*) FROM {FLOW_POLICY_TABLE} GROUP BY 1 ORDER BY 1").fetchall()
    )
    summary.flows = sum(summary.verdicts.values())
    return summary


def _register_policy(store: Store, policy: Policy) -> None:
    """Conduits, their port ranges, destinations, their domains and remote-access paths as temporary tables."""
    conduits, ports = [], []
    for position, conduit in enumerate(policy.conduits):
        protocol = conduit.protocol.lower()
        transport, _, port_text = protocol.partition("/")
        if port_text:
            kind = "transport_port"
        elif protocol in ("tcp", "udp", "sctp", "icmp", "icmpv6"):
            kind, transport = "transport", "icmp6" if protocol == "icmpv6" else protocol
        else:
            kind, transport = "decoder", ""
        conduits.append(
            {"position": position, "name": conduit.name, "from_zone": conduit.from_zone, "to_zone": conduit.to_zone,
             "kind": kind, "protocol": protocol, "transport": transport,
             "port": int(port_text) if port_text.isdigit() else None, "has_ports": bool(conduit.ports),
             "direction": conduit.direction, "initiator": conduit.initiator}
        )  # fmt: skip
        ports += [{"position": position, "low": low, "high": high} for low, high in conduit.ports]
    _register(store, "_conduits", conduits, pa.schema([
        ("position", pa.int64()), ("name", pa.string()), ("from_zone", pa.string()), ("to_zone", pa.string()),
        ("kind", pa.string()), ("protocol", pa.string()), ("transport", pa.string()), ("port", pa.int64()),
        ("has_ports", pa.bool_()), ("direction", pa.string()), ("initiator", pa.string()),
    ]))  # fmt: skip
    _register(store, "_conduit_ports", ports,
              pa.schema([("position", pa.int64()), ("low", pa.int64()), ("high", pa.int64())]))  # fmt: skip
    destinations, domains = [], []
    for position, destination in enumerate(policy.external_destinations):
        destinations.append({"position": position, "name": destination.name, "zones": list(destination.zones)})
        for domain in destination.domains:
            wildcard = domain.startswith("*.")
            domains.append({"position": position, "domain": domain, "wildcard": wildcard,
                            "suffix": domain[1:] if wildcard else domain})  # fmt: skip
    _register(
        store,
        "_destinations",
        destinations,
        pa.schema([("position", pa.int64()), ("name", pa.string()), ("zones", pa.list_(pa.string()))]),
    )
    _register(store, "_destination_domains", domains, pa.schema([
        ("position", pa.int64()), ("domain", pa.string()), ("wildcard", pa.bool_()), ("suffix", pa.string()),
    ]))  # fmt: skip
    paths = [
        {"position": position, "name": path.name, "method": path.method, "zones": list(path.zones),
         "has_destinations": bool(path.destinations.networks or path.destinations.macs)}
        for position, path in enumerate(policy.remote_access)
    ]  # fmt: skip
    _register(store, "_remote_paths", paths, pa.schema([
        ("position", pa.int64()), ("name", pa.string()), ("method", pa.string()), ("zones", pa.list_(pa.string())),
        ("has_destinations", pa.bool_()),
    ]))  # fmt: skip


def _register_names(store: Store, tables: set[str]) -> None:
    """The names each flow's server was reached by: DNS answers to the same client before the flow, SNI, Host."""
    parts = []
    if "dns" in tables:
        parts.append("""
            WITH a AS (
                SELECT client_ip, ts, unnest(answer_data) AS address, unnest(answer_types) AS type,
                    unnest(answer_names) AS owner, query_name
                FROM dns WHERE is_response AND answer_data IS NOT NULL
            ),
            hits AS (
                SELECT f.capture_id, f.flow_id, a.query_name, a.owner FROM a
                JOIN flows f ON f.client_ip = a.client_ip AND f.server_ip = a.address AND a.ts <= f.last_ts
                WHERE a.type IN (1, 28)
            )
            SELECT capture_id, flow_id, lower(rtrim(query_name, '.')) AS name, 'a DNS answer' AS how
            FROM hits WHERE query_name IS NOT NULL
            UNION SELECT capture_id, flow_id, lower(rtrim(owner, '.')), 'a DNS answer' FROM hits WHERE owner IS NOT NULL
        """)
    if "tls" in tables:
        parts.append("""
            SELECT capture_id, flow_id, lower(rtrim(server_name, '.')), 'the TLS server name'
            FROM tls WHERE server_name IS NOT NULL AND flow_id IS NOT NULL
        """)
    if "http" in tables:
        parts.append("""
            SELECT capture_id, flow_id, lower(rtrim(regexp_replace(host, ':[0-9]+$', ''), '.')), 'the HTTP Host'
            FROM http WHERE host IS NOT NULL AND flow_id IS NOT NULL
        """)
    union = " UNION ".join(parts) if parts else (
        "SELECT NULL::VARCHAR AS capture_id, NULL::VARCHAR AS flow_id, NULL::VARCHAR AS name, NULL::VARCHAR AS how "
        "WHERE FALSE"
    )  # fmt: skip
    store.connection.execute("DROP TABLE IF EXISTS _flow_names")
    store.connection.execute(f"CREATE TEMP TABLE _flow_names AS {union}")


_VERDICT_SQL = """
WITH fp AS (
    SELECT f.capture_id, f.flow_id, f.client_ip, f.server_ip, f.transport, f.server_port, f.application,
        f.ts, f.last_ts, f.community_id, f.first_packet,
        f.payload_bytes_to_server AS up, f.payload_bytes_to_client AS down,
        c.zone AS client_zone, s.zone AS server_zone,
        coalesce(f.application, f.transport || '/' || f.server_port) AS protocol
    FROM flows f JOIN _zones c ON c.ip = f.client_ip JOIN _zones s ON s.ip = f.server_ip
),
candidates AS (
    SELECT fp.capture_id, fp.flow_id, k.position, k.name, k.initiator, k.direction, k.protocol AS conduit_protocol,
        k.from_zone = fp.client_zone AND k.to_zone = fp.server_zone AS forward,
        CASE k.kind
            WHEN 'transport' THEN fp.transport = k.transport
            WHEN 'transport_port' THEN fp.transport = k.transport AND fp.server_port = k.port
            ELSE fp.application = k.protocol OR (k.protocol = 'enip' AND fp.application = 'enip_udp')
                OR (fp.application IS NULL AND fp.up = 0 AND fp.down = 0)
        END AS protocol_ok,
        NOT k.has_ports OR EXISTS (
            SELECT 1 FROM _conduit_ports p WHERE p.position = k.position AND fp.server_port BETWEEN p.low AND p.high
        ) AS ports_ok
    FROM fp JOIN _conduits k
        ON (k.from_zone = fp.client_zone AND k.to_zone = fp.server_zone)
        OR (k.from_zone = fp.server_zone AND k.to_zone = fp.client_zone)
),
judged AS (
    SELECT c.*,
        CASE WHEN forward THEN initiator IN ('from', 'either') ELSE initiator IN ('to', 'either') END AS initiator_ok,
        direction = 'both' OR (CASE WHEN forward THEN fp.down ELSE fp.up END) = 0 AS direction_ok,
        CASE WHEN forward THEN fp.down ELSE fp.up END AS backflow
    FROM candidates c JOIN fp USING (capture_id, flow_id)
),
best_conduit AS (
    SELECT *, protocol_ok AND ports_ok AND initiator_ok AND direction_ok AS full FROM judged
    QUALIFY row_number() OVER (
        PARTITION BY capture_id, flow_id
        ORDER BY protocol_ok AND ports_ok AND initiator_ok AND direction_ok DESC,
            protocol_ok AND ports_ok AND initiator_ok DESC, protocol_ok AND ports_ok DESC, protocol_ok DESC, position
    ) = 1
),
destination_hits AS (
    SELECT fp.capture_id, fp.flow_id, d.position, d.name, 'its address is in ' || x.cidr AS how
    FROM fp JOIN _ext_cidr x ON x.ip = fp.server_ip JOIN _destinations d ON d.position = x.position
    WHERE len(d.zones) = 0 OR list_contains(d.zones, fp.client_zone)
    UNION ALL
    SELECT fp.capture_id, fp.flow_id, d.position, d.name,
        'it was reached as ' || n.name || ' (' || n.how || ', approved as ' || m.domain || ')'
    FROM fp JOIN _flow_names n USING (capture_id, flow_id)
        JOIN _destination_domains m
            ON (m.wildcard AND ends_with(n.name, m.suffix)) OR (NOT m.wildcard AND n.name = m.domain)
        JOIN _destinations d ON d.position = m.position
    WHERE len(d.zones) = 0 OR list_contains(d.zones, fp.client_zone)
),
best_destination AS (
    SELECT * FROM destination_hits
    QUALIFY row_number() OVER (PARTITION BY capture_id, flow_id ORDER BY position, how) = 1
),
remote_hits AS (
    SELECT fp.capture_id, fp.flow_id, r.position, r.name, r.method
    FROM fp JOIN _remote_hosts src ON src.ip = fp.client_ip AND src.side = 'source'
        JOIN _remote_paths r ON r.position = src.position
    WHERE (fp.application = r.method OR starts_with(fp.application, r.method || '_')
            OR (fp.application = 'gtp' AND starts_with(r.method, 'gtp')))
        AND (list_contains(r.zones, fp.server_zone) OR EXISTS (
            SELECT 1 FROM _remote_hosts t
            WHERE t.ip = fp.server_ip AND t.side = 'destination' AND t.position = r.position
        ))
    QUALIFY row_number() OVER (PARTITION BY fp.capture_id, fp.flow_id ORDER BY r.position) = 1
),
names AS (
    SELECT capture_id, flow_id, min(name) AS name FROM _flow_names GROUP BY ALL
)
SELECT fp.capture_id, fp.flow_id, fp.client_ip, fp.server_ip, fp.client_zone, fp.server_zone, fp.protocol,
    fp.transport, fp.server_port, fp.ts, fp.last_ts, fp.community_id, fp.first_packet,
    CASE
        WHEN fp.client_zone = 'external' AND fp.server_zone = 'external' THEN NULL
        WHEN fp.server_zone = 'external' THEN d.name
        WHEN fp.client_zone = 'external' THEN CASE WHEN b.full THEN b.name ELSE coalesce(r.name, b.name) END
        WHEN fp.client_zone = 'unzoned' OR fp.server_zone = 'unzoned' OR fp.client_zone = fp.server_zone THEN NULL
        ELSE b.name
    END AS conduit,
    CASE
        WHEN fp.client_zone = 'external' AND fp.server_zone = 'external' THEN 'no_policy'
        WHEN fp.server_zone = 'external' THEN CASE WHEN d.name IS NOT NULL THEN 'external_allowed'
            ELSE 'external_unapproved' END
        WHEN fp.client_zone = 'external' THEN CASE WHEN b.full OR r.name IS NOT NULL THEN 'external_allowed'
            ELSE 'external_unapproved' END
        WHEN fp.client_zone = 'unzoned' OR fp.server_zone = 'unzoned' THEN 'no_policy'
        WHEN fp.client_zone = fp.server_zone THEN 'intra_zone'
        WHEN b.full THEN 'allowed'
        ELSE 'violation'
    END AS verdict,
    CASE
        WHEN fp.client_zone = 'external' AND fp.server_zone = 'external' THEN
            'Both ' || fp.client_ip || ' and ' || fp.server_ip
            || ' are outside every zone: the policy does not cover this flow.'
        WHEN fp.server_zone = 'external' AND d.name IS NOT NULL THEN
            'External destination ' || fp.server_ip || ' is approved by ''' || d.name || ''': ' || d.how || '.'
        WHEN fp.server_zone = 'external' THEN
            fp.client_ip || ' (zone ' || fp.client_zone || ') reached ' || fp.server_ip
            || coalesce(' (' || n.name || ')', '') || ' over ' || fp.protocol
            || ', which no external destination approves for zone ' || fp.client_zone || '.'
        WHEN fp.client_zone = 'external' AND b.full THEN
            'Conduit ''' || b.name || ''' allows ' || fp.protocol || ' from external into zone '
            || fp.server_zone || '.'
        WHEN fp.client_zone = 'external' AND r.name IS NOT NULL THEN
            'Remote-access path ''' || r.name || ''' approves ' || r.method || ' from ' || fp.client_ip
            || ' into zone ' || fp.server_zone || ' (its time windows are checked by the remote-access detection).'
        WHEN fp.client_zone = 'external' THEN
            'Inbound ' || fp.protocol || ' from external ' || fp.client_ip || ' to ' || fp.server_ip || ' (zone '
            || fp.server_zone || ') matches no conduit from external and no remote-access path.'
        WHEN fp.client_zone = 'unzoned' OR fp.server_zone = 'unzoned' THEN
            CASE WHEN fp.client_zone = 'unzoned' THEN fp.client_ip ELSE fp.server_ip END
            || ' is a private address in no zone of the policy, so no conduit can apply.'
        WHEN fp.client_zone = fp.server_zone THEN 'Both ends are in zone ' || fp.client_zone || ': intra-zone traffic.'
        WHEN b.full THEN 'Conduit ''' || b.name || ''' allows ' || fp.protocol || ' from ' || fp.client_zone
            || ' to ' || fp.server_zone || '.'
        WHEN b.name IS NULL THEN 'No conduit joins zone ' || fp.client_zone || ' and zone ' || fp.server_zone
            || ' (defaults.inter_zone: {inter_zone}).'
        WHEN NOT b.protocol_ok THEN 'Conduit ''' || b.name || ''' allows ' || b.conduit_protocol || ', not '
            || fp.protocol || '.'
        WHEN NOT b.ports_ok THEN 'Conduit ''' || b.name || ''' does not allow server port ' || fp.server_port || '.'
        WHEN NOT b.initiator_ok THEN 'Initiator reversed: conduit ''' || b.name || ''' lets only zone '
            || CASE WHEN b.initiator = 'from' THEN CASE WHEN b.forward THEN fp.client_zone ELSE fp.server_zone END
                ELSE CASE WHEN b.forward THEN fp.server_zone ELSE fp.client_zone END END
            || ' open connections, but ' || fp.client_ip || ' in zone ' || fp.client_zone || ' opened this one.'
        ELSE 'One-way conduit ''' || b.name || ''' carried ' || b.backflow || ' payload bytes against its direction.'
    END AS reason
FROM fp LEFT JOIN best_conduit b USING (capture_id, flow_id) LEFT JOIN best_destination d USING (capture_id, flow_id)
    LEFT JOIN remote_hits r USING (capture_id, flow_id) LEFT JOIN names n USING (capture_id, flow_id)
ORDER BY fp.capture_id, fp.flow_id
"""

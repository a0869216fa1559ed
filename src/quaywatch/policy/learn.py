"""Propose a site policy from observed traffic, for a person to review before it is enforced.

What was seen is not what should be allowed, so the output says so in its header, and every string taken from
packets is written as a double-quoted, escaped YAML scalar: a hostile host name cannot add keys to the policy.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import duckdb
import yaml

from quaywatch.policy.load import _decoder_names
from quaywatch.policy.model import EXTERNAL_ZONE, REMOTE_METHODS

_COMMENT_SAFE = re.compile(r"[^A-Za-z0-9 _.,:/()+-]")
S7_OPS = {0x05: "write", 0x1A: "download", 0x1B: "download", 0x1C: "download", 0x28: "control", 0x29: "stop"}


def quote(text: str) -> str:
    """A YAML double-quoted scalar for any string: escapes quotes, controls, line breaks and non-ASCII."""
    dumped = yaml.dump(text, Dumper=yaml.SafeDumper, default_style='"', allow_unicode=False, width=1 << 30)
    return dumped.removesuffix("\n...\n").rstrip("\n")


def _comment(text: str) -> str:
    return _COMMENT_SAFE.sub("?", text)[:200]


@dataclass
class _Zone:
    name: str
    vlan: int | None = None
    cidrs: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not ip.is_global and not ip.is_multicast and not ip.is_unspecified


def _subnet(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


def learn_policy(con: duckdb.DuckDBPyConnection, today: dt.date | None = None) -> str:
    """The proposed policy as YAML text, valid against :func:`quaywatch.policy.load.load_policy_text`."""
    today = today or dt.date.today()
    tables = _tables(con)
    decoders = _decoder_names()
    flows = con.execute(
        """SELECT client_ip, server_ip, vlan, transport, server_port, application, count(*)
           FROM flows GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    total = sum(int(row[6]) for row in flows)
    # zones: a VLAN is a zone; untagged local addresses are grouped by /24 (IPv6: /64)
    zones: dict[str, _Zone] = {}
    zone_of: dict[str, str] = {}
    subnet_owner: dict[str, str] = {}
    for client, server, vlan, *_ in flows:
        for address in (client, server):
            if address is None or address in zone_of:
                continue
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            if not _local(ip):
                continue
            subnet = _subnet(ip)
            if vlan is not None:
                key = f"zone-{vlan}"
            elif subnet in subnet_owner:
                key = subnet_owner[subnet]
            else:
                key = "zone-" + subnet.replace("/", "-").replace(":", "-").replace("--", "-").strip("-")
            zone = zones.setdefault(key, _Zone(key, vlan))
            if subnet not in subnet_owner:
                subnet_owner[subnet] = key
                zone.cidrs.add(subnet)
            zone.hosts.add(address)
            zone_of[address] = key
    roles = _roles(con, tables)

    def zone_for(address: str | None) -> str:
        return zone_of.get(address or "", EXTERNAL_ZONE)

    # conduits: (client zone, server zone, protocol)
    conduits: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    externals: dict[str, int] = defaultdict(int)
    for client, server, _vlan, transport, port, application, count in flows:
        protocol = application if application in decoders else (transport or "tcp")
        if protocol == application or transport not in ("tcp", "udp", "sctp") or port is None:
            ports: set[int] = set() if port is None or transport not in ("tcp", "udp", "sctp") else {int(port)}
        else:
            ports = {int(port)}
        conduits[(zone_for(client), zone_for(server), protocol)].update(ports)
        if zone_for(server) == EXTERNAL_ZONE and server:
            externals[server] += int(count)
    functions = _functions(con, tables, zone_for)
    engineering = _engineering(con, tables)
    remote = _remote(con, tables, zone_for)

    out: list[str] = [
        f"# proposed by quaywatch policy learn on {today.isoformat()} from {total} flows: review before use",
        "# Observed traffic is not approved traffic: remove what should not happen, tighten the rest.",
        "version: 1",
        "site: " + quote("learned"),
        "timezone: UTC",
        "zones:",
    ]
    for zone in sorted(zones.values(), key=lambda z: z.name):
        seen_roles = sorted({roles[h] for h in zone.hosts if h in roles})
        if seen_roles:
            out.append(f"  # roles seen: {_comment(', '.join(seen_roles))}")
        out.append(f"  - name: {quote(zone.name)}")
        out.append(f"    description: {quote(f'{len(zone.hosts)} hosts observed')}")
        if zone.cidrs:
            out.append(f"    cidrs: [{', '.join(quote(c) for c in sorted(zone.cidrs))}]")
        if zone.vlan is not None:
            out.append(f"    vlans: [{int(zone.vlan)}]")
    names: set[str] = set()
    conduit_lines: list[str] = []
    for (source, target, protocol), ports in sorted(conduits.items()):
        base = f"{source}-to-{target}-{protocol}"[:90]
        name, suffix = base, 2
        while name in names:
            name, suffix = f"{base}-{suffix}", suffix + 1
        names.add(name)
        conduit_lines += [
            f"  - name: {quote(name)}",
            f"    from: {quote(source)}",
            f"    to: {quote(target)}",
            f"    protocol: {quote(protocol)}",
        ]
        if ports:
            conduit_lines.append(f"    ports: [{', '.join(str(p) for p in sorted(ports)[:50])}]")
        conduit_lines.append("    initiator: from")
        observed = functions.get((source, target, protocol))
        if observed:
            family, key, codes = observed
            conduit_lines += [
                "    allow:",
                f"      {family}:",
                f"        {key}: [{', '.join(map(str, sorted(codes)))}]",
            ]
    if conduit_lines:
        out += ["conduits:", *conduit_lines]
    if engineering:
        out.append("engineering_hosts:")
        for index, (host, (targets, operations)) in enumerate(sorted(engineering.items())):
            out += [
                f"  - name: {quote(f'engineering-{index + 1}')}",
                f"    hosts: [{quote(host)}]",
                f"    targets: [{', '.join(quote(t) for t in sorted(targets))}]",
                f"    operations: [{', '.join(sorted(operations))}]",
            ]
    if remote:
        out.append("remote_access:")
        for index, (method, source, destination, target_zone) in enumerate(sorted(remote)):
            out += [
                f"  - name: {quote(f'remote-{index + 1}-{method}')}",
                f"    method: {quote(method)}",
                f"    source: [{quote(source)}]",
                f"    destinations: [{quote(destination)}]",
                f"    reason: {quote(f'observed {method} into zone {target_zone}: add windows and an expiry')}",
            ]
    if externals:
        out.append("external_destinations:")
        for index, (address, count) in enumerate(sorted(externals.items())):
            out += [
                f"  - name: {quote(f'external-{index + 1}')}",
                f"    reason: {quote(f'observed: {count} flows to {address}')}",
                f"    cidrs: [{quote(address)}]",
            ]
    return "\n".join(out) + "\n"


def _roles(con: duckdb.DuckDBPyConnection, tables: set[str]) -> dict[str, str]:
    if "assets" not in tables:
        return {}
    try:
        rows = con.execute("SELECT unnest(ips), role FROM assets WHERE role IS NOT NULL").fetchall()
    except duckdb.Error:
        return {}
    return {str(ip): str(role) for ip, role in rows}


def _functions(
    con: duckdb.DuckDBPyConnection, tables: set[str], zone_for: Any
) -> dict[tuple[str, str, str], tuple[str, str, set[int]]]:
    queries = {
        "modbus": ("modbus", "functions", "SELECT DISTINCT client_ip, server_ip, function_code FROM modbus"
                   " WHERE direction = 'to_server' AND function_code BETWEEN 1 AND 127"),
        "s7comm": ("s7comm", "functions", "SELECT DISTINCT client_ip, server_ip, function_code FROM s7comm"
                   " WHERE direction = 'to_server' AND function_code IS NOT NULL"),
        "cip": ("enip", "services", "SELECT DISTINCT client_ip, server_ip, service_code FROM cip"
                " WHERE direction = 'to_server' AND service_code BETWEEN 0 AND 127"),
        "dnp3": ("dnp3", "functions", "SELECT DISTINCT client_ip, server_ip, function_code FROM dnp3"
                 " WHERE direction = 'to_server' AND function_code IS NOT NULL"),
    }  # fmt: skip
    from quaywatch.decode.dnp3.constants import FUNCTIONS as DNP3_FUNCTIONS
    from quaywatch.decode.s7comm.constants import FUNCTIONS as S7_FUNCTIONS

    known = {"s7comm": S7_FUNCTIONS, "dnp3": DNP3_FUNCTIONS}
    out: dict[tuple[str, str, str], tuple[str, str, set[int]]] = {}
    for table, (family, key, sql) in queries.items():
        if table not in tables:
            continue
        for client, server, code in con.execute(sql).fetchall():
            if family in known and int(code) not in known[family]:
                continue
            protocol = family
            entry = out.setdefault((zone_for(client), zone_for(server), protocol), (family, key, set()))
            entry[2].add(int(code))
    # ENIP conduits are named after the decoder of the flow; CIP rides on enip or enip_udp
    for (source, target, protocol), value in list(out.items()):
        if protocol == "enip":
            out[(source, target, "enip_udp")] = value
    return out


def _engineering(con: duckdb.DuckDBPyConnection, tables: set[str]) -> dict[str, tuple[set[str], set[str]]]:
    queries = []
    if "modbus" in tables:
        queries.append("SELECT client_ip, server_ip, 'write' FROM modbus WHERE writes AND direction = 'to_server'")
    if "s7comm" in tables:
        cases = " ".join(f"WHEN {code} THEN '{op}'" for code, op in S7_OPS.items())
        queries.append(
            f"SELECT client_ip, server_ip, CASE function_code {cases} ELSE 'control' END FROM s7comm WHERE controls_plc"
        )
    if "cip" in tables:
        queries.append(
            "SELECT client_ip, server_ip, CASE WHEN service ILIKE '%set%' OR service ILIKE '%write%' THEN 'write'"
            " ELSE 'control' END FROM cip WHERE controls_device AND direction = 'to_server'"
        )
    if "dnp3" in tables:
        queries.append(
            "SELECT client_ip, server_ip, CASE function_code WHEN 2 THEN 'write' ELSE 'control' END FROM dnp3"
            " WHERE controls_device AND direction = 'to_server'"
        )
    out: dict[str, tuple[set[str], set[str]]] = {}
    for sql in queries:
        for client, server, operation in con.execute(sql).fetchall():
            if not _is_ip(client) or not _is_ip(server):
                continue
            targets, operations = out.setdefault(str(client), (set(), set()))
            targets.add(str(server))
            operations.add(str(operation))
    return out


def _remote(con: duckdb.DuckDBPyConnection, tables: set[str], zone_for: Any) -> set[tuple[str, str, str, str]]:
    if "remote_access" not in tables:
        return set()
    rows = con.execute("SELECT DISTINCT method, client_ip, server_ip FROM remote_access").fetchall()
    return {
        (str(method), str(client), str(server), zone_for(server))
        for method, client, server in rows
        if method in REMOTE_METHODS and _is_ip(client) and _is_ip(server)
    }


def _is_ip(text: object) -> bool:
    try:
        ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return True

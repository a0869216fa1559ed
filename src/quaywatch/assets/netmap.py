"""The network map: zones, assets and the conduits observed between them, as a self-contained SVG or HTML file.

The map the USCG cyber rule (33 CFR 101.650) asks operators to keep. The model is built from the ``assets`` and
``flows`` tables and, when given, the site policy; the layout is a deterministic grid computed here, so the same store
renders byte-identical files. The output loads nothing (no script, font, image or stylesheet from anywhere) and every
packet-derived string is escaped, since host names and vendor strings are attacker-controlled.
"""

from __future__ import annotations

import datetime as dt
import html
import ipaddress
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quaywatch.assets.inventory import DEFAULT_LOCAL_NETWORKS
from quaywatch.policy.model import EXTERNAL_ZONE, Conduit, Network, Policy

UNZONED = "unzoned"
TRANSPORTS = frozenset({"tcp", "udp", "sctp", "icmp", "icmp6", "icmpv6"})

#: Conduit status when a policy is given.
ALLOWED = "allowed"
NOT_IN_POLICY = "not in policy"
INTRA_ZONE = "intra-zone"

# Characters that XML 1.0 forbids or that reorder/hide text: shown as visible escapes.
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufffe\uffff]")

# Layout, in SVG user units.
NODE_W, NODE_H, NODE_GAP = 170, 58, 12
NODES_PER_ROW = 3
ZONE_PAD, ZONE_HEADER, ZONE_GAP = 14, 30, 70
MARGIN = 30

_LOCAL = tuple(ipaddress.ip_network(cidr) for cidr in DEFAULT_LOCAL_NETWORKS)


@dataclass(frozen=True, slots=True)
class MapNode:
    """One asset, or one external /24, as drawn inside its zone."""

    node_id: str
    zone: str
    role: str
    vendor: str
    address: str
    hostname: str = ""
    model: str = ""
    listed: tuple[str, ...] = ()
    external: bool = False


@dataclass(frozen=True, slots=True)
class MapZone:
    """A zone box: from the policy, proposed from a VLAN or subnet, ``unzoned`` or ``external``."""

    name: str
    kind: str  # policy, proposed, unzoned, external
    description: str = ""
    nodes: tuple[MapNode, ...] = ()


@dataclass(slots=True)
class MapConduit:
    """Observed flows aggregated by client zone, server zone and protocol (or by client and server node)."""

    from_zone: str
    to_zone: str
    protocol: str  # application (decoder) name, or transport/port when no decoder claimed the flows
    transport: str
    port: int
    flows: int = 0
    bytes: int = 0
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    status: str = ""  # allowed, not in policy, intra-zone; empty without a policy
    policy_conduit: str = ""  # name of the conduit or external destination that allows it
    client: str = ""  # node ids, for node-to-node links only
    server: str = ""

    def add(self, flows: int, size: int, first: dt.datetime | None, last: dt.datetime | None) -> None:
        """Fold one more group of flows in."""
        self.flows += flows
        self.bytes += size
        if first is not None and (self.first_seen is None or first < self.first_seen):
            self.first_seen = first
        if last is not None and (self.last_seen is None or last > self.last_seen):
            self.last_seen = last


@dataclass(slots=True)
class NetworkMap:
    """Everything the renderers draw; built by :func:`build_map`, pure data."""

    zones: list[MapZone] = field(default_factory=list)
    conduits: list[MapConduit] = field(default_factory=list)
    links: list[MapConduit] = field(default_factory=list)
    site: str = ""
    with_policy: bool = False
    skipped_flows: int = 0  # broadcast, multicast or unspecified destinations

    def zone_of(self, node_id: str) -> str | None:
        """The zone holding a node."""
        return next((zone.name for zone in self.zones for node in zone.nodes if node.node_id == node_id), None)


# ---------------------------------------------------------------------------------------------------------------- model


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _mac_matches(mac: str | None, patterns: Sequence[str]) -> bool:
    return bool(mac) and any(str(mac).lower().startswith(pattern.lower()) for pattern in patterns)


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Iterable[Network]) -> bool:
    return any(ip.version == network.version and ip in network for network in networks)


def policy_zone(policy: Policy, mac: str | None, ips: Sequence[str], vlans: Sequence[int]) -> str:
    """The first policy zone claiming the host: by MAC (or OUI), then by CIDR, then by VLAN; else ``unzoned``.

    MAC first because it is the most specific; file order breaks ties, as a reader of the policy expects.
    """
    addresses = [a for a in (_address(ip) for ip in ips) if a is not None]
    for test in (
        lambda zone: _mac_matches(mac, zone.macs),
        lambda zone: any(_in(address, zone.cidrs) for address in addresses),
        lambda zone: any(vlan in zone.vlans for vlan in vlans),
    ):
        for zone in policy.zones:
            if test(zone):
                return zone.name
    return UNZONED


def proposed_zone(ips: Sequence[str], vlans: Sequence[int]) -> str:
    """A zone proposed from what was seen: the lowest VLAN, else the IPv4 /24 (IPv6 /64) of the first address."""
    if vlans:
        return f"VLAN {min(vlans)}"
    for ip in sorted(ips):
        address = _address(ip)
        if address is not None:
            prefix = 24 if address.version == 4 else 64
            return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
    return UNZONED


def _external(address: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: Policy | None) -> bool:
    """Outside the site: in none of the inventory's local networks and in no zone of the policy."""
    if _in(address, _LOCAL) or address.is_loopback:
        return False
    return policy is None or not any(_in(address, zone.cidrs) for zone in policy.zones)


def _external_group(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def protocol_matches(conduit: Conduit, application: str, transport: str, port: int) -> bool:
    """Whether a policy conduit's protocol and ports cover flows of this application, transport and server port."""
    protocol = conduit.protocol.lower()
    if "/" in protocol:
        name, _, number = protocol.partition("/")
        if transport != name or str(port) != number:
            return False
    elif protocol in TRANSPORTS:
        if transport != protocol and {transport, protocol} != {"icmp6", "icmpv6"}:
            return False
    elif application != protocol and not (protocol == "enip" and application == "enip_udp"):
        return False
    return not conduit.ports or any(low <= port <= high for low, high in conduit.ports)


def conduit_status(
    policy: Policy, client_zone: str, server_zone: str, application: str, transport: str, port: int, server_ip: str = ""
) -> tuple[str, str]:
    """Status and allowing rule of flows from a client zone to a server zone (by zone pair and protocol)."""
    if client_zone == server_zone and client_zone not in (EXTERNAL_ZONE, UNZONED):
        return INTRA_ZONE, ""
    if server_zone == EXTERNAL_ZONE:
        address = _address(server_ip)
        for destination in policy.external_destinations:
            reachable = not destination.zones or client_zone in destination.zones
            if address is not None and reachable and _in(address, destination.cidrs):
                return ALLOWED, destination.name
    for conduit in policy.conduits:
        forward = conduit.from_zone == client_zone and conduit.to_zone == server_zone
        backward = conduit.from_zone == server_zone and conduit.to_zone == client_zone
        if not (
            (forward and conduit.initiator in ("from", "either"))
            or (backward and conduit.initiator in ("to", "either"))
        ):
            continue
        if protocol_matches(conduit, application, transport, port):
            return ALLOWED, conduit.name
    return NOT_IN_POLICY, ""


def _rows(connection: Any, sql: str) -> list[dict[str, Any]]:
    cursor = connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _tables(connection: Any) -> set[str]:
    return {row[0] for row in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def build_map(connection: Any, policy: Policy | None = None) -> NetworkMap:
    """The map model from the ``assets`` and ``flows`` tables, zoned by the policy or by proposed zones."""
    tables = _tables(connection)
    result = NetworkMap(site=policy.site if policy else "", with_policy=policy is not None)
    assets = (
        _rows(
            connection,
            "SELECT asset_id, mac, ips, vlans, role, vendor, device_vendor, maker, hostname, model, listed "
            "FROM assets ORDER BY asset_id",
        )
        if "assets" in tables
        else []
    )
    members: dict[str, list[MapNode]] = {}
    node_zone: dict[str, str] = {}
    ip_node: dict[str, str] = {}
    for asset in assets:
        ips, vlans = list(asset["ips"] or []), list(asset["vlans"] or [])
        zone = policy_zone(policy, asset["mac"], ips, vlans) if policy else proposed_zone(ips, vlans)
        node = MapNode(
            node_id=str(asset["asset_id"]),
            zone=zone,
            role=str(asset["role"] or "unknown"),
            vendor=str(asset["device_vendor"] or asset["maker"] or asset["vendor"] or ""),
            address=", ".join(sorted(ips)) or str(asset["mac"] or ""),
            hostname=str(asset["hostname"] or ""),
            model=str(asset["model"] or ""),
            listed=tuple(sorted(asset["listed"] or ())),
        )
        members.setdefault(zone, []).append(node)
        node_zone[node.node_id] = zone
        for ip in ips:
            ip_node.setdefault(ip, node.node_id)
    conduits: dict[tuple[str, str, str, str, int], MapConduit] = {}
    links: dict[tuple[str, str, str, str, int], MapConduit] = {}
    if "flows" in tables:
        groups = connection.execute(
            "SELECT client_ip, server_ip, coalesce(application, '') AS application, transport, server_port, "
            "count(*) AS flows, sum(bytes_to_server + bytes_to_client) AS bytes, min(ts) AS first, "
            "max(last_ts) AS last "
            "FROM flows GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        for client_ip, server_ip, application, transport, port, flows, size, first, last in groups:
            server_address = _address(server_ip)
            if (
                server_address is None
                or server_address.is_multicast
                or server_address.is_unspecified
                or (server_address.version == 4 and server_ip == "255.255.255.255")
            ):
                result.skipped_flows += int(flows)
                continue
            ends: list[tuple[str, str]] = []
            for ip in (client_ip, server_ip):
                address = _address(ip)
                if ip in ip_node:
                    ends.append((ip_node[ip], node_zone[ip_node[ip]]))
                elif address is not None and _external(address, policy):
                    group = _external_group(address)
                    ends.append((f"external:{group}", EXTERNAL_ZONE))
                else:  # a local address the inventory gave no asset (a router's routed-for address)
                    zone = policy_zone(policy, None, [ip], []) if policy else proposed_zone([ip], [])
                    ends.append(("", zone))
            (client, client_zone), (server, server_zone) = ends
            for end, zone in ends:
                if end.startswith("external:") and all(n.node_id != end for n in members.get(zone, [])):
                    group = end.removeprefix("external:")
                    members.setdefault(zone, []).append(MapNode(end, zone, "external", "", group, external=True))
                elif not end and zone not in members:
                    members[zone] = []
            protocol = application or f"{transport}/{port}"
            key = (client_zone, server_zone, protocol, transport, int(port))
            conduit = conduits.get(key)
            if conduit is None:
                conduit = conduits[key] = MapConduit(client_zone, server_zone, protocol, transport, int(port))
            if policy is not None and conduit.status != NOT_IN_POLICY:  # one unapproved destination marks it all
                status, rule = conduit_status(
                    policy, client_zone, server_zone, application, transport, int(port), server_ip
                )
                if status == NOT_IN_POLICY or not conduit.status:
                    conduit.status, conduit.policy_conduit = status, rule
                elif rule not in conduit.policy_conduit.split(", "):
                    conduit.policy_conduit += f", {rule}"
            conduit.add(int(flows), int(size or 0), first, last)
            if client and server:
                link_key = (client, server, protocol, transport, int(port))
                link = links.get(link_key)
                if link is None:
                    link = links[link_key] = MapConduit(
                        client_zone, server_zone, protocol, transport, int(port), client=client, server=server
                    )
                    link.status = conduit.status
                link.add(int(flows), int(size or 0), first, last)
    order: list[tuple[str, str, str]] = []  # (name, kind, description)
    if policy is not None:
        order += [(zone.name, "policy", zone.description) for zone in policy.zones]
    else:
        order += [
            (name, "proposed", "") for name in sorted(members, key=_zone_sort) if name not in (UNZONED, EXTERNAL_ZONE)
        ]
    for special in (UNZONED, EXTERNAL_ZONE):
        if special in members:
            order.append((special, special, ""))
    result.zones = [
        MapZone(name, kind, description, tuple(sorted(members.get(name, []), key=_node_sort)))
        for name, kind, description in order
    ]
    result.conduits = sorted(conduits.values(), key=_conduit_sort)
    result.links = sorted(links.values(), key=_conduit_sort)
    return result


def _zone_sort(name: str) -> tuple[int, str]:
    if name.startswith("VLAN "):
        return (0, f"{int(name[5:]):06d}")
    try:
        network = ipaddress.ip_network(name)
        return (network.version, f"{int(network.network_address):040d}")
    except ValueError:
        return (9, name)


def _node_sort(node: MapNode) -> tuple[int, str, str]:
    address = _address(node.address.split(",")[0].split("/")[0])
    return (node.external, f"{int(address):040d}" if address is not None else "~", node.node_id)


def _conduit_sort(conduit: MapConduit) -> tuple[str, str, str, str, int, str, str]:
    return (conduit.from_zone, conduit.to_zone, conduit.protocol, conduit.transport, conduit.port, conduit.client,
            conduit.server)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------ rendering


def text(value: object, limit: int | None = None) -> str:
    """Packet-derived text made inert for HTML, SVG and XML: controls as ``\\xNN``, then ``html.escape(quote=True)``."""
    visible = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))
    if limit is not None and len(visible) > limit:
        visible = visible[: limit - 1] + "…"
    return html.escape(visible, quote=True)


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class _Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def edge_point(self, dx: float, dy: float) -> tuple[float, float]:
        """Where a ray from the centre in direction (dx, dy) leaves the box."""
        cx, cy = self.centre
        scale = min(self.w / 2 / abs(dx) if dx else math.inf, self.h / 2 / abs(dy) if dy else math.inf)
        return (cx + dx * scale, cy + dy * scale)


def layout(network: NetworkMap) -> tuple[dict[str, _Box], dict[str, _Box], float, float]:
    """Zone boxes in a grid (about square), nodes in rows of three inside each; returns zones, nodes, width, height."""
    columns = max(1, math.ceil(math.sqrt(len(network.zones))))
    zone_w = ZONE_PAD * 2 + NODES_PER_ROW * NODE_W + (NODES_PER_ROW - 1) * NODE_GAP
    heights = [
        ZONE_HEADER + ZONE_PAD + max(1, math.ceil(len(z.nodes) / NODES_PER_ROW)) * (NODE_H + NODE_GAP)
        for z in network.zones
    ]
    zones: dict[str, _Box] = {}
    nodes: dict[str, _Box] = {}
    y = float(MARGIN + 40)
    for row_start in range(0, len(network.zones), columns):
        row_height = max(heights[row_start : row_start + columns])
        for column, zone in enumerate(network.zones[row_start : row_start + columns]):
            x = float(MARGIN + column * (zone_w + ZONE_GAP))
            zones[zone.name] = _Box(x, y, zone_w, row_height)
            for index, node in enumerate(zone.nodes):
                nx = x + ZONE_PAD + (index % NODES_PER_ROW) * (NODE_W + NODE_GAP)
                ny = y + ZONE_HEADER + (index // NODES_PER_ROW) * (NODE_H + NODE_GAP)
                nodes[node.node_id] = _Box(nx, ny, NODE_W, NODE_H)
        y += row_height + ZONE_GAP
    width = MARGIN * 2 + columns * zone_w + (columns - 1) * ZONE_GAP
    return zones, nodes, float(width), y - ZONE_GAP + MARGIN + 90


def _n(value: float) -> str:
    return f"{value:.1f}"


def _arrow(x: float, y: float, dx: float, dy: float, colour: str) -> str:
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    back_x, back_y = x - ux * 10, y - uy * 10
    points = [(x, y), (back_x - uy * 4, back_y + ux * 4), (back_x + uy * 4, back_y - ux * 4)]
    return f'<polygon points="{" ".join(f"{_n(px)},{_n(py)}" for px, py in points)}" fill="{colour}"/>'


def _edge_colour(statuses: set[str]) -> tuple[str, str]:
    if NOT_IN_POLICY in statuses:
        return "#c62828", ' stroke-dasharray="6 4"'
    if ALLOWED in statuses:
        return "#2e7d32", ""
    return "#455a64", ""


def _conduit_title(conduits: Sequence[MapConduit]) -> str:
    lines = [
        f"{c.from_zone} → {c.to_zone}: {c.protocol}"
        + ("" if c.protocol == f"{c.transport}/{c.port}" else f" ({c.transport}/{c.port})")
        + f" {c.flows} flows, {c.bytes} bytes"
        + (f" [{c.status}]" if c.status else "")
        for c in conduits
    ]
    return "\n".join(lines)


def render_svg(network: NetworkMap, standalone: bool = True) -> str:
    """The map as SVG; ``standalone`` adds the XML declaration and namespace for a file of its own."""
    zones, nodes, width, height = layout(network)
    out: list[str] = []
    if standalone:
        out.append('<?xml version="1.0" encoding="UTF-8"?>')
        out.append(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
            f'viewBox="0 0 {_n(width)} {_n(height)}" font-family="sans-serif" font-size="11">'
        )
    else:
        out.append(
            f'<svg width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" '
            'font-family="sans-serif" font-size="11" role="img" aria-label="network map">'
        )
    title = "Network map" + (f": {network.site}" if network.site else "")
    out.append(f"<title>{text(title)}</title>")
    out.append(f'<rect x="0" y="0" width="{_n(width)}" height="{_n(height)}" fill="#ffffff"/>')
    out.append(f'<text x="{MARGIN}" y="{MARGIN + 10}" font-size="16" font-weight="bold">{text(title)}</text>')
    fills = {"policy": "#e3f2fd", "proposed": "#f1f8e9", UNZONED: "#fff8e1", EXTERNAL_ZONE: "#fce4ec"}
    for zone in network.zones:
        box = zones[zone.name]
        label = zone.name + (f" ({zone.kind})" if zone.kind == "proposed" else "")
        tip = zone.name + (f": {zone.description}" if zone.description else "") + f"\n{len(zone.nodes)} nodes"
        out.append(f'<g class="zone"><title>{text(tip)}</title>')
        out.append(
            f'<rect x="{_n(box.x)}" y="{_n(box.y)}" width="{_n(box.w)}" height="{_n(box.h)}" rx="8" '
            f'fill="{fills[zone.kind]}" stroke="#607d8b" stroke-width="1.5"/>'
        )
        out.append(
            f'<text x="{_n(box.x + ZONE_PAD)}" y="{_n(box.y + 20)}" font-size="13" font-weight="bold">'
            f"{text(label, 70)}</text></g>"
        )
    # Node-to-node links inside one zone: thin lines under the nodes.
    for link in network.links:
        if link.from_zone != link.to_zone or link.client == link.server:
            continue
        a, b = nodes[link.client], nodes[link.server]
        (ax, ay), (bx, by) = a.centre, b.centre
        start, end = a.edge_point(bx - ax, by - ay), b.edge_point(ax - bx, ay - by)
        colour, dash = _edge_colour({link.status})
        out.append(f'<g class="link"><title>{text(_conduit_title([link]))}</title>')
        out.append(
            f'<line x1="{_n(start[0])}" y1="{_n(start[1])}" x2="{_n(end[0])}" y2="{_n(end[1])}" stroke="{colour}" '
            f'stroke-width="1.2"{dash}/>'
        )
        out.append(_arrow(end[0], end[1], end[0] - start[0], end[1] - start[1], colour) + "</g>")
    for node in (node for zone in network.zones for node in zone.nodes):
        box = nodes[node.node_id]
        listed = bool(node.listed)
        facts = [f"{node.role}", f"vendor: {node.vendor}" if node.vendor else "", f"address: {node.address}"]
        facts += [f"host name: {node.hostname}" if node.hostname else "", f"model: {node.model}" if node.model else ""]
        facts += [f"listed: {'; '.join(node.listed)}" if listed else "", "" if node.external else f"id: {node.node_id}"]
        stroke = 'stroke="#d50000" stroke-width="3"' if listed else 'stroke="#37474f" stroke-width="1"'
        fill = "#ffebee" if listed else ("#f8bbd0" if node.external else "#ffffff")
        out.append(
            f'<g class="node{" listed" if listed else ""}"><title>{text(chr(10).join(t for t in facts if t))}</title>'
        )
        out.append(
            f'<rect x="{_n(box.x)}" y="{_n(box.y)}" width="{NODE_W}" height="{NODE_H}" rx="4" fill="{fill}" {stroke}/>'
        )
        lines = [(node.role + (" ⚠ listed" if listed else ""), "bold"), (node.vendor or node.hostname, ""),
                 (node.address, "")]  # fmt: skip
        for index, (line, weight) in enumerate(lines):
            bold = ' font-weight="bold"' if weight else ""
            out.append(f'<text x="{_n(box.x + 6)}" y="{_n(box.y + 16 + index * 15)}"{bold}>{text(line, 27)}</text>')
        out.append("</g>")
    # Zone-to-zone conduits: one curve per ordered zone pair, bowed to one side so both directions stay apart.
    pairs: dict[tuple[str, str], list[MapConduit]] = {}
    for conduit in network.conduits:
        if conduit.from_zone != conduit.to_zone:
            pairs.setdefault((conduit.from_zone, conduit.to_zone), []).append(conduit)
    for (source, target), group in sorted(pairs.items()):
        a, b = zones[source], zones[target]
        (ax, ay), (bx, by) = a.centre, b.centre
        start, end = a.edge_point(bx - ax, by - ay), b.edge_point(ax - bx, ay - by)
        dx, dy = end[0] - start[0], end[1] - start[1]
        length = math.hypot(dx, dy) or 1.0
        bow = 30 + 0.12 * length  # long edges bow more, to clear the zones between their ends
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        control = (middle[0] - dy / length * bow, middle[1] + dx / length * bow)
        on_curve = ((middle[0] + control[0]) / 2, (middle[1] + control[1]) / 2)
        colour, dash = _edge_colour({c.status for c in group})
        label = ", ".join(sorted({c.protocol for c in group}))
        flows = sum(c.flows for c in group)
        out.append(f'<g class="conduit"><title>{text(_conduit_title(group))}</title>')
        out.append(
            f'<path d="M {_n(start[0])} {_n(start[1])} Q {_n(control[0])} {_n(control[1])} {_n(end[0])} {_n(end[1])}" '
            f'fill="none" stroke="{colour}" stroke-width="2.5"{dash}/>'
        )
        out.append(_arrow(end[0], end[1], end[0] - control[0], end[1] - control[1], colour))
        out.append(
            f'<text x="{_n(on_curve[0])}" y="{_n(on_curve[1])}" text-anchor="middle" fill="{colour}" '
            f'font-weight="bold">{text(f"{label} ({flows})", 40)}</text></g>'
        )
    out.append(_svg_legend(network, height - 70))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_legend(network: NetworkMap, y: float) -> str:
    items = [("#455a64", "", "observed conduit (client → server zone)")]
    if network.with_policy:
        items = [("#2e7d32", "", "allowed by the policy"), ("#c62828", ' stroke-dasharray="6 4"', "not in policy")]
    parts = ['<g class="legend">']
    x = float(MARGIN)
    for colour, dash, label in items:
        parts.append(f'<line x1="{_n(x)}" y1="{_n(y)}" x2="{_n(x + 30)}" y2="{_n(y)}" stroke="{colour}" '
                     f'stroke-width="2.5"{dash}/>')  # fmt: skip
        parts.append(f'<text x="{_n(x + 36)}" y="{_n(y + 4)}">{text(label)}</text>')
        x += 240
    parts.append(f'<rect x="{_n(x)}" y="{_n(y - 8)}" width="24" height="16" fill="#ffebee" stroke="#d50000" '
                 'stroke-width="3"/>')  # fmt: skip
    parts.append(f'<text x="{_n(x + 30)}" y="{_n(y + 4)}">maker on a restricted list (FCC, NDAA ...)</text>')
    parts.append("</g>")
    return "".join(parts)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #b0bec5; padding: 0.25em 0.6em; text-align: left; }
th { background: #eceff1; }
td.n { text-align: right; }
tr.not-in-policy td { background: #ffebee; }
.legend li { margin: 0.2em 0; }
.swatch { display: inline-block; width: 2em; height: 0.3em; vertical-align: middle; margin-right: 0.5em; }
"""


def _conduit_rows(conduits: Sequence[MapConduit], with_nodes: bool, labels: dict[str, str]) -> str:
    rows = []
    for c in conduits:
        css = ' class="not-in-policy"' if c.status == NOT_IN_POLICY else ""
        cells = [c.from_zone, c.to_zone]
        if with_nodes:
            cells = [labels.get(c.client, c.client), labels.get(c.server, c.server)]
        cells += [c.protocol, f"{c.transport}/{c.port}"]
        numbers = [str(c.flows), str(c.bytes)]
        tail = [_when(c.first_seen), _when(c.last_seen), c.status, c.policy_conduit]
        rows.append(
            f"<tr{css}>"
            + "".join(f"<td>{text(cell)}</td>" for cell in cells)
            + "".join(f'<td class="n">{cell}</td>' for cell in numbers)
            + "".join(f"<td>{text(cell)}</td>" for cell in tail)
            + "</tr>"
        )
    return "\n".join(rows)


def render_html(network: NetworkMap) -> str:
    """A self-contained HTML page: the inline SVG map, a legend, the conduit table and the node-to-node flows."""
    title = "Network map" + (f": {network.site}" if network.site else "")
    labels = {
        node.node_id: f"{node.role} {node.address}" + (f" ({node.hostname})" if node.hostname else "")
        for zone in network.zones
        for node in zone.nodes
    }
    head = ["client zone", "server zone", "protocol", "transport/port", "flows", "bytes", "first seen", "last seen"]
    head += ["policy", "policy rule"]
    node_head = ["client", "server", *head[2:]]
    zoning = "zones from the site policy" if network.with_policy else "zones proposed from VLANs and /24 subnets"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="referrer" content="no-referrer">',
        f"<title>{text(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{text(title)}</h1>",
        f"<p>{text(zoning)}; {sum(len(z.nodes) for z in network.zones)} nodes, {len(network.conduits)} conduits; "
        f"{network.skipped_flows} broadcast or multicast flows not drawn.</p>",
        render_svg(network, standalone=False),
        '<h2>Legend</h2><ul class="legend">',
        '<li><span class="swatch" style="background:#455a64"></span>observed conduit, client zone → server zone '
        "(label: protocols and flow count; hover for details)</li>",
    ]
    if network.with_policy:
        parts.append('<li><span class="swatch" style="background:#2e7d32"></span>allowed by a policy conduit</li>')
        parts.append('<li><span class="swatch" style="background:#c62828"></span>not in policy</li>')
    parts += [
        '<li><span class="swatch" style="background:#d50000"></span>red outline: maker on a restricted list</li>',
        "<li>unzoned: assets no zone claims; external: non-private server addresses, one node per /24</li>",
        "</ul>",
        "<h2>Conduits</h2>",
        "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>",
        _conduit_rows(network.conduits, False, labels),
        "</tbody></table>",
        "<h2>Flows between assets</h2>",
        "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in node_head) + "</tr></thead><tbody>",
        _conduit_rows(network.links, True, labels),
        "</tbody></table>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"

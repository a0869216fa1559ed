"""D3: a covert cellular path out of OT (ATT&CK for ICS T0883, T0884; Enterprise T1011).

The 2024 finding: cellular modules in crane components, in no contract, each an uplink the firewall never sees. No
single sign proves one, so every signal is a score component of one alert per suspected device:

* ``maker``: the asset's maker makes cellular modules or routers (``assets.maker_roles``) or its role is the modem's;
* ``own_uplink``: flows to internet addresses whose server MAC is this device's, not the site gateway's (the MAC
  that carries most of the internet flows): the device routes to the internet itself;
* ``reply_ttl``: those flows' reply TTLs differ from the ones through the site gateway (another path, a carrier NAT);
* ``rogue_dhcp``: DHCP OFFER/ACK from this device offering a router that is not the site gateway's address;
* ``arp_gateway``: this device's MAC claims an address the site gateway also claims (``arp_history``);
* ``carrier_dns`` / ``iot_cloud_dns``: queries for carrier (3GPP) or IoT-cloud names (data/cellular_indicators.yaml);
* ``tr069``: CWMP (TR-069 remote management of a CPE) on port 7547 or an HTTP request naming ``cwmp``;
* ``ot_location``: the device is OT (zone or role), where a modem is a hole in the zone's boundary.

Weights reflect how specific each sign is: a DNS query for AWS IoT from a laptop is weak (no alert alone), the module
maker plus an uplink of its own is the finding itself.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from quaywatch.assets.declared import CELLULAR_MAKER_ROLES, CELLULAR_ROLE
from quaywatch.detect import catalog
from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent
from quaywatch.detect.rules import relations
from quaywatch.yaml_files import load_yaml

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D3.covert-cellular"
REQUIRES = ("flows",)
#: One-core seconds over the benchmark store (make bench): the engine starts the longest detections first.
COST = 0.07
TECHNIQUES = ["T0883", "T0884", "T1011"]
#: Signal weights; the score is the capped sum of weight x value.
WEIGHTS = {
    "maker": 0.35,
    "own_uplink": 0.3,
    "reply_ttl": 0.1,
    "rogue_dhcp": 0.25,
    "arp_gateway": 0.2,
    "carrier_dns": 0.2,
    "iot_cloud_dns": 0.1,
    "tr069": 0.2,
    "ot_location": 0.1,
}
#: From this score a device is an alert; a lone DNS or location sign stays below it.
ALERT_SCORE = 0.3
#: Signs that point at a cellular device rather than at any second router; a device outside OT needs one of them
#: (a multi-homed office network has other routers, and they are not modems).
CELLULAR_SIGNALS = frozenset({"maker", "carrier_dns", "iot_cloud_dns", "tr069", "rogue_dhcp"})
#: Facts about the device rather than traffic of a path: alone they are D12's inventory finding, not a path.
DEVICE_FACTS = frozenset({"maker", "ot_location"})
SEVERITY_STEPS = ((0.75, "critical"), (0.55, "high"), (0.4, "medium"), (0.0, "low"))


@cache
def indicators() -> dict[str, Any]:
    """The carrier and IoT-cloud domain patterns and TR-069 markers, with their sources."""
    text = resources.files("quaywatch.data").joinpath("cellular_indicators.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = load_yaml(text)
    return data


@dataclass(slots=True)
class Device:
    """One suspected device and the signals gathered for it."""

    key: str
    asset_id: str | None = None
    ips: set[str] = field(default_factory=set)
    mac: str | None = None
    ot: bool = False
    signals: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (value, sentence)
    times: list[dt.datetime] = field(default_factory=list)  # the asset's first and last seen
    signal_times: list[dt.datetime] = field(default_factory=list)  # packets behind the traffic signals
    flow_ids: list[str] = field(default_factory=list)
    community_ids: set[str] = field(default_factory=set)
    events: list[EventReference] = field(default_factory=list)
    values: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, value: float, sentence: str) -> None:
        if name not in self.signals or self.signals[name][0] < value:
            self.signals[name] = (value, sentence)

    def note(self, field_name: str, *items: Any) -> None:
        self.values.setdefault(field_name, set()).update(str(item) for item in items if item is not None)


class Devices:
    """Suspected devices by asset (MAC) when known, else by address."""

    def __init__(self, con: duckdb.DuckDBPyConnection, present: set[str]) -> None:
        self.by_ip: dict[str, tuple[str | None, bool]] = {}
        self.zones: dict[str, str] = {}
        self.by_mac: dict[str, str] = {}
        self.asset_ips: dict[str, set[str]] = {}
        self.asset_mac: dict[str, str | None] = {}
        rows = con.execute("SELECT ip, asset_id, ot, zone FROM host_context").fetchall() if _has_context(con) else []
        for ip, asset_id, ot, zone in rows:
            self.by_ip[str(ip)] = (asset_id, bool(ot))
            if zone:
                self.zones[str(ip)] = str(zone)
        if "assets" in present:
            for asset_id, mac, ips in con.execute("SELECT asset_id, mac, ips FROM assets").fetchall():
                self.asset_ips[asset_id] = set(ips or [])
                self.asset_mac[asset_id] = mac
                if mac:
                    self.by_mac[str(mac).lower()] = asset_id
        self.devices: dict[str, Device] = {}

    def _device(self, asset_id: str | None, ip: str | None, mac: str | None = None) -> Device:
        key = asset_id or (f"ip:{ip}" if ip else f"mac:{mac}")
        device = self.devices.get(key)
        if device is None:
            device = self.devices[key] = Device(key, asset_id)
            if asset_id:
                device.ips |= self.asset_ips.get(asset_id, set())
                device.mac = self.asset_mac.get(asset_id)
        if ip:
            device.ips.add(ip)
        device.ot = device.ot or any(self.by_ip.get(address, (None, False))[1] for address in device.ips)
        return device

    def of_ip(self, ip: str) -> Device:
        return self._device(self.by_ip.get(ip, (None, False))[0], ip)

    def of_mac(self, mac: str, ip: str | None = None) -> Device:
        asset_id = self.by_mac.get(mac.lower())
        device = self._device(asset_id, None if asset_id else ip, mac.lower())
        device.mac = device.mac or mac
        return device


def _has_context(con: duckdb.DuckDBPyConnection) -> bool:
    return "host_context" in catalog.tables(con)


@functools.lru_cache(maxsize=65536)
def _global(ip: str | None) -> bool:
    """Cached: a store of a million flows has a few thousand distinct addresses."""
    try:
        return ip is not None and ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


def _matches(name: str, patterns: list[str]) -> str | None:
    lowered = name.lower().rstrip(".")
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(lowered, pattern)), None)


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """Gather every signal per device, score them together, alert from ``ALERT_SCORE``."""
    present = relations(con)
    devices = Devices(con, present)
    internet = _internet_servers(con)
    gateway_mac, gateway_ips, gateway_ttls, bypassed = _site_gateway(con, devices, internet)
    if "assets" in present:
        _maker(con, devices)
    _uplinks(con, devices, gateway_mac, gateway_ttls, bypassed)
    if "dhcp" in present:
        _dhcp(con, devices, gateway_ips)
    if "arp_history" in present and gateway_mac:
        _arp(con, devices, gateway_mac, gateway_ips)
    if "dns" in present:
        _dns(con, devices)
    _tr069(con, devices, present)
    alerts = []
    for device in devices.devices.values():
        if not device.signals or (device.asset_id is not None and device.mac and device.mac == gateway_mac):
            continue
        if device.ot:
            device.add("ot_location", 1.0, "the device is in an OT zone or has an OT role: a modem there bypasses "
                       "the zone's boundary")  # fmt: skip
        alert = _alert(device, context.now, sorted({devices.zones[ip] for ip in device.ips if ip in devices.zones}))
        if alert is not None:
            alerts.append(alert)
    return alerts


def _internet_servers(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The internet addresses among the flows' servers reached through a MAC: a site's million flows have a few
    hundred distinct servers, judged here once, so that the flow queries below read only the flows to these."""
    servers = con.execute("SELECT DISTINCT server_ip FROM flows WHERE server_mac IS NOT NULL").fetchall()
    return sorted(str(ip) for (ip,) in servers if _global(ip))


def _site_gateway(
    con: duckdb.DuckDBPyConnection, devices: Devices, internet: list[str]
) -> tuple[str | None, set[str], Counter[int], list[str]]:
    """The MAC carrying most internet flows, its addresses, the reply TTLs seen through it, and the internet
    servers also reached through another MAC (the only ones :func:`_uplinks` has to read flows of)."""
    # Grouped in SQL, in order of first appearance, so that ties between MACs fall as they did row by row; only the
    # flows to internet servers count, so only those are grouped.
    rows = con.execute(
        """
        SELECT server_ip, lower(server_mac) AS mac, server_ttl, count(*) AS n, min(rowid) AS first FROM flows
        WHERE server_ip IN (SELECT unnest($internet)) AND server_mac IS NOT NULL GROUP BY ALL ORDER BY first
        """,
        {"internet": internet},
    ).fetchall()
    counts: Counter[str] = Counter()
    for _, each, _, n, _ in rows:
        counts[each] += n
    if not counts:
        return None, set(), Counter(), []
    mac = counts.most_common(1)[0][0]
    asset_id = devices.by_mac.get(mac)
    ips = devices.asset_ips.get(asset_id, set()) if asset_id else set()
    ttls: Counter[int] = Counter()
    for _, each, ttl, n, _ in rows:
        if each == mac and ttl is not None:
            ttls[int(ttl)] += n
    bypassed = sorted({str(ip) for ip, each, _, _, _ in rows if each != mac})
    return mac, ips, ttls, bypassed


def _maker(con: duckdb.DuckDBPyConnection, devices: Devices) -> None:
    rows = con.execute(
        """
        SELECT asset_id, mac, ips, role, maker, maker_roles, first_seen, last_seen FROM assets
        WHERE role = ? OR list_has_any(coalesce(maker_roles, []), ?::VARCHAR[])
        """,
        [CELLULAR_ROLE, sorted(CELLULAR_MAKER_ROLES)],
    ).fetchall()
    for asset_id, mac, ips, role, maker, maker_roles, first_seen, last_seen in rows:
        device = devices._device(asset_id, (ips or [None])[0])
        device.mac = device.mac or mac
        roles = sorted(set(maker_roles or []) & CELLULAR_MAKER_ROLES)
        device.add("maker", 1.0, f"maker {maker or 'unknown'} ({', '.join(roles) or role}): a cellular device")
        device.note("maker", maker)
        device.note("role", role)
        device.times += [time for time in (first_seen, last_seen) if time is not None]


def _uplinks(
    con: duckdb.DuckDBPyConnection, devices: Devices, gateway: str | None, ttls: Counter[int], bypassed: list[str]
) -> None:
    if gateway is None or not bypassed:
        return
    # Only flows to internet servers through another MAC than the gateway's matter: ``bypassed`` names those
    # servers (from the gateway's grouping), so the server address is tested first and leaves only their flows.
    # One row per device path (gateway MAC, client, server, reply TTL) with its first flows, not one per flow.
    rows = con.execute(
        """
        SELECT lower(server_mac) AS mac, lower(client_mac), client_ip, server_ip, server_ttl, min(ts), max(ts),
               min_by(struct_pack(ts := ts, flow_id := flow_id, capture_id := capture_id, packet := first_packet),
                      struct_pack(ts, flow_id), 100),
               list_sort(list(DISTINCT community_id) FILTER (WHERE community_id <> ''))[1:100]
        FROM flows WHERE server_ip IN (SELECT unnest($servers)) AND server_mac IS NOT NULL
                         AND lower(server_mac) <> $gateway
        GROUP BY ALL ORDER BY min(ts), mac, client_ip, server_ip
        """,
        {"gateway": gateway, "servers": bypassed},
    ).fetchall()
    usual = sorted(ttls)
    flows: dict[int, list[dict[str, Any]]] = {}
    for mac, client_mac, client_ip, server_ip, ttl, first, last, first_flows, community_ids in rows:
        if not _global(server_ip):
            continue
        own = mac == client_mac
        device = devices.of_mac(mac, client_ip if own else None)
        device.add(
            "own_uplink", 1.0,
            f"reaches internet hosts through MAC {mac}, not the site gateway {gateway}"
            + (" (its own MAC: it is its own router)" if own else ""),
        )  # fmt: skip
        device.note("internet_peers", server_ip)
        device.note("gateway_mac", mac)
        if ttl is not None and usual and int(ttl) not in ttls:
            device.add("reply_ttl", 1.0, f"replies arrive with TTL {ttl}; through the site gateway they have "
                       f"{', '.join(map(str, usual[:5]))}: another path")  # fmt: skip
            device.note("reply_ttl", ttl)
        device.signal_times += [first, last]
        flows.setdefault(id(device), []).extend(first_flows)
        device.community_ids.update(community_ids or [])
    for device in devices.devices.values():  # each device's first 100 flows in time order, over all its paths
        for flow in sorted(flows.get(id(device), []), key=lambda entry: (entry["ts"], entry["flow_id"])):
            if len(device.flow_ids) >= 100:
                break
            device.flow_ids.append(flow["flow_id"])
            device.events.append(EventReference("flows", flow["capture_id"], int(flow["packet"]), flow["flow_id"]))


def _dhcp(con: duckdb.DuckDBPyConnection, devices: Devices, gateway_ips: set[str]) -> None:
    # With the site gateway known, only the offers naming another router matter: those are chosen in SQL (the
    # site's DHCP server answers thousands of times a day). A NULL router reads as a foreign one, as "None" below.
    foreign_router = (
        "AND coalesce(server_id, client_ip) <> '' AND len(list_filter(coalesce(routers, []), "
        "lambda router: router IS NULL OR NOT list_contains($gateways, router))) > 0"
        if gateway_ips
        else ""
    )
    rows = con.execute(
        f"""
        SELECT coalesce(server_id, client_ip) AS server, routers, ts, capture_id, packet_number, flow_id, community_id
        FROM dhcp WHERE message_type IN (2, 5) {foreign_router} ORDER BY ts
        """,
        {"gateways": sorted(gateway_ips)} if gateway_ips else {},
    ).fetchall()
    servers = Counter(str(row[0]) for row in rows if row[0]) if not gateway_ips else Counter()
    site = servers.most_common(1)[0][0] if servers else None
    for server, routers, ts, capture_id, packet, flow_id, community_id in rows:
        offered = [str(router) for router in routers or []]
        foreign = [router for router in offered if router not in gateway_ips]
        if not server or (gateway_ips and not foreign) or (not gateway_ips and server == site):
            continue
        device = devices.of_ip(str(server))
        site_text = ", ".join(sorted(gateway_ips)[:3]) or "unknown"
        sentence = f"DHCP server {server} offers router {', '.join(offered) or 'none'}, not the site gateway"
        device.add("rogue_dhcp", 1.0, f"{sentence} ({site_text}): it hands out a second uplink")
        device.note("dhcp_routers", *offered)
        device.signal_times.append(ts)
        device.events.append(EventReference("dhcp", capture_id, packet, flow_id))
        if community_id:
            device.community_ids.add(community_id)


def _arp(con: duckdb.DuckDBPyConnection, devices: Devices, gateway_mac: str, gateway_ips: set[str]) -> None:
    rows = con.execute("SELECT ip, lower(mac), first_seen FROM arp_history WHERE macs_for_ip > 1").fetchall()
    for ip, mac, first_seen in rows:
        if str(ip) in gateway_ips and mac != gateway_mac:
            device = devices.of_mac(mac)
            device.add("arp_gateway", 1.0, f"MAC {mac} claims the gateway address {ip} too (a second default gateway)")
            device.note("claimed_gateway_ip", ip)
            device.signal_times.append(first_seen)


def _dns(con: duckdb.DuckDBPyConnection, devices: Devices) -> None:
    data = indicators()
    patterns = [*data["carrier_domains"], *data["iot_cloud_domains"]]
    # The names are matched once each, as spelled (a site queries a few hundred distinct names, hundreds of thousands
    # of times), and only the queries of matching names are grouped per client and lower-cased name.
    names = con.execute(
        "SELECT DISTINCT query_name FROM dns WHERE event_type = 'query' AND query_name IS NOT NULL"
    ).fetchall()
    matching = sorted(str(name) for (name,) in names if _matches(str(name), patterns) is not None)
    if not matching:
        return
    rows = con.execute(
        """
        SELECT client_ip, lower(query_name), min(ts), count(*), any_value(capture_id), min(packet_number),
               any_value(flow_id), any_value(community_id)
        FROM dns WHERE event_type = 'query' AND query_name IS NOT NULL AND client_ip IS NOT NULL
                       AND query_name IN (SELECT unnest($names)) GROUP BY 1, 2
        """,
        {"names": matching},
    ).fetchall()
    for client, name, ts, _count, capture_id, packet, flow_id, community_id in rows:
        for signal, patterns in (
            ("carrier_dns", data["carrier_domains"]),
            ("iot_cloud_dns", data["iot_cloud_domains"]),
        ):
            pattern = _matches(name, patterns)
            if pattern is None:
                continue
            device = devices.of_ip(str(client))
            kind = "a carrier (3GPP) name" if signal == "carrier_dns" else "an IoT-cloud name"
            device.add(signal, 1.0, f"queries {kind}: {name} ({pattern})")
            device.note("queried_names", name)
            device.signal_times.append(ts)
            device.events.append(EventReference("dns", capture_id, packet, flow_id))
            if community_id:
                device.community_ids.add(community_id)
            break


def _tr069(con: duckdb.DuckDBPyConnection, devices: Devices, present: set[str]) -> None:
    data = indicators()["tr069"]
    rows = con.execute(
        "SELECT server_ip, ts, flow_id, capture_id, first_packet FROM flows WHERE server_port IN (SELECT unnest(?))",
        [list(data["ports"])],
    ).fetchall()
    hits = [(str(ip), ts, flow, capture, packet, "flows") for ip, ts, flow, capture, packet in rows]
    if "http" in present:
        markers = "|".join(re.escape(str(marker).lower()) for marker in data["markers"])
        rows = con.execute(
            """
            SELECT client_ip, ts, flow_id, capture_id, packet_number FROM http
            WHERE regexp_matches(lower(coalesce(uri, '')), ?) OR regexp_matches(lower(coalesce(content_type, '')), ?)
            """,
            [markers, markers],
        ).fetchall()
        hits += [(str(ip), ts, flow, capture, packet, "http") for ip, ts, flow, capture, packet in rows]
    for ip, ts, flow_id, capture_id, packet, table in hits:
        device = devices.of_ip(ip)
        device.add("tr069", 1.0, "TR-069 (CWMP) remote management, the carrier's way of managing a cellular router")
        device.signal_times.append(ts)
        device.events.append(EventReference(table, capture_id, packet, flow_id))


def _alert(device: Device, now: dt.datetime, zones: list[str] | None = None) -> Alert | None:
    components = [
        ScoreComponent(name, value, WEIGHTS[name], sentence) for name, (value, sentence) in device.signals.items()
    ]
    score = round(min(sum(component.value * component.weight for component in components), 1.0), 3)
    if score < ALERT_SCORE or not (device.ot or CELLULAR_SIGNALS & device.signals.keys()):
        return None
    if not device.signals.keys() - DEVICE_FACTS:
        return None  # a modem seen but no traffic of its own path: D12 reports the device
    severity = next(name for threshold, name in SEVERITY_STEPS if score >= threshold)
    ips = sorted(device.ips)
    label = device.asset_id or (ips[0] if ips else device.key)
    signals = ", ".join(sorted(device.signals))
    # The traffic's times when there is traffic: the asset's own first/last seen only for a maker-only finding.
    traffic = device.signal_times or device.times
    times = sorted(time for time in traffic if time is not None) or [now]
    return Alert(
        detection=DETECTION,
        title=f"Suspected covert cellular path: {', '.join(ips[:3]) or device.mac or label}",
        key={"device": device.key},
        severity=severity,
        confidence=round(min(0.3 + 0.15 * len(device.signals), 0.95), 2),
        techniques=list(TECHNIQUES),
        first_seen=times[0],
        last_seen=times[-1],
        count=max(len(device.events), 1),
        explanation=(
            f"Device {', '.join(ips[:5]) or 'unknown address'} (MAC {device.mac or 'unknown'}) shows "
            f"{len(device.signals)} sign(s) of a cellular uplink of its own: {signals}. "
            + " ".join(f"{sentence[0].upper()}{sentence[1:]}." for _, sentence in device.signals.values())
            + " Find it physically (the MAC's maker, the cabinet it is in) and check the contract; a module "
            "nobody ordered is a path around every firewall of the site."
        ),
        score=score,
        score_components=components,
        assets=sorted({*([device.asset_id] if device.asset_id else []), *ips}),
        zones=zones or [],
        evidence=Evidence(
            flow_ids=device.flow_ids[:100],
            community_ids=sorted(device.community_ids)[:100],
            events=device.events[:100],
            packet_numbers=list(
                dict.fromkeys(event.packet_number for event in device.events if event.packet_number is not None)
            )[:100],
            values={name: sorted(items)[:20] for name, items in device.values.items()},
        ),
        suppression_seconds=86400,
    )

"""D2: a remote-access session into or out of OT outside the approved path or time window (T0822, T0886).

Sessions come from the ``remote_access`` table (RDP, VNC, TeamViewer, AnyDesk, VPNs and tunnels: one session per
flow) and from ``ssh`` (one per flow). A session is approved only when one of the policy's ``remote_access`` rules
holds on every condition: the method, the source (the session's client, or for relayed tools such as TeamViewer the
other end), the destination (in the rule's zones or destinations), the start inside one of the rule's windows in the
window's own time zone, and the rule not expired. Every other session with an OT end is an alert whose explanation
names the closest rule and each condition it failed. Time windows need code, hence a module and not a rule file.

Without a policy (or without OT zones), OT-ness comes from the asset role (``host_context.ot``, confidence 0.6), and a
server with a private address and no known role is "possibly OT" (confidence 0.4, severity low): on an OT network
monitor's span port a private server is more likely plant than not, but nothing says so.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent
from quaywatch.detect.rules import relations
from quaywatch.policy.evaluate import zone_of
from quaywatch.policy.model import WEEKDAYS, HostMatch, Policy, RemoteAccess, TimeWindow

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D2.remote-access"
REQUIRES = ("flows",)
#: One-core seconds over the benchmark store (make bench): the engine starts the longest detections first.
COST = 0.05
TECHNIQUES = ["T0822", "T0886"]
#: Remote-control tools that reach the target through the vendor's relay: the OT host is the client of the flow.
RELAYED_METHODS = frozenset({"teamviewer", "anydesk"})
#: Confidence when the policy's zones say the end is OT; when only the asset role does; when only the address does.
CONFIDENCE_POLICY, CONFIDENCE_ROLE, CONFIDENCE_PRIVATE = 0.9, 0.6, 0.4
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_REMOTE_SESSIONS = """
SELECT r.capture_id, r.flow_id, min(r.ts) AS ts, any_value(r.method) AS method, any_value(r.client_ip) AS client_ip,
       any_value(r.server_ip) AS server_ip, any_value(r.server_port) AS server_port,
       any_value(r.user_name) FILTER (WHERE r.user_name IS NOT NULL) AS user_name,
       any_value(r.client_software) FILTER (WHERE r.client_software IS NOT NULL) AS client_software,
       any_value(r.server_software) FILTER (WHERE r.server_software IS NOT NULL) AS server_software,
       any_value(r.evidence) FILTER (WHERE r.evidence IS NOT NULL) AS evidence,
       min(r.packet_number) AS packet, any_value(r.community_id) AS community_id
FROM remote_access AS r WHERE r.method IS NOT NULL AND r.client_ip IS NOT NULL
GROUP BY r.capture_id, r.flow_id
"""

_SSH_SESSIONS = """
SELECT s.capture_id, s.flow_id, min(s.ts) AS ts, 'ssh' AS method, any_value(s.client_ip) AS client_ip,
       any_value(s.server_ip) AS server_ip, any_value(s.server_port) AS server_port, NULL AS user_name,
       any_value(s.software_version) FILTER (WHERE s.direction = 'to_server') AS client_software,
       any_value(s.software_version) FILTER (WHERE s.direction = 'to_client') AS server_software,
       'SSH identification banner' AS evidence, min(s.packet_number) AS packet,
       any_value(s.community_id) AS community_id
FROM ssh AS s WHERE s.client_ip IS NOT NULL GROUP BY s.capture_id, s.flow_id
"""

_COLUMNS = (
    "capture_id", "flow_id", "ts", "method", "client_ip", "server_ip", "server_port", "user_name",
    "client_software", "server_software", "evidence", "packet", "community_id",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Host:
    """What the detection knows of one end of a session."""

    ip: str
    mac: str | None
    zone: str | None
    ot: bool
    role: str | None
    asset_id: str | None
    policy_zone: bool  # the zone comes from a policy


def sessions(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every remote-access session in the store, one per flow, oldest first."""
    table = _session_table(con)
    return [] if table is None else table.to_pylist()


def _session_table(con: duckdb.DuckDBPyConnection) -> pa.Table | None:
    """:func:`sessions` as Arrow columns: detection reads the hosts of every session but the rest of few."""
    present = relations(con)
    parts = [
        query for table, query in (("remote_access", _REMOTE_SESSIONS), ("ssh", _SSH_SESSIONS)) if table in present
    ]
    if not parts:
        return None
    union = " UNION ALL ".join(f"({part})" for part in parts)
    # A protocol record carries its flow's envelope (decode/dispatch.py), so its flow has the session's server
    # port: filtering ``flows`` on that integer first leaves the string join a few thousand of a million rows.
    return con.sql(
        f"""
        WITH s AS MATERIALIZED ({union})
        SELECT s.*, f.client_mac, f.server_mac, f.last_ts FROM s
        LEFT JOIN (
            SELECT capture_id, flow_id, client_mac, server_mac, last_ts FROM flows
            WHERE server_port IN (SELECT server_port FROM s)
        ) AS f ON f.capture_id = s.capture_id AND f.flow_id = s.flow_id
        ORDER BY s.ts
        """
    ).to_arrow_table()


def _host_context(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[Any, ...]]:
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'host_context'").fetchall()[0][0]:
        return {}
    rows = con.execute("SELECT ip, zone, ot, role, asset_id, zone_source FROM host_context").fetchall()
    return {str(row[0]): row[1:] for row in rows}


def _host(ip: str, mac: str | None, known: dict[str, tuple[Any, ...]], policy: Policy | None) -> Host:
    zone, ot, role, asset_id, source = known.get(ip, (None, False, None, None, None))
    policy_zone = source is not None
    if zone is None and policy is not None:
        match = zone_of(policy, ip, [mac] if mac else [])
        zone = match.zone
        ot = match.purdue is not None and match.purdue <= 3
        policy_zone = True
    return Host(ip, mac, zone, bool(ot), role, asset_id, policy_zone)


def _private(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return address.is_private and not (address.is_loopback or address.is_multicast or address.is_unspecified)


def _matches(hosts: HostMatch, host: Host) -> bool:
    """Empty means any host."""
    if not hosts.networks and not hosts.macs:
        return True
    try:
        address = ipaddress.ip_address(host.ip)
    except ValueError:
        address = None
    if address is not None and any(address.version == net.version and address in net for net in hosts.networks):
        return True
    return bool(host.mac) and any(str(host.mac).lower().startswith(mac.lower()) for mac in hosts.macs)


def _in_destination(rule: RemoteAccess, host: Host) -> bool:
    if not rule.zones and not rule.destinations.networks and not rule.destinations.macs:
        return True
    if host.zone is not None and host.zone in rule.zones:
        return True
    return bool(rule.destinations.networks or rule.destinations.macs) and _matches(rule.destinations, host)


def in_window(window: TimeWindow, moment: dt.datetime) -> bool:
    """Whether ``moment`` is inside the window, read in the window's own time zone."""
    local = moment.astimezone(ZoneInfo(window.timezone))
    day = WEEKDAYS[local.weekday()]
    previous = WEEKDAYS[(local.weekday() - 1) % 7]
    now = local.time()
    if window.spans_midnight or window.end <= window.start:
        return (day in window.days and now >= window.start) or (previous in window.days and now < window.end)
    return day in window.days and window.start <= now < window.end


def _window_text(window: TimeWindow) -> str:
    days = ",".join(day.capitalize() for day in window.days)
    return f"{days} {window.start:%H:%M}-{window.end:%H:%M}"


@functools.lru_cache(maxsize=4096)
def _path_failures(rule: RemoteAccess, method: str, client: Host, server: Host) -> tuple[str, ...]:
    """The conditions of ``rule`` on method, source and destination that the session fails, in words: the same for
    every session between two hosts (thousands a day), so judged once per pair; :func:`failures` adds the time."""
    failed: list[str] = []
    if rule.method != method:
        failed.append(f"method {method} is not the rule's {rule.method}")
    remote, target = (client, server)
    if method in RELAYED_METHODS and not (_matches(rule.source, remote) and _in_destination(rule, target)):
        remote, target = server, client  # the OT host dialled out to the relay
    if not _matches(rule.source, remote):
        failed.append(f"source {remote.ip} is not in {rule.name}'s sources")
    if not _in_destination(rule, target):
        where = ", ".join([*rule.zones, *map(str, rule.destinations.networks)])
        failed.append(f"destination {target.ip} (zone {target.zone or 'unknown'}) is not in {rule.name}'s {where}")
    return tuple(failed)


def failures(rule: RemoteAccess, method: str, client: Host, server: Host, moment: dt.datetime) -> list[str]:
    """Every condition of ``rule`` that the session fails, in words; empty means approved."""
    failed = list(_path_failures(rule, method, client, server))
    if rule.windows and not any(in_window(window, moment) for window in rule.windows):
        window = rule.windows[0]
        local = moment.astimezone(ZoneInfo(window.timezone))
        failed.append(
            f"{DAY_NAMES[local.weekday()]} {local:%H:%M} {window.timezone} is outside {rule.name}'s window "
            + "; ".join(_window_text(each) for each in rule.windows)
        )
    if rule.expires is not None and moment.date() > rule.expires:
        failed.append(f"{rule.name} expired on {rule.expires.isoformat()}")
    return failed


def judge(policy: Policy | None, method: str, client: Host, server: Host, moment: dt.datetime) -> tuple[bool, str]:
    """(approved, why): the approving rule, or the closest rule and every condition it failed."""
    if policy is None:
        return False, "there is no site policy, so no remote-access path is approved"
    if not policy.remote_access:
        return False, "the policy has no remote_access rules, so no remote-access path is approved"
    judged = [(failures(rule, method, client, server, moment), rule) for rule in policy.remote_access]
    approved = next((rule for failed, rule in judged if not failed), None)
    if approved is not None:
        return True, f"approved by {approved.name}"
    same_method = [(failed, rule) for failed, rule in judged if rule.method == method]
    if not same_method:
        return False, f"no remote_access rule allows {method}"
    failed, rule = min(same_method, key=lambda item: len(item[0]))
    return False, f"closest rule {rule.name}: " + "; ".join(failed)


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per (method, client, server) of unapproved sessions with an OT end."""
    known = _host_context(con)
    policy = context.policy
    groups: dict[tuple[str, str, str], list[tuple[dict[str, Any], Host, Host, str, float]]] = {}
    hosts: dict[tuple[str, str | None], Host] = {}  # a terminal's sessions are few pairs, again and again
    confidences: dict[tuple[Host, Host, str], float | None] = {}
    table = _session_table(con)
    if table is None:
        return []
    # Whether a session touches OT depends on its method and hosts only: judged from those columns for every
    # session, and only the sessions that do (a few of the thousands) become Python records.
    ends_of: dict[tuple[str, str, str | None, str, str | None], tuple[Host, Host, float | None]] = {}
    keep = []
    for ends_key in zip(
        *(table.column(name).to_pylist() for name in ("method", "client_ip", "client_mac", "server_ip", "server_mac")),
        strict=True,
    ):
        if ends_key not in ends_of:
            method, client_ip, client_mac, server_ip, server_mac = ends_key
            for ip, mac in ((client_ip, client_mac), (str(server_ip), server_mac)):
                if (ip, mac) not in hosts:
                    hosts[ip, mac] = _host(ip, mac, known, policy)
            client, server = hosts[client_ip, client_mac], hosts[str(server_ip), server_mac]
            if (client, server, method) not in confidences:
                confidences[client, server, method] = _confidence(client, server, method)
            ends_of[ends_key] = (client, server, confidences[client, server, method])
        keep.append(ends_of[ends_key][2] is not None)
    for session in table.filter(pa.array(keep, pa.bool_())).to_pylist():
        client, server, confidence = ends_of[
            session["method"], session["client_ip"], session["client_mac"], session["server_ip"], session["server_mac"]
        ]
        assert confidence is not None  # the kept sessions touch OT
        moment = session["ts"] if session["ts"].tzinfo else session["ts"].replace(tzinfo=dt.UTC)
        approved, why = judge(policy, session["method"], client, server, moment)
        if approved:
            continue
        if policy is None:
            confidence = min(confidence, CONFIDENCE_ROLE)
        key = (session["method"], client.ip, server.ip)
        groups.setdefault(key, []).append((session, client, server, why, confidence))
    return [_alert(items, policy is not None) for items in groups.values()]


def _confidence(client: Host, server: Host, method: str) -> float | None:
    """How sure we are that the session touches OT; None when it does not."""
    ends = (client, server)
    if any(host.ot and host.policy_zone for host in ends):
        return CONFIDENCE_POLICY
    if any(host.ot for host in ends):
        return CONFIDENCE_ROLE
    if any(host.policy_zone and host.zone not in (None, "unzoned", "external") for host in ends):
        return None  # the policy zones both ends and neither is OT: an IT session
    target = client if method in RELAYED_METHODS else server
    if target.role in (None, "unknown") and _private(target.ip):
        return CONFIDENCE_PRIVATE
    return None


def _alert(items: list[tuple[dict[str, Any], Host, Host, str, float]], with_policy: bool) -> Alert:
    session, client, server, why, confidence = items[0]
    method = str(session["method"])
    external_client = not _private(client.ip)
    possibly = confidence <= CONFIDENCE_PRIVATE
    if possibly:
        severity = "low"
    elif with_policy and external_client:
        severity = "critical" if any(host.role in ("PLC", "drive") for host in (client, server)) else "high"
    elif with_policy:
        severity = "high"
    else:
        severity = "medium"
    ot_hosts = [host for host in (client, server) if host.ot] or [client if method in RELAYED_METHODS else server]
    ot_text = ", ".join(host.ip for host in ot_hosts) + (
        " possibly OT (private address, no known role)" if possibly else " OT"
    )
    users = sorted({str(item[0]["user_name"]) for item in items if item[0]["user_name"]})
    software = sorted(
        {str(item[0][side]) for item in items for side in ("client_software", "server_software") if item[0][side]}
    )
    title = f"{method.upper()} session {client.ip} -> {server.ip} not approved"
    explanation = (
        f"{len(items)} {method} session(s) from {client.ip} (zone {client.zone or 'unknown'}) to {server.ip} "
        f"(zone {server.zone or 'unknown'}); {ot_text}; the first at {session['ts']:%Y-%m-%d %H:%M:%S} UTC"
        + (f", user {', '.join(users)}" if users else "")
        + f". Not approved: {why}. Remote access into OT must come through the approved path and window "
        "(IEC 62443-2-4 SP.07); confirm who opened it and end it if nobody can."
    )
    components = [
        ScoreComponent("ot_end", confidence, 0.5, f"the session touches {ot_text}"),
        ScoreComponent(
            "approval", 1.0 if with_policy else 0.5, 0.3,
            f"not approved: {why}" if with_policy else "no policy to approve it: judged without one",
        ),
        ScoreComponent(
            "source", 1.0 if external_client else 0.5, 0.2,
            "the client is on the internet" if external_client else "the client is inside the site",
        ),
    ]  # fmt: skip
    techniques = list(TECHNIQUES)
    assets = [value for host in ot_hosts for value in (host.ip, host.asset_id) if value]
    return Alert(
        detection=DETECTION,
        title=title,
        key={"method": method, "client_ip": client.ip, "server_ip": str(server.ip)},
        severity=severity,
        confidence=confidence,
        techniques=techniques,
        first_seen=min(item[0]["ts"] for item in items),
        last_seen=max(item[0]["last_ts"] or item[0]["ts"] for item in items),
        count=len(items),
        explanation=explanation,
        score=round(sum(component.value * component.weight for component in components), 3),
        score_components=components,
        assets=sorted(set(assets)),
        zones=sorted({host.zone for host in (client, server) if host.zone}),
        evidence=Evidence(
            flow_ids=[item[0]["flow_id"] for item in items if item[0]["flow_id"]][:100],
            community_ids=sorted({item[0]["community_id"] for item in items if item[0]["community_id"]})[:100],
            events=[
                EventReference(
                    "remote_access" if method != "ssh" else "ssh",
                    item[0]["capture_id"],
                    item[0]["packet"],
                    item[0]["flow_id"],
                )
                for item in items[:100]
            ],
            packet_numbers=[int(item[0]["packet"]) for item in items if item[0]["packet"] is not None][:100],
            values={
                "method": [method],
                "server_port": sorted({int(item[0]["server_port"]) for item in items if item[0]["server_port"]}),
                "user_name": users[:20],
                "software": software[:20],
                "identified_by": sorted({str(item[0]["evidence"]) for item in items if item[0]["evidence"]})[:20],
                "why": sorted({item[3] for item in items})[:20],
            },
        ),
        suppression_seconds=3600,
    )

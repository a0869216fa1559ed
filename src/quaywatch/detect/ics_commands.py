"""D7: unauthorised ICS commands (ATT&CK for ICS T0855, T0836, T0843, T0858, T0816).

Reading a PLC is monitoring; writing it, stopping it or loading a program into it changes the process. Only a
few hosts should ever do that: the engineering workstations the policy names (``engineering_hosts``: hosts,
operations, zones or targets) and conduits whose ``allow`` lists the function or operation. Every state-changing
request of every ICS decoder (Modbus writes, S7comm write/stop/download/upload/PI services, CIP services that
control the device, OPC UA Write/Call, DCP Set, DNP3 control/restart/write, IEC 104 commands, BACnet
WriteProperty/ReinitializeDevice/DeviceCommunicationControl) is judged; anything neither allows is an alert, one
per client, server, protocol and operation. A written value outside the policy's ``setpoints`` bounds (a Modbus
register, an IEC 104 set-point command's information object, a DNP3 analog output, an OPC UA variable) is an alert
too, whoever wrote it, with the bound violation as its own score component.

Without a policy the commands are judged against what the learning period saw each client send each server
(:func:`quaywatch.detect.baseline.learned_operations`); without a learning period either the module stays silent,
since "who may write" cannot be guessed.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from quaywatch.detect import baseline, catalog, rollups
from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent
from quaywatch.policy.load import DNP3_OPERATIONS, ENIP_OPERATIONS, MODBUS_OPERATIONS, S7_OPERATIONS
from quaywatch.policy.model import HostMatch, Policy, Setpoint

if TYPE_CHECKING:
    import duckdb

    from quaywatch.detect.context import DetectionContext

DETECTION = "D7.ics-commands"
REQUIRES: tuple[str, ...] = ()  # each protocol's table is used when present
#: One-core seconds over the benchmark store (make bench): the engine starts the longest detections first.
COST = 0.055
LISTED = 20
EVIDENCE_PACKETS = 100
SUPPRESSION_SECONDS = 3600

#: Actions (what the command does) from the most to the least disruptive; "reset" is a restart or factory reset.
CRITICAL_ACTIONS = ("stop", "start", "download", "reset")
SEVERITY = {"stop": "critical", "start": "critical", "download": "critical", "reset": "critical"}
TECHNIQUES = {
    "write": ["T0855", "T0836"],
    "stop": ["T0855", "T0858", "T0816"],
    "start": ["T0855", "T0858"],
    "download": ["T0855", "T0843"],
    "upload": ["T0855", "T0845"],
    "reset": ["T0855", "T0816"],
    "control": ["T0855", "T0831"],
}
#: The policy operation an action needs (engineering_hosts.operations, conduit allow operations).
POLICY_OPERATION = {"reset": "control"}
#: Each protocol's policy vocabulary (policy/load.py): operation -> codes, checked in this order.
OPERATION_ORDER = ("stop", "start", "download", "upload", "write", "control", "diagnostics", "identify", "read")
FAMILY_OPERATIONS = {"modbus": MODBUS_OPERATIONS, "s7comm": S7_OPERATIONS, "enip": ENIP_OPERATIONS,
                     "dnp3": DNP3_OPERATIONS}  # fmt: skip
#: Protocol name of this module -> the policy's allow key and the baseline's protocol name.
POLICY_FAMILY = {"modbus": "modbus", "s7comm": "s7comm", "cip": "enip", "dnp3": "dnp3"}
BASELINE_PROTOCOL = {"modbus": "modbus", "s7comm": "s7comm", "cip": "cip", "dnp3": "dnp3", "iec104": "iec104",
                     "opcua": "opcua"}  # fmt: skip
#: Restarts and factory resets in the protocols that have them.
CIP_RESET = 0x05
DNP3_RESTARTS = frozenset({0x0D, 0x0E})
IEC104_RESET_PROCESS = 105
IEC104_SETPOINTS = frozenset({48, 49, 50, 61, 62, 63})

_COMMON = "capture_id, flow_id, community_id, ts, packet_number"
#: One SELECT per decoder table: the state-changing requests, as uniform columns.
SOURCES: dict[str, tuple[str, str]] = {
    "modbus": (
        "modbus",
        f"SELECT 'modbus' AS protocol, {_COMMON}, client_ip AS client, server_ip AS server, function_code AS code, "
        "function AS code_name, CAST(function_code AS VARCHAR) AS baseline_code, unit_id, address, "
        "coalesce(values, []::INTEGER[]) AS written, NULL::VARCHAR AS detail "
        "FROM modbus WHERE event_type = 'request' AND direction = 'to_server' AND writes",
    ),
    "s7comm": (
        "s7comm",
        f"SELECT 's7comm' AS protocol, {_COMMON}, client_ip, server_ip, function_code, "
        "coalesce(function, CAST(function_code AS VARCHAR)), "
        "CASE WHEN rosctr_code = 7 THEN 'userdata ' ELSE 'job ' END || CAST(function_code AS VARCHAR), "
        "NULL::SMALLINT, NULL::INTEGER, []::INTEGER[], "
        "concat_ws(' ', CASE WHEN rosctr_code = 7 THEN 'user-data' END, pi_service, filename, "
        "CASE WHEN items IS NOT NULL THEN CAST(items AS VARCHAR) END) "
        "FROM s7comm WHERE controls_plc AND (rosctr_code = 1 OR (rosctr_code = 7 AND direction = 'to_server'))",
    ),
    "cip": (
        "cip",
        f"SELECT 'cip' AS protocol, {_COMMON}, client_ip, server_ip, service_code, service, "
        "CAST(service_code AS VARCHAR), NULL::SMALLINT, NULL::INTEGER, []::INTEGER[], "
        "coalesce(tag, concat_ws(' ', class_name, CAST(instance_id AS VARCHAR), CAST(attribute_id AS VARCHAR))) "
        "FROM cip WHERE message = 'request' AND controls_device",
    ),
    "opcua": (
        "opcua",
        f"SELECT 'opcua' AS protocol, {_COMMON}, client_ip, server_ip, service_type_id, service, service, "
        "NULL::SMALLINT, NULL::INTEGER, []::INTEGER[], CAST(item_count AS VARCHAR) || ' item(s)' "
        "FROM opcua WHERE direction = 'to_server' AND writes",
    ),
    "profinet_dcp": (
        "profinet_dcp",
        f"SELECT 'profinet_dcp' AS protocol, {_COMMON}, coalesce(client_ip, source_mac), "
        "coalesce(server_ip, destination_mac), service_id, 'DCP Set', 'set', NULL::SMALLINT, NULL::INTEGER, "
        "[]::INTEGER[], concat_ws(' ', control, 'name=' || station_name, 'ip=' || ip) "
        "FROM profinet_dcp WHERE controls_device AND service_type = 0",
    ),
    "dnp3": (
        "dnp3",
        f"SELECT 'dnp3' AS protocol, {_COMMON}, client_ip, server_ip, function_code, function, "
        "CAST(function_code AS VARCHAR), NULL::SMALLINT, NULL::INTEGER, []::INTEGER[], "
        "array_to_string(objects, ' ') FROM dnp3 WHERE controls_device AND function_code < 128",
    ),
    "iec104": (
        "iec104",
        f"SELECT 'iec104' AS protocol, {_COMMON}, client_ip, server_ip, type_id, type_name, "
        "CAST(type_id AS VARCHAR), NULL::SMALLINT, NULL::INTEGER, []::INTEGER[], "
        "concat_ws(' ', 'ioa=' || array_to_string(information_object_addresses, ','), "
        "'state=' || CAST(command_state AS VARCHAR), 'setpoint=' || CAST(setpoint AS VARCHAR)) "
        "FROM iec104 WHERE is_command AND cause = 6 AND (type_id BETWEEN 45 AND 69 OR type_id = 105)",
    ),
    "bacnet_property": (
        "bacnet",
        f"SELECT 'bacnet' AS protocol, {_COMMON}, client_ip, server_ip, 15, service, service, NULL::SMALLINT, "
        "NULL::INTEGER, []::INTEGER[], concat_ws(' ', object_type || ':' || CAST(object_instance AS VARCHAR), "
        "property, '=' || value) FROM bacnet_property WHERE writes AND message = 'request'",
    ),
    "bacnet_device_control": (
        "bacnet",
        f"SELECT 'bacnet' AS protocol, {_COMMON}, client_ip, server_ip, "
        "CASE service WHEN 'reinitialize_device' THEN 20 ELSE 17 END, service, service, NULL::SMALLINT, "
        "NULL::INTEGER, []::INTEGER[], state FROM bacnet_device_control "
        "WHERE message = 'request' AND service IN ('reinitialize_device', 'device_communication_control')",
    ),
}


@dataclass(slots=True)
class Command:
    """One state-changing request, whatever the protocol."""

    protocol: str
    capture_id: str
    flow_id: str | None
    community_id: str | None
    ts: dt.datetime
    packet_number: int | None
    client: str
    server: str
    code: int | None
    code_name: str | None
    baseline_code: str | None
    unit_id: int | None
    address: int | None
    written: list[int]
    detail: str | None

    @property
    def action(self) -> str:
        return action_of(self.protocol, self.code, self.detail, self.code_name)


@dataclass(slots=True)
class _Group:
    commands: list[Command] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    unauthorised: int = 0


def action_of(protocol: str, code: int | None, detail: str | None = None, name: str | None = None) -> str:
    """What a command does, in the policy's operation words plus "reset" (restart or factory reset)."""
    family = POLICY_FAMILY.get(protocol)
    if protocol == "cip" and code == CIP_RESET:
        return "reset"
    if protocol == "dnp3" and code in DNP3_RESTARTS:
        return "reset"
    if family is not None and code is not None:
        operations = FAMILY_OPERATIONS[family]
        for operation in OPERATION_ORDER:
            if code in operations.get(operation, frozenset()):
                if protocol == "s7comm" and operation == "control" and detail and "P_PROGRAM" in detail:
                    return "start"  # PI service P_PROGRAM: put the PLC in RUN
                return operation
        return "control"
    if protocol == "iec104":
        if code == IEC104_RESET_PROCESS:
            return "reset"
        return "write" if code in IEC104_SETPOINTS else "control"
    if protocol == "opcua":
        return "control" if name and name.startswith("Call") else "write"  # Call runs a method on the server
    if protocol == "profinet_dcp":
        return "reset" if detail and "Reset" in detail else "write"
    if protocol == "bacnet":
        return {15: "write", 20: "reset"}.get(code or 0, "control")
    return "control"


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _matches(hosts: HostMatch, host: str) -> bool:
    address = _address(host)
    if address is None:
        return host.lower() in hosts.macs or any(host.lower().startswith(mac) for mac in hosts.macs)
    return any(address.version == network.version and address in network for network in hosts.networks)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: The columns of every SOURCES query, in order (``rollups.COMMAND_EVENTS`` holds the same).
COMMAND_COLUMNS = ("protocol", "capture_id", "flow_id", "community_id", "ts", "packet_number", "client", "server",
                   "code", "code_name", "baseline_code", "unit_id", "address", "written", "detail")  # fmt: skip


def command_sources(present: set[str]) -> list[str]:
    """The SOURCES queries of the decoder tables present, each with COMMAND_COLUMNS as its column names."""
    names = ", ".join(COMMAND_COLUMNS)
    return [f"SELECT * FROM ({sql}) AS s({names})" for table, (_, sql) in SOURCES.items() if table in present]


def commands(con: duckdb.DuckDBPyConnection) -> list[Command]:
    """Every state-changing ICS request in the store, oldest first.

    Captures summarised at analysis are read from ``ics_command_events`` (a few rows), the others from the decoder
    tables (every poll of every PLC); when every capture has its summary the decoder tables are not read at all.
    """
    present = catalog.tables(con)
    selects = command_sources(present)
    rolled = rollups.rolled_captures_sql(present)
    if rolled is not None and rollups.COMMAND_EVENTS in present:
        raw = [] if rollups.all_captures_rolled(con, present) else [
            f"SELECT * FROM ({select}) WHERE capture_id NOT IN ({rolled})" for select in selects
        ]  # fmt: skip
        selects = [f"SELECT {', '.join(COMMAND_COLUMNS)} FROM {rollups.COMMAND_EVENTS} "
                   f"WHERE capture_id IN ({rolled})", *raw]  # fmt: skip
    if not selects:
        return []
    # Arrow columns and the time as integer microseconds: building thousands of tz-aware datetimes from DuckDB's or
    # Arrow's timestamps costs several times more than adding each to the epoch.
    names = ", ".join(f"s.{name}" for name in COMMAND_COLUMNS if name != "ts")
    table = con.sql(
        f"SELECT {names}, epoch_us(s.ts) AS ts FROM ({' UNION ALL '.join(selects)}) AS s "
        "WHERE s.client IS NOT NULL AND s.server IS NOT NULL ORDER BY s.ts, s.packet_number"
    ).to_arrow_table()
    columns = {name: table.column(name).to_pylist() for name in COMMAND_COLUMNS}
    columns["ts"] = [None if value is None else _EPOCH + dt.timedelta(microseconds=value) for value in columns["ts"]]
    columns["capture_id"] = [str(value) for value in columns["capture_id"]]
    columns["written"] = [list(value or []) for value in columns["written"]]
    columns["detail"] = [value or None for value in columns["detail"]]
    return [Command(*row) for row in zip(*(columns[name] for name in COMMAND_COLUMNS), strict=True)]


def setpoint_violations(command: Command, setpoints: Iterable[Setpoint]) -> list[dict[str, Any]]:
    """Written Modbus values outside a setpoint's bounds: register, value, bounds and the setpoint's name."""
    if command.protocol != "modbus" or command.address is None or command.code not in (6, 16, 23):
        return []
    out = []
    for setpoint in setpoints:
        if setpoint.protocol != "modbus" or not _matches(setpoint.targets, command.server):
            continue
        if setpoint.unit_id is not None and command.unit_id != setpoint.unit_id:
            continue
        offset = setpoint.address - command.address
        if not 0 <= offset < len(command.written):
            continue
        value = command.written[offset]
        low, high = setpoint.minimum, setpoint.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            out.append({"setpoint": setpoint.name, "register": setpoint.address, "value": value,
                        "min": low, "max": high})  # fmt: skip
    return out


#: Where the written values of the other protocols' setpoints are: per protocol, its table and a SELECT of
#: (capture_id, packet_number, server, address, node, value). Read only when the policy bounds that protocol, since
#: the tables hold every measurement too. IEC 104: set-point commands in activation (C_SE_*, with or without time
#: tag); DNP3: analog output blocks (group 41) of OPERATE, DIRECT_OPERATE and DIRECT_OPERATE_NR (SELECT only arms
#: them); OPC UA: Write requests of a Value attribute (13) whose value reads as a number.
VALUE_SOURCES: dict[str, tuple[str, str]] = {
    "iec104": (
        "iec104",
        "SELECT capture_id, packet_number, server_ip, information_object_addresses[1], NULL::VARCHAR, setpoint "
        f"FROM iec104 WHERE is_command AND cause = 6 AND setpoint IS NOT NULL "
        f"AND type_id IN ({', '.join(map(str, sorted(IEC104_SETPOINTS)))})",
    ),
    "dnp3": (
        "dnp3_control",
        'SELECT capture_id, packet_number, server_ip, "index", NULL::VARCHAR, value FROM dnp3_control '
        "WHERE direction = 'to_server' AND \"group\" = 41 AND function_code IN (4, 5, 6) AND value IS NOT NULL",
    ),
    "opcua": (
        "opcua_item",
        "SELECT capture_id, packet_number, server_ip, NULL::BIGINT, node_id, TRY_CAST(value AS DOUBLE) FROM opcua_item "
        "WHERE service = 'WriteRequest' AND attribute_id = 13 AND TRY_CAST(value AS DOUBLE) IS NOT NULL",
    ),
}
#: How a violation names the bounded value, per protocol.
VALUE_OBJECT = {"iec104": "IOA", "dnp3": "analog output", "opcua": "node"}


def value_violations(
    con: duckdb.DuckDBPyConnection, setpoints: Iterable[Setpoint], present: set[str]
) -> dict[tuple[str, str, int | None], list[dict[str, Any]]]:
    """Set-point values outside their bounds in IEC 104, DNP3 and OPC UA writes, keyed by (protocol, capture,
    packet) so each attaches to the command it came with. Modbus values travel with the command itself."""
    bounded: dict[str, list[Setpoint]] = {}
    for setpoint in setpoints:
        if setpoint.protocol in VALUE_SOURCES:
            bounded.setdefault(setpoint.protocol, []).append(setpoint)
    out: dict[tuple[str, str, int | None], list[dict[str, Any]]] = {}
    for protocol, candidates in sorted(bounded.items()):
        table, sql = VALUE_SOURCES[protocol]
        if table not in present:
            continue
        for capture_id, packet, server, address, node, value in con.execute(sql + " ORDER BY ts").fetchall():
            for setpoint in candidates:
                where = node if protocol == "opcua" else address
                if where != (setpoint.node if protocol == "opcua" else setpoint.address):
                    continue
                if server is None or not _matches(setpoint.targets, str(server)):
                    continue
                low, high = setpoint.minimum, setpoint.maximum
                if (low is not None and value < low) or (high is not None and value > high):
                    out.setdefault((protocol, str(capture_id), packet), []).append(
                        {"setpoint": setpoint.name, "object": f"{VALUE_OBJECT[protocol]} {where}", "value": value,
                         "min": low, "max": high}
                    )  # fmt: skip
    return out


def _bounded_value(violation: dict[str, Any]) -> str:
    where = violation["object"] if "object" in violation else f"register {violation['register']}"
    return f"{violation['setpoint']} ({where}) = {violation['value']} outside [{violation['min']}, {violation['max']}]"


class _PolicyJudge:
    """Whether the policy authorises a command: an engineering host for the target, or the conduit's allow."""

    def __init__(self, con: duckdb.DuckDBPyConnection, policy: Policy, present: set[str], found: list[Command]) -> None:
        self.policy = policy
        self.zones: dict[str, str] = {}
        if "host_context" in present or "host_zones" in present:
            table = "host_context" if "host_context" in present else "host_zones"
            for ip, zone in con.execute(f"SELECT ip, zone FROM {table} WHERE zone IS NOT NULL").fetchall():
                self.zones[str(ip)] = str(zone)
        self.conduits: dict[tuple[str, str], str] = {}
        if "flow_policy" in present:  # the conduits of the commands' flows only, not of every allowed flow
            pairs = list(dict.fromkeys((command.capture_id, command.flow_id) for command in found))
            flows = pa.table(
                {
                    "capture_id": pa.array([capture_id for capture_id, _ in pairs], pa.string()),
                    "flow_id": pa.array([flow_id for _, flow_id in pairs], pa.string()),
                }
            )
            con.register("d7_command_flows", flows)
            try:
                rows = con.execute(
                    "SELECT capture_id, flow_id, conduit FROM flow_policy SEMI JOIN d7_command_flows "
                    "USING (capture_id, flow_id) WHERE verdict = 'allowed' AND conduit IS NOT NULL"
                ).fetchall()
            finally:
                con.unregister("d7_command_flows")
            for capture_id, flow_id, conduit in rows:
                self.conduits[(str(capture_id), str(flow_id))] = str(conduit)
        self.by_name = {conduit.name: conduit for conduit in policy.conduits}

    def zone(self, host: str) -> str | None:
        if host not in self.zones and _address(host) is not None and self.policy.zones:
            from quaywatch.policy.evaluate import zone_of

            self.zones[host] = zone_of(self.policy, host).zone
        return self.zones.get(host)

    def authorised(self, command: Command) -> tuple[bool, str]:
        action = command.action
        needed = POLICY_OPERATION.get(action, action)
        server_zone = self.zone(command.server)
        for host in self.policy.engineering_hosts:
            if not _matches(host.hosts, command.client):
                continue
            reaches = (server_zone is not None and server_zone in host.zones) or _matches(host.targets, command.server)
            if reaches and needed in host.operations:
                return True, f"engineering host {host.name!r} may {needed} there"
            if reaches:
                return False, f"engineering host {host.name!r} may not {needed} (allowed: {', '.join(host.operations)})"
            return False, f"engineering host {host.name!r} is not allowed on {command.server} (zone {server_zone})"
        conduit_name = self.conduits.get((command.capture_id, str(command.flow_id)))
        family = POLICY_FAMILY.get(command.protocol)
        if conduit_name is not None:
            conduit = self.by_name.get(conduit_name)
            allow = conduit.allow.get(family) if conduit is not None and family is not None else None
            if allow is not None:
                if not allow.functions and not allow.operations:
                    return True, f"conduit {conduit_name!r} allows every {family} function"
                if command.code in allow.functions or needed in allow.operations:
                    return True, f"conduit {conduit_name!r} allows {command.code_name or command.code}"
            return False, (
                f"{command.client} is no engineering host, and conduit {conduit_name!r} does not allow "
                f"{command.code_name or command.code} ({needed})"
            )
        return False, f"{command.client} is no engineering host and no conduit allows {needed} to {command.server}"


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per (client, server, protocol, action) of commands neither the policy nor the baseline allows."""
    present = catalog.tables(con)  # duckdb_tables() lists the engine's temporary context tables too
    found = commands(con)
    if not found:
        return []
    policy = context.policy
    groups: dict[tuple[str, str, str, str], _Group] = {}
    if policy is not None:
        judge = _PolicyJudge(con, policy, present, found)
        bounded = value_violations(con, policy.setpoints, present) if policy.setpoints else {}
        # Thousands of commands, a few distinct ones: the verdict, its reason and the alert's key (the action is a
        # function of protocol, code, detail and name) are computed once per distinct combination they depend on.
        verdicts: dict[tuple[Any, ...], tuple[bool, str, tuple[str, str, str, str]]] = {}
        setpoints = policy.setpoints
        for command in found:
            conduit = judge.conduits.get((command.capture_id, str(command.flow_id)))
            same = (command.client, command.server, command.protocol, command.code, command.code_name,
                    command.detail, conduit)  # fmt: skip
            verdict = verdicts.get(same)
            if verdict is None:
                key = (command.client, command.server, command.protocol, command.action)
                verdict = verdicts[same] = (*judge.authorised(command), key)
            allowed, reason, key = verdict
            violations = setpoint_violations(command, setpoints) if setpoints else []
            if bounded:
                violations += bounded.pop((command.protocol, command.capture_id, command.packet_number), [])
            if allowed and not violations:
                continue
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.commands.append(command)
            group.unauthorised += 0 if allowed else 1
            if reason not in group.reasons:
                group.reasons.append(reason)
            group.violations += violations
        return [
            _alert(key, group, "policy", [z for z in (judge.zone(key[0]), judge.zone(key[1])) if z])
            for key, group in groups.items()
        ]
    until = baseline.learning_end(con, context.options)
    if until is None:
        return []  # no policy and no learning period: nothing to judge against (docs/detections.md, D7)
    learned = baseline.learned_operations(con, until)["function_codes"]
    seen_before = {(c.protocol, c.client, c.server, c.baseline_code) for c in found if c.ts < until}
    for command in found:
        if command.ts < until:
            continue
        protocol = BASELINE_PROTOCOL.get(command.protocol)
        codes = learned.get((protocol, command.client, command.server), frozenset()) if protocol else frozenset()
        if command.baseline_code in codes or (command.protocol, command.client, command.server,
                                              command.baseline_code) in seen_before:  # fmt: skip
            continue
        group = groups.setdefault((command.client, command.server, command.protocol, command.action), _Group())
        group.commands.append(command)
        group.unauthorised += 1
        reason = f"{command.client} never sent {command.code_name or command.code} to {command.server} before {until}"
        if reason not in group.reasons:
            group.reasons.append(reason)
    return [_alert(key, group, "baseline", []) for key, group in groups.items()]


def _alert(key: tuple[str, str, str, str], group: _Group, judged_by: str, zones: list[str]) -> Alert:
    client, server, protocol, action = key
    commands_ = group.commands
    first, last = commands_[0].ts, commands_[-1].ts
    codes = list(dict.fromkeys(c.code for c in commands_ if c.code is not None))
    names = list(dict.fromkeys(c.code_name for c in commands_ if c.code_name))
    addresses = list(dict.fromkeys(c.address for c in commands_ if c.address is not None))
    written = list(dict.fromkeys(value for c in commands_ for value in c.written))
    details = list(dict.fromkeys(c.detail for c in commands_ if c.detail))
    packets = list(dict.fromkeys(c.packet_number for c in commands_ if c.packet_number is not None))
    flows = {str(c.flow_id): str(c.community_id or "") for c in commands_ if c.flow_id}
    severity = SEVERITY.get(action, "high")
    confidence = 0.9 if judged_by == "policy" else 0.6
    components = [
        ScoreComponent(
            "operation", 1.0 if action in CRITICAL_ACTIONS else 0.7, 0.4,
            f"{action}: " + ("stops, restarts or reprograms the device, so the process changes at once."
                             if action in CRITICAL_ACTIONS else "changes device state or parameters."),
        ),
    ]  # fmt: skip
    if group.unauthorised:
        components.append(
            ScoreComponent(
                "authorisation", 1.0, 0.4,
                f"{group.unauthorised} of {len(commands_)} command(s) not authorised by the {judged_by}: "
                + "; ".join(group.reasons[:3]) + ".",
            )
        )  # fmt: skip
    if group.violations:
        shown = ", ".join(_bounded_value(violation) for violation in group.violations[:5])
        components.append(ScoreComponent("setpoint bounds", float(len(group.violations)), 0.3,
                                         f"Written value(s) outside the policy's safe bounds: {shown}."))  # fmt: skip
        if severity == "high":
            severity = "critical"
    score = min(1.0, sum(component.weight * min(component.value, 1.0) for component in components) + 0.2)
    title = f"{protocol} {action} from {client} to {server}" + (" outside setpoint bounds" if group.violations else "")
    explanation = (
        f"{client} sent {len(commands_)} {protocol} {action} command(s) ({', '.join(map(str, names[:5]))}) to "
        f"{server} "
        + (f"at {first.isoformat()}. " if first == last else f"between {first.isoformat()} and {last.isoformat()}. ")
        + ("; ".join(group.reasons[:3]) + ". " if group.unauthorised else "")
        + ("Values written outside the setpoint bounds. " if group.violations else "")
        + "Confirm with the owner of the device whether this was planned work; if not, treat it as an attack on the "
        "process."
    )
    values: dict[str, Any] = {
        "protocol": protocol,
        "operation": action,
        "function_codes": codes[:LISTED],
        "functions": names[:LISTED],
        "addresses": addresses[:LISTED],
        "values": written[:LISTED],
        "details": details[:LISTED],
        "setpoint_violations": group.violations[:LISTED],
        "judged_by": judged_by,
    }
    return Alert(
        detection=DETECTION,
        title=title,
        key={"client": client, "server": server, "protocol": protocol, "operation": action},
        severity=severity,
        confidence=confidence,
        techniques=list(TECHNIQUES.get(action, ["T0855"])),
        first_seen=first,
        last_seen=last,
        count=len(commands_),
        explanation=explanation,
        score=round(score, 3),
        score_components=components,
        assets=[client, server],
        zones=list(dict.fromkeys(zones)),
        evidence=Evidence(
            flow_ids=list(flows)[:EVIDENCE_PACKETS],
            community_ids=[c for c in dict.fromkeys(flows.values()) if c][:EVIDENCE_PACKETS],
            events=[
                EventReference(_table(c.protocol), c.capture_id, c.packet_number, c.flow_id)
                for c in commands_[:EVIDENCE_PACKETS]
            ],
            packet_numbers=packets[:EVIDENCE_PACKETS],
            values=values,
        ),
        suppression_seconds=SUPPRESSION_SECONDS,
    )


def _table(protocol: str) -> str:
    return "bacnet_property" if protocol == "bacnet" else protocol

"""Load and validate a site policy, reporting every problem at once with file, line and key path.

The YAML is read as a node tree (``yaml.compose``) rather than as plain data so that every value, list items
included, keeps its line, and so that times keep the text the author wrote (YAML 1.1 would read ``17:00`` as the
sexagesimal integer 1020). Unknown keys are errors: a typo such as ``fucntions`` must never silently widen a conduit.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from quaywatch.decode.dnp3.constants import FUNCTIONS as DNP3_FUNCTIONS
from quaywatch.decode.enip.constants import CONNECTION_MANAGER_SERVICES, LOGIX_SERVICES, SERVICES
from quaywatch.decode.s7comm.constants import FUNCTIONS as S7_FUNCTIONS
from quaywatch.policy.model import (
    EXTERNAL_ZONE,
    OPERATIONS,
    REMOTE_METHODS,
    WEEKDAYS,
    Conduit,
    ContainerDataFlow,
    EngineeringHost,
    ExternalDestination,
    HostMatch,
    Network,
    Policy,
    Problem,
    ProtocolAllow,
    RemoteAccess,
    Setpoint,
    TimeWindow,
    Zone,
)

TRANSPORTS = ("tcp", "udp", "sctp", "icmp", "icmpv6")
CONTAINER_KINDS = ("container_ids", "edifact")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$|^[0-9a-f]{2}([:-][0-9a-f]{2}){2}$", re.IGNORECASE)
_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_PORT_RANGE = re.compile(r"^(\d{1,5})-(\d{1,5})$")


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _decoder_names() -> frozenset[str]:
    from quaywatch.decode.registry import all_decoders

    return frozenset(decoder.name for decoder in all_decoders())


# --- ICS vocabularies --------------------------------------------------------------------------------------------

MODBUS_OPERATIONS: dict[str, frozenset[int]] = {
    "read": frozenset({1, 2, 3, 4, 7, 20, 24}),
    "write": frozenset({5, 6, 15, 16, 21, 22, 23}),
    "diagnostics": frozenset({8, 11, 12, 17}),
    "identify": frozenset({43}),
}
S7_NAMES: dict[str, int] = {
    "cpu_services": 0x00,
    "setup_communication": 0xF0,
    "read_var": 0x04,
    "write_var": 0x05,
    "request_download": 0x1A,
    "download_block": 0x1B,
    "download_ended": 0x1C,
    "start_upload": 0x1D,
    "upload": 0x1E,
    "end_upload": 0x1F,
    "pi_service": 0x28,
    "plc_stop": 0x29,
}
S7_OPERATIONS: dict[str, frozenset[int]] = {
    "read": frozenset({0x04}),
    "write": frozenset({0x05}),
    "download": frozenset({0x1A, 0x1B, 0x1C}),
    "upload": frozenset({0x1D, 0x1E, 0x1F}),
    "control": frozenset({0x28}),
    "stop": frozenset({0x29}),
    "diagnostics": frozenset({0x00}),
}
ENIP_NAMES: dict[str, int] = {
    _snake(name): code
    for table in (SERVICES, CONNECTION_MANAGER_SERVICES, LOGIX_SERVICES)
    for code, name in table.items()
}
ENIP_OPERATIONS: dict[str, frozenset[int]] = {
    "read": frozenset({0x01, 0x03, 0x0E, 0x18, 0x4C, 0x52, 0x55}),
    "write": frozenset({0x02, 0x04, 0x10, 0x19, 0x4D, 0x4E, 0x53}),
    "control": frozenset({0x05, 0x06, 0x07, 0x08, 0x09, 0x15, 0x54, 0x5B}),
    "start": frozenset({0x06}),
    "stop": frozenset({0x07}),
}
DNP3_NAMES: dict[str, int] = {name.lower(): code for code, name in DNP3_FUNCTIONS.items()}
DNP3_OPERATIONS: dict[str, frozenset[int]] = {
    "read": frozenset({0x01}),
    "write": frozenset({0x02}),
    "control": frozenset({0x03, 0x04, 0x05, 0x06}),
    "stop": frozenset({0x12}),
    "start": frozenset({0x0D, 0x0E, 0x10, 0x11}),
    "download": frozenset({0x19, 0x1A, 0x1B, 0x1E}),
}


class _Protocol:
    """How one ICS protocol's function codes are written in a policy."""

    def __init__(
        self, label: str, key: str, low: int, high: int, names: dict[str, int], known: Callable[[int], bool],
        operations: dict[str, frozenset[int]], decoders: tuple[str, ...],
    ) -> None:  # fmt: skip
        self.label, self.key, self.low, self.high = label, key, low, high
        self.names, self.known, self.operations, self.decoders = names, known, operations, decoders


ICS_PROTOCOLS: dict[str, _Protocol] = {
    "modbus": _Protocol(
        "Modbus function code", "functions", 1, 127, {}, lambda c: True, MODBUS_OPERATIONS, ("modbus",)
    ),
    "s7comm": _Protocol(
        "S7comm function", "functions", 0, 255, S7_NAMES, lambda c: c in S7_FUNCTIONS, S7_OPERATIONS, ("s7comm",)
    ),
    "enip": _Protocol(
        "CIP service code", "services", 0, 127, ENIP_NAMES, lambda c: True, ENIP_OPERATIONS, ("enip", "enip_udp")
    ),
    "dnp3": _Protocol(
        "DNP3 function code", "functions", 0, 255, DNP3_NAMES, lambda c: c in DNP3_FUNCTIONS, DNP3_OPERATIONS, ("dnp3",)
    ),
}


# --- the node reader ---------------------------------------------------------------------------------------------


class _Checker:
    """Walks the node tree, converting what is valid and recording every problem it meets."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, _line(node), path, message))

    def warn(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, _line(node), path, message, "warning"))

    def value(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def mapping(
        self, node: yaml.Node, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, yaml.Node] | None:
        """The keys of a mapping node; unknown, duplicate and missing keys are problems."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping with keys {', '.join(allowed)}, got {_kind(node)}")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            where = f"{path}.{key}" if path else key
            if key in found:
                self.error(key_node, where, "duplicate key")
            elif key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(allowed)}"
                self.error(key_node, where, f"unknown key {key!r}{hint}")
            else:
                found[key] = value_node
        for key in required:
            if key not in found:
                self.error(node, path or "(top level)", f"missing required key {key!r}")
        return found

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        self.error(node, path, f"expected a list, got {_kind(node)}")
        return []

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"expected a single value, got {_kind(node)}")
            return None
        return self.value(node)

    def text(self, node: yaml.Node | None, path: str, default: str = "") -> str:
        if node is None:
            return default
        value = self.scalar(node, path)
        if value is None:
            return default
        if isinstance(value, (dict, list)) or not isinstance(node, yaml.ScalarNode):
            return default
        return str(node.value) if not isinstance(value, str) else value

    def integer(self, node: yaml.Node, path: str, low: int, high: int, what: str) -> int | None:
        value = self.scalar(node, path)
        if value is None and isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"expected {what} ({low}-{high}), got nothing")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if value is not None:
                self.error(node, path, f"{_show(node)} is not {what} ({low}-{high})")
            return None
        if not low <= value <= high:
            self.error(node, path, f"{value} is not {what} ({low}-{high})")
            return None
        return value

    def name(self, node: yaml.Node | None, path: str) -> str:
        value = self.text(node, path)
        if node is not None and value and not _NAME.match(value):
            self.error(node, path, f"{value!r} is not a valid name (letters, digits, '.', '_', '-'; at most 100)")
        return value

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...], what: str) -> str | None:
        value = self.text(node, path)
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; one of {', '.join(choices)}"
            self.error(node, path, f"{value!r} is not {what}{hint}")
            return None
        return value

    def choices(self, node: yaml.Node, path: str, choices: tuple[str, ...], what: str) -> tuple[str, ...]:
        out: list[str] = []
        for index, item in enumerate(self.sequence(node, path)):
            value = self.choice(item, f"{path}[{index}]", choices, what)
            if value is not None and value not in out:
                out.append(value)
        return tuple(out)

    def network(self, node: yaml.Node, path: str) -> Network | None:
        text = self.text(node, path)
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                self.error(node, path, f"{text!r} is not an IPv4 or IPv6 address or CIDR ({error})")
                return None
            self.error(node, path, f"{text!r} has host bits set (did you mean {loose}?)")
            return None

    def mac(self, node: yaml.Node, path: str) -> str | None:
        text = self.text(node, path)
        if not _MAC.match(text):
            self.error(node, path, f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff) or OUI prefix (aa:bb:cc)")
            return None
        return text.lower().replace("-", ":")

    def hosts(self, node: yaml.Node, path: str) -> HostMatch:
        """IP addresses, CIDRs and MACs in one list, told apart by their form."""
        networks: list[Network] = []
        macs: list[str] = []
        for index, item in enumerate(self.sequence(node, path)):
            where = f"{path}[{index}]"
            text = self.text(item, where)
            if _MAC.match(text):
                macs.append(text.lower().replace("-", ":"))
                continue
            network = self.network(item, where)
            if network is not None:
                networks.append(network)
        return HostMatch(tuple(networks), tuple(macs))

    def refs(self, node: yaml.Node, path: str, known: set[str], what: str) -> tuple[str, ...]:
        out: list[str] = []
        for index, item in enumerate(self.sequence(node, path)):
            ref = self.ref(item, f"{path}[{index}]", known, what)
            if ref:
                out.append(ref)
        return tuple(out)

    def ref(self, node: yaml.Node, path: str, known: set[str], what: str) -> str:
        value = self.text(node, path)
        if value not in known:
            close = difflib.get_close_matches(value, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.error(node, path, f"unknown {what} {value!r}{hint}")
            return ""
        return value

    def timezone(self, node: yaml.Node, path: str) -> str | None:
        text = self.text(node, path)
        try:
            zoneinfo.ZoneInfo(text)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.error(
                node,
                path,
                f"{text!r} is not a known IANA time zone name (such as Europe/Amsterdam)",
            )
            return None
        return text


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{_show(node)}"


def _show(node: yaml.Node) -> str:
    return repr(str(node.value)) if isinstance(node, yaml.ScalarNode) else _kind(node)


# --- sections ----------------------------------------------------------------------------------------------------

TOP_KEYS = (
    "version",
    "site",
    "timezone",
    "defaults",
    "zones",
    "conduits",
    "engineering_hosts",
    "remote_access",
    "external_destinations",
    "container_data",
    "setpoints",
)


def load_policy(path: str | Path) -> tuple[Policy, list[Problem]]:
    """Read and validate a policy file; the policy holds whatever was valid, the problems say what was not."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return Policy(), [Problem(str(path), 0, "(file)", f"cannot read: {error}")]
    return load_policy_text(text, str(path))


def load_policy_text(text: str, file: str = "policy.yaml") -> tuple[Policy, list[Problem]]:
    """Validate policy YAML given as text; ``file`` names it in problems."""
    check = _Checker(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(error, "problem", None) or str(error)
        return Policy(), [Problem(file, line, "(yaml)", f"not valid YAML: {problem}")]
    if root is None:
        return Policy(), [Problem(file, 1, "(top level)", "empty policy: at least 'zones' is needed")]
    top = check.mapping(root, "", TOP_KEYS, ("zones",))
    if top is None:
        return Policy(), check.problems
    if "version" in top:
        check.integer(top["version"], "version", 1, 1, "a supported policy version")
    site = check.text(top.get("site"), "site")
    timezone = "UTC"
    if "timezone" in top:
        timezone = check.timezone(top["timezone"], "timezone") or "UTC"
    inter_zone = "deny"
    if "defaults" in top:
        defaults = check.mapping(top["defaults"], "defaults", ("inter_zone",))
        if defaults and "inter_zone" in defaults:
            inter_zone = (
                check.choice(defaults["inter_zone"], "defaults.inter_zone", ("deny", "alert"), "a default") or "deny"
            )
    zones = _zones(check, top.get("zones"))
    zone_names = {zone.name for zone in zones} | {EXTERNAL_ZONE}
    conduits = _conduits(check, top.get("conduits"), zone_names)
    engineering = _engineering(check, top.get("engineering_hosts"), zone_names)
    remote = _remote(check, top.get("remote_access"), zone_names, timezone)
    external = _external(check, top.get("external_destinations"), zone_names, zones)
    container = _container(
        check, top.get("container_data"), zone_names, {c.name for c in conduits}, {e.name for e in external}
    )
    setpoints = _setpoints(check, top.get("setpoints"))
    policy = Policy(site, timezone, inter_zone, zones, conduits, engineering, remote, external, container, setpoints)
    check.problems.sort(key=lambda p: (p.line, p.severity != "error"))
    return policy, check.problems


def _items(check: _Checker, node: yaml.Node | None, path: str) -> list[tuple[str, yaml.Node]]:
    if node is None:
        return []
    return [(f"{path}[{index}]", item) for index, item in enumerate(check.sequence(node, path))]


def _unique(check: _Checker, seen: set[str], node: yaml.Node | None, path: str, name: str) -> None:
    if name in seen:
        check.error(node, f"{path}.name", f"duplicate name {name!r}")
    seen.add(name)


ZONE_KEYS = ("name", "description", "sl_target", "purdue", "cidrs", "vlans", "macs")


def _zones(check: _Checker, node: yaml.Node | None) -> tuple[Zone, ...]:
    zones: list[Zone] = []
    seen: set[str] = set()
    owners: list[tuple[Network, str, yaml.Node, str]] = []
    vlan_owner: dict[int, str] = {}
    for path, item in _items(check, node, "zones"):
        keys = check.mapping(item, path, ZONE_KEYS, ("name",))
        if keys is None:
            continue
        name = check.name(keys.get("name"), f"{path}.name")
        if name == EXTERNAL_ZONE:
            check.error(keys["name"], f"{path}.name", f"{EXTERNAL_ZONE!r} is reserved for addresses outside every zone")
        _unique(check, seen, keys.get("name"), path, name)
        sl = (
            check.integer(keys["sl_target"], f"{path}.sl_target", 0, 4, "a security level")
            if "sl_target" in keys
            else None
        )
        purdue: float | None = None
        if "purdue" in keys:
            value = check.scalar(keys["purdue"], f"{path}.purdue")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 5:
                check.error(
                    keys["purdue"], f"{path}.purdue", f"{_show(keys['purdue'])} is not a Purdue level (0-5, e.g. 3.5)"
                )
            else:
                purdue = float(value)
        cidrs: list[Network] = []
        for index, cidr_node in enumerate(check.sequence(keys["cidrs"], f"{path}.cidrs") if "cidrs" in keys else []):
            where = f"{path}.cidrs[{index}]"
            network = check.network(cidr_node, where)
            if network is None:
                continue
            for other, other_zone, _other_node, other_path in owners:
                if other.version == network.version and network.overlaps(other):
                    check.warn(cidr_node, where, f"{network} overlaps {other} of zone {other_zone!r} ({other_path})")
            owners.append((network, name, cidr_node, where))
            cidrs.append(network)
        vlans: list[int] = []
        for index, vlan_node in enumerate(check.sequence(keys["vlans"], f"{path}.vlans") if "vlans" in keys else []):
            where = f"{path}.vlans[{index}]"
            vlan = check.integer(vlan_node, where, 1, 4094, "a VLAN id")
            if vlan is None:
                continue
            if vlan in vlan_owner and vlan_owner[vlan] != name:
                check.warn(vlan_node, where, f"VLAN {vlan} is also in zone {vlan_owner[vlan]!r}")
            vlan_owner.setdefault(vlan, name)
            vlans.append(vlan)
        macs: list[str] = []
        for index, mac_node in enumerate(check.sequence(keys["macs"], f"{path}.macs") if "macs" in keys else []):
            mac = check.mac(mac_node, f"{path}.macs[{index}]")
            if mac:
                macs.append(mac)
        if not any(key in keys for key in ("cidrs", "vlans", "macs")):
            check.warn(item, path, f"zone {name!r} has no cidrs, vlans or macs: nothing can belong to it")
        description = check.text(keys.get("description"), f"{path}.description")
        zones.append(Zone(name, description, sl, purdue, tuple(cidrs), tuple(vlans), tuple(macs), _line(item)))
    return tuple(zones)


CONDUIT_KEYS = (
    "name",
    "from",
    "to",
    "protocol",
    "ports",
    "direction",
    "initiator",
    "allow",
    "description",
    "sl_target",
)


def _conduits(check: _Checker, node: yaml.Node | None, zone_names: set[str]) -> tuple[Conduit, ...]:
    decoders = _decoder_names()
    conduits: list[Conduit] = []
    seen: set[str] = set()
    for path, item in _items(check, node, "conduits"):
        keys = check.mapping(item, path, CONDUIT_KEYS, ("name", "from", "to", "protocol"))
        if keys is None:
            continue
        name = check.name(keys.get("name"), f"{path}.name")
        _unique(check, seen, keys.get("name"), path, name)
        source = check.ref(keys["from"], f"{path}.from", zone_names, "zone") if "from" in keys else ""
        target = check.ref(keys["to"], f"{path}.to", zone_names, "zone") if "to" in keys else ""
        protocol, ports = "", list[tuple[int, int]]()
        if "protocol" in keys:
            protocol = check.text(keys["protocol"], f"{path}.protocol").lower()
            transport, _, port_text = protocol.partition("/")
            if port_text and transport in ("tcp", "udp", "sctp"):
                port = int(port_text) if port_text.isdigit() else -1
                if not 0 <= port <= 65535:
                    check.error(keys["protocol"], f"{path}.protocol", f"{port_text!r} is not a port (0-65535)")
                else:
                    ports.append((port, port))
            elif protocol not in decoders and protocol not in TRANSPORTS:
                close = difflib.get_close_matches(protocol, sorted(decoders | set(TRANSPORTS)), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                check.error(
                    keys["protocol"], f"{path}.protocol",
                    f"{protocol!r} is not a decoder name or transport[/port] such as tcp/443{hint}",
                )  # fmt: skip
        if "ports" in keys:
            for index, port_node in enumerate(check.sequence(keys["ports"], f"{path}.ports")):
                port_range = _port(check, port_node, f"{path}.ports[{index}]")
                if port_range:
                    ports.append(port_range)
        direction = "both"
        if "direction" in keys:
            direction = (
                check.choice(keys["direction"], f"{path}.direction", ("one-way", "both"), "a direction") or "both"
            )
        initiator = "from"
        if "initiator" in keys:
            initiator = (
                check.choice(keys["initiator"], f"{path}.initiator", ("from", "to", "either"), "an initiator") or "from"
            )
        allow = _allow(check, keys["allow"], f"{path}.allow", protocol) if "allow" in keys else {}
        sl = (
            check.integer(keys["sl_target"], f"{path}.sl_target", 0, 4, "a security level")
            if "sl_target" in keys
            else None
        )
        description = check.text(keys.get("description"), f"{path}.description")
        conduits.append(
            Conduit(
                name, source, target, protocol, tuple(ports), direction, initiator, allow, description, sl, _line(item)
            )
        )
    return tuple(conduits)


def _port(check: _Checker, node: yaml.Node, path: str) -> tuple[int, int] | None:
    value = check.scalar(node, path)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 65535:
            return value, value
    elif isinstance(value, str) and (match := _PORT_RANGE.match(value)):
        low, high = int(match.group(1)), int(match.group(2))
        if 0 <= low <= high <= 65535:
            return low, high
    check.error(node, path, f"{_show(node)} is not a port (0-65535) or range such as 5000-5010")
    return None


def _allow(check: _Checker, node: yaml.Node, path: str, protocol: str) -> dict[str, ProtocolAllow]:
    keys = check.mapping(node, path, tuple(ICS_PROTOCOLS))
    out: dict[str, ProtocolAllow] = {}
    for family, family_node in (keys or {}).items():
        spec = ICS_PROTOCOLS[family]
        where = f"{path}.{family}"
        if protocol and protocol not in spec.decoders:
            check.error(family_node, where, f"{family} operations given but the conduit's protocol is {protocol!r}")
        inner = check.mapping(family_node, where, (spec.key, "operations"))
        if inner is None:
            continue
        functions: list[int] = []
        if spec.key in inner:
            for index, code_node in enumerate(check.sequence(inner[spec.key], f"{where}.{spec.key}")):
                code = _function(check, code_node, f"{where}.{spec.key}[{index}]", spec)
                if code is not None:
                    functions.append(code)
        operations: tuple[str, ...] = ()
        if "operations" in inner:
            allowed_ops = tuple(op for op in OPERATIONS if op in spec.operations)
            operations = check.choices(inner["operations"], f"{where}.operations", allowed_ops, f"a {family} operation")
        out[family] = ProtocolAllow(tuple(functions), operations)
    return out


def _function(check: _Checker, node: yaml.Node, path: str, spec: _Protocol) -> int | None:
    value = check.scalar(node, path)
    if isinstance(value, str):
        code = spec.names.get(_snake(value))
        if code is None:
            close = difflib.get_close_matches(_snake(value), sorted(spec.names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            check.error(node, path, f"{value!r} is not a known {spec.label} name{hint}")
        return code
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not spec.low <= value <= spec.high
        or not spec.known(value)
    ):
        check.error(
            node,
            path,
            f"{_show(node) if not isinstance(value, int) else value} is not a {spec.label} ({spec.low}-{spec.high})",
        )
        return None
    return value


ENGINEERING_KEYS = ("name", "hosts", "operations", "zones", "targets", "description")


def _engineering(check: _Checker, node: yaml.Node | None, zone_names: set[str]) -> tuple[EngineeringHost, ...]:
    out: list[EngineeringHost] = []
    seen: set[str] = set()
    for path, item in _items(check, node, "engineering_hosts"):
        keys = check.mapping(item, path, ENGINEERING_KEYS, ("name", "hosts", "operations"))
        if keys is None:
            continue
        name = check.name(keys.get("name"), f"{path}.name")
        _unique(check, seen, keys.get("name"), path, name)
        hosts = check.hosts(keys["hosts"], f"{path}.hosts") if "hosts" in keys else HostMatch()
        operations = (
            check.choices(keys["operations"], f"{path}.operations", OPERATIONS, "an operation")
            if "operations" in keys
            else ()
        )
        zones = check.refs(keys["zones"], f"{path}.zones", zone_names, "zone") if "zones" in keys else ()
        targets = check.hosts(keys["targets"], f"{path}.targets") if "targets" in keys else HostMatch()
        if "zones" not in keys and "targets" not in keys:
            check.error(item, path, "say where these hosts may operate: 'zones', 'targets' (PLC addresses) or both")
        description = check.text(keys.get("description"), f"{path}.description")
        out.append(EngineeringHost(name, hosts, operations, zones, targets, description, _line(item)))
    return tuple(out)


REMOTE_KEYS = ("name", "method", "source", "zones", "destinations", "windows", "timezone", "expires", "reason")
WINDOW_KEYS = ("days", "start", "end", "timezone", "spans_midnight")


def _remote(check: _Checker, node: yaml.Node | None, zone_names: set[str], default_tz: str) -> tuple[RemoteAccess, ...]:
    out: list[RemoteAccess] = []
    seen: set[str] = set()
    for path, item in _items(check, node, "remote_access"):
        keys = check.mapping(item, path, REMOTE_KEYS, ("name", "method", "source"))
        if keys is None:
            continue
        name = check.name(keys.get("name"), f"{path}.name")
        _unique(check, seen, keys.get("name"), path, name)
        method = (
            check.choice(keys["method"], f"{path}.method", REMOTE_METHODS, "a remote-access method")
            if "method" in keys
            else None
        )
        source = check.hosts(keys["source"], f"{path}.source") if "source" in keys else HostMatch()
        zones = check.refs(keys["zones"], f"{path}.zones", zone_names, "zone") if "zones" in keys else ()
        destinations = (
            check.hosts(keys["destinations"], f"{path}.destinations") if "destinations" in keys else HostMatch()
        )
        if "zones" not in keys and "destinations" not in keys:
            check.error(item, path, "say where the path leads: 'zones', 'destinations' or both")
        tz = check.timezone(keys["timezone"], f"{path}.timezone") if "timezone" in keys else default_tz
        windows: list[TimeWindow] = []
        for wpath, wnode in _items(check, keys.get("windows"), f"{path}.windows"):
            window = _window(check, wnode, wpath, tz or default_tz)
            if window:
                windows.append(window)
        expires: dt.date | None = None
        if "expires" in keys:
            value = check.scalar(keys["expires"], f"{path}.expires")
            if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
                check.error(keys["expires"], f"{path}.expires", f"{_show(keys['expires'])} is not a date (YYYY-MM-DD)")
            else:
                expires = value
                if value < dt.date.today():
                    check.warn(keys["expires"], f"{path}.expires", f"expired on {value}")
        reason = check.text(keys.get("reason"), f"{path}.reason")
        out.append(
            RemoteAccess(name, method or "", source, zones, destinations, tuple(windows), expires, reason, _line(item))
        )
    return tuple(out)


def _window(check: _Checker, node: yaml.Node, path: str, default_tz: str) -> TimeWindow | None:
    keys = check.mapping(node, path, WINDOW_KEYS, ("days", "start", "end"))
    if keys is None:
        return None
    days = check.choices(keys["days"], f"{path}.days", WEEKDAYS, "a weekday") if "days" in keys else ()
    times: dict[str, dt.time] = {}
    for key in ("start", "end"):
        if key in keys:
            raw = str(keys[key].value) if isinstance(keys[key], yaml.ScalarNode) else ""
            match = _TIME.match(raw)
            if match is None:
                check.error(keys[key], f"{path}.{key}", f"{raw!r} is not a time of day HH:MM (00:00-23:59)")
            else:
                times[key] = dt.time(int(match.group(1)), int(match.group(2)))
    tz = check.timezone(keys["timezone"], f"{path}.timezone") if "timezone" in keys else default_tz
    spans = False
    if "spans_midnight" in keys:
        value = check.scalar(keys["spans_midnight"], f"{path}.spans_midnight")
        if not isinstance(value, bool):
            check.error(keys["spans_midnight"], f"{path}.spans_midnight", "expected true or false")
        spans = value is True
    if len(times) < 2 or tz is None:
        return None
    start, end = times["start"], times["end"]
    if start == end:
        check.error(keys["end"], f"{path}.end", f"end {end:%H:%M} equals start: an empty window")
        return None
    if end < start and not spans:
        check.error(
            keys["end"], f"{path}.end",
            f"end {end:%H:%M} is before start {start:%H:%M}; add 'spans_midnight: true' if the window crosses midnight",
        )  # fmt: skip
        return None
    if end > start and spans:
        check.error(
            keys["spans_midnight"], f"{path}.spans_midnight", f"{start:%H:%M}-{end:%H:%M} does not cross midnight"
        )
        return None
    return TimeWindow(days, start, end, tz, spans)


EXTERNAL_KEYS = ("name", "reason", "cidrs", "domains", "zones")


def _external(
    check: _Checker, node: yaml.Node | None, zone_names: set[str], zones: tuple[Zone, ...]
) -> tuple[ExternalDestination, ...]:
    out: list[ExternalDestination] = []
    seen: set[str] = set()
    for path, item in _items(check, node, "external_destinations"):
        keys = check.mapping(item, path, EXTERNAL_KEYS, ("name", "reason"))
        if keys is None:
            continue
        name = check.name(keys.get("name"), f"{path}.name")
        _unique(check, seen, keys.get("name"), path, name)
        cidrs: list[Network] = []
        for index, cidr_node in enumerate(check.sequence(keys["cidrs"], f"{path}.cidrs") if "cidrs" in keys else []):
            network = check.network(cidr_node, f"{path}.cidrs[{index}]")
            if network is None:
                continue
            inside = [z.name for z in zones for c in z.cidrs if c.version == network.version and c.overlaps(network)]
            if inside:
                check.warn(cidr_node, f"{path}.cidrs[{index}]", f"{network} is inside zone {inside[0]!r}, not external")
            cidrs.append(network)
        domains: list[str] = []
        for index, domain_node in enumerate(
            check.sequence(keys["domains"], f"{path}.domains") if "domains" in keys else []
        ):
            domain = check.text(domain_node, f"{path}.domains[{index}]").lower().rstrip(".")
            if len(domain) > 253 or not _DOMAIN.match(domain):
                check.error(
                    domain_node, f"{path}.domains[{index}]", f"{domain!r} is not a domain name or *.suffix wildcard"
                )
            else:
                domains.append(domain)
        if "cidrs" not in keys and "domains" not in keys:
            check.error(item, path, "an external destination needs 'cidrs', 'domains' or both")
        zone_refs = check.refs(keys["zones"], f"{path}.zones", zone_names, "zone") if "zones" in keys else ()
        reason = check.text(keys.get("reason"), f"{path}.reason")
        if "reason" in keys and not reason.strip():
            check.error(keys["reason"], f"{path}.reason", "give the reason this destination is approved")
        out.append(ExternalDestination(name, reason, tuple(cidrs), tuple(domains), zone_refs, _line(item)))
    return tuple(out)


CONTAINER_KEYS = ("name", "kinds", "conduits", "zones", "partners", "reason")


def _container(
    check: _Checker, node: yaml.Node | None, zone_names: set[str], conduit_names: set[str], partner_names: set[str]
) -> tuple[ContainerDataFlow, ...]:
    out: list[ContainerDataFlow] = []
    seen: set[str] = set()
    for path, item in _items(check, node, "container_data"):
        keys = check.mapping(item, path, CONTAINER_KEYS, ("name", "kinds"))
        if keys is None:
            continue
        name = check.name(keys.get("name"), f"{path}.name")
        _unique(check, seen, keys.get("name"), path, name)
        kinds = (
            check.choices(keys["kinds"], f"{path}.kinds", CONTAINER_KINDS, "a kind of cargo data")
            if "kinds" in keys
            else ()
        )
        conduits = (
            check.refs(keys["conduits"], f"{path}.conduits", conduit_names, "conduit") if "conduits" in keys else ()
        )
        zones = check.refs(keys["zones"], f"{path}.zones", zone_names, "zone") if "zones" in keys else ()
        partners = (
            check.refs(keys["partners"], f"{path}.partners", partner_names, "external destination")
            if "partners" in keys
            else ()
        )
        if "conduits" not in keys and "zones" not in keys:
            check.error(item, path, "say where the data may flow: 'conduits', 'zones' or both")
        reason = check.text(keys.get("reason"), f"{path}.reason")
        out.append(ContainerDataFlow(name, kinds, conduits, zones, partners, reason, _line(item)))
    return tuple(out)


SETPOINT_KEYS = ("name", "targets", "protocol", "address", "node", "unit_id", "min", "max", "description")
SETPOINT_PROTOCOLS = ("modbus", "iec104", "dnp3", "opcua")
#: What ``address`` means per protocol and its range: a Modbus holding register; an IEC 60870-5-104 information
#: object address (3 octets, IEC 60870-5-104 section 7.2.5 as used by IEC 60870-5-101); a DNP3 analog output point
#: index (IEEE 1815 object prefixes and ranges go to 32 bits). OPC UA names the variable with ``node`` instead.
SETPOINT_ADDRESSES = {
    "modbus": (65535, "a register address"),
    "iec104": (16_777_215, "an information object address"),
    "dnp3": (4_294_967_295, "an analog output point index"),
}


def _bound(check: _Checker, node: yaml.Node, path: str) -> float | None:
    value = check.scalar(node, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        check.error(node, path, f"{_show(node)} is not a number")
        return None
    return float(value)


def _setpoints(check: _Checker, node: yaml.Node | None) -> tuple[Setpoint, ...]:
    """Safe bounds of written values (issue 7: writes outside them are an alert even from an engineering host)."""
    out: list[Setpoint] = []
    seen: set[str] = set()
    for path, item in _items(check, node, "setpoints"):
        keys = check.mapping(item, path, SETPOINT_KEYS, ("name", "targets", "protocol"))
        if keys is None:
            continue
        name = check.name(keys.get("name"), f"{path}.name")
        _unique(check, seen, keys.get("name"), path, name)
        targets = check.hosts(keys["targets"], f"{path}.targets") if "targets" in keys else HostMatch()
        protocol = (
            check.choice(keys["protocol"], f"{path}.protocol", SETPOINT_PROTOCOLS, "a setpoint protocol")
            if "protocol" in keys
            else None
        )
        address: int | None = None
        node_id = ""
        if protocol == "opcua":
            if "address" in keys:
                check.error(keys["address"], f"{path}.address", "an OPC UA setpoint names its variable with 'node'")
            if "node" not in keys:
                check.error(item, path, "give the variable's NodeId as 'node', e.g. ns=2;s=Crane1.HoistSpeedLimit")
            node_id = check.text(keys.get("node"), f"{path}.node").strip()
        elif protocol is not None:
            highest, what = SETPOINT_ADDRESSES[protocol]
            if "node" in keys:
                check.error(keys["node"], f"{path}.node", f"only OPC UA setpoints have a node; {protocol} uses address")
            if "address" not in keys:
                check.error(item, path, f"give {what} as 'address'")
            else:
                address = check.integer(keys["address"], f"{path}.address", 0, highest, what)
        if "unit_id" in keys and protocol not in (None, "modbus"):
            check.error(keys["unit_id"], f"{path}.unit_id", "unit_id is a Modbus unit; leave it out for " + protocol)
        unit_id = check.integer(keys["unit_id"], f"{path}.unit_id", 0, 255, "a unit id") if "unit_id" in keys else None
        low = _bound(check, keys["min"], f"{path}.min") if "min" in keys else None
        high = _bound(check, keys["max"], f"{path}.max") if "max" in keys else None
        if "min" not in keys and "max" not in keys:
            check.error(item, path, "give the safe bounds: 'min', 'max' or both")
        if low is not None and high is not None and low > high:
            check.error(keys["max"], f"{path}.max", f"max {high:g} is below min {low:g}")
            continue
        description = check.text(keys.get("description"), f"{path}.description")
        bad_bound = ("min" in keys and low is None) or ("max" in keys and high is None)
        located = bool(node_id) if protocol == "opcua" else address is not None
        if protocol is None or not located or bad_bound or (low is None and high is None):
            continue  # an unusable bound must not silently become "no bound"
        line = _line(item)
        out.append(Setpoint(name, targets, protocol, address or 0, low, high, unit_id, description, line, node_id))
    return tuple(out)

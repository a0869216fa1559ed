"""Load and validate the live testbed topology (data/sim/testbed.yaml).

Errors name the file, line and key so that a user editing their own topology
finds the mistake without reading this code.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SERVERS = ("modbus", "s7", "enip", "opcua")
CLIENTS = ("cms", "engineering", "attacker")
# Which server kinds each client talks to; a client needs every one of its required targets.
CLIENT_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cms": (("modbus",), ("s7", "enip", "opcua")),
    "engineering": (("modbus",), ()),
    "attacker": ((), ("modbus", "s7")),
}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,19}$")  # namespace "qw-<name>" stays short and shell-safe
MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
PREFIX = "qw-"


class TopologyError(ValueError):
    """A topology file that cannot drive the testbed; the message names line and key."""


@dataclass(frozen=True, slots=True)
class Device:
    """One namespace of the testbed: a protocol server, a scripted client, or both."""

    name: str
    role: str
    maker: str
    model: str
    address: str
    mac: str
    server: str | None = None
    client: str | None = None
    targets: dict[str, str] = field(default_factory=dict)
    attack: bool = False
    identity: dict[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return f"{PREFIX}{self.name}"


@dataclass(frozen=True, slots=True)
class Topology:
    """The validated testbed: subnet, bridge, crane model and devices."""

    path: str
    subnet: ipaddress.IPv4Network
    bridge: str
    crane: dict[str, Any]
    devices: tuple[Device, ...]
    ports: dict[str, int] = field(default_factory=dict)

    def device(self, name: str) -> Device:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)

    def target_address(self, device: Device, kind: str) -> str | None:
        name = device.targets.get(kind)
        return None if name is None else self.device(name).address


def default_topology_path() -> Path:
    return Path(str(resources.files("quaywatch.data").joinpath("sim/testbed.yaml")))


def _plain(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    """Build Python values from the YAML node tree, remembering the line of every key path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            result[key] = _plain(value_node, f"{path}.{key}" if path else key, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, f"{path}[{index}]", lines) for index, item in enumerate(node.value)]
    return yaml.SafeLoader(" ").construct_object(node)


def load_topology(path: Path | None = None) -> Topology:
    """Read and validate a topology file (the packaged default when ``path`` is None)."""
    source = path or default_topology_path()
    text = source.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise TopologyError(f"{source}: not valid YAML: {error}") from error
    lines: dict[str, int] = {}
    data = _plain(root, "", lines) if root is not None else None

    def fail(key: str, message: str) -> TopologyError:
        line = lines.get(key, lines.get(key.rsplit(".", 1)[0], 1))
        return TopologyError(f"{source}:{line}: {key}: {message}")

    if not isinstance(data, dict):
        raise TopologyError(f"{source}:1: the topology must be a mapping with subnet, bridge, crane and devices")
    for key in ("subnet", "bridge", "crane", "devices"):
        if key not in data:
            raise fail(key, "missing")
    try:
        subnet = ipaddress.IPv4Network(str(data["subnet"]))
    except ValueError as error:
        raise fail("subnet", f"not an IPv4 network: {error}") from error
    if not subnet.is_private:
        raise fail("subnet", "must be a private test subnet (the testbed must never look like a real network)")
    bridge = str(data["bridge"])
    if not bridge.startswith(PREFIX) or len(bridge) > 15:
        raise fail("bridge", f"must start with {PREFIX!r} (cleanup finds exactly ours) and fit in 15 characters")
    if not isinstance(data["crane"], dict):
        raise fail("crane", "must be a mapping")
    if not isinstance(data["devices"], list) or not data["devices"]:
        raise fail("devices", "must be a non-empty list")
    ports = data.get("ports")
    if not isinstance(ports, dict) or any(not isinstance(v, int) or not 0 < v < 65536 for v in ports.values()):
        raise fail("ports", "must map each server kind to a TCP port, such as {modbus: 502}")
    devices = [_device(item, f"devices[{index}]", subnet, fail) for index, item in enumerate(data["devices"])]
    for index, device in enumerate(devices):
        if device.server and device.server not in ports:
            raise fail(f"devices[{index}].server", f"no port for {device.server!r} under 'ports'")
    _check_unique(devices, fail)
    by_name = {device.name: device for device in devices}
    for index, device in enumerate(devices):
        if device.client is None:
            continue
        required, optional = CLIENT_TARGETS[device.client]
        for kind in required:
            if kind not in device.targets:
                raise fail(f"devices[{index}].targets", f"client {device.client!r} needs a {kind!r} target")
        for kind, name in device.targets.items():
            key = f"devices[{index}].targets.{kind}"
            if kind not in (*required, *optional):
                raise fail(key, f"client {device.client!r} does not talk {kind!r}")
            target = by_name.get(name)
            if target is None:
                raise fail(key, f"no device named {name!r}")
            if target.server != kind:
                raise fail(key, f"device {name!r} runs server {target.server!r}, not {kind!r}")
    return Topology(
        str(source), subnet, bridge, dict(data["crane"]), tuple(devices), {str(k): int(v) for k, v in ports.items()}
    )


def _device(item: Any, key: str, subnet: ipaddress.IPv4Network, fail: Any) -> Device:
    if not isinstance(item, dict):
        raise fail(key, "each device must be a mapping")
    for required in ("name", "role", "maker", "address", "mac"):
        if required not in item:
            raise fail(f"{key}.{required}", "missing")
    name = str(item["name"])
    if not NAME_PATTERN.match(name):
        raise fail(f"{key}.name", f"{name!r}: lower-case letters, digits and '-', at most 20, starting with a letter")
    try:
        address = ipaddress.IPv4Address(str(item["address"]))
    except ValueError as error:
        raise fail(f"{key}.address", f"not an IPv4 address: {error}") from error
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise fail(f"{key}.address", f"{address} is not a host address of {subnet}")
    mac = str(item["mac"]).lower()
    if not MAC_PATTERN.match(mac):
        raise fail(f"{key}.mac", f"{mac!r} is not a MAC address like 00:1b:1b:03:00:12")
    if int(mac[:2], 16) & 1:
        raise fail(f"{key}.mac", f"{mac} is a multicast address; a device needs a unicast one")
    server = item.get("server")
    if server is not None and server not in SERVERS:
        raise fail(f"{key}.server", f"{server!r} is not one of {', '.join(SERVERS)}")
    client = item.get("client")
    if client is not None and client not in CLIENTS:
        raise fail(f"{key}.client", f"{client!r} is not one of {', '.join(CLIENTS)}")
    if server is None and client is None:
        raise fail(key, "a device needs a server or a client (or it would only answer ARP)")
    targets = item.get("targets") or {}
    if not isinstance(targets, dict):
        raise fail(f"{key}.targets", "must be a mapping of protocol to device name")
    identity = item.get("identity") or {}
    if not isinstance(identity, dict):
        raise fail(f"{key}.identity", "must be a mapping such as {product_code: BMEP584040, revision: '3.20'}")
    return Device(
        name=name,
        role=str(item["role"]),
        maker=str(item["maker"]),
        model=str(item.get("model", "")),
        address=str(address),
        mac=mac,
        server=server,
        client=client,
        targets={str(k): str(v) for k, v in targets.items()},
        attack=bool(item.get("attack", False)),
        identity={str(k): str(v) for k, v in identity.items()},
    )


def _check_unique(devices: list[Device], fail: Any) -> None:
    for attribute in ("name", "address", "mac"):
        seen: dict[str, int] = {}
        for index, device in enumerate(devices):
            value = getattr(device, attribute)
            if value in seen:
                raise fail(f"devices[{index}].{attribute}", f"{value} already used by devices[{seen[value]}]")
            seen[value] = index

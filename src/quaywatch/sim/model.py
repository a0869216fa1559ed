"""The terminal model: zones, devices and internet hosts of a simulated container terminal.

The model is data (``data/sim/terminal.yaml`` by default) so that a port engineer
can describe their own terminal. Loading expands the per-crane templates, gives
every device a deterministic address in its zone and a MAC under its maker's
real IEEE prefix, and validates everything with the file, line and key of each
problem, as the site policy loader does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

DEFAULT_MODEL = "terminal.yaml"
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ModelError(ValueError):
    """A terminal model that cannot be used; the message names the file, line and key."""


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    vlan: int | None
    purdue: float
    kind: str
    description: str
    crane: int | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """One simulated device; ``declared`` is False for what procurement never ordered (the modem)."""

    name: str
    zone: str
    role: str
    maker: str
    ip: str
    mac: str
    vlan: int | None
    model: str = ""
    firmware: str = ""
    serial: str = ""
    order_number: str = ""
    crane: int | None = None
    services: tuple[str, ...] = ()
    declared: bool = True
    domain: str = ""
    gateway_ips: tuple[tuple[str, str], ...] = ()  # (zone, address) for a router present in several zones

    @property
    def external(self) -> bool:
        return self.zone == "external"


@dataclass(frozen=True, slots=True)
class Window:
    days: tuple[int, ...]  # 0 = Monday
    start: dt.time
    end: dt.time

    def contains(self, moment: dt.datetime) -> bool:
        if moment.weekday() not in self.days:
            return False
        return self.start <= moment.time() < self.end


@dataclass(frozen=True, slots=True)
class Shift:
    start: dt.time
    end: dt.time
    cranes_active: float


@dataclass(slots=True)
class TerminalModel:
    name: str
    timezone: ZoneInfo
    start: dt.datetime  # aware, in the terminal's time zone
    cranes: int
    domain: str
    makers: dict[str, str]  # maker -> IEEE prefix
    zones: dict[str, Zone]
    devices: list[Device]
    work_hours: Window
    vendor_window: Window
    shifts: list[Shift]
    wind_stop_mps: float
    source: str = DEFAULT_MODEL
    _by_name: dict[str, Device] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {device.name: device for device in self.devices}

    @property
    def start_epoch(self) -> float:
        return self.start.timestamp()

    def device(self, name: str) -> Device:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no device {name!r} in the terminal model") from None

    def find(self, role: str | None = None, zone: str | None = None, maker: str | None = None) -> list[Device]:
        return [
            device
            for device in self.devices
            if (role is None or device.role == role)
            and (zone is None or device.zone == zone)
            and (maker is None or device.maker == maker)
        ]

    def crane_devices(self, crane: int) -> list[Device]:
        return [device for device in self.devices if device.crane == crane]

    def add_device(self, device: Device) -> None:
        """Scenarios add what the reports found (a modem); a name may exist once."""
        if device.name in self._by_name:
            raise ValueError(f"device {device.name!r} already in the model")
        self.devices.append(device)
        self._by_name[device.name] = device

    def place(
        self, name: str, zone: str, host: int, role: str, maker: str, model: str = "", firmware: str = "",
        declared: bool = True,
    ) -> Device:  # fmt: skip
        """A device a scenario installs: an address in the zone, a MAC under the maker's prefix; added once."""
        if name in self._by_name:
            return self._by_name[name]
        where = self.zones[zone]
        device = Device(
            name=name, zone=zone, role=role, maker=maker, ip=str(where.subnet.network_address + host),
            mac=self.mac_for(maker, name), vlan=where.vlan, model=model, firmware=firmware,
            serial=str(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)), crane=where.crane, declared=declared,
        )  # fmt: skip
        self.add_device(device)
        return device

    def gateway(self, zone: str) -> Device:
        """The router of a zone: the device holding an address there with role network device."""
        for device in self.devices:
            if any(name == zone for name, _ in device.gateway_ips):
                return device
        raise KeyError(f"zone {zone!r} has no gateway in the model")

    def gateway_ip(self, zone: str) -> str:
        return dict(self.gateway(zone).gateway_ips)[zone]

    def local_time(self, epoch: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(epoch, self.timezone)

    def mac_for(self, maker: str, name: str) -> str:
        return make_mac(self.makers[maker], name)


def make_mac(prefix: str, name: str) -> str:
    """A stable MAC under ``prefix`` (6, 7 or 9 hex digits: MA-L, MA-M, MA-S) derived from the device name."""
    digits = prefix.replace(":", "").replace("-", "").lower()
    fill = hashlib.sha256(name.encode()).hexdigest()[: 12 - len(digits)]
    text = digits + fill
    return ":".join(text[index : index + 2] for index in range(0, 12, 2))


# -- loading ------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Keeps each mapping's line so that problems can name it."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = {str(key): value for key, value in loader.construct_mapping(node, deep=True).items()}
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_TOP_KEYS = {
    "version", "name", "timezone", "start", "cranes", "domain", "makers", "zones", "devices", "internet", "operations",
}  # fmt: skip
_ZONE_KEYS = {"name", "subnet", "vlan", "purdue", "kind", "description"}
_DEVICE_KEYS = {
    "name", "zone", "host", "role", "maker", "model", "firmware", "serial", "order_number", "count", "index_from",
    "cranes", "service", "declared",
}  # fmt: skip
_INTERNET_KEYS = {"name", "ip", "domain", "role", "count"}
ROLES = (
    "PLC", "drive", "HMI", "engineering workstation", "camera", "NVR", "cellular router or modem", "weather station",
    "server", "workstation", "network device",
)  # fmt: skip


class _Context:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: dict[str, Any] | None, key: str, message: str) -> ModelError:
        line = where.get("__line__") if isinstance(where, dict) else None
        place = f"{self.file}:{line}" if line else self.file
        return ModelError(f"{place}: {key}: {message}")

    def keys(self, mapping: Any, allowed: set[str], path: str) -> dict[str, Any]:
        if not isinstance(mapping, dict):
            raise self.fail(None, path, f"expected a mapping, found {type(mapping).__name__}")
        unknown = sorted(set(mapping) - allowed - {"__line__"})
        if unknown:
            raise self.fail(mapping, f"{path}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return mapping


def load_model(path: Path | None = None, cranes: int | None = None) -> TerminalModel:
    """Load and expand a terminal model; ``cranes`` overrides the file's crane count."""
    if path is None:
        text = resources.files("quaywatch.data").joinpath("sim", DEFAULT_MODEL).read_text(encoding="utf-8")
        file = f"<default {DEFAULT_MODEL}>"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ModelError(f"{path}: cannot read the terminal model: {error}") from None
        file = str(path)
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ModelError(f"{file}: not valid YAML: {error}") from None
    return _build(_Context(file), document, cranes)


def _build(context: _Context, document: Any, cranes_override: int | None) -> TerminalModel:
    top = context.keys(document, _TOP_KEYS, "model")
    if top.get("version") != 1:
        raise context.fail(top, "version", "must be 1")
    try:
        timezone = ZoneInfo(str(top.get("timezone", "UTC")))
    except (KeyError, ValueError):
        raise context.fail(top, "timezone", f"unknown IANA time zone {top.get('timezone')!r}") from None
    try:
        start = dt.datetime.fromisoformat(str(top.get("start", "2025-11-25T09:55:00"))).replace(tzinfo=timezone)
    except ValueError:
        raise context.fail(top, "start", "expected an ISO date and time such as 2025-11-25T09:55:00") from None
    cranes = cranes_override if cranes_override is not None else top.get("cranes", 4)
    if not isinstance(cranes, int) or not 1 <= cranes <= 99:
        raise context.fail(top, "cranes", "expected a whole number from 1 to 99")
    makers: dict[str, str] = {}
    for maker, entry in (top.get("makers") or {}).items():
        if maker == "__line__":
            continue
        entry = context.keys(entry, {"oui"}, f"makers.{maker}")
        prefix = str(entry.get("oui", ""))
        if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{1,2}){2,4}", prefix) or len(prefix.replace(":", "")) not in (
            6,
            7,
            9,
        ):
            raise context.fail(entry, f"makers.{maker}.oui", "expected an IEEE prefix of 6, 7 or 9 hex digits")
        makers[maker] = prefix
    zones = _zones(context, top.get("zones") or [], cranes)
    devices = _devices(context, top.get("devices") or [], cranes, zones, makers)
    devices += _internet(context, top.get("internet") or [])
    names = [device.name for device in devices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise context.fail(top, "devices", f"duplicate device name {duplicates[0]!r}")
    operations = top.get("operations") or {}
    context.keys(operations, {"work_hours", "shifts", "vendor_window", "wind_stop_mps"}, "operations")
    shifts = [
        Shift(_time(context, shift, "start"), _time(context, shift, "end"), float(shift.get("cranes_active", 1.0)))
        for shift in operations.get("shifts") or [{"start": "00:00", "end": "00:00", "cranes_active": 1.0}]
    ]
    return TerminalModel(
        name=str(top.get("name", "terminal")),
        timezone=timezone,
        start=start,
        cranes=cranes,
        domain=str(top.get("domain", "terminal.example")),
        makers=makers,
        zones=zones,
        devices=devices,
        work_hours=_window(context, operations.get("work_hours"), "operations.work_hours"),
        vendor_window=_window(context, operations.get("vendor_window"), "operations.vendor_window"),
        shifts=shifts,
        wind_stop_mps=float(operations.get("wind_stop_mps", 20.0)),
        source=context.file,
    )


def _expand(value: Any, **names: int) -> str:
    return str(value).format(**names) if value is not None else ""


def _crane_numbers(entry: dict[str, Any], cranes: int, templated: bool) -> Iterator[int | None]:
    if not templated:
        yield None
        return
    which = entry.get("cranes", "all")
    for crane in range(1, cranes + 1):
        if which == "all" or (which == "odd" and crane % 2 == 1) or (which == "even" and crane % 2 == 0):
            yield crane


def _zones(context: _Context, entries: list[Any], cranes: int) -> dict[str, Zone]:
    zones: dict[str, Zone] = {}
    for number, raw in enumerate(entries):
        entry = context.keys(raw, _ZONE_KEYS, f"zones[{number}]")
        templated = "{crane" in str(entry.get("name", ""))
        for crane in _crane_numbers(entry, cranes, templated):
            names = {"crane": crane} if crane is not None else {}
            name = _expand(entry.get("name"), **names)
            try:
                subnet = ipaddress.ip_network(_expand(entry.get("subnet"), **names))
            except ValueError as error:
                raise context.fail(entry, f"zones[{number}].subnet", str(error)) from None
            vlan_text = _expand(entry.get("vlan"), **names) if entry.get("vlan") is not None else ""
            if vlan_text and not (vlan_text.isdigit() and 1 <= int(vlan_text) <= 4094):
                raise context.fail(entry, f"zones[{number}].vlan", f"VLAN {vlan_text!r} is not 1-4094")
            if name in zones:
                raise context.fail(entry, f"zones[{number}].name", f"duplicate zone {name!r}")
            zones[name] = Zone(
                name=name,
                subnet=subnet,
                vlan=int(vlan_text) if vlan_text else None,
                purdue=float(entry.get("purdue", 3)),
                kind=str(entry.get("kind", "")),
                description=_expand(entry.get("description"), **names),
                crane=crane,
            )
    return zones


def _devices(
    context: _Context, entries: list[Any], cranes: int, zones: dict[str, Zone], makers: dict[str, str]
) -> list[Device]:
    devices: list[Device] = []
    for number, raw in enumerate(entries):
        path = f"devices[{number}]"
        entry = context.keys(raw, _DEVICE_KEYS, path)
        role = str(entry.get("role", ""))
        if role not in ROLES:
            raise context.fail(entry, f"{path}.role", f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        maker = str(entry.get("maker", ""))
        if maker not in makers:
            raise context.fail(entry, f"{path}.maker", f"maker {maker!r} is not under makers:")
        count = int(entry.get("count", 1))
        first_index = int(entry.get("index_from", 1))
        templated = "{crane" in str(entry.get("name", "")) or "{crane" in str(entry.get("zone", ""))
        services = entry.get("service") or ()
        for crane in _crane_numbers(entry, cranes, templated):
            for offset in range(count):
                names = {"index": first_index + offset}
                if crane is not None:
                    names["crane"] = crane
                name = _expand(entry.get("name"), **names)
                zone_name = _expand(entry.get("zone"), **names)
                host = int(entry.get("host", 0)) + offset
                if zone_name == "all":
                    gateway_ips = tuple(
                        (zone.name, _address(context, entry, path, zone, host)) for zone in zones.values()
                    )
                    first_zone = next(iter(zones.values()))
                    devices.append(
                        Device(
                            name=name,
                            zone=first_zone.name,
                            role=role,
                            maker=maker,
                            ip=gateway_ips[0][1],
                            mac=make_mac(makers[maker], name),
                            vlan=first_zone.vlan,
                            model=_expand(entry.get("model")),
                            firmware=_expand(entry.get("firmware")),
                            gateway_ips=gateway_ips,
                        )
                    )
                    continue
                if zone_name not in zones:
                    raise context.fail(entry, f"{path}.zone", f"unknown zone {zone_name!r}")
                zone = zones[zone_name]
                devices.append(
                    Device(
                        name=name,
                        zone=zone_name,
                        role=role,
                        maker=maker,
                        ip=_address(context, entry, path, zone, host),
                        mac=make_mac(makers[maker], name),
                        vlan=zone.vlan,
                        model=_expand(entry.get("model"), **names),
                        firmware=_expand(entry.get("firmware"), **names),
                        serial=_expand(entry.get("serial"), **names)
                        or str(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)),
                        order_number=_expand(entry.get("order_number"), **names),
                        crane=crane if crane is not None else zone.crane,
                        services=tuple(str(service) for service in services),
                        declared=bool(entry.get("declared", True)),
                    )
                )
    return devices


def _address(context: _Context, entry: dict[str, Any], path: str, zone: Zone, host: int) -> str:
    if not 0 < host < zone.subnet.num_addresses - 1:
        raise context.fail(entry, f"{path}.host", f"host {host} is outside {zone.subnet}")
    return str(zone.subnet.network_address + host)


def _internet(context: _Context, entries: list[Any]) -> list[Device]:
    devices: list[Device] = []
    for number, raw in enumerate(entries):
        path = f"internet[{number}]"
        entry = context.keys(raw, _INTERNET_KEYS, path)
        try:
            base = ipaddress.ip_address(str(entry.get("ip")))
        except ValueError as error:
            raise context.fail(entry, f"{path}.ip", str(error)) from None
        for offset in range(int(entry.get("count", 1))):
            names = {"index": offset + 1}
            devices.append(
                Device(
                    name=_expand(entry.get("name"), **names),
                    zone="external",
                    role=str(entry.get("role", "server")),
                    maker="",
                    ip=str(base + offset),
                    mac="",
                    vlan=None,
                    domain=_expand(entry.get("domain"), **names),
                )
            )
    return devices


def _time(context: _Context, entry: Any, key: str) -> dt.time:
    try:
        return dt.time.fromisoformat(str(entry.get(key)))
    except (ValueError, AttributeError):
        raise context.fail(entry if isinstance(entry, dict) else None, key, 'expected a time such as "07:00"') from None


def _window(context: _Context, entry: Any, path: str) -> Window:
    if entry is None:
        return Window(tuple(range(7)), dt.time(0), dt.time.max)
    entry = context.keys(entry, {"days", "start", "end"}, path)
    days = []
    for day in entry.get("days") or DAY_NAMES:
        if str(day).lower() not in DAY_NAMES:
            raise context.fail(entry, f"{path}.days", f"unknown day {day!r}")
        days.append(DAY_NAMES.index(str(day).lower()))
    return Window(tuple(days), _time(context, entry, "start"), _time(context, entry, "end"))


def with_declared(device: Device, declared: bool) -> Device:
    return replace(device, declared=declared)

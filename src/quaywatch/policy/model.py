"""The site policy as typed, immutable values: IEC 62443 zones and conduits plus the port's own rules.

Frozen dataclasses so that a loaded policy can be shared by detections without any of them changing it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Pseudo-zone for every address that no zone claims (the internet, a vendor's cloud, a stray host).
EXTERNAL_ZONE = "external"

#: Operations a policy can allow, whatever the protocol; each protocol maps its function codes onto them.
OPERATIONS = ("read", "write", "download", "upload", "stop", "start", "control", "diagnostics", "identify")

#: Remote-access methods as the ``remote_access`` table names them, plus the interactive logins.
REMOTE_METHODS = (
    "rdp",
    "vnc",
    "ssh",
    "telnet",
    "teamviewer",
    "anydesk",
    "openvpn",
    "wireguard",
    "ike",
    "pptp",
    "gtp_u",
    "gtp_c",
    "gtp_prime",
)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation finding, located so a person can jump to it: file, line and key path."""

    file: str
    line: int
    path: str
    message: str
    severity: str = "error"  # error or warning

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {self.path}: {prefix}{self.message}"


@dataclass(frozen=True, slots=True)
class Zone:
    """A group of assets with the same security requirements (IEC 62443-3-2)."""

    name: str
    description: str = ""
    sl_target: int | None = None
    purdue: float | None = None
    cidrs: tuple[Network, ...] = ()
    vlans: tuple[int, ...] = ()
    macs: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True, slots=True)
class ProtocolAllow:
    """Function codes and operations allowed for one ICS protocol on a conduit (empty: no restriction)."""

    functions: tuple[int, ...] = ()
    operations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Conduit:
    """An allowed channel between two zones: protocol, ports, direction, initiator and ICS operations."""

    name: str
    from_zone: str
    to_zone: str
    protocol: str  # decoder name, transport, or transport/port
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges
    direction: str = "both"  # one-way (from -> to only) or both
    initiator: str = "from"  # from, to or either
    allow: dict[str, ProtocolAllow] = field(default_factory=dict)
    description: str = ""
    sl_target: int | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class HostMatch:
    """Hosts named by IP address, CIDR or MAC."""

    networks: tuple[Network, ...] = ()
    macs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineeringHost:
    """Hosts allowed to write to, program or stop the PLCs of some zones or some hosts."""

    name: str
    hosts: HostMatch
    operations: tuple[str, ...]
    zones: tuple[str, ...] = ()
    targets: HostMatch = HostMatch()
    description: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Weekdays and hours, in a named time zone, when a path may be used."""

    days: tuple[str, ...]
    start: dt.time
    end: dt.time
    timezone: str
    spans_midnight: bool = False


@dataclass(frozen=True, slots=True)
class RemoteAccess:
    """An approved remote-access path (IEC 62443-2-4 / 33 CFR 101.650): method, who, to where, when, until when."""

    name: str
    method: str
    source: HostMatch
    zones: tuple[str, ...] = ()
    destinations: HostMatch = HostMatch()
    windows: tuple[TimeWindow, ...] = ()
    expires: dt.date | None = None
    reason: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class ExternalDestination:
    """An approved destination outside the site, with the reason it is approved."""

    name: str
    reason: str
    cidrs: tuple[Network, ...] = ()
    domains: tuple[str, ...] = ()  # exact names or *.suffix wildcards, lower case
    zones: tuple[str, ...] = ()  # zones that may reach it (empty: any)
    line: int = 0


@dataclass(frozen=True, slots=True)
class ContainerDataFlow:
    """Where container ids (ISO 6346) and EDIFACT cargo messages may flow."""

    name: str
    kinds: tuple[str, ...]  # container_ids, edifact
    conduits: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    partners: tuple[str, ...] = ()  # names of external destinations
    reason: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Setpoint:
    """Safe bounds of one writable value: a write outside them is an attack on the process, authorised host or not."""

    name: str
    targets: HostMatch
    protocol: str  # modbus, iec104, dnp3 or opcua
    address: int  # Modbus holding register, IEC 104 information object address, DNP3 analog output index
    minimum: float | None = None
    maximum: float | None = None
    unit_id: int | None = None
    description: str = ""
    line: int = 0
    node: str = ""  # OPC UA: the variable's NodeId as written (ns=2;s=...)


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole site policy."""

    site: str = ""
    timezone: str = "UTC"
    default_inter_zone: str = "deny"
    zones: tuple[Zone, ...] = ()
    conduits: tuple[Conduit, ...] = ()
    engineering_hosts: tuple[EngineeringHost, ...] = ()
    remote_access: tuple[RemoteAccess, ...] = ()
    external_destinations: tuple[ExternalDestination, ...] = ()
    container_data: tuple[ContainerDataFlow, ...] = ()
    setpoints: tuple[Setpoint, ...] = ()

    def zone(self, name: str) -> Zone | None:
        """The zone called ``name``, if any."""
        return next((zone for zone in self.zones if zone.name == name), None)

    def counts(self) -> dict[str, int]:
        """Size of each section, for summaries."""
        return {
            "zones": len(self.zones),
            "conduits": len(self.conduits),
            "engineering_hosts": len(self.engineering_hosts),
            "remote_access": len(self.remote_access),
            "external_destinations": len(self.external_destinations),
            "container_data": len(self.container_data),
            "setpoints": len(self.setpoints),
        }

"""LLDP, the Link Layer Discovery Protocol (IEEE 802.1AB), over EtherType 0x88CC: what each device says it is.

One ``lldp`` row per LLDPDU. Every TLV is walked: chassis id and port id (subtype and value rendered as a MAC,
a network address or the string received), time to live, port description, system name and description,
system and enabled capabilities (as names), management addresses, and organisationally specific TLVs. Of those,
IEEE 802.1 (OUI 00-80-C2: port VLAN id, VLAN names) and IEEE 802.3 (OUI 00-12-0F: MAC/PHY configuration,
maximum frame size) are decoded into columns; every organisationally specific TLV, decoded or not, is also kept
in ``org_tlvs`` with its OUI, subtype and value in hex (Profinet's OUI 00-0E-CF included).

A switch port that suddenly shows a new chassis, or a "Station only" device that claims Router or WLAN access
point capability, is how an unexpected modem or access point shows up on a crane network.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import LINK_FIELDS, Decoder, Direction, Event, Session, anomaly

PROTOCOL = "lldp"
ETHERTYPE = 0x88CC

END, CHASSIS_ID, PORT_ID, TTL = 0, 1, 2, 3
PORT_DESCRIPTION, SYSTEM_NAME, SYSTEM_DESCRIPTION, CAPABILITIES, MANAGEMENT, ORGANIZATION = 4, 5, 6, 7, 8, 127
TLV_NAMES = {
    END: "End of LLDPDU",
    CHASSIS_ID: "Chassis ID",
    PORT_ID: "Port ID",
    TTL: "Time To Live",
    PORT_DESCRIPTION: "Port Description",
    SYSTEM_NAME: "System Name",
    SYSTEM_DESCRIPTION: "System Description",
    CAPABILITIES: "System Capabilities",
    MANAGEMENT: "Management Address",
    ORGANIZATION: "Organizationally Specific",
}
CHASSIS_SUBTYPES = {
    1: "chassis component",
    2: "interface alias",
    3: "port component",
    4: "MAC address",
    5: "network address",
    6: "interface name",
    7: "locally assigned",
}
PORT_SUBTYPES = {
    1: "interface alias",
    2: "port component",
    3: "MAC address",
    4: "network address",
    5: "interface name",
    6: "agent circuit ID",
    7: "locally assigned",
}
#: IEEE 802.1AB-2016 Table 8-4, bit 0 first.
CAPABILITY_NAMES = (
    "Other",
    "Repeater",
    "Bridge",
    "WLAN Access Point",
    "Router",
    "Telephone",
    "DOCSIS cable device",
    "Station Only",
    "C-VLAN Component",
    "S-VLAN Component",
    "Two-port MAC Relay",
)
OUI_8021, OUI_8023, OUI_PROFINET = "00:80:c2", "00:12:0f", "00:0e:cf"


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


ORG_TLV = pa.struct(
    [
        pa.field("oui", pa.string(), True, {"doc": "organisation's OUI, aa:bb:cc"}),
        pa.field("subtype", pa.int16(), True, {"doc": "organisation-defined subtype"}),
        pa.field("value", pa.string(), True, {"doc": "information string in hex"}),
    ]
)

SCHEMA = pa.schema(
    [
        *LINK_FIELDS,
        _field("chassis_id_subtype", pa.int16(), "Chassis ID subtype: 4 MAC address, 5 network address, 7 local"),
        _field("chassis_id_subtype_name", pa.string(), "its name"),
        _field("chassis_id", pa.string(), "Chassis ID rendered: MAC aa:bb:.., IP address, or the string as received"),
        _field("chassis_id_raw", pa.binary(), "Chassis ID bytes as received"),
        _field("port_id_subtype", pa.int16(), "Port ID subtype: 3 MAC address, 5 interface name, 7 local"),
        _field("port_id_subtype_name", pa.string(), "its name"),
        _field("port_id", pa.string(), "Port ID rendered: MAC, IP address, or the string as received"),
        _field("port_id_raw", pa.binary(), "Port ID bytes as received"),
        _field("ttl", pa.int32(), "time to live in seconds (0: the device is shutting LLDP down)"),
        _field("port_description", pa.string(), "Port Description, as received"),
        _field("system_name", pa.string(), "System Name, as received"),
        _field("system_description", pa.string(), "System Description (often model and firmware), as received"),
        _field("system_capabilities_bits", pa.int32(), "System Capabilities bitmap"),
        _field("system_capabilities", pa.list_(pa.string()), "capabilities the system has, by name"),
        _field("enabled_capabilities_bits", pa.int32(), "Enabled Capabilities bitmap"),
        _field("enabled_capabilities", pa.list_(pa.string()), "capabilities enabled, by name (Router, Bridge, ...)"),
        _field("management_addresses", pa.list_(pa.string()), "Management Address TLVs: IPv4/IPv6, MAC, else hex"),
        _field("management_interfaces", pa.list_(pa.int64()), "their interface numbers (ifIndex), in order"),
        _field("port_vlan_id", pa.int32(), "IEEE 802.1 Port VLAN ID (PVID; 0: none)"),
        _field("vlan_names", pa.list_(pa.string()), "IEEE 802.1 VLAN Name TLVs as 'id:name'"),
        _field("autoneg_supported", pa.bool_(), "IEEE 802.3 MAC/PHY: auto-negotiation supported"),
        _field("autoneg_enabled", pa.bool_(), "IEEE 802.3 MAC/PHY: auto-negotiation enabled"),
        _field("autoneg_advertised", pa.int32(), "IEEE 802.3 MAC/PHY: PMD auto-negotiation advertised capability bits"),
        _field("mau_type", pa.int32(), "IEEE 802.3 MAC/PHY: operational MAU type (RFC 4836; 16 100BASE-TX FD)"),
        _field("max_frame_size", pa.int32(), "IEEE 802.3 Maximum Frame Size"),
        _field("org_tlvs", pa.list_(ORG_TLV), "every organisationally specific TLV: OUI, subtype, value in hex"),
        _field("tlv_types", pa.list_(pa.int16()), "every TLV type in order (End included)"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _address(family: int, raw: bytes) -> str:
    """An IANA address family number and address: IPv4, IPv6 and 802 MAC rendered, the rest in hex."""
    if family == 1 and len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if family == 2 and len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    if family == 6 and len(raw) == 6:
        return _mac(raw)
    return raw.hex()


def _render_id(subtype: int, value: bytes, mac_subtype: int, address_subtype: int) -> str:
    if subtype == mac_subtype and len(value) == 6:
        return _mac(value)
    if subtype == address_subtype and value:
        return _address(value[0], value[1:])
    return _text(value)


def _capabilities(bits: int) -> list[str]:
    return [name for bit, name in enumerate(CAPABILITY_NAMES) if bits >> bit & 1]


class LldpParser:
    """Decodes one LLDPDU (the payload after the EtherType) into a row and anomalies."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.row: dict[str, object] = {}
        self.anomalies: list[Event] = []

    def flag(self, code: str, detail: str) -> None:
        self.anomalies.append(anomaly(PROTOCOL, code, detail))

    def parse(self) -> list[Event]:
        data, row = self.payload, self.row
        types: list[int] = []
        org: list[dict[str, object]] = []
        position = 0
        while position < len(data):
            if position + 2 > len(data):
                self.flag("truncated_tlv", f"TLV header at offset {position}: 1 of 2 bytes")
                break
            header = (data[position] << 8) | data[position + 1]
            kind, length = header >> 9, header & 0x1FF
            value = data[position + 2 : position + 2 + length]
            if len(value) < length:
                self.flag(
                    "truncated_tlv",
                    f"TLV type {kind} at offset {position} declares {length} bytes, {len(value)} present",
                )
                break
            types.append(kind)
            if kind == END:
                break
            self._tlv(kind, value, position, len(types), org)
            position += 2 + length
        row["tlv_types"] = types
        row["org_tlvs"] = org
        for index, (kind, name) in enumerate(((CHASSIS_ID, "Chassis ID"), (PORT_ID, "Port ID"), (TTL, "TTL"))):
            if len(types) <= index or types[index] != kind:
                self.flag("missing_mandatory_tlv", f"TLV {index + 1} should be {name} (IEEE 802.1AB 8.2)")
                break
        event_type = "shutdown" if row.get("ttl") == 0 else "lldpdu"
        return [Event(PROTOCOL, event_type, row), *self.anomalies]

    def _tlv(self, kind: int, value: bytes, position: int, index: int, org: list[dict[str, object]]) -> None:
        row = self.row
        if kind in (CHASSIS_ID, PORT_ID):
            name = "chassis_id" if kind == CHASSIS_ID else "port_id"
            if not 2 <= len(value) <= 256:
                self.flag("bad_tlv_length", f"{TLV_NAMES[kind]} at offset {position}: length {len(value)}")
            if not value or name in row:
                return
            subtype, body = value[0], value[1:]
            names = CHASSIS_SUBTYPES if kind == CHASSIS_ID else PORT_SUBTYPES
            mac, address = (4, 5) if kind == CHASSIS_ID else (3, 4)
            row[f"{name}_subtype"] = subtype
            row[f"{name}_subtype_name"] = names.get(subtype, f"reserved {subtype}")
            row[name] = _render_id(subtype, body, mac, address)
            row[f"{name}_raw"] = body
        elif kind == TTL:
            if len(value) < 2:
                self.flag("bad_tlv_length", f"Time To Live at offset {position}: length {len(value)}, 2 expected")
                return
            row.setdefault("ttl", int.from_bytes(value[:2], "big"))
        elif kind == PORT_DESCRIPTION:
            row.setdefault("port_description", _text(value))
        elif kind == SYSTEM_NAME:
            row.setdefault("system_name", _text(value))
        elif kind == SYSTEM_DESCRIPTION:
            row.setdefault("system_description", _text(value))
        elif kind == CAPABILITIES:
            if len(value) != 4:
                self.flag("bad_tlv_length", f"System Capabilities at offset {position}: length {len(value)}, 4 needed")
                if len(value) < 4:
                    return
            system, enabled = int.from_bytes(value[0:2], "big"), int.from_bytes(value[2:4], "big")
            row.update(
                system_capabilities_bits=system,
                system_capabilities=_capabilities(system),
                enabled_capabilities_bits=enabled,
                enabled_capabilities=_capabilities(enabled),
            )
        elif kind == MANAGEMENT:
            self._management(value, position)
        elif kind == ORGANIZATION:
            if len(value) < 4:
                self.flag("bad_tlv_length", f"Organizationally Specific at offset {position}: length {len(value)}")
                return
            oui, subtype, info = _mac(value[:3]), value[3], value[4:]
            org.append({"oui": oui, "subtype": subtype, "value": info.hex()})
            self._organisation(oui, subtype, info, position)
        elif 9 <= kind <= 126:
            self.flag("reserved_tlv", f"TLV type {kind} at offset {position} is reserved")

    def _management(self, value: bytes, position: int) -> None:
        row = self.row
        if len(value) < 2 or value[0] < 1 or 1 + value[0] + 5 > len(value):
            self.flag("bad_tlv_length", f"Management Address at offset {position}: inconsistent lengths")
            return
        size = value[0]
        address = _address(value[1], value[2 : 1 + size])
        interface = int.from_bytes(value[2 + size : 6 + size], "big")
        row.setdefault("management_addresses", []).append(address)  # type: ignore[attr-defined]
        row.setdefault("management_interfaces", []).append(interface)  # type: ignore[attr-defined]

    def _organisation(self, oui: str, subtype: int, info: bytes, position: int) -> None:
        row = self.row
        short = f"{oui} subtype {subtype} at offset {position}: {len(info)} bytes"
        if oui == OUI_8021:
            if subtype == 1:
                if len(info) < 2:
                    self.flag("bad_tlv_length", f"IEEE 802.1 Port VLAN ID {short}")
                    return
                row.setdefault("port_vlan_id", int.from_bytes(info[:2], "big"))
            elif subtype == 3:
                if len(info) < 3 or 3 + info[2] > len(info):
                    self.flag("bad_tlv_length", f"IEEE 802.1 VLAN Name {short}")
                    return
                vlan = int.from_bytes(info[:2], "big")
                name = _text(info[3 : 3 + info[2]])
                row.setdefault("vlan_names", []).append(f"{vlan}:{name}")  # type: ignore[attr-defined]
        elif oui == OUI_8023:
            if subtype == 1:
                if len(info) < 5:
                    self.flag("bad_tlv_length", f"IEEE 802.3 MAC/PHY {short}")
                    return
                row.setdefault("autoneg_supported", bool(info[0] & 1))
                row.setdefault("autoneg_enabled", bool(info[0] & 2))
                row.setdefault("autoneg_advertised", int.from_bytes(info[1:3], "big"))
                row.setdefault("mau_type", int.from_bytes(info[3:5], "big"))
            elif subtype == 4:
                if len(info) < 2:
                    self.flag("bad_tlv_length", f"IEEE 802.3 Maximum Frame Size {short}")
                    return
                row.setdefault("max_frame_size", int.from_bytes(info[:2], "big"))


def decode(payload: bytes) -> list[Event]:
    """Events of one LLDPDU."""
    try:
        return LldpParser(payload).parse()
    except Exception as error:  # defence in depth: the parser checks every length itself
        return [anomaly(PROTOCOL, "malformed", f"{type(error).__name__}: {error}")]


class LldpSession(Session):
    """The LLDP frames of one source MAC address. Each frame is one complete LLDPDU: nothing is buffered."""

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        return decode(data)


class LldpDecoder(Decoder):
    """LLDP: every frame of EtherType 0x88CC (also VLAN-tagged)."""

    name = PROTOCOL
    transport = "ethernet"
    ethertypes = frozenset({ETHERTYPE})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """A Chassis ID TLV first, as IEEE 802.1AB 8.2 requires."""
        return len(payload) >= 2 and payload[0] >> 1 == CHASSIS_ID

    def session(self) -> Session:
        return LldpSession()

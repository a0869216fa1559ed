"""CDP, the Cisco Discovery Protocol (versions 1 and 2), in IEEE 802.3 LLC/SNAP frames to 01:00:0c:cc:cc:cc.

CDP rides in IEEE 802.3 length frames, which the pipeline hands over as EtherType 0 with the payload starting
at the LLC header: DSAP 0xAA, SSAP 0xAA, control 0x03, then the SNAP OUI 00-00-0C (Cisco) and protocol id
0x2000. Every other LLC frame (spanning tree, other SNAP protocols) is ignored here.

One ``cdp`` row per CDP packet: version, TTL, whether the checksum verifies, and the TLVs network teams and
attackers both read: device id, addresses, port id, capabilities (as names), software version, platform,
native and voice VLAN, duplex, VTP management domain, system name and management addresses. Strings are kept
as received.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import LINK_FIELDS, Decoder, Direction, Event, Session, anomaly

PROTOCOL = "cdp"
LLC_SNAP_CDP = bytes.fromhex("aaaa0300000c2000")
HEADER = 4  # version, ttl, checksum

DEVICE_ID, ADDRESSES, PORT_ID, CAPABILITIES, SOFTWARE, PLATFORM = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
VTP_DOMAIN, NATIVE_VLAN, DUPLEX, VOICE_VLAN, MTU, SYSTEM_NAME, MANAGEMENT = 0x09, 0x0A, 0x0B, 0x0E, 0x11, 0x14, 0x16
CAPABILITY_NAMES = (
    "Router",
    "Transparent Bridge",
    "Source Route Bridge",
    "Switch",
    "Host",
    "IGMP capable",
    "Repeater",
    "VoIP Phone",
    "Remotely Managed Device",
    "CVTA/STP Dispute Resolution/Cisco VT Camera",
    "Two Port Mac Relay",
)
#: 802.2 protocol id of IPv6 in a CDP address (protocol type 2): LLC/SNAP with EtherType 0x86DD.
IPV6_PROTOCOL = bytes.fromhex("aaaa0300000086dd")


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        *LINK_FIELDS,
        _field("version", pa.int16(), "CDP version (1 or 2)"),
        _field("ttl", pa.int16(), "seconds the receiver keeps this information"),
        _field("checksum", pa.int32(), "checksum field"),
        _field("checksum_valid", pa.bool_(), "the checksum verifies (Internet checksum, Cisco's odd-length rule)"),
        _field("device_id", pa.string(), "Device ID TLV (host name or serial), as received"),
        _field("addresses", pa.list_(pa.string()), "Addresses TLV: IPv4/IPv6 rendered, other protocols in hex"),
        _field("port_id", pa.string(), "Port ID TLV (the sending interface), as received"),
        _field("capabilities_bits", pa.int64(), "Capabilities bitmap"),
        _field("capabilities", pa.list_(pa.string()), "capabilities by name (Router, Switch, Host, VoIP Phone, ...)"),
        _field("software_version", pa.string(), "Software Version TLV (IOS banner), as received"),
        _field("platform", pa.string(), "Platform TLV (model), as received"),
        _field("vtp_domain", pa.string(), "VTP Management Domain, as received"),
        _field("native_vlan", pa.int32(), "Native VLAN of the sending port"),
        _field("duplex", pa.string(), "half or full"),
        _field("voice_vlan", pa.int32(), "Appliance VLAN-ID TLV: voice VLAN"),
        _field("mtu", pa.int64(), "MTU TLV"),
        _field("system_name", pa.string(), "System Name TLV, as received"),
        _field("management_addresses", pa.list_(pa.string()), "Management Addresses TLV, rendered as addresses"),
        _field("tlv_types", pa.list_(pa.int32()), "every TLV type in order"),
    ]
)
TABLES: dict[str, pa.Schema] = {PROTOCOL: SCHEMA}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def cdp_checksum_valid(data: bytes) -> bool:
    """RFC 1071 over the CDP packet, checksum included, with Cisco's odd-length rule (Wireshark's packet-cdp.c):
    the last byte L is summed as the word 0x00LL, or as 0xFF00 | (L - 1) when L has its top bit set (Cisco adds
    it as a signed number and compensates an off-by-one)."""
    if len(data) % 2:
        last = data[-1]
        data = data[:-1] + (bytes([0xFF, last - 1]) if last & 0x80 else bytes([0, last]))
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _capabilities(bits: int) -> list[str]:
    return [name for bit, name in enumerate(CAPABILITY_NAMES) if bits >> bit & 1]


class CdpParser:
    """Decodes one CDP packet (after the LLC/SNAP header) into a row and anomalies."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.row: dict[str, object] = {}
        self.anomalies: list[Event] = []

    def flag(self, code: str, detail: str) -> None:
        self.anomalies.append(anomaly(PROTOCOL, code, detail))

    def parse(self) -> list[Event]:
        data, row = self.data, self.row
        if len(data) < HEADER:
            self.flag("truncated_header", f"CDP header needs {HEADER} bytes, the frame has {len(data)}")
            return self.anomalies
        row.update(version=data[0], ttl=data[1], checksum=int.from_bytes(data[2:4], "big"))
        if data[0] not in (1, 2):
            self.flag("unknown_version", f"CDP version {data[0]} at offset 0")
        types: list[int] = []
        position = HEADER
        while position < len(data):
            if position + 4 > len(data):
                if any(data[position:]):
                    self.flag("truncated_tlv", f"TLV header at offset {position}: {len(data) - position} of 4 bytes")
                break
            kind, length = (
                int.from_bytes(data[position : position + 2], "big"),
                int.from_bytes(data[position + 2 : position + 4], "big"),
            )
            if kind == 0 and length == 0 and not any(data[position:]):
                break  # Ethernet padding after the last TLV
            if length < 4 or position + length > len(data):
                self.flag(
                    "truncated_tlv",
                    f"TLV 0x{kind:04x} at offset {position} declares {length} bytes, {len(data) - position} remain",
                )
                break
            types.append(kind)
            self._tlv(kind, data[position + 4 : position + length], position)
            position += length
        row["checksum_valid"] = cdp_checksum_valid(data[:position])
        row["tlv_types"] = types
        return [Event(PROTOCOL, f"cdp_v{data[0]}" if data[0] in (1, 2) else "cdp", row), *self.anomalies]

    def _tlv(self, kind: int, value: bytes, position: int) -> None:
        row = self.row
        if kind == DEVICE_ID:
            row.setdefault("device_id", _text(value))
        elif kind == PORT_ID:
            row.setdefault("port_id", _text(value))
        elif kind == SOFTWARE:
            row.setdefault("software_version", _text(value))
        elif kind == PLATFORM:
            row.setdefault("platform", _text(value))
        elif kind == VTP_DOMAIN:
            row.setdefault("vtp_domain", _text(value))
        elif kind == SYSTEM_NAME:
            row.setdefault("system_name", _text(value))
        elif kind in (ADDRESSES, MANAGEMENT):
            row.setdefault(
                "addresses" if kind == ADDRESSES else "management_addresses", self._addresses(value, position)
            )
        elif kind == CAPABILITIES and self._size(value, 4, "Capabilities", position):
            bits = int.from_bytes(value[:4], "big")
            row.setdefault("capabilities_bits", bits)
            row.setdefault("capabilities", _capabilities(bits))
        elif kind == NATIVE_VLAN and self._size(value, 2, "Native VLAN", position):
            row.setdefault("native_vlan", int.from_bytes(value[:2], "big"))
        elif kind == DUPLEX and self._size(value, 1, "Duplex", position):
            row.setdefault("duplex", "full" if value[0] else "half")
        elif kind == VOICE_VLAN and self._size(value, 3, "Appliance VLAN-ID", position):
            row.setdefault("voice_vlan", int.from_bytes(value[1:3], "big"))
        elif kind == MTU and self._size(value, 4, "MTU", position):
            row.setdefault("mtu", int.from_bytes(value[:4], "big"))

    def _size(self, value: bytes, size: int, name: str, position: int) -> bool:
        if len(value) < size:
            self.flag("bad_tlv_length", f"{name} TLV at offset {position}: {len(value)} value bytes, {size} needed")
            return False
        return True

    def _addresses(self, value: bytes, position: int) -> list[str]:
        result: list[str] = []
        if not self._size(value, 4, "Addresses", position):
            return result
        count, cursor = int.from_bytes(value[:4], "big"), 4
        for _ in range(count):
            if cursor + 2 > len(value) or cursor + 2 + value[cursor + 1] + 2 > len(value):
                self.flag("truncated_address", f"address {len(result) + 1} of {count} in TLV at offset {position}")
                break
            kind, size = value[cursor], value[cursor + 1]
            protocol = value[cursor + 2 : cursor + 2 + size]
            cursor += 2 + size
            length = int.from_bytes(value[cursor : cursor + 2], "big")
            address = value[cursor + 2 : cursor + 2 + length]
            if len(address) < length:
                self.flag("truncated_address", f"address {len(result) + 1} of {count} in TLV at offset {position}")
                break
            cursor += 2 + length
            if kind == 1 and protocol == b"\xcc" and length == 4:
                result.append(str(ipaddress.IPv4Address(address)))
            elif kind == 2 and protocol == IPV6_PROTOCOL and length == 16:
                result.append(str(ipaddress.IPv6Address(address)))
            else:
                result.append(address.hex())
        return result


def decode(payload: bytes) -> list[Event]:
    """Events of one IEEE 802.3 LLC frame payload: a row if it is CDP, nothing for other LLC protocols."""
    if not payload.startswith(LLC_SNAP_CDP):
        return []
    try:
        return CdpParser(payload[len(LLC_SNAP_CDP) :]).parse()
    except Exception as error:  # defence in depth: the parser checks every length itself
        return [anomaly(PROTOCOL, "malformed", f"{type(error).__name__}: {error}")]


class CdpSession(Session):
    """The LLC frames of one source MAC address. Each CDP frame is one complete packet: nothing is buffered."""

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        return decode(data)


class CdpDecoder(Decoder):
    """CDP: IEEE 802.3 length frames (EtherType 0 here) whose LLC/SNAP header names Cisco's protocol 0x2000."""

    name = PROTOCOL
    transport = "ethernet"
    ethertypes = frozenset({0})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return payload.startswith(LLC_SNAP_CDP)

    def session(self) -> Session:
        return CdpSession()

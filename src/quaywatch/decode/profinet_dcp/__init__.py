"""Profinet DCP, the Discovery and basic Configuration Protocol (IEC 61158-6-10, section 4.3), over EtherType 0x8892.

One ``profinet_dcp`` row per DCP PDU: Profinet RT frames with FrameID 0xFEFC (Hello), 0xFEFD (Get/Set), 0xFEFE
(Identify request, multicast) and 0xFEFF (Identify response). Every block is walked; the values engineering tools
and attackers care about are flattened into columns (name of station, type of station, vendor and device id, role,
IP parameters, alias, control actions, block qualifiers), and ``blocks`` lists every block by option/suboption name.
A DCP Set request renames a device, changes its address, signals or resets it: ``controls_device`` marks it.

Other Profinet RT frames (cyclic IO data 0x8000-0xFBFF, alarms 0xFC01/0xFE01, PTCP 0x0000-0x00FF, 0xFF00-0xFF8F)
are ignored here: they are counted with the capture's packets, not decoded.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import LINK_FIELDS, Decoder, Direction, Event, Session, anomaly

PROTOCOL = "profinet_dcp"
ETHERTYPE = 0x8892
HEADER = 12  # FrameID (2), ServiceID, ServiceType, Xid (4), ResponseDelay/Reserved (2), DCPDataLength (2)

FRAME_IDS = {0xFEFC: "Hello", 0xFEFD: "Get/Set", 0xFEFE: "Identify request", 0xFEFF: "Identify response"}
GET, SET, IDENTIFY, HELLO = 3, 4, 5, 6
SERVICES = {GET: "Get", SET: "Set", IDENTIFY: "Identify", HELLO: "Hello"}
#: ServiceType: bit 0 request (0) / response (1), bit 2 "request not supported".
SERVICE_TYPES = {0: "request", 1: "response success", 5: "response unsupported"}
EVENT_SUFFIX = {0: "request", 1: "response", 5: "unsupported"}

OPTION_IP, OPTION_DEVICE, OPTION_DHCP, OPTION_CONTROL, OPTION_INITIATIVE, OPTION_TSN = 1, 2, 3, 5, 6, 7
OPTION_ALL = 0xFF
OPTIONS = {
    0: "Reserved",
    OPTION_IP: "IP",
    OPTION_DEVICE: "Device",
    OPTION_DHCP: "DHCP",
    4: "Reserved",
    OPTION_CONTROL: "Control",
    OPTION_INITIATIVE: "Device Initiative",
    OPTION_TSN: "TSN Domain",
    OPTION_ALL: "All",
}
SUBOPTIONS: dict[int, dict[int, str]] = {
    OPTION_IP: {1: "MAC address", 2: "IP parameter", 3: "Full IP suite"},
    OPTION_DEVICE: {
        1: "Type of Station",  # "Manufacturer specific" / DeviceVendorValue
        2: "Name of Station",
        3: "Device ID",
        4: "Device Role",
        5: "Device Options",
        6: "Alias Name",
        7: "Device Instance",
        8: "OEM Device ID",
        9: "Standard Gateway",
        10: "RSI Properties",
    },
    OPTION_DHCP: {
        12: "Host name",
        43: "Vendor specific",
        54: "Server identifier",
        55: "Parameter request list",
        60: "Class identifier",
        61: "Client identifier",
        81: "FQDN",
        97: "UUID client identifier",
        255: "Control DHCP for address resolution",
    },
    OPTION_CONTROL: {
        1: "Start Transaction",
        2: "End Transaction",
        3: "Signal",
        4: "Response",
        5: "Reset Factory Settings",
        6: "Reset to Factory",
    },
    OPTION_INITIATIVE: {1: "Device Initiative"},
    OPTION_TSN: {1: "TSN Domain Name", 2: "NME Manager", 3: "NME Parameter UUID", 4: "NME Agent", 5: "CIM Interface"},
    OPTION_ALL: {0xFF: "All"},
}
IP_BLOCK_INFO = {
    0x0000: "IP not set",
    0x0001: "IP set",
    0x0002: "IP set by DHCP",
    0x0080: "IP not set (address conflict detected)",
    0x0081: "IP set (address conflict detected)",
    0x0082: "IP set by DHCP (address conflict detected)",
}
BLOCK_QUALIFIERS = {0: "temporary", 1: "permanent"}
#: Reset to Factory: BlockQualifier bits 1-15 select what is reset (bit 0 reserved).
RESET_MODES = {
    1: "reset application data",
    2: "reset communication parameter",
    3: "reset engineering parameter",
    4: "reset all stored data",
    8: "reset device to factory values",
    9: "reset and restore data",
}
BLOCK_ERRORS = {
    0: "Ok",
    1: "Option unsupported",
    2: "Suboption unsupported or no data set available",
    3: "Suboption not set",
    4: "Resource error",
    5: "Set not possible by local reasons",
    6: "In operation, set not possible",
}
DEVICE_ROLES = ((0x01, "IO-Device"), (0x02, "IO-Controller"), (0x04, "IO-Multidevice"), (0x08, "PN-Supervisor"))
#: Controls that act on the device (Start/End Transaction only bracket a Set; Response answers one).
ACTIONS = frozenset({3, 5, 6})


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        *LINK_FIELDS,
        _field("frame_id", pa.int32(), "Profinet RT FrameID: 0xFEFC-0xFEFF"),
        _field("frame_name", pa.string(), "Hello, Get/Set, Identify request, Identify response"),
        _field("service_id", pa.int16(), "ServiceID: 3 Get, 4 Set, 5 Identify, 6 Hello"),
        _field("service", pa.string(), "its name"),
        _field("service_type", pa.int16(), "ServiceType: 0 request, 1 response success, 5 response unsupported"),
        _field("service_type_name", pa.string(), "request, response success, response unsupported"),
        _field("xid", pa.int64(), "transaction id: a response repeats its request's"),
        _field(
            "response_delay", pa.int32(), "Identify request: ResponseDelayFactor (responders spread over 10 ms units)"
        ),
        _field("data_length", pa.int32(), "DCPDataLength: bytes of blocks declared"),
        _field("blocks", pa.list_(pa.string()), "every block (Get request: every selector) as Option/Suboption"),
        _field("mac_address", pa.string(), "IP/MAC address block"),
        _field("ip", pa.string(), "IP parameter or full IP suite: address (Identify request: the filter)"),
        _field("netmask", pa.string(), "IP parameter: subnet mask"),
        _field("gateway", pa.string(), "IP parameter: standard gateway"),
        _field("dns_servers", pa.list_(pa.string()), "full IP suite: the four DNS server addresses"),
        _field("ip_block_info", pa.int32(), "responses and Hello: IP BlockInfo (bit 7: address conflict)"),
        _field("ip_block_info_name", pa.string(), "IP set, IP set by DHCP, IP not set, with conflict"),
        _field("type_of_station", pa.string(), "Device/Manufacturer specific: DeviceVendorValue, as received"),
        _field("station_name", pa.string(), "Device/Name of Station, as received (Identify request: the filter)"),
        _field("vendor_id", pa.int32(), "Device ID block: vendor id (0x002A Siemens)"),
        _field("device_id", pa.int32(), "Device ID block: device id"),
        _field("device_role", pa.int16(), "Device Role bits"),
        _field("device_role_name", pa.string(), "IO-Device, IO-Controller, IO-Multidevice, PN-Supervisor"),
        _field("device_options", pa.list_(pa.string()), "Device Options: the options the device supports"),
        _field("alias_name", pa.string(), "Device/Alias Name (port name . neighbour's station name), as received"),
        _field("device_instance", pa.int32(), "Device Instance: high byte * 256 + low byte"),
        _field("oem_vendor_id", pa.int32(), "OEM Device ID block: vendor id"),
        _field("oem_device_id", pa.int32(), "OEM Device ID block: device id"),
        _field("rsi_properties", pa.int32(), "RSI Properties value"),
        _field("dhcp_option", pa.int16(), "DHCP block suboption (the DHCP option number, e.g. 61 client id)"),
        _field("dhcp_parameter", pa.binary(), "DHCP block parameter bytes, as received"),
        _field("device_initiative", pa.int32(), "Device Initiative value: 1 the device sends Hello at power on"),
        _field("block_qualifier", pa.int32(), "Set request: qualifier of the first non-control block"),
        _field("permanent", pa.bool_(), "Set request: that block is saved permanently (qualifier bit 0)"),
        _field("block_qualifiers", pa.list_(pa.int32()), "Set request: every block's qualifier, in order"),
        _field("control", pa.string(), "Set request: Signal, Reset Factory Settings or Reset to Factory"),
        _field("signal_value", pa.int32(), "Control/Signal: 0x0100 flash once"),
        _field("reset_qualifier", pa.int32(), "Control/Reset Factory Settings or Reset to Factory: its qualifier"),
        _field("reset_mode", pa.string(), "Control/Reset to Factory: what is reset (qualifier bits 1-15)"),
        _field("response_blocks", pa.list_(pa.string()), "Set response: the block each Control/Response answers"),
        _field("block_errors", pa.list_(pa.int16()), "Set response: BlockError per answered block (0 Ok)"),
        _field("failed", pa.bool_(), "Set response: some block was refused (BlockError not 0)"),
        _field(
            "controls_device",
            pa.bool_(),
            "a Set request: renames, readdresses, reconfigures, signals or resets to factory",
        ),
    ]
)


class ShortBlock(ValueError):
    """A block whose content is shorter than its fixed fields."""


def _block_name(option: int, suboption: int) -> str:
    if 0x80 <= option <= 0xFE:
        return f"Manufacturer specific 0x{option:02X}/0x{suboption:02X}"
    suboption_name = SUBOPTIONS.get(option, {}).get(suboption, f"0x{suboption:02X}")
    return f"{OPTIONS.get(option, f'0x{option:02X}')}/{suboption_name}"


def _text(raw: bytes) -> str:
    """As received, less the NUL padding some devices append to a fixed-size buffer (the spec allows no NUL)."""
    return raw.rstrip(b"\x00").decode("utf-8", "backslashreplace")


def _ipv4(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _u16(data: bytes, position: int) -> int:
    return (data[position] << 8) | data[position + 1]


def _need(body: bytes, size: int, name: str) -> None:
    if len(body) < size:
        raise ShortBlock(f"{name}: {len(body)} content bytes, {size} needed")


class DcpParser:
    """Decodes one DCP PDU (the Profinet payload after the EtherType) into a row and anomalies."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.row: dict[str, object] = {}
        self.anomalies: list[Event] = []
        self.blocks: list[str] = []
        self.qualifiers: list[int] = []

    def flag(self, code: str, detail: str) -> None:
        self.anomalies.append(anomaly(PROTOCOL, code, detail))

    def parse(self) -> list[Event]:
        payload, row = self.payload, self.row
        frame_id = _u16(payload, 0)
        row.update(frame_id=frame_id, frame_name=FRAME_IDS[frame_id])
        if len(payload) < HEADER:
            self.flag(
                "truncated_header", f"DCP header needs {HEADER} bytes from offset 0, the frame has {len(payload)}"
            )
            return [Event(PROTOCOL, "truncated", row), *self.anomalies]
        service_id, service_type = payload[2], payload[3]
        data_length = _u16(payload, 10)
        row.update(
            service_id=service_id,
            service=SERVICES.get(service_id, f"service {service_id}"),
            service_type=service_type,
            service_type_name=SERVICE_TYPES.get(service_type, f"type {service_type}"),
            xid=int.from_bytes(payload[4:8], "big"),
            data_length=data_length,
        )
        if service_id == IDENTIFY and service_type == 0:
            row["response_delay"] = _u16(payload, 8)
        known = service_id in SERVICES and service_type in SERVICE_TYPES
        event_type = (
            f"{SERVICES[service_id].lower()}_{EVENT_SUFFIX[service_type]}" if known else f"service_{service_id}"
        )
        data = payload[HEADER : HEADER + data_length]
        if HEADER + data_length > len(payload):
            self.flag(
                "truncated_data",
                f"DCPDataLength {data_length} at offset 10 reaches offset {HEADER + data_length}, "
                f"the frame ends at offset {len(payload)}",
            )
        if not known:
            self.flag("unknown_service", f"ServiceID {service_id}, ServiceType {service_type} at offset 2: not decoded")
        elif service_id == GET and service_type == 0:
            self._selectors(data)
        else:
            self._blocks(data, service_id, service_type & 1 == 1)
        row["blocks"] = self.blocks
        if service_id == SET and service_type == 0:
            row["block_qualifiers"] = self.qualifiers
            row["controls_device"] = True
        else:
            row["controls_device"] = False
        return [Event(PROTOCOL, event_type, row), *self.anomalies]

    def _selectors(self, data: bytes) -> None:
        for position in range(0, len(data) - 1, 2):
            self.blocks.append(_block_name(data[position], data[position + 1]))
        if len(data) % 2:
            self.flag("truncated_block", f"Get selector at offset {HEADER + len(data) - 1} cut short")

    def _blocks(self, data: bytes, service_id: int, response: bool) -> None:
        has_info = (service_id in (IDENTIFY, GET) and response) or (service_id == HELLO and not response)
        has_qualifier = service_id == SET and not response
        position = 0
        while position < len(data):
            offset = HEADER + position
            if position + 4 > len(data):
                self.flag("truncated_block", f"block header at offset {offset}: {len(data) - position} of 4 bytes")
                return
            option, suboption, length = data[position], data[position + 1], _u16(data, position + 2)
            name = _block_name(option, suboption)
            end = position + 4 + length
            if end > len(data):
                self.flag(
                    "truncated_block",
                    f"block {name} at offset {offset} declares {length} bytes, {len(data) - position - 4} present",
                )
                return
            self.blocks.append(name)
            try:
                self._block(option, suboption, data[position + 4 : end], has_info, has_qualifier)
            except ShortBlock as error:
                self.flag("short_block", f"block {name} at offset {offset}: {error}")
            position = end + (length & 1)  # blocks of odd length are padded to 16 bits

    def _block(self, option: int, suboption: int, body: bytes, has_info: bool, has_qualifier: bool) -> None:
        row = self.row
        if option == OPTION_CONTROL:
            self._control(suboption, body)
            return
        if option == OPTION_ALL or 0x80 <= option <= 0xFE:
            return
        info = None
        if has_info or has_qualifier:
            _need(body, 2, "BlockInfo" if has_info else "BlockQualifier")
            prefix = _u16(body, 0)
            body = body[2:]
            if has_info:
                info = prefix
            else:
                self.qualifiers.append(prefix)
                if "block_qualifier" not in row:
                    row.update(block_qualifier=prefix, permanent=bool(prefix & 1))
        if option == OPTION_IP:
            if suboption == 1:
                _need(body, 6, "MAC address")
                row.setdefault("mac_address", _mac(body[:6]))
            elif suboption in (2, 3):
                _need(body, 28 if suboption == 3 else 12, "IP suite" if suboption == 3 else "IP parameter")
                if "ip" not in row:
                    row.update(ip=_ipv4(body[0:4]), netmask=_ipv4(body[4:8]), gateway=_ipv4(body[8:12]))
                if suboption == 3:
                    row["dns_servers"] = [_ipv4(body[i : i + 4]) for i in range(12, 28, 4)]
                if info is not None and "ip_block_info" not in row:
                    row.update(ip_block_info=info, ip_block_info_name=IP_BLOCK_INFO.get(info, f"reserved {info}"))
        elif option == OPTION_DEVICE:
            self._device(suboption, body)
        elif option == OPTION_DHCP:
            row.setdefault("dhcp_option", suboption)
            row.setdefault("dhcp_parameter", body)
        elif option == OPTION_INITIATIVE and suboption == 1:
            _need(body, 2, "DeviceInitiativeValue")
            row.setdefault("device_initiative", _u16(body, 0))

    def _device(self, suboption: int, body: bytes) -> None:
        row = self.row
        if suboption == 1:
            row.setdefault("type_of_station", _text(body))
        elif suboption == 2:
            row.setdefault("station_name", _text(body))
        elif suboption == 3:
            _need(body, 4, "Device ID")
            row.setdefault("vendor_id", _u16(body, 0))
            row.setdefault("device_id", _u16(body, 2))
        elif suboption == 4:
            _need(body, 1, "Device Role")
            role = body[0]
            row.setdefault("device_role", role)
            row.setdefault("device_role_name", ", ".join(n for bit, n in DEVICE_ROLES if role & bit) or None)
        elif suboption == 5:
            row.setdefault("device_options", [_block_name(body[i], body[i + 1]) for i in range(0, len(body) - 1, 2)])
        elif suboption == 6:
            row.setdefault("alias_name", _text(body))
        elif suboption == 7:
            _need(body, 2, "Device Instance")
            row.setdefault("device_instance", _u16(body, 0))
        elif suboption == 8:
            _need(body, 4, "OEM Device ID")
            row.setdefault("oem_vendor_id", _u16(body, 0))
            row.setdefault("oem_device_id", _u16(body, 2))
        elif suboption == 10:
            _need(body, 2, "RSI Properties")
            row.setdefault("rsi_properties", _u16(body, 0))

    def _control(self, suboption: int, body: bytes) -> None:
        row = self.row
        if suboption == 4:  # Response: the answered option/suboption and its BlockError
            _need(body, 3, "Response")
            responses = row.setdefault("response_blocks", [])
            errors = row.setdefault("block_errors", [])
            responses.append(_block_name(body[0], body[1]))  # type: ignore[attr-defined]
            errors.append(body[2])  # type: ignore[attr-defined]
            row["failed"] = bool(row.get("failed")) or body[2] != 0
            return
        _need(body, 2, "BlockQualifier")
        qualifier = _u16(body, 0)
        self.qualifiers.append(qualifier)
        if suboption in ACTIONS:
            row.setdefault("control", SUBOPTIONS[OPTION_CONTROL][suboption])
        if suboption == 3:
            _need(body, 4, "SignalValue")
            row.setdefault("signal_value", _u16(body, 2))
        elif suboption in (5, 6):
            row.setdefault("reset_qualifier", qualifier)
        if suboption == 6:
            row.setdefault("reset_mode", RESET_MODES.get(qualifier >> 1, f"reserved mode {qualifier >> 1}"))


def decode(payload: bytes) -> list[Event]:
    """Events of one Profinet RT payload (FrameID onwards); other RT frames give none."""
    if len(payload) < 2:
        return [anomaly(PROTOCOL, "truncated_header", f"Profinet FrameID needs 2 bytes, the frame has {len(payload)}")]
    if _u16(payload, 0) not in FRAME_IDS:
        return []  # cyclic IO data, alarms, PTCP: not DCP
    return DcpParser(payload).parse()


class DcpSession(Session):
    """The DCP frames of one source MAC address. Each frame is one complete PDU: nothing is buffered."""

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        try:
            return decode(data)
        except Exception as error:  # defence in depth: the parser checks every length itself
            return [anomaly(PROTOCOL, "malformed", f"{type(error).__name__}: {error}")]


class ProfinetDcpDecoder(Decoder):
    """Profinet DCP: every frame of EtherType 0x8892 whose FrameID is a DCP one."""

    name = PROTOCOL
    transport = "ethernet"
    ethertypes = frozenset({ETHERTYPE})
    tables: ClassVar[dict[str, pa.Schema]] = {PROTOCOL: SCHEMA}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return len(payload) >= 2 and _u16(payload, 0) in FRAME_IDS

    def session(self) -> Session:
        return DcpSession()

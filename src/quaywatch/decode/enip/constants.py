"""EtherNet/IP encapsulation and CIP codes (ODVA, The CIP Networks Library vol. 1 and 2).

Names follow CISA ICSNPP-ENIP's spelling where it logs them, so logs line up. Vendor names are reference
data and live in ``quaywatch/data/cip_vendors.csv``.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

COMMANDS: dict[int, str] = {
    0x0000: "NOP",
    0x0004: "List Services",
    0x0063: "List Identity",
    0x0064: "List Interfaces",
    0x0065: "Register Session",
    0x0066: "Unregister Session",
    0x006F: "Send RR Data",
    0x0070: "Send Unit Data",
    0x0072: "Indicate Status",
    0x0073: "Cancel",
}

ENCAPSULATION_STATUS: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Invalid or Unsupported Command",
    0x0002: "Insufficient Memory",
    0x0003: "Incorrect Data",
    0x0064: "Invalid Session Handle",
    0x0065: "Invalid Length",
    0x0069: "Unsupported Protocol Version",
}

SERVICES: dict[int, str] = {
    0x01: "Get Attributes All",
    0x02: "Set Attributes All",
    0x03: "Get Attribute List",
    0x04: "Set Attribute List",
    0x05: "Reset",
    0x06: "Start",
    0x07: "Stop",
    0x08: "Create",
    0x09: "Delete",
    0x0A: "Multiple Service Packet",
    0x0D: "Apply Attributes",
    0x0E: "Get Attribute Single",
    0x10: "Set Attributes Single",
    0x11: "Find Next Object Instance",
    0x14: "Error Response",
    0x15: "Restore",
    0x16: "Save",
    0x17: "No Operation",
    0x18: "Get Member",
    0x19: "Set Member",
    0x1A: "Insert Member",
    0x1B: "Remove Member",
    0x1C: "Group Sync",
}

#: Connection Manager (class 0x06) services.
CONNECTION_MANAGER_SERVICES: dict[int, str] = {
    0x4E: "Forward Close",
    0x52: "Unconnected Send",
    0x54: "Forward Open",
    0x56: "Get Connection Data",
    0x57: "Search Connection Data",
    0x5A: "Get Connection Owner",
    0x5B: "Large Forward Open",
}

#: Logix controller tag services (object-specific, used on the Symbol class and by connected messaging).
LOGIX_SERVICES: dict[int, str] = {
    0x4C: "Read Tag",
    0x4D: "Write Tag",
    0x4E: "Read Modify Write Tag",
    0x52: "Read Tag Fragmented",
    0x53: "Write Tag Fragmented",
    0x55: "Get Instance Attribute List",
}

#: Services that change a device: writes, resets, mode changes, connection set-up.
CONTROL_SERVICES = frozenset({0x02, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x10, 0x15, 0x19, 0x4D, 0x4E, 0x53})

CLASSES: dict[int, str] = {
    0x01: "Identity",
    0x02: "Message Router",
    0x03: "DeviceNet",
    0x04: "Assembly",
    0x05: "Connection",
    0x06: "Connection Manager",
    0x07: "Register",
    0x08: "Discrete Input Point",
    0x09: "Discrete Output Point",
    0x0A: "Analog Input Point",
    0x0B: "Analog Output Point",
    0x0E: "Presence Sensing",
    0x0F: "Parameter",
    0x10: "Parameter Group",
    0x12: "Group",
    0x1D: "Discrete Input Group",
    0x1E: "Discrete Output Group",
    0x28: "Motor Data",
    0x29: "Control Supervisor",
    0x2A: "AC/DC Drive",
    0x2C: "Overload",
    0x37: "File",
    0x43: "Time Sync",
    0x47: "Device Level Ring",
    0x48: "QoS",
    0x4D: "Port",
    0x6B: "Symbol",
    0x6C: "Template",
    0xF4: "Port",
    0xF5: "TCP/IP Interface",
    0xF6: "Ethernet Link",
}

GENERAL_STATUS: dict[int, str] = {
    0x00: "Success",
    0x01: "Connection failure",
    0x02: "Resource unavailable",
    0x03: "Invalid parameter value",
    0x04: "Path segment error",
    0x05: "Path destination unknown",
    0x06: "Partial transfer",
    0x07: "Connection lost",
    0x08: "Service not supported",
    0x09: "Invalid attribute value",
    0x0A: "Attribute list error",
    0x0B: "Already in requested mode/state",
    0x0C: "Object state conflict",
    0x0D: "Object already exists",
    0x0E: "Attribute not settable",
    0x0F: "Privilege violation",
    0x10: "Device state conflict",
    0x11: "Reply data too large",
    0x12: "Fragmentation of a primitive value",
    0x13: "Not enough data",
    0x14: "Attribute not supported",
    0x15: "Too much data",
    0x16: "Object does not exist",
    0x17: "Service fragmentation sequence not in progress",
    0x18: "No stored attribute data",
    0x19: "Store operation failure",
    0x1A: "Routing failure, request packet too large",
    0x1B: "Routing failure, response packet too large",
    0x1C: "Missing attribute list entry data",
    0x1D: "Invalid attribute value list",
    0x1E: "Embedded service error",
    0x1F: "Vendor specific error",
    0x20: "Invalid parameter",
    0x21: "Write-once value or medium already written",
    0x22: "Invalid reply received",
    0x25: "Key failure in path",
    0x26: "Path size invalid",
    0x27: "Unexpected attribute in list",
    0x28: "Invalid Member ID",
    0x29: "Member not settable",
}

DEVICE_TYPES: dict[int, str] = {
    0x00: "Generic Device (deprecated)",
    0x02: "AC Drive",
    0x03: "Motor Overload",
    0x04: "Limit Switch",
    0x05: "Inductive Proximity Switch",
    0x06: "Photoelectric Sensor",
    0x07: "General Purpose Discrete I/O",
    0x09: "Resolver",
    0x0C: "Communications Adapter",
    0x0E: "Programmable Logic Controller",
    0x10: "Position Controller",
    0x13: "DC Drive",
    0x15: "Contactor",
    0x16: "Motor Starter",
    0x17: "Soft Start",
    0x18: "Human-Machine Interface",
    0x1A: "Mass Flow Controller",
    0x1B: "Pneumatic Valve",
    0x1C: "Vacuum Pressure Gauge",
    0x1D: "Process Control Value",
    0x1E: "Residual Gas Analyzer",
    0x1F: "DC Power Generator",
    0x20: "RF Power Generator",
    0x21: "Turbomolecular Vacuum Pump",
    0x22: "Encoder",
    0x23: "Safety Discrete I/O Device",
    0x24: "Fluid Flow Controller",
    0x25: "CIP Motion Drive",
    0x26: "CompoNet Repeater",
    0x27: "Mass Flow Controller, Enhanced",
    0x28: "CIP Modbus Device",
    0x29: "CIP Modbus Translator",
    0x2A: "Safety Analog I/O Device",
    0x2B: "Generic Device (keyable)",
    0x2C: "Managed Ethernet Switch",
}


@cache
def vendors() -> dict[int, str]:
    """CIP vendor id -> name, from the versioned data file."""
    text = resources.files("quaywatch.data").joinpath("cip_vendors.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {int(row["vendor_id"]): row["name"] for row in rows}


def service_name(service: int, class_id: int | None) -> str:
    if service in SERVICES:
        return SERVICES[service]
    if class_id == 0x06 and service in CONNECTION_MANAGER_SERVICES:
        return CONNECTION_MANAGER_SERVICES[service]
    if service in LOGIX_SERVICES:
        return LOGIX_SERVICES[service]
    return f"Service 0x{service:02x}"

"""S7comm, S7comm-plus and COTP codes.

Sources: ISO 8073 / RFC 905 (COTP), RFC 1006 (TPKT), and the public S7comm protocol descriptions used by
Wireshark's s7comm and s7comm_plus dissectors and by CISA ICSNPP-S7comm; names follow ICSNPP's spelling so
logs line up.
"""

from __future__ import annotations

COTP_TYPES: dict[int, str] = {
    0x0E: "CR Connection Request",
    0x0D: "CC Connection Confirm",
    0x08: "DR Disconnect Request",
    0x0C: "DC Disconnect Confirm",
    0x0F: "DT Data",
    0x01: "ED Expedited Data",
    0x06: "AK Data Acknowledgement",
    0x02: "EA Expedited Data Acknowledgement",
    0x05: "RJ Reject",
    0x07: "ER TPDU Error",
}

ROSCTR: dict[int, str] = {1: "Job-Request", 2: "ACK", 3: "ACK-Data", 7: "User-Data"}

FUNCTIONS: dict[int, str] = {
    0x00: "CPU Services",
    0xF0: "Setup Communication",
    0x04: "Read Variable",
    0x05: "Write Variable",
    0x1A: "Request Download",
    0x1B: "Download Block",
    0x1C: "Download Ended",
    0x1D: "Start Upload",
    0x1E: "Upload",
    0x1F: "End Upload",
    0x28: "PI-Service",
    0x29: "PLC Stop",
}

#: Functions that change the PLC: program transfer, program-invocation services, stop.
CONTROL_FUNCTIONS = frozenset({0x05, 0x1A, 0x1B, 0x1C, 0x28, 0x29})

ERROR_CLASSES: dict[int, str] = {
    0x00: "No error",
    0x81: "Application relationship error",
    0x82: "Object definition error",
    0x83: "No resources available error",
    0x84: "Error on service processing",
    0x85: "Error on supplies",
    0x87: "Access error",
    0xD2: "OBJ access error",
    0xD4: "Diagnostic error",
    0xD6: "Protection error",
}

AREAS: dict[int, str] = {
    0x03: "System info of 200 family",
    0x05: "System flags of 200 family",
    0x06: "Analog inputs of 200 family",
    0x07: "Analog outputs of 200 family",
    0x1C: "Counters (C)",
    0x1D: "Timers (T)",
    0x1E: "IEC counters (200 family)",
    0x1F: "IEC timers (200 family)",
    0x80: "Direct peripheral access (P)",
    0x81: "Inputs (I)",
    0x82: "Outputs (Q)",
    0x83: "Flags (M)",
    0x84: "Data blocks (DB)",
    0x85: "Instance data blocks (DI)",
    0x86: "Local data (L)",
    0x87: "Unknown yet (V)",
}

USERDATA_TYPES: dict[int, str] = {0x0: "Push", 0x4: "Request", 0x8: "Response"}

USERDATA_GROUPS: dict[int, str] = {
    0x0: "Mode-transition",
    0x1: "Programmer commands",
    0x2: "Cyclic data",
    0x3: "Block Functions",
    0x4: "CPU Functions",
    0x5: "Security",
    0x6: "PBC BSEND/BRECV",
    0x7: "Time Functions",
    0xF: "NC programming",
}

#: (group, subfunction) -> name.
USERDATA_SUBFUNCTIONS: dict[tuple[int, int], str] = {
    (0x1, 0x01): "Request diag data (Type 1)",
    (0x1, 0x02): "VarTab",
    (0x1, 0x0C): "Erase",
    (0x1, 0x0E): "Read diag data",
    (0x1, 0x0F): "Remove diag data",
    (0x1, 0x10): "Forces",
    (0x1, 0x13): "Request diag data (Type 2)",
    (0x2, 0x01): "Memory",
    (0x2, 0x04): "Unsubscribe",
    (0x3, 0x01): "List Blocks",
    (0x3, 0x02): "List Blocks of Type",
    (0x3, 0x03): "Get Block Info",
    (0x4, 0x01): "Read SZL",
    (0x4, 0x02): "Message service",
    (0x4, 0x03): "Diagnostic message",
    (0x4, 0x05): "ALARM_8 indication",
    (0x4, 0x06): "NOTIFY indication",
    (0x4, 0x0B): "ALARM ack",
    (0x4, 0x0C): "ALARM_S indication",
    (0x4, 0x11): "ALARM query",
    (0x4, 0x13): "ALARM_SQ indication",
    (0x5, 0x01): "PLC password",
    (0x5, 0x02): "Clean session",
    (0x7, 0x01): "Read Clock",
    (0x7, 0x02): "Set Clock",
    (0x7, 0x03): "Read Clock (following)",
    (0x7, 0x04): "Set Clock",
}

SZL_IDS: dict[int, str] = {
    0x0000: "List of all the SZL-IDs of a module",
    0x0011: "Module identification",
    0x0012: "CPU characteristics",
    0x0013: "User memory areas",
    0x0014: "System areas",
    0x0015: "Block types",
    0x0019: "Status of the module LEDs",
    0x001C: "Component Identification",
    0x0022: "Interrupt status",
    0x0025: "Assignment between process image partitions and OBs",
    0x0032: "Communication status data",
    0x0074: "Status of the module LEDs",
    0x0091: "Module status information",
    0x0092: "Rack / station status information",
    0x0094: "Rack / station status information",
    0x0095: "Extended DP master system information",
    0x0096: "Module status information, PROFINET IO and PROFIBUS DP",
    0x00A0: "Diagnostic buffer of the CPU",
    0x00B1: "Module diagnostic information (data record 0)",
    0x00B2: "Module diagnostic information (data record 1), geographical address",
    0x00B3: "Module diagnostic information (data record 1), logical address",
    0x00B4: "Diagnostic data of a DP slave",
    0x0111: "Module identification",
    0x011C: "Component Identification",
    0x0131: "Communication capability parameters",
    0x0132: "Communication status data",
    0x0424: "Modes",
}

RETURN_CODES: dict[int, str] = {
    0x00: "Reserved",
    0x01: "Hardware error",
    0x03: "Accessing the object not allowed",
    0x05: "Invalid address",
    0x06: "Data type not supported",
    0x07: "Data type inconsistent",
    0x0A: "Object does not exist",
    0xFF: "Success",
}

BLOCK_TYPES: dict[str, str] = {
    "08": "Organization Block",
    "09": "CMOD",
    "0A": "Data Block",
    "0B": "System Data Block",
    "0C": "Function",
    "0D": "System Function",
    "0E": "Function Block",
    "0F": "System Function Block",
}

FILESYSTEMS: dict[str, str] = {"P": "Passive (copied, but not chained) module", "A": "Active", "B": "Both"}

#: Component identification (SZL 0x001C) record index -> our column.
COMPONENTS: dict[int, str] = {
    1: "automation_system_name",
    2: "module_name",
    3: "plant_id",
    4: "copyright",
    5: "module_serial",
    7: "module_type_name",
    8: "memory_card_serial",
    11: "location",
}

PLUS_OPCODES: dict[int, str] = {
    0x31: "Request",
    0x32: "Response",
    0x33: "Notification",
    0x02: "Response2",
}

PLUS_FUNCTIONS: dict[int, str] = {
    0x04BB: "Explore",
    0x04CA: "Create Object",
    0x04D4: "Delete Object",
    0x04F2: "Set Variable",
    0x04FC: "Get Variable",
    0x0524: "Get Link",
    0x0542: "Set Multi Variables",
    0x054C: "Get Multi Variables",
    0x0556: "Begin Sequence",
    0x0560: "End Sequence",
    0x056B: "Invoke",
    0x0586: "Get Var Sub Streamed",
}

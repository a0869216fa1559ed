"""DNP3 (IEEE 1815-2012) codes, names and object sizes.

Sources: IEEE Std 1815-2012 (DNP3): clause 4 (application layer: function codes, internal
indications, object headers and qualifier codes), clause 8 (transport function), clause 9 (data
link layer: frame format, control octet, CRC) and annex A (object library: group/variation sizes,
control relay output block and its status codes, file-control objects, device attributes).
Function names follow Zeek's DNP3 analyzer (``scripts/base/protocols/dnp3/consts.zeek``) so that
logs line up; object names follow the object library.
"""

from __future__ import annotations

from functools import cache

# -- data link layer (IEEE 1815-2012, clause 9) ----------------------------------------------------

START = b"\x05\x64"
#: Header: start(2) length(1) control(1) destination(2) source(2) CRC(2).
HEADER_LENGTH = 10
#: LENGTH counts control, destination and source (5) plus user data octets, CRCs excluded.
MINIMUM_LENGTH = 5
BLOCK = 16

#: Primary-to-secondary link functions (PRM = 1).
PRIMARY_FUNCTIONS: dict[int, str] = {
    0: "RESET_LINK_STATES",
    1: "RESET_USER_PROCESS",
    2: "TEST_LINK_STATES",
    3: "CONFIRMED_USER_DATA",
    4: "UNCONFIRMED_USER_DATA",
    9: "REQUEST_LINK_STATUS",
}
#: Secondary-to-primary link functions (PRM = 0).
SECONDARY_FUNCTIONS: dict[int, str] = {
    0: "ACK",
    1: "NACK",
    11: "LINK_STATUS",
    14: "NOT_FUNCTIONING",
    15: "NOT_SUPPORTED",
}
#: Primary functions that carry user data (a transport segment).
USER_DATA_FUNCTIONS = frozenset({3, 4})

# -- transport layer (IEEE 1815-2012, clause 8) ----------------------------------------------------

#: Sequence numbers are 6 bits: a fragment spread over more segments than that cannot be told apart
#: from a replay, so reassembly beyond it is refused (Suricata's too_long_reassembly has the same bound).
MAXIMUM_SEGMENTS = 64
#: Partial fragments kept per session (one per source/destination pair and direction).
MAXIMUM_PARTIAL = 64

# -- application layer (IEEE 1815-2012, 4.2.2.5) ---------------------------------------------------

FUNCTIONS: dict[int, str] = {
    0x00: "CONFIRM",
    0x01: "READ",
    0x02: "WRITE",
    0x03: "SELECT",
    0x04: "OPERATE",
    0x05: "DIRECT_OPERATE",
    0x06: "DIRECT_OPERATE_NR",
    0x07: "IMMED_FREEZE",
    0x08: "IMMED_FREEZE_NR",
    0x09: "FREEZE_CLEAR",
    0x0A: "FREEZE_CLEAR_NR",
    0x0B: "FREEZE_AT_TIME",
    0x0C: "FREEZE_AT_TIME_NR",
    0x0D: "COLD_RESTART",
    0x0E: "WARM_RESTART",
    0x0F: "INITIALIZE_DATA",
    0x10: "INITIALIZE_APPL",
    0x11: "START_APPL",
    0x12: "STOP_APPL",
    0x13: "SAVE_CONFIG",
    0x14: "ENABLE_UNSOLICITED",
    0x15: "DISABLE_UNSOLICITED",
    0x16: "ASSIGN_CLASS",
    0x17: "DELAY_MEASURE",
    0x18: "RECORD_CURRENT_TIME",
    0x19: "OPEN_FILE",
    0x1A: "CLOSE_FILE",
    0x1B: "DELETE_FILE",
    0x1C: "GET_FILE_INFO",
    0x1D: "AUTHENTICATE_FILE",
    0x1E: "ABORT_FILE",
    0x1F: "ACTIVATE_CONFIG",
    0x20: "AUTHENTICATE_REQ",
    0x21: "AUTHENTICATE_REQ_NR",
    0x81: "RESPONSE",
    0x82: "UNSOLICITED_RESPONSE",
    0x83: "AUTHENTICATE_RESP",
}
CONFIRM = 0x00
RESPONSE = 0x81
UNSOLICITED_RESPONSE = 0x82
AUTHENTICATE_RESPONSE = 0x83
RESPONSES = frozenset({RESPONSE, UNSOLICITED_RESPONSE, AUTHENTICATE_RESPONSE})
#: Requests the outstation never answers: no response is waited for.
NO_RESPONSE = frozenset({0x00, 0x06, 0x08, 0x0A, 0x0C, 0x21})
#: Requests whose object headers name points without carrying their values.
HEADERS_ONLY = frozenset({0x01, 0x07, 0x08, 0x09, 0x0A, 0x14, 0x15, 0x16})
FREEZE_AT_TIME = frozenset({0x0B, 0x0C})
#: Requests that change outputs, counters, configuration, files, reporting or the running state of the
#: device. SELECT only arms a control; DELAY_MEASURE, GET_FILE_INFO, AUTHENTICATE_FILE and the authentication
#: requests change nothing.
CONTROL_FUNCTIONS = frozenset(
    {0x02, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
     0x16, 0x18, 0x19, 0x1A, 0x1B, 0x1E, 0x1F}
)  # fmt: skip

#: Internal indications by bit of (IIN1 << 8 | IIN2), the value Zeek logs as ``iin`` (IEEE 1815-2012, 4.2.2.6).
IIN_NAMES: dict[int, str] = {
    0x0100: "all_stations",
    0x0200: "class_1_events",
    0x0400: "class_2_events",
    0x0800: "class_3_events",
    0x1000: "need_time",
    0x2000: "local_control",
    0x4000: "device_trouble",
    0x8000: "device_restart",
    0x0001: "no_func_code_support",
    0x0002: "object_unknown",
    0x0004: "parameter_error",
    0x0008: "event_buffer_overflow",
    0x0010: "already_executing",
    0x0020: "config_corrupt",
    0x0040: "reserved_2",
    0x0080: "reserved_1",
}

# -- qualifiers (IEEE 1815-2012, 4.2.2.7) ----------------------------------------------------------

#: Range specifier code -> (octets of the whole range field, kind). Kinds: "range" start and stop
#: indexes, "address" start and stop virtual addresses, "all" no range field, "count" a quantity,
#: "free" a quantity of free-format objects (prefix code 4-6 gives each object's size).
RANGE_CODES: dict[int, tuple[int, str]] = {
    0x0: (2, "range"),
    0x1: (4, "range"),
    0x2: (8, "range"),
    0x3: (2, "address"),
    0x4: (4, "address"),
    0x5: (8, "address"),
    0x6: (0, "all"),
    0x7: (1, "count"),
    0x8: (2, "count"),
    0x9: (4, "count"),
    0xB: (1, "free"),
}
#: Object prefix code -> (octets, kind): an index or each object's size.
PREFIX_CODES: dict[int, tuple[int, str]] = {
    0: (0, "none"),
    1: (1, "index"),
    2: (2, "index"),
    3: (4, "index"),
    4: (1, "size"),
    5: (2, "size"),
    6: (4, "size"),
}

# -- object library (IEEE 1815-2012, annex A) ------------------------------------------------------

#: Object sizes in octets per point, without the prefix; negative: packed, minus the bits per point.
#: Absent: free-format objects whose size is in their prefix (group 70, 120 ... with qualifier 0x5B),
#: octet strings whose variation is their size (``OCTET_GROUPS``) and device attributes (group 0,
#: data type, length, value).

_EVENT_SIZES = {1: 5, 2: 3, 3: 11, 4: 9, 5: 5, 6: 9, 7: 11, 8: 15}  # groups 32, 33, 42, 43
_COUNTER_SIZES = {1: 5, 2: 3, 3: 5, 4: 3, 5: 4, 6: 2, 7: 4, 8: 2}  # group 20
_COUNTER_EVENT_SIZES = {1: 5, 2: 3, 3: 5, 4: 3, 5: 11, 6: 9, 7: 11, 8: 9}  # groups 22, 23

OBJECT_SIZES: dict[tuple[int, int], int] = {
    (1, 1): -1, (1, 2): 1,
    (2, 1): 1, (2, 2): 7, (2, 3): 3,
    (3, 1): -2, (3, 2): 1,
    (4, 1): 1, (4, 2): 7, (4, 3): 3,
    (10, 1): -1, (10, 2): 1,
    (11, 1): 1, (11, 2): 7,
    (12, 1): 11, (12, 2): 11, (12, 3): -1,
    (13, 1): 1, (13, 2): 7,
    **{(20, v): s for v, s in _COUNTER_SIZES.items()},
    (21, 1): 5, (21, 2): 3, (21, 3): 5, (21, 4): 3, (21, 5): 11, (21, 6): 9, (21, 7): 11, (21, 8): 9,
    (21, 9): 4, (21, 10): 2, (21, 11): 4, (21, 12): 2,
    **{(22, v): s for v, s in _COUNTER_EVENT_SIZES.items()},
    **{(23, v): s for v, s in _COUNTER_EVENT_SIZES.items()},
    (30, 1): 5, (30, 2): 3, (30, 3): 4, (30, 4): 2, (30, 5): 5, (30, 6): 9,
    (31, 1): 5, (31, 2): 3, (31, 3): 11, (31, 4): 9, (31, 5): 4, (31, 6): 2, (31, 7): 5, (31, 8): 9,
    **{(32, v): s for v, s in _EVENT_SIZES.items()},
    **{(33, v): s for v, s in _EVENT_SIZES.items()},
    (34, 1): 2, (34, 2): 4, (34, 3): 4,
    (40, 1): 5, (40, 2): 3, (40, 3): 5, (40, 4): 9,
    (41, 1): 5, (41, 2): 3, (41, 3): 5, (41, 4): 9,
    **{(42, v): s for v, s in _EVENT_SIZES.items()},
    **{(43, v): s for v, s in _EVENT_SIZES.items()},
    (50, 1): 6, (50, 2): 10, (50, 3): 6, (50, 4): 11,
    (51, 1): 6, (51, 2): 6,
    (52, 1): 2, (52, 2): 2,
    (80, 1): -1,
    (81, 1): 3,
    (101, 1): 2, (101, 2): 4, (101, 3): 8,
    (102, 1): 1,
    (120, 3): 6, (120, 4): 2,
    (121, 1): 7,
    (122, 1): 7, (122, 2): 13,
}  # fmt: skip
OCTET_GROUPS = frozenset({110, 111, 112, 113})
#: Class data objects (group 60) never carry values.
CLASS_GROUP = 60

GROUP_NAMES: dict[int, str] = {
    0: "Device Attributes",
    1: "Binary Input",
    2: "Binary Input Event",
    3: "Double-bit Binary Input",
    4: "Double-bit Binary Input Event",
    10: "Binary Output",
    11: "Binary Output Event",
    12: "Binary Output Command",
    13: "Binary Output Command Event",
    20: "Counter",
    21: "Frozen Counter",
    22: "Counter Event",
    23: "Frozen Counter Event",
    30: "Analog Input",
    31: "Frozen Analog Input",
    32: "Analog Input Event",
    33: "Frozen Analog Input Event",
    34: "Analog Input Reporting Deadband",
    40: "Analog Output Status",
    41: "Analog Output",
    42: "Analog Output Event",
    43: "Analog Output Command Event",
    50: "Time and Date",
    51: "Time and Date CTO",
    52: "Time Delay",
    60: "Class Data",
    70: "File-control",
    80: "Internal Indications",
    81: "Device Storage",
    82: "Device Profile",
    83: "Data Set Registration",
    85: "Data Set Prototype",
    86: "Data Set Descriptor",
    87: "Data Set",
    88: "Data Set Event",
    90: "Application Identifier",
    91: "Status of Requested Operation",
    100: "Floating-point",
    101: "Binary-Coded Decimal Integer",
    102: "Unsigned Integer",
    110: "Octet String",
    111: "Octet String Event",
    112: "Virtual Terminal Output Block",
    113: "Virtual Terminal Event Data",
    120: "Authentication",
    121: "Security Statistic",
    122: "Security Statistic Event",
}

_FLAG_WIDTHS = {1: "32-bit with flag", 2: "16-bit with flag", 3: "32-bit delta with flag", 4: "16-bit delta with flag",
                5: "32-bit without flag", 6: "16-bit without flag", 7: "32-bit delta without flag",
                8: "16-bit delta without flag"}  # fmt: skip
_EVENT_WIDTHS = {1: "32-bit without time", 2: "16-bit without time", 3: "32-bit with time", 4: "16-bit with time",
                 5: "single-precision without time", 6: "double-precision without time",
                 7: "single-precision with time", 8: "double-precision with time"}  # fmt: skip
_COUNTER_EVENT_WIDTHS = {1: "32-bit with flag", 2: "16-bit with flag", 3: "32-bit delta with flag",
                         4: "16-bit delta with flag", 5: "32-bit with flag and time", 6: "16-bit with flag and time",
                         7: "32-bit delta with flag and time", 8: "16-bit delta with flag and time"}  # fmt: skip

VARIATION_NAMES: dict[tuple[int, int], str] = {
    (1, 1): "packed format", (1, 2): "with flags",
    (2, 1): "without time", (2, 2): "with absolute time", (2, 3): "with relative time",
    (3, 1): "packed format", (3, 2): "with flags",
    (4, 1): "without time", (4, 2): "with absolute time", (4, 3): "with relative time",
    (10, 1): "packed format", (10, 2): "output status with flags",
    (11, 1): "status without time", (11, 2): "status with time",
    (12, 1): "control relay output block", (12, 2): "pattern control block", (12, 3): "pattern mask",
    (13, 1): "command status without time", (13, 2): "command status with time",
    **{(20, v): n for v, n in _FLAG_WIDTHS.items()},
    (21, 1): "32-bit with flag", (21, 2): "16-bit with flag", (21, 3): "32-bit delta with flag",
    (21, 4): "16-bit delta with flag", (21, 5): "32-bit with flag and time", (21, 6): "16-bit with flag and time",
    (21, 7): "32-bit delta with flag and time", (21, 8): "16-bit delta with flag and time",
    (21, 9): "32-bit without flag", (21, 10): "16-bit without flag", (21, 11): "32-bit delta without flag",
    (21, 12): "16-bit delta without flag",
    **{(22, v): n for v, n in _COUNTER_EVENT_WIDTHS.items()},
    **{(23, v): n for v, n in _COUNTER_EVENT_WIDTHS.items()},
    (30, 1): "32-bit with flag", (30, 2): "16-bit with flag", (30, 3): "32-bit without flag",
    (30, 4): "16-bit without flag", (30, 5): "single-precision with flag", (30, 6): "double-precision with flag",
    (31, 1): "32-bit with flag", (31, 2): "16-bit with flag", (31, 3): "32-bit with time-of-freeze",
    (31, 4): "16-bit with time-of-freeze", (31, 5): "32-bit without flag", (31, 6): "16-bit without flag",
    (31, 7): "single-precision with flag", (31, 8): "double-precision with flag",
    **{(32, v): n for v, n in _EVENT_WIDTHS.items()},
    **{(33, v): n for v, n in _EVENT_WIDTHS.items()},
    (34, 1): "16-bit", (34, 2): "32-bit", (34, 3): "single-precision",
    (40, 1): "32-bit with flag", (40, 2): "16-bit with flag", (40, 3): "single-precision with flag",
    (40, 4): "double-precision with flag",
    (41, 1): "32-bit", (41, 2): "16-bit", (41, 3): "single-precision", (41, 4): "double-precision",
    **{(42, v): n for v, n in _EVENT_WIDTHS.items()},
    **{(43, v): n for v, n in _EVENT_WIDTHS.items()},
    (50, 1): "absolute time", (50, 2): "absolute time and interval", (50, 3): "absolute time at last recorded time",
    (50, 4): "indexed absolute time and long interval",
    (51, 1): "absolute time, synchronized", (51, 2): "absolute time, unsynchronized",
    (52, 1): "coarse", (52, 2): "fine",
    (60, 1): "class 0 data", (60, 2): "class 1 data", (60, 3): "class 2 data", (60, 4): "class 3 data",
    (70, 1): "file identifier", (70, 2): "authentication", (70, 3): "file command", (70, 4): "file command status",
    (70, 5): "file transport", (70, 6): "file transport status", (70, 7): "file descriptor",
    (70, 8): "file specification string",
    (80, 1): "internal indications",
    (91, 1): "active configuration",
    (120, 1): "challenge", (120, 2): "reply", (120, 3): "aggressive mode request",
    (120, 4): "session key status request", (120, 5): "session key status", (120, 6): "session key change",
    (120, 7): "error", (120, 8): "user certificate",
    (120, 9): "MAC", (120, 10): "user status change", (120, 11): "update key change request",
    (120, 12): "update key change reply", (120, 13): "update key change", (120, 14): "update key change signature",
    (120, 15): "update key change confirmation",
}  # fmt: skip


@cache
def object_name(group: int, variation: int) -> str:
    """'Binary Input - with flags', 'Binary Input - any variation', or 'g200v1' when unknown."""
    group_name = GROUP_NAMES.get(group)
    if group_name is None:
        return f"g{group}v{variation}"
    if variation == 0:
        return f"{group_name} - any variation"
    if group == 0:
        return f"{group_name} - variation {variation}"
    if group in OCTET_GROUPS:
        return f"{group_name} - {variation} octets"
    name = VARIATION_NAMES.get((group, variation))
    return f"{group_name} - {name}" if name else f"{group_name} - variation {variation}"


# -- control objects (IEEE 1815-2012, annex A, group 12) -------------------------------------------

OPERATION_TYPES: dict[int, str] = {0: "NUL", 1: "PULSE_ON", 2: "PULSE_OFF", 3: "LATCH_ON", 4: "LATCH_OFF"}
TRIP_CLOSE: dict[int, str] = {0: "NUL", 1: "CLOSE", 2: "TRIP", 3: "RESERVED"}
CONTROL_STATUS: dict[int, str] = {
    0: "SUCCESS",
    1: "TIMEOUT",
    2: "NO_SELECT",
    3: "FORMAT_ERROR",
    4: "NOT_SUPPORTED",
    5: "ALREADY_ACTIVE",
    6: "HARDWARE_ERROR",
    7: "LOCAL",
    8: "TOO_MANY_OBJS",
    9: "NOT_AUTHORIZED",
    10: "AUTOMATION_INHIBIT",
    11: "PROCESSING_LIMITED",
    12: "OUT_OF_RANGE",
    13: "DOWNSTREAM_LOCAL",
    14: "ALREADY_COMPLETE",
    15: "BLOCKED",
    16: "CANCELLED",
    17: "BLOCKED_OTHER_MASTER",
    18: "DOWNSTREAM_FAIL",
    126: "NON_PARTICIPATING",
    127: "UNDEFINED",
}

# -- file transfer (IEEE 1815-2012, annex A, group 70) ---------------------------------------------

FILE_MODES: dict[int, str] = {0: "NULL", 1: "READ", 2: "WRITE", 3: "APPEND"}
FILE_STATUS: dict[int, str] = {
    0: "SUCCESS",
    1: "PERMISSION_DENIED",
    2: "INVALID_MODE",
    3: "FILE_NOT_FOUND",
    4: "FILE_LOCKED",
    5: "TOO_MANY_OPEN",
    6: "INVALID_HANDLE",
    7: "WRITE_BLOCK_SIZE",
    8: "COMM_LOST",
    9: "CANNOT_ABORT",
    16: "NOT_OPENED",
    17: "HANDLE_EXPIRED",
    18: "BUFFER_OVERRUN",
    19: "FATAL",
    20: "BLOCK_SEQUENCE",
    255: "UNDEFINED",
}

# -- device attributes (IEEE 1815-2012, annex A, group 0) ------------------------------------------

ATTRIBUTE_NAMES: dict[int, str] = {
    196: "configuration_id",
    197: "configuration_version",
    198: "configuration_build_date",
    199: "configuration_last_change",
    200: "configuration_signature",
    201: "configuration_signature_algorithm",
    202: "master_resource_id",
    203: "device_altitude",
    204: "device_longitude",
    205: "device_latitude",
    206: "user_assigned_secondary_operator_name",
    207: "user_assigned_primary_operator_name",
    208: "user_assigned_system_name",
    209: "secure_authentication_version",
    210: "security_statistics_per_association",
    211: "user_specific_attribute_sets",
    212: "master_mapped_points",
    213: "outstation_mapped_points",
    214: "analog_output_event_max",
    215: "binary_output_event_max",
    216: "binary_output_max_index",
    217: "analog_output_max_index",
    218: "time_delay_fine",
    219: "binary_output_control_events",
    220: "analog_output_control_events",
    221: "device_time",
    222: "max_binary_input_index",
    223: "max_analog_input_index",
    224: "device_configuration",
    225: "max_counter_index",
    226: "max_double_bit_index",
    227: "frozen_counter_support",
    228: "counter_support",
    229: "frozen_analog_support",
    230: "analog_input_deadband",
    231: "analog_input_event_max",
    232: "binary_input_event_max",
    233: "double_bit_event_max",
    234: "counter_event_max",
    235: "frozen_counter_event_max",
    236: "frozen_analog_event_max",
    237: "event_classes",
    238: "analog_input_event_classes",
    239: "binary_input_event_classes",
    240: "max_transmit_fragment",
    241: "max_receive_fragment",
    242: "device_manufacturer_software_version",
    243: "device_manufacturer_hardware_version",
    244: "user_assigned_owner_name",
    245: "user_assigned_location",
    246: "user_assigned_id",
    247: "user_assigned_device_name",
    248: "device_serial_number",
    249: "dnp3_subset_and_conformance",
    250: "device_manufacturer_product_name",
    252: "device_manufacturer_name",
    254: "all_attributes_request",
    255: "list_of_attribute_variations",
}
ATTRIBUTE_TYPES: dict[int, str] = {1: "VSTR", 2: "UINT", 3: "INT", 4: "FLT", 5: "OSTR", 6: "BSTR", 7: "TIME",
                                   254: "U8BS8LIST", 255: "U8BS8EXLIST"}  # fmt: skip

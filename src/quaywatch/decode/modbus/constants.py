"""Modbus function and exception codes (Modbus Application Protocol Specification V1.1b3, sections 6 and 7).

Names follow Zeek's ``Modbus::function_codes`` so that logs line up with Zeek and CISA ICSNPP.
"""

from __future__ import annotations

FUNCTIONS: dict[int, str] = {
    1: "READ_COILS",
    2: "READ_DISCRETE_INPUTS",
    3: "READ_HOLDING_REGISTERS",
    4: "READ_INPUT_REGISTERS",
    5: "WRITE_SINGLE_COIL",
    6: "WRITE_SINGLE_REGISTER",
    7: "READ_EXCEPTION_STATUS",
    8: "DIAGNOSTICS",
    11: "GET_COMM_EVENT_COUNTER",
    12: "GET_COMM_EVENT_LOG",
    15: "WRITE_MULTIPLE_COILS",
    16: "WRITE_MULTIPLE_REGISTERS",
    17: "REPORT_SLAVE_ID",
    20: "READ_FILE_RECORD",
    21: "WRITE_FILE_RECORD",
    22: "MASK_WRITE_REGISTER",
    23: "READ_WRITE_MULTIPLE_REGISTERS",
    24: "READ_FIFO_QUEUE",
    43: "ENCAP_INTERFACE_TRANSPORT",
}

#: Function codes that change state in the device: the ones an unauthorised host must not send.
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 21, 22, 23})

#: Ranges the specification reserves for vendors (section 5): legitimate but opaque.
USER_DEFINED = frozenset(range(65, 73)) | frozenset(range(100, 111))

EXCEPTIONS: dict[int, str] = {
    1: "ILLEGAL_FUNCTION",
    2: "ILLEGAL_DATA_ADDRESS",
    3: "ILLEGAL_DATA_VALUE",
    4: "SLAVE_DEVICE_FAILURE",
    5: "ACKNOWLEDGE",
    6: "SLAVE_DEVICE_BUSY",
    8: "MEMORY_PARITY_ERROR",
    10: "GATEWAY_PATH_UNAVAILABLE",
    11: "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND",
}

#: Encapsulated interface transport (function 43) types.
MEI_TYPES: dict[int, str] = {13: "CANOPEN_GENERAL_REFERENCE", 14: "READ_DEVICE_IDENTIFICATION"}

#: Read Device Identification object ids (section 6.21) and our column names for them.
DEVICE_OBJECTS: dict[int, str] = {
    0: "vendor_name",
    1: "product_code",
    2: "revision",
    3: "vendor_url",
    4: "product_name",
    5: "model_name",
    6: "user_application_name",
}

#: Diagnostics (function 8) sub-functions (section 6.8.1).
DIAGNOSTIC_SUB_FUNCTIONS: dict[int, str] = {
    0: "RETURN_QUERY_DATA",
    1: "RESTART_COMMUNICATIONS_OPTION",
    2: "RETURN_DIAGNOSTIC_REGISTER",
    3: "CHANGE_ASCII_INPUT_DELIMITER",
    4: "FORCE_LISTEN_ONLY_MODE",
    10: "CLEAR_COUNTERS_AND_DIAGNOSTIC_REGISTER",
    11: "RETURN_BUS_MESSAGE_COUNT",
    12: "RETURN_BUS_COMMUNICATION_ERROR_COUNT",
    13: "RETURN_BUS_EXCEPTION_ERROR_COUNT",
    14: "RETURN_SLAVE_MESSAGE_COUNT",
    15: "RETURN_SLAVE_NO_RESPONSE_COUNT",
    16: "RETURN_SLAVE_NAK_COUNT",
    17: "RETURN_SLAVE_BUSY_COUNT",
    18: "RETURN_BUS_CHARACTER_OVERRUN_COUNT",
    20: "CLEAR_OVERRUN_COUNTER_AND_FLAG",
}

#: Largest MBAP length field: unit id plus a 253-byte PDU (section 4.1).
MAXIMUM_LENGTH = 254

"""IEC 60870-5-104: APCI (I, S and U frames) and ASDUs (IEC 60870-5-101/104, clauses 5 and 7).

One ``iec104`` row per APDU. I-frames carry the ASDU: type id with its standard name, whether it is a
command (C_* types: the operations a telecontrol master sends to a substation or a shore-power station),
cause of transmission, originator and common address, the information object addresses, and for single,
double, regulating-step and set-point commands the commanded value and select/execute qualifier.
"""

from __future__ import annotations

import struct
from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.framing import ResynchronisingStreams

PROTOCOL = "iec104"

#: type id -> (name, bytes per information element excluding the 3-byte IOA).
TYPES: dict[int, tuple[str, int]] = {
    1: ("M_SP_NA_1", 1), 2: ("M_SP_TA_1", 4), 3: ("M_DP_NA_1", 1), 4: ("M_DP_TA_1", 4), 5: ("M_ST_NA_1", 2),
    6: ("M_ST_TA_1", 5), 7: ("M_BO_NA_1", 5), 8: ("M_BO_TA_1", 8), 9: ("M_ME_NA_1", 3), 10: ("M_ME_TA_1", 6),
    11: ("M_ME_NB_1", 3), 12: ("M_ME_TB_1", 6), 13: ("M_ME_NC_1", 5), 14: ("M_ME_TC_1", 8), 15: ("M_IT_NA_1", 5),
    16: ("M_IT_TA_1", 8), 17: ("M_EP_TA_1", 6), 18: ("M_EP_TB_1", 7), 19: ("M_EP_TC_1", 7), 20: ("M_PS_NA_1", 5),
    21: ("M_ME_ND_1", 2), 30: ("M_SP_TB_1", 8), 31: ("M_DP_TB_1", 8), 32: ("M_ST_TB_1", 9), 33: ("M_BO_TB_1", 12),
    34: ("M_ME_TD_1", 10), 35: ("M_ME_TE_1", 10), 36: ("M_ME_TF_1", 12), 37: ("M_IT_TB_1", 12),
    38: ("M_EP_TD_1", 10), 39: ("M_EP_TE_1", 11), 40: ("M_EP_TF_1", 11), 45: ("C_SC_NA_1", 1),
    46: ("C_DC_NA_1", 1), 47: ("C_RC_NA_1", 1), 48: ("C_SE_NA_1", 3), 49: ("C_SE_NB_1", 3), 50: ("C_SE_NC_1", 5),
    51: ("C_BO_NA_1", 4), 58: ("C_SC_TA_1", 8), 59: ("C_DC_TA_1", 8), 60: ("C_RC_TA_1", 8), 61: ("C_SE_TA_1", 10),
    62: ("C_SE_TB_1", 10), 63: ("C_SE_TC_1", 12), 64: ("C_BO_TA_1", 11), 70: ("M_EI_NA_1", 1),
    100: ("C_IC_NA_1", 1), 101: ("C_CI_NA_1", 1), 102: ("C_RD_NA_1", 0), 103: ("C_CS_NA_1", 7),
    104: ("C_TS_NA_1", 2), 105: ("C_RP_NA_1", 1), 106: ("C_CD_NA_1", 2), 107: ("C_TS_TA_1", 9),
    110: ("P_ME_NA_1", 3), 111: ("P_ME_NB_1", 3), 112: ("P_ME_NC_1", 5), 113: ("P_AC_NA_1", 1),
    120: ("F_FR_NA_1", 6), 121: ("F_SR_NA_1", 7), 122: ("F_SC_NA_1", 4), 123: ("F_LS_NA_1", 5),
    124: ("F_AF_NA_1", 4), 126: ("F_DR_TA_1", 13),
}  # fmt: skip

CAUSES: dict[int, str] = {
    1: "per/cyc", 2: "back", 3: "spont", 4: "init", 5: "req", 6: "act", 7: "actcon", 8: "deact", 9: "deactcon",
    10: "actterm", 11: "retrem", 12: "retloc", 13: "file", 20: "inrogen", 37: "reqcogen", 44: "uknown_type",
    45: "uknown_cause", 46: "unknown_asdu_address", 47: "unknown_object_address",
}  # fmt: skip
CAUSES.update({20 + group: f"inro{group}" for group in range(1, 17)})
CAUSES.update({37 + group: f"reqco{group}" for group in range(1, 5)})

U_FUNCTIONS = {0x04: "STARTDT act", 0x08: "STARTDT con", 0x10: "STOPDT act", 0x20: "STOPDT con",
               0x40: "TESTFR act", 0x80: "TESTFR con"}  # fmt: skip
MAX_IOAS = 256


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("frame_format", pa.string(), "APCI format: I (information), S (supervisory) or U (unnumbered)"),
        _field("send_sequence", pa.int32(), "I-frame send sequence number N(S)"),
        _field("receive_sequence", pa.int32(), "I/S-frame receive sequence number N(R)"),
        _field("u_function", pa.string(), "U-frame function: STARTDT/STOPDT/TESTFR act or con"),
        _field("type_id", pa.int16(), "ASDU type identification"),
        _field("type_name", pa.string(), "standard type name, e.g. C_SC_NA_1 (single command)"),
        _field("is_command", pa.bool_(), "a control-direction type (C_*): commands, set points, interrogations"),
        _field("sequence", pa.bool_(), "variable structure qualifier SQ: elements at consecutive addresses"),
        _field("object_count", pa.int16(), "number of information objects or elements"),
        _field("cause", pa.int16(), "cause of transmission"),
        _field("cause_name", pa.string(), "cause name (spont, act, actcon, inrogen ...)"),
        _field("negative", pa.bool_(), "P/N bit: negative confirmation"),
        _field("test", pa.bool_(), "T bit: test frame"),
        _field("originator_address", pa.int16(), "originator address"),
        _field("common_address", pa.int32(), "common address of the ASDU (station)"),
        _field("information_object_addresses", pa.list_(pa.int32()), "information object addresses"),
        _field("command_state", pa.int16(), "single/double/regulating command: the commanded state"),
        _field("select", pa.bool_(), "command qualifier S/E: select (true) or execute (false)"),
        _field("qualifier", pa.int16(), "command qualifier QU or set-point QL"),
        _field("setpoint", pa.float64(), "set-point command value (normalised as a fraction, scaled, or float)"),
    ]
)


def asdu(data: bytes) -> dict[str, object]:
    """Fields of one ASDU (default sizes: 2-byte cause with originator, 2-byte common address, 3-byte IOA)."""
    if not data:
        raise ValueError("I-frame without an ASDU")
    type_id = data[0]
    name, size = TYPES.get(type_id, (f"TYPE_{type_id}", -1))
    fields: dict[str, object] = {"type_id": type_id, "type_name": name, "is_command": name.startswith("C_")}
    if len(data) >= 2:
        fields.update(sequence=bool(data[1] & 0x80), object_count=data[1] & 0x7F)
    if len(data) >= 3:
        cause = data[2] & 0x3F
        fields.update(
            cause=cause,
            cause_name=CAUSES.get(cause, f"cause {cause}"),
            negative=bool(data[2] & 0x40),
            test=bool(data[2] & 0x80),
        )
    if len(data) >= 4:
        fields["originator_address"] = data[3]
    if len(data) < 6:
        fields["error"] = f"ASDU of {len(data)} bytes is shorter than its 6-byte header"
        return fields
    fields["common_address"] = data[4] | (data[5] << 8)
    count = data[1] & 0x7F
    sequence = bool(data[1] & 0x80)
    body = data[6:]
    if size < 0 or count == 0 or len(body) < 3:
        return fields
    if sequence:
        first = body[0] | (body[1] << 8) | (body[2] << 16)
        fields["information_object_addresses"] = [first + i for i in range(min(count, MAX_IOAS))]
        element = body[3 : 3 + size]
    else:
        step = 3 + size
        addresses = [
            body[i] | (body[i + 1] << 8) | (body[i + 2] << 16) for i in range(0, min(len(body) - 2, step * count), step)
        ]
        fields["information_object_addresses"] = addresses[:MAX_IOAS]
        if len(body) != step * count:
            fields["error"] = f"{count} objects of {step} bytes expected, {len(body)} bytes present"
        element = body[3:step]
    if type_id in (45, 46, 47, 58, 59, 60) and element:
        command = element[0]
        fields["command_state"] = command & (0x01 if type_id in (45, 58) else 0x03)
        fields["qualifier"] = (command >> 2) & 0x1F
        fields["select"] = bool(command & 0x80)
    elif type_id in (48, 49, 61, 62) and len(element) >= 3:
        raw = struct.unpack_from("<h", element)[0]
        fields["setpoint"] = raw / 32768.0 if type_id in (48, 61) else float(raw)
        fields["qualifier"] = element[2] & 0x7F
        fields["select"] = bool(element[2] & 0x80)
    elif type_id in (50, 63) and len(element) >= 5:
        fields["setpoint"] = struct.unpack_from("<f", element)[0]
        fields["qualifier"] = element[4] & 0x7F
        fields["select"] = bool(element[4] & 0x80)
    return fields


class Iec104Session(Session):
    """APDU framing per direction (start byte 0x68, length), then APCI and ASDU."""

    def __init__(self) -> None:
        self.streams = ResynchronisingStreams(PROTOCOL, "invalid_apci", "a start byte")

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        buffer = self.streams.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 2:
            if buffer[0] != 0x68 or buffer[1] < 4:
                self.streams.skip(direction)
                continue
            length = buffer[1]
            if len(buffer) < 2 + length:
                break
            events += self.streams.resynchronised(direction)
            apdu = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            events += self._apdu(apdu)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        return self.streams.gap(direction)

    def close(self) -> list[Event]:
        return self.streams.close()

    def _apdu(self, apdu: bytes) -> list[Event]:
        control = apdu[0]
        if control & 0x01 == 0:
            row: dict[str, object] = {
                "frame_format": "I",
                "send_sequence": (control >> 1) | (apdu[1] << 7),
                "receive_sequence": (apdu[2] >> 1) | (apdu[3] << 7),
            }
            try:
                row.update(asdu(apdu[4:]))
            except ValueError as error:
                return [Event(PROTOCOL, "i", row), anomaly(PROTOCOL, "malformed_asdu", str(error))]
            problem = row.pop("error", None)
            if problem is not None:
                return [Event(PROTOCOL, "i", row), anomaly(PROTOCOL, "malformed_asdu", str(problem))]
            return [Event(PROTOCOL, "i", row)]
        if control & 0x03 == 0x01:
            return [Event(PROTOCOL, "s", {"frame_format": "S", "receive_sequence": (apdu[2] >> 1) | (apdu[3] << 7)})]
        function = U_FUNCTIONS.get(control & 0xFC, f"U 0x{control & 0xFC:02x}")
        return [Event(PROTOCOL, "u", {"frame_format": "U", "u_function": function})]


class Iec104Decoder(Decoder):
    """IEC 60870-5-104, found by APCI framing whatever the port."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({2404})
    tables: ClassVar[dict[str, pa.Schema]] = {PROTOCOL: SCHEMA}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """Every APDU in the payload frames: start byte 0x68, length 4..253, and a consistent control field."""
        if len(payload) < 6:
            return False
        position = 0
        while position < len(payload):
            if payload[position] != 0x68 or position + 1 >= len(payload):
                return False
            length = payload[position + 1]
            if not 4 <= length <= 253:
                return False
            control = payload[position + 2] if position + 2 < len(payload) else 0
            if control & 0x03 == 0x03 and (control & 0xFC) not in U_FUNCTIONS:
                return False
            if control & 0x01 == 0 and length < 10:
                return False  # an I-frame carries at least an ASDU header
            position += 2 + length
        return position == len(payload) or server_port == 2404

    def session(self) -> Session:
        return Iec104Session()

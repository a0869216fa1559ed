"""MQTT 3.1, 3.1.1 and 5.0 over TCP (OASIS MQTT Version 3.1.1 and 5.0 specifications).

One ``mqtt`` row per control packet. PUBLISH rows keep the topic, QoS, retain flag, payload size and the first
256 payload bytes (``payload_head``) so that detections can look for container ids or EDIFACT in telemetry that
leaves the terminal. Passwords are never stored: only whether one was sent and its length.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly

PROTOCOL = "mqtt"
PAYLOAD_HEAD = 256
MAXIMUM_PACKET = 16 << 20  # larger remaining lengths are treated as corrupt framing

PACKET_TYPES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}
VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}
CONNECT_RETURN_CODES = {
    0: "Connection Accepted",
    1: "Refused: unacceptable protocol version",
    2: "Refused: identifier rejected",
    3: "Refused: server unavailable",
    4: "Refused: bad user name or password",
    5: "Refused: not authorized",
}
REASON_CODES_5 = {
    0x00: "Success",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8C: "Bad authentication method",
    0x90: "Topic Name invalid",
    0x95: "Packet too large",
    0x97: "Quota exceeded",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}
#: Fixed-header flags that MQTT 3.1.1 section 2.2.2 and 5.0 section 2.1.3 require (PUBLISH has real flags).
FIXED_FLAGS = {6: 0b0010, 8: 0b0010, 10: 0b0010}
QOS_NAMES = {0: "at most once", 1: "at least once", 2: "exactly once"}


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field("packet_type_code", pa.int16(), "control packet type"),
        _field("packet_type", pa.string(), "CONNECT, PUBLISH, SUBSCRIBE ..."),
        _field("header_flags", pa.int16(), "low four bits of the fixed header (dup, QoS, retain in PUBLISH)"),
        _field("remaining_length", pa.int64(), "remaining length of the fixed header: the packet size after it"),
        _field("protocol_name", pa.string(), "CONNECT: MQTT or MQIsdp"),
        _field("protocol_version", pa.string(), "CONNECT: 3.1, 3.1.1 or 5.0"),
        _field("connect_flags", pa.int16(), "CONNECT: the connect flags byte"),
        _field("clean_session", pa.bool_(), "CONNECT: clean session / clean start"),
        _field("keep_alive", pa.int32(), "CONNECT: keep-alive seconds"),
        _field("client_id", pa.string(), "CONNECT: client identifier, as received"),
        _field("user_name", pa.string(), "CONNECT: user name, as received"),
        _field("password_present", pa.bool_(), "CONNECT: a password was sent (it is never stored)"),
        _field("password_length", pa.int32(), "CONNECT: its length"),
        _field("will_topic", pa.string(), "CONNECT: will topic"),
        _field("will_qos", pa.int16(), "CONNECT: will QoS"),
        _field("will_retain", pa.bool_(), "CONNECT: will retain"),
        _field("will_payload_length", pa.int32(), "CONNECT: will payload size"),
        _field("will_payload_head", pa.binary(), "CONNECT: first bytes of the will payload"),
        _field("properties_length", pa.int32(), "MQTT 5: length of the properties block"),
        _field("session_present", pa.bool_(), "CONNACK: the server kept a session"),
        _field("return_code", pa.int16(), "CONNACK return code / reason code, DISCONNECT reason"),
        _field("return_status", pa.string(), "its name, e.g. 'Connection Accepted'"),
        _field("dup", pa.bool_(), "PUBLISH: duplicate delivery"),
        _field("qos", pa.int16(), "PUBLISH: QoS 0, 1 or 2"),
        _field("retain", pa.bool_(), "PUBLISH: retain flag"),
        _field("topic", pa.string(), "PUBLISH: topic name, as received"),
        _field("packet_id", pa.int32(), "packet identifier (QoS > 0, acknowledgements, subscriptions)"),
        _field("payload_length", pa.int64(), "PUBLISH: payload size"),
        _field("payload_head", pa.binary(), f"PUBLISH: first {PAYLOAD_HEAD} payload bytes, as received"),
        _field("topics", pa.list_(pa.string()), "SUBSCRIBE/UNSUBSCRIBE: topic filters"),
        _field("requested_qos", pa.list_(pa.int16()), "SUBSCRIBE: requested QoS per filter"),
        _field("granted_qos", pa.list_(pa.int16()), "SUBACK/UNSUBACK: granted QoS or reason code per filter"),
    ]
)


class Malformed(ValueError):
    pass


def _string(data: bytes, position: int) -> tuple[str, int]:
    if position + 2 > len(data):
        raise Malformed(f"string length at offset {position} beyond the packet")
    length = (data[position] << 8) | data[position + 1]
    end = position + 2 + length
    if end > len(data):
        raise Malformed(f"string of {length} bytes at offset {position} beyond the packet")
    return data[position + 2 : end].decode("utf-8", "backslashreplace"), end


def _binary(data: bytes, position: int) -> tuple[bytes, int]:
    if position + 2 > len(data):
        raise Malformed(f"binary length at offset {position} beyond the packet")
    length = (data[position] << 8) | data[position + 1]
    return data[position + 2 : position + 2 + length], position + 2 + length


def _varint(data: bytes | bytearray, position: int) -> tuple[int | None, int]:
    """Variable byte integer; (None, position) if more bytes are needed."""
    value = 0
    for index in range(4):
        if position + index >= len(data):
            return None, position
        byte = data[position + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position + index + 1
    raise Malformed("variable byte integer longer than 4 bytes")


def _properties(data: bytes, position: int, version: int, row: dict[str, object]) -> int:
    if version != 5:
        return position
    length, after = _varint(data, position)
    if length is None:
        raise Malformed("properties length beyond the packet")
    row["properties_length"] = length
    return after + length


def _whole_packets(payload: bytes) -> bool:
    """The payload is one or more complete control packets other than CONNECT, with valid fixed headers."""
    position = 0
    while position < len(payload):
        header = payload[position]
        kind, flags = header >> 4, header & 0x0F
        try:
            length, start = _varint(payload, position + 1)
        except Malformed:
            return False
        if length is None or kind in (0, 1) or start + length > len(payload):
            return False
        if (kind == 3 and (flags >> 1) & 3 == 3) or (kind != 3 and flags != FIXED_FLAGS.get(kind, 0)):
            return False
        if kind in (12, 13) and length:
            return False  # PINGREQ and PINGRESP have no body
        position = start + length
    return position > 0


class MqttSession(Session):
    """One MQTT connection: framing per direction, protocol version from CONNECT."""

    def __init__(self) -> None:
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.version = 4

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        buffer = self.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 2:
            try:
                length, start = _varint(buffer, 1)
            except Malformed as error:
                events.append(anomaly(PROTOCOL, "bad_remaining_length", f"{direction.name}: {error}"))
                buffer.clear()
                break
            if length is None:
                break
            if length > MAXIMUM_PACKET:
                events.append(
                    anomaly(PROTOCOL, "bad_fixed_header", f"{direction.name}: {length}-byte packet; stream dropped")
                )
                buffer.clear()
                break
            if len(buffer) < start + length:
                break
            header = buffer[0]
            body = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if header >> 4 == 0:
                # Type 0 is reserved and forbidden (MQTT 3.1.1 and 5.0 section 2.1.2); the length still frames it.
                events.append(
                    anomaly(PROTOCOL, "unassigned_packet_type", f"{direction.name}: packet type 0 of {length} bytes")
                )
                continue
            events += self._packet(header, body, direction)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.buffers[direction].clear()
        return []

    def close(self) -> list[Event]:
        events = []
        for direction, buffer in self.buffers.items():
            if buffer:
                events.append(anomaly(PROTOCOL, "truncated_message", f"{direction.name}: {len(buffer)} bytes left"))
                buffer.clear()
        return events

    def _packet(self, header: int, body: bytes, direction: Direction) -> list[Event]:
        kind, flags = header >> 4, header & 0x0F
        row: dict[str, object] = {
            "packet_type_code": kind,
            "packet_type": PACKET_TYPES.get(kind, f"TYPE_{kind}"),
            "header_flags": flags,
            "remaining_length": len(body),
        }
        events = [Event(PROTOCOL, str(row["packet_type"]).lower(), row)]
        name = row["packet_type"]
        if kind == 3 and (flags >> 1) & 3 == 3:
            # MQTT 3.1.1 section 3.3.1.2 [MQTT-3.3.1-4], 5.0 section 3.3.1.2: both QoS bits set is malformed.
            events.append(anomaly(PROTOCOL, "invalid_qos", f"{direction.name}: PUBLISH with QoS 3"))
        elif kind == 15 and self.version != 5:
            # AUTH exists only in 5.0; in 3.1 and 3.1.1 type 15 is reserved and forbidden (3.1.1 section 2.2.1).
            events.append(anomaly(PROTOCOL, "unassigned_packet_type", f"{direction.name}: packet type 15 before 5.0"))
        elif kind != 3 and flags != FIXED_FLAGS.get(kind, 0):
            # Section 2.2.2 (3.1.1) / 2.1.3 (5.0): the flags of every other packet type are fixed.
            events.append(
                anomaly(PROTOCOL, "reserved_flags", f"{direction.name}: {name} with header flags 0x{flags:x}")
            )
        try:
            self._fields(kind, flags, body, row)
        except Malformed as error:
            events.append(anomaly(PROTOCOL, "malformed", f"{name}: {error}"))
        return events

    def _fields(self, kind: int, flags: int, body: bytes, row: dict[str, object]) -> None:
        version = self.version
        if kind == 1:
            name, position = _string(body, 0)
            if position + 4 > len(body):
                raise Malformed("CONNECT variable header cut short")
            level, connect_flags = body[position], body[position + 1]
            self.version = version = level if level in VERSIONS else version
            row.update(
                connect_flags=connect_flags,
                protocol_name=name,
                protocol_version=VERSIONS.get(level, str(level)),
                clean_session=bool(connect_flags & 0x02),
                keep_alive=(body[position + 2] << 8) | body[position + 3],
            )
            position = _properties(body, position + 4, version, row)
            row["client_id"], position = _string(body, position)
            if connect_flags & 0x04:
                if version == 5:
                    properties, after = _varint(body, position)
                    position = after + (properties or 0)
                row["will_topic"], position = _string(body, position)
                will, position = _binary(body, position)
                row.update(
                    will_qos=(connect_flags >> 3) & 3,
                    will_retain=bool(connect_flags & 0x20),
                    will_payload_length=len(will),
                    will_payload_head=will[:PAYLOAD_HEAD],
                )
            if connect_flags & 0x80:
                row["user_name"], position = _string(body, position)
            row["password_present"] = bool(connect_flags & 0x40)
            if connect_flags & 0x40:
                password, position = _binary(body, position)
                row["password_length"] = len(password)
        elif kind == 2:
            if len(body) < 2:
                raise Malformed("CONNACK shorter than 2 bytes")
            row["session_present"] = bool(body[0] & 1)
            row["return_code"] = body[1]
            names = REASON_CODES_5 if version == 5 else CONNECT_RETURN_CODES
            row["return_status"] = names.get(body[1], f"Code {body[1]}")
        elif kind == 3:
            qos = (flags >> 1) & 3
            row.update(dup=bool(flags & 8), qos=qos, retain=bool(flags & 1))
            row["topic"], position = _string(body, 0)
            if qos:
                if position + 2 > len(body):
                    raise Malformed("PUBLISH packet id beyond the packet")
                row["packet_id"] = (body[position] << 8) | body[position + 1]
                position += 2
            position = _properties(body, position, version, row)
            payload = body[position:]
            row["payload_length"] = len(payload)
            row["payload_head"] = payload[:PAYLOAD_HEAD]
        elif kind in (4, 5, 6, 7):
            if len(body) >= 2:
                row["packet_id"] = (body[0] << 8) | body[1]
            if version == 5 and len(body) >= 2:
                # MQTT 5.0 sections 3.4.2.1-3.7.2.1: a Remaining Length of 2 means reason code 0x00 (Success).
                code = body[2] if len(body) >= 3 else 0
                row["return_code"] = code
                row["return_status"] = REASON_CODES_5.get(code, f"Code {code}")
        elif kind in (8, 10):
            if len(body) < 2:
                raise Malformed("subscription packet without a packet id")
            row["packet_id"] = (body[0] << 8) | body[1]
            position = _properties(body, 2, version, row)
            topics, qos_levels = [], []
            while position < len(body):
                topic, position = _string(body, position)
                topics.append(topic)
                if kind == 8:
                    if position >= len(body):
                        raise Malformed("SUBSCRIBE topic without its options byte")
                    qos_levels.append(body[position] & 3)
                    position += 1
            row["topics"] = topics
            if kind == 8:
                row["requested_qos"] = qos_levels
        elif kind == 9 or (kind == 11 and version == 5):
            # SUBACK: granted QoS per filter; MQTT 5.0 UNSUBACK (section 3.11.3): a reason code per filter.
            if len(body) < 2:
                raise Malformed(f"{PACKET_TYPES[kind]} without a packet id")
            row["packet_id"] = (body[0] << 8) | body[1]
            position = _properties(body, 2, version, row)
            row["granted_qos"] = list(body[position:])
        elif kind == 11:
            if len(body) >= 2:
                row["packet_id"] = (body[0] << 8) | body[1]
        elif kind == 14 and version == 5:
            # MQTT 5.0 section 3.14.2.1: no reason code (Remaining Length 0) means 0x00, normal disconnection.
            code = body[0] if body else 0
            row["return_code"] = code
            row["return_status"] = REASON_CODES_5.get(code, f"Code {code}")


class MqttDecoder(Decoder):
    """MQTT, found by a well-formed CONNECT as the client's first packet."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({1883})
    tables: ClassVar[dict[str, pa.Schema]] = {PROTOCOL: SCHEMA}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """A well-formed CONNECT as the client's first packet; on port 1883 also a capture that starts mid-session.

        Mid-session (the CONNECT was before the capture) the payload must be whole, well-formed packets with the
        fixed-header flags the specification requires: the port hint and exact framing together keep other
        protocols out.
        """
        if direction == Direction.TO_SERVER and len(payload) >= 12 and payload[0] == 0x10:
            try:
                length, start = _varint(payload, 1)
                name, position = _string(payload, start)
            except Malformed:
                return False
            return (
                length is not None
                and name in ("MQTT", "MQIsdp")
                and position < len(payload)
                and payload[position] in VERSIONS
            )
        return server_port in self.ports and _whole_packets(payload)

    def session(self) -> Session:
        return MqttSession()

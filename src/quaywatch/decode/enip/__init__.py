"""EtherNet/IP encapsulation and CIP, over TCP and UDP 44818, and CIP I/O on UDP 2222.

Tables: ``enip`` (every encapsulation message), ``cip`` (every CIP request and response, Multiple Service
Packets expanded, connected and unconnected), ``cip_io`` (implicit I/O counted per connection: one row per
connection and second, see ``implicit_io``) and ``cip_identity`` (List Identity replies: who the device says it is).
"""

from __future__ import annotations

import struct
from typing import ClassVar

import numpy as np
import pyarrow as pa

from quaywatch.decode.base import DatagramRows, Decoder, Direction, Event, Fold, Session, anomaly
from quaywatch.decode.enip import constants as c
from quaywatch.decode.enip import vectorised
from quaywatch.decode.enip.implicit_io import IO_SCHEMA, IoFold

PROTOCOL = "enip"
HEADER = struct.Struct("<HHII8sI")


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


ENIP_SCHEMA = pa.schema(
    [
        _field("command_code", pa.int32(), "encapsulation command"),
        _field("command", pa.string(), "command name (List Identity, Register Session, Send RR Data ...)"),
        _field("length", pa.int32(), "encapsulation data length"),
        _field("session_handle", pa.int64(), "session handle"),
        _field("status_code", pa.int64(), "encapsulation status"),
        _field("status", pa.string(), "encapsulation status name"),
        _field("sender_context", pa.binary(), "sender context, as sent"),
        _field("options", pa.int64(), "options word"),
    ]
)

CIP_SCHEMA = pa.schema(
    [
        _field("message", pa.string(), "request or response"),
        _field("connected", pa.bool_(), "carried in a connected data item (SendUnitData) rather than unconnected"),
        _field("connection_id", pa.int64(), "connected messaging: connection id"),
        _field("sequence_count", pa.int32(), "connected messaging: CIP sequence count"),
        _field("service_code", pa.int16(), "CIP service without the response bit"),
        _field("service", pa.string(), "service name (Get Attribute Single, Forward Open, Read Tag ...)"),
        _field("embedded", pa.bool_(), "carried inside a Multiple Service Packet or an Unconnected Send"),
        _field("controls_device", pa.bool_(), "the service writes, resets, starts, stops, creates or deletes"),
        _field("class_id", pa.int32(), "request path: class"),
        _field("class_name", pa.string(), "request path: class name"),
        _field("instance_id", pa.int64(), "request path: instance"),
        _field("attribute_id", pa.int32(), "request path: attribute"),
        _field("attribute_list", pa.list_(pa.int32()), "Get Attribute List request: the attributes asked for"),
        _field("tag", pa.string(), "request path: symbolic segment (a Logix tag name), as received"),
        _field("status_code", pa.int16(), "response general status"),
        _field("status", pa.string(), "response general status name"),
        _field("extended_status", pa.list_(pa.int32()), "response additional status words"),
        _field("data_length", pa.int32(), "request or response data bytes after the path or status"),
        _field("forward_open_connection_serial", pa.int32(), "Forward Open/Close: connection serial number"),
        _field("originator_vendor_id", pa.int32(), "Forward Open/Close: originator vendor id"),
        _field("originator_serial", pa.int64(), "Forward Open/Close: originator serial number"),
        _field("o_to_t_connection_id", pa.int64(), "Forward Open: originator-to-target connection id"),
        _field("t_to_o_connection_id", pa.int64(), "Forward Open: target-to-originator connection id"),
        _field("o_to_t_rpi", pa.int64(), "Forward Open: requested packet interval, microseconds"),
    ]
)

IDENTITY_SCHEMA = pa.schema(
    [
        _field("encapsulation_version", pa.int32(), "encapsulation protocol version"),
        _field("socket_address", pa.string(), "the device's own idea of its address"),
        _field("socket_port", pa.int32(), "its port"),
        _field("vendor_id", pa.int32(), "CIP vendor id"),
        _field("vendor_name", pa.string(), "vendor name from the ODVA list (quaywatch/data/cip_vendors.csv)"),
        _field("device_type_id", pa.int32(), "CIP device profile"),
        _field("device_type_name", pa.string(), "device profile name (PLC, drive, HMI, adapter ...)"),
        _field("product_code", pa.int32(), "vendor's product code"),
        _field("revision", pa.string(), "major.minor revision"),
        _field("device_status", pa.int32(), "identity status word"),
        _field("serial_number", pa.int64(), "serial number"),
        _field("product_name", pa.string(), "product name, as received"),
        _field("device_state", pa.int16(), "identity state"),
    ]
)


def _epath(path: bytes) -> dict[str, object]:
    """Class, instance, attribute and symbolic tag of a padded EPATH."""
    fields: dict[str, object] = {}
    position = 0
    while position < len(path):
        segment = path[position]
        kind = segment & 0xFC
        size = segment & 0x03
        if segment == 0x91:  # ANSI extended symbolic
            length = path[position + 1] if position + 1 < len(path) else 0
            name = path[position + 2 : position + 2 + length].decode("utf-8", "backslashreplace")
            fields["tag"] = f"{fields['tag']}.{name}" if "tag" in fields else name
            position += 2 + length + (length & 1)
            continue
        if segment >> 5 == 1:  # logical segment
            if size == 0:
                value, position = path[position + 1] if position + 1 < len(path) else 0, position + 2
            elif size == 1:
                value, position = int.from_bytes(path[position + 2 : position + 4], "little"), position + 4
            elif size == 2:
                value, position = int.from_bytes(path[position + 2 : position + 6], "little"), position + 6
            else:
                break
            logical = kind & 0x1C
            if logical == 0x00:
                fields["class_id"] = value
            elif logical == 0x04:
                fields["instance_id"] = value
            elif logical == 0x10:
                fields["attribute_id"] = value
            elif logical == 0x0C and "instance_id" not in fields:
                fields["instance_id"] = value  # connection point
            continue
        if segment >> 5 == 0:  # port segment: port and link address
            extended = segment & 0x10
            if extended and position + 1 < len(path):
                length = path[position + 1]
                position += 2 + length + (length & 1)
            else:
                position += 2
            continue
        break  # data, network or electronic-key segments end what we need
    return fields


def cip_messages(data: bytes, connected: bool, embedded: bool = False) -> list[Event]:
    """One CIP message, and the messages it carries (Multiple Service Packet, Unconnected Send)."""
    if len(data) < 2:
        return [anomaly(PROTOCOL, "malformed_cip", f"CIP message of {len(data)} bytes")]
    service = data[0] & 0x7F
    response = bool(data[0] & 0x80)
    row: dict[str, object] = {
        "message": "response" if response else "request",
        "connected": connected,
        "service_code": service,
        "embedded": embedded,
        "controls_device": service in c.CONTROL_SERVICES,
    }
    events: list[Event] = []
    if response:
        if len(data) < 4:
            return [anomaly(PROTOCOL, "malformed_cip", "CIP response shorter than 4 bytes")]
        status, words = data[2], data[3]
        row["status_code"] = status
        row["status"] = c.GENERAL_STATUS.get(status, f"Status 0x{status:02x}")
        row["extended_status"] = [
            int.from_bytes(data[4 + 2 * i : 6 + 2 * i], "little") for i in range(words) if 6 + 2 * i <= len(data)
        ]
        body = data[4 + 2 * words :]
        row["service"] = c.service_name(service, None)
    else:
        words = data[1]
        path = data[2 : 2 + 2 * words]
        if len(path) != 2 * words:
            return [anomaly(PROTOCOL, "malformed_cip", f"request path of {words} words cut short")]
        row.update(_epath(path))
        class_id = row.get("class_id")
        if isinstance(class_id, int):
            row["class_name"] = c.CLASSES.get(class_id, "unknown")
        row["service"] = c.service_name(service, class_id if isinstance(class_id, int) else None)
        body = data[2 + 2 * words :]
        if service == 0x03 and len(body) >= 2:
            # Get_Attribute_List (CIP Vol 1 ): attribute count, then that many attribute ids (UINT each).
            count = int.from_bytes(body[0:2], "little")
            if 2 + 2 * count > len(body):
                events.append(anomaly(PROTOCOL, "malformed_cip", f"Get Attribute List of {count} ids cut short"))
            row["attribute_list"] = [
                int.from_bytes(body[2 + 2 * i : 4 + 2 * i], "little") for i in range(count) if 4 + 2 * i <= len(body)
            ]
        if class_id == 0x06 and service in (0x54, 0x5B) and len(body) >= 36:
            row["o_to_t_connection_id"] = int.from_bytes(body[2:6], "little")
            row["t_to_o_connection_id"] = int.from_bytes(body[6:10], "little")
            row["forward_open_connection_serial"] = int.from_bytes(body[10:12], "little")
            row["originator_vendor_id"] = int.from_bytes(body[12:14], "little")
            row["originator_serial"] = int.from_bytes(body[14:18], "little")
            row["o_to_t_rpi"] = int.from_bytes(body[22:26], "little")
        elif class_id == 0x06 and service == 0x4E and len(body) >= 10:
            row["forward_open_connection_serial"] = int.from_bytes(body[2:4], "little")
            row["originator_vendor_id"] = int.from_bytes(body[4:6], "little")
            row["originator_serial"] = int.from_bytes(body[6:10], "little")
    row["data_length"] = len(body)
    events.append(Event("cip", str(row["message"]), row))
    if service == 0x0A and len(body) >= 2:
        count = int.from_bytes(body[0:2], "little")
        offsets = [int.from_bytes(body[2 + 2 * i : 4 + 2 * i], "little") for i in range(count)]
        if 2 + 2 * count > len(body) or any(offset >= len(body) for offset in offsets):
            events.append(anomaly(PROTOCOL, "malformed_multiple_service", f"{count} services, offsets {offsets}"))
            return events
        for index, offset in enumerate(offsets):
            end = offsets[index + 1] if index + 1 < count else len(body)
            events += cip_messages(body[offset:end], connected, embedded=True)
    elif service == 0x52 and not response and row.get("class_id") == 0x06:
        events += _unconnected_send(body, connected)
    return events


def _unconnected_send(body: bytes, connected: bool) -> list[Event]:
    """The request an Unconnected Send routes to another device (CIP Vol 1 3-5.6.1).

    A write or a mode change sent through a gateway or a ControlLogix backplane travels inside one, so it must be
    decoded like a direct request. The reply comes back as the embedded service's own response.
    """
    if len(body) < 4:
        return [anomaly(PROTOCOL, "malformed_unconnected_send", f"Unconnected Send body of {len(body)} bytes")]
    size = int.from_bytes(body[2:4], "little")
    if 4 + size > len(body):
        return [anomaly(PROTOCOL, "malformed_unconnected_send", f"embedded request of {size} bytes cut short")]
    return cip_messages(body[4 : 4 + size], connected, embedded=True)


def _identity(item: bytes) -> dict[str, object] | None:
    if len(item) < 33:
        return None
    vendor = int.from_bytes(item[18:20], "little")
    device_type = int.from_bytes(item[20:22], "little")
    name_length = item[32]
    name = item[33 : 33 + name_length]
    return {
        "encapsulation_version": int.from_bytes(item[0:2], "little"),
        "socket_address": ".".join(str(b) for b in item[6:10]),
        "socket_port": int.from_bytes(item[4:6], "big"),
        "vendor_id": vendor,
        "vendor_name": c.vendors().get(vendor),
        "device_type_id": device_type,
        "device_type_name": c.DEVICE_TYPES.get(device_type),
        "product_code": int.from_bytes(item[22:24], "little"),
        "revision": f"{item[24]}.{item[25]}",
        "device_status": int.from_bytes(item[26:28], "little"),
        "serial_number": int.from_bytes(item[28:32], "little"),
        "product_name": name.decode("utf-8", "backslashreplace"),
        "device_state": item[33 + name_length] if len(item) > 33 + name_length else None,
    }


def _items(data: bytes) -> list[tuple[int, bytes]]:
    """Common packet format items: (type id, data)."""
    if len(data) < 2:
        return []
    count = int.from_bytes(data[0:2], "little")
    items = []
    position = 2
    for _ in range(count):
        if position + 4 > len(data):
            break
        kind = int.from_bytes(data[position : position + 2], "little")
        length = int.from_bytes(data[position + 2 : position + 4], "little")
        items.append((kind, data[position + 4 : position + 4 + length]))
        position += 4 + length
    return items


def encapsulation(message: bytes) -> list[Event]:
    """One whole encapsulation message (header and data)."""
    command, length, handle, status, context, options = HEADER.unpack_from(message)
    events = [
        Event(
            "enip",
            "enip",
            {
                "command_code": command,
                "command": c.COMMANDS.get(command, f"Command 0x{command:04x}"),
                "length": length,
                "session_handle": handle,
                "status_code": status,
                "status": c.ENCAPSULATION_STATUS.get(status, f"Status 0x{status:08x}"),
                "sender_context": bytes(context),
                "options": options,
            },
        )
    ]
    data = message[24:]
    if command in (0x006F, 0x0070) and len(data) >= 6:
        connection_id = None
        for kind, item in _items(data[6:]):
            if kind == 0x00A1 and len(item) >= 4:
                connection_id = int.from_bytes(item[0:4], "little")
            elif kind == 0x00B2 and item:
                events += cip_messages(item, connected=False)
            elif kind == 0x00B1 and len(item) >= 2:
                for event in cip_messages(item[2:], connected=True):
                    if event.table == "cip":
                        event.fields["connection_id"] = connection_id
                        event.fields["sequence_count"] = int.from_bytes(item[0:2], "little")
                    events.append(event)
    elif command == 0x0063 and data:
        for kind, item in _items(data):
            identity = _identity(item) if kind == 0x000C else None
            if identity is not None:
                events.append(Event("cip_identity", "identity", identity))
    return events


class EnipStreamSession(Session):
    """EtherNet/IP over TCP: frames encapsulation messages out of each direction's stream."""

    def __init__(self) -> None:
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        buffer = self.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 24:
            command = buffer[0] | (buffer[1] << 8)
            length = buffer[2] | (buffer[3] << 8)
            if command not in c.COMMANDS:
                events.append(anomaly(PROTOCOL, "unknown_command", f"{direction.name}: command 0x{command:04x}"))
                buffer.clear()
                break
            if len(buffer) < 24 + length:
                break
            message = bytes(buffer[: 24 + length])
            del buffer[: 24 + length]
            events += encapsulation(message)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        self.buffers[direction].clear()
        return []

    def idle(self) -> bool:
        return not any(self.buffers.values())

    def close(self) -> list[Event]:
        events = []
        for direction, buffer in self.buffers.items():
            if buffer:
                events.append(anomaly(PROTOCOL, "truncated_message", f"{direction.name}: {len(buffer)} bytes left"))
                buffer.clear()
        return events


class EnipDatagramSession(Session):
    """EtherNet/IP over UDP: List Identity and friends on 44818, implicit I/O on 2222."""

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if (
            len(data) >= 24
            and (data[0] | (data[1] << 8)) in c.COMMANDS
            and 24 + (data[2] | (data[3] << 8)) == len(data)
        ):
            return encapsulation(data)
        items = _items(data)
        if not items:
            return [anomaly(PROTOCOL, "malformed_io", f"{len(data)}-byte datagram is neither encapsulation nor I/O")]
        row: dict[str, object] = {}
        for kind, item in items:
            if kind == 0x8002 and len(item) >= 8:
                row["connection_id"] = int.from_bytes(item[0:4], "little")
                row["sequence_number"] = int.from_bytes(item[4:8], "little")
            elif kind == 0x00B1:
                row["data_length"] = len(item)
                row["data"] = bytes(item)
        return [Event("cip_io", "io", row)]


def _looks_like_encapsulation(payload: bytes) -> bool:
    if len(payload) < 24:
        return False
    command = payload[0] | (payload[1] << 8)
    length = payload[2] | (payload[3] << 8)
    return command in c.COMMANDS and length <= 65511 and (command != 0 or length == 0)


class EnipTcpDecoder(Decoder):
    """EtherNet/IP on TCP, found by a valid encapsulation header whatever the port."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({44818})
    tables: ClassVar[dict[str, pa.Schema]] = {
        "enip": ENIP_SCHEMA,
        "cip": CIP_SCHEMA,
        "cip_io": IO_SCHEMA,
        "cip_identity": IDENTITY_SCHEMA,
    }

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """A known command whose length fits; off the EtherNet/IP port, whole messages that end with the payload.

        Proprietary protocols with a 4-byte little-endian length header start like an encapsulation header
        with a small command code, so a header alone is not enough on another port.
        """
        if not _looks_like_encapsulation(payload):
            return False
        if server_port == 44818:
            return True
        position = 0
        while position + 24 <= len(payload) and _looks_like_encapsulation(payload[position:]):
            position += 24 + (payload[position + 2] | (payload[position + 3] << 8))
        return position == len(payload)

    def session(self) -> Session:
        return EnipStreamSession()

    def segment_shapes(
        self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sides: np.ndarray
    ) -> np.ndarray:
        return vectorised.segment_kinds(buffer, starts, lengths) != 0

    def decode_segments(
        self,
        buffer: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        sides: np.ndarray,
        timestamps: np.ndarray,
        sessions: list[Session],
    ) -> list[tuple[np.ndarray, DatagramRows]]:
        return vectorised.decode_segments(buffer, starts, lengths)


class EnipUdpDecoder(Decoder):
    """EtherNet/IP on UDP: encapsulation (List Identity) and class 0/1 implicit I/O."""

    name = "enip_udp"
    transport = "udp"
    ports = frozenset({44818, 2222})
    # The same tables as the TCP decoder, so either can run alone (``--decoders enip_udp``).
    tables: ClassVar[dict[str, pa.Schema]] = EnipTcpDecoder.tables
    #: The session's and ``decode_datagrams``' per-datagram I/O records become one row per connection and second.
    folds: ClassVar[dict[str, type[Fold]]] = {"cip_io": IoFold}

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        if _looks_like_encapsulation(payload) and 24 + (payload[2] | (payload[3] << 8)) == len(payload):
            return True
        # Implicit I/O: a common packet format with a sequenced address item first.
        return server_port == 2222 and len(payload) >= 6 and payload[2:4] == b"\x02\x80"

    def session(self) -> Session:
        return EnipDatagramSession()

    def decode_datagrams(self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> DatagramRows | None:
        """Class 0/1 implicit I/O in its one common shape, vectorised: item count 2, a Sequenced Address item
        (0x8002, 8 bytes: connection id, sequence number) and a Connected Data item (0x00B1) that ends the
        datagram (CIP Vol 2 2-6). Anything else goes to the session."""
        starts = starts.astype(np.int64)
        lengths = lengths.astype(np.int64)
        handled = lengths >= 18
        head = starts[handled]

        def word(offset: int) -> np.ndarray:
            return buffer[head + offset].astype(np.int64) | (buffer[head + offset + 1].astype(np.int64) << 8)

        data_length = word(16)
        shape = (
            (word(0) == 2)
            & (word(2) == 0x8002)
            & (word(4) == 8)
            & (word(14) == 0x00B1)
            & (data_length + 18 == lengths[handled])
        )
        handled[np.flatnonzero(handled)[~shape]] = False
        head, data_length = head[shape], data_length[shape]
        connection = word(6) | (word(8) << 16)
        sequence = word(10) | (word(12) << 16)
        offsets = np.zeros(head.shape[0] + 1, np.int32)
        np.cumsum(data_length, out=offsets[1:])
        gather = np.repeat(head + 18 - offsets[:-1], data_length) + np.arange(int(offsets[-1]))
        data = pa.Array.from_buffers(
            pa.binary(), head.shape[0], [None, pa.py_buffer(offsets), pa.py_buffer(buffer[gather].tobytes())]
        )
        columns = {
            "connection_id": pa.array(connection, pa.int64()),
            "sequence_number": pa.array(sequence, pa.int64()),
            "data_length": pa.array(data_length, pa.int32()),
            "data": data,
        }
        return DatagramRows(handled, "cip_io", "io", columns)

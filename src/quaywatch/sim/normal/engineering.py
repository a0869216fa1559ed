"""Engineering sessions during work hours: TIA Portal to the Siemens PLCs, Studio 5000 / RSLinx to the Rockwell ones.

An engineer goes online with a crane a few times a day, for a few minutes:

* from ``eng-ws-01`` (TIA Portal) to a crane's Siemens PLCs (the crane PLC on
  Siemens cranes, the spreader PLC on every crane): COTP connect, S7 setup
  communication, SZL reads of module identification (0x0011: order number,
  firmware) and component identification (0x001C: PLC name, serial, module
  type), a watch table refreshing a DB every second, and now and then an
  authorised Write Var of a setpoint;
* from ``eng-ws-02`` (RSLinx browse, then Studio 5000 online) to a Rockwell
  crane's zone or the yard: a List Identity broadcast on the zone that every
  CIP device answers (PLCs and ABB drives, with vendor, device type, product
  code, revision, serial and product name taken from the terminal model, so
  quaywatch's inventory matches the simulator's truth), then Register
  Session, Get Attributes All of the identity object, a Read Tag every
  second and now and then an authorised Write Tag.

Sessions are decided for the whole span up front, inside the model's work
hours only (a night run has none); a run that starts inside work hours gets
one from each workstation within its first minutes, so a two-minute demo
shows one. Each session is built whole when it starts and released window by
window. Accounting buckets: "cotp" for the COTP connect, "s7comm" and "enip"
for segments and datagrams carrying those, "tcp" for bare SYN/ACK/FIN.
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from quaywatch.sim.engine import SimulationContext, Source
from quaywatch.sim.frames import TO_CLIENT, TO_SERVER, Endpoint, FrameBlock, Template, tcp_session, u16, udp_datagram
from quaywatch.sim.model import Device
from quaywatch.sim.pending import PendingFrames, bucket
from quaywatch.yaml_files import load_yaml

ENIP_PORT = 44818
S7_REFERENCE = 11  # PDU reference in an S7 message: TPKT 4 + COTP DT 3 + header bytes 0-3
S7_PORT = 102


@functools.cache
def settings() -> dict[str, Any]:
    text = resources.files("quaywatch.data").joinpath("sim", "engineering.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = load_yaml(text)
    return loaded


@dataclass(frozen=True, slots=True)
class Session:
    workstation: str
    start: float
    duration: float
    zone: str
    targets: tuple[str, ...]
    write: bool


# -- S7comm ---------------------------------------------------------------------------------------------------


def tpkt(body: bytes) -> bytes:
    return b"\x03\x00" + struct.pack("!H", 4 + len(body)) + body


def cotp_data(s7: bytes) -> bytes:
    return tpkt(b"\x02\xf0\x80" + s7)


def cotp_connect(source_tsap: int, destination_tsap: int, confirm: bool) -> bytes:
    """COTP connection request (CR) or confirm (CC) with TPDU size 1024 and the TSAPs (ISO 8073)."""
    kind, references = (0xD0, b"\x00\x01\x00\x02") if confirm else (0xE0, b"\x00\x00\x00\x01")
    parameters = b"\xc0\x01\x0a" + b"\xc1\x02" + struct.pack("!H", source_tsap)
    parameters += b"\xc2\x02" + struct.pack("!H", destination_tsap)
    body = bytes([kind]) + references + b"\x00" + parameters
    return tpkt(bytes([len(body)]) + body)


def s7_header(kind: int, reference: int, parameter: bytes, data: bytes, error: bool = False) -> bytes:
    header = struct.pack("!BBHHHH", 0x32, kind, 0, reference, len(parameter), len(data))
    return header + (b"\x00\x00" if error else b"") + parameter + data


def s7_setup(reference: int, pdu: int, response: bool) -> bytes:
    parameter = b"\xf0\x00" + struct.pack("!HHH", 1, 1, pdu)
    return cotp_data(s7_header(3 if response else 1, reference, parameter, b"", error=response))


def szl_request(reference: int, szl_id: int, index: int, sequence: int) -> bytes:
    parameter = bytes([0x00, 0x01, 0x12, 0x04, 0x11, 0x44, 0x01, sequence & 0xFF])
    data = b"\xff\x09" + struct.pack("!HHH", 4, szl_id, index)
    return cotp_data(s7_header(7, reference, parameter, data))


def szl_response(reference: int, szl_id: int, index: int, sequence: int, size: int, records: list[bytes]) -> bytes:
    parameter = bytes([0x00, 0x01, 0x12, 0x08, 0x12, 0x84, 0x01, sequence & 0xFF, 0x00, 0x00, 0x00, 0x00])
    listing = struct.pack("!HHHH", szl_id, index, size, len(records)) + b"".join(records)
    data = b"\xff\x09" + struct.pack("!H", len(listing)) + listing
    return cotp_data(s7_header(7, reference, parameter, data))


def text_field(value: str, size: int, pad: bytes = b" ") -> bytes:
    return value.encode("ascii", "replace")[:size].ljust(size, pad)


def module_identification(device: Device) -> list[bytes]:
    """SZL 0x0011 records: the module (1), the hardware (6) and the firmware (7) with its V x.y.z."""
    order = text_field(device.order_number, 20)
    numbers = [int(part) for part in device.firmware.lstrip("Vv").split(".")[:3]]
    numbers += [0] * (3 - len(numbers))
    return [
        struct.pack("!H", 1) + order + b"\x00\x00\x00\x01\x00\x01",
        struct.pack("!H", 6) + order + b"\x00\x00\x00\x01\x00\x01",
        struct.pack("!H", 7) + text_field("", 20) + b"\x00\x00" + bytes([ord("V"), *numbers]),
    ]


def component_identification(device: Device) -> dict[int, bytes]:
    """SZL 0x001C records by index: names, plant, copyright, serial, module type, memory card, location."""
    entries = settings()["s7"]
    model = device.model
    cpu = model.partition(" ")[2]
    values = {
        1: device.name,
        2: cpu or model,
        3: entries["plant_id"].format(crane=device.crane or 0),
        4: entries["copyright"],
        5: device.serial,
        7: cpu or model,
        8: f"SMC {int(device.serial) % 0xFFFFFFFF:08X}" if device.serial.isdigit() else "",
        11: entries["location"].format(crane=device.crane or 0),
    }
    return {index: struct.pack("!H", index) + text_field(value, 32, b"\x00") for index, value in values.items()}


def s7_read_var(reference: int, db: int, start: int, length: int) -> bytes:
    item = bytes([0x12, 0x0A, 0x10, 0x02]) + struct.pack("!HH", length, db) + b"\x84" + (start * 8).to_bytes(3, "big")
    return cotp_data(s7_header(1, reference, b"\x04\x01" + item, b""))


def s7_read_ack(reference: int, values: bytes) -> bytes:
    data = b"\xff\x04" + struct.pack("!H", len(values) * 8) + values
    return cotp_data(s7_header(3, reference, b"\x04\x01", data, error=True))


def s7_write_var(reference: int, db: int, start: int, value: int) -> bytes:
    item = bytes([0x12, 0x0A, 0x10, 0x04]) + struct.pack("!HH", 1, db) + b"\x84" + (start * 8).to_bytes(3, "big")
    data = b"\x00\x04" + struct.pack("!Hh", 16, value)
    return cotp_data(s7_header(1, reference, b"\x05\x01" + item, data))


def s7_write_ack(reference: int) -> bytes:
    return cotp_data(s7_header(3, reference, b"\x05\x01", b"\xff", error=True))


# -- EtherNet/IP and CIP ----------------------------------------------------------------------------------


def encapsulation(command: int, session: int, data: bytes, context: bytes) -> bytes:
    return struct.pack("<HHII8sI", command, len(data), session, 0, context, 0) + data


def send_rr_data(session: int, cip: bytes, context: bytes) -> bytes:
    items = struct.pack("<IHH", 0, 5, 2) + struct.pack("<HH", 0, 0) + struct.pack("<HH", 0x00B2, len(cip)) + cip
    return encapsulation(0x006F, session, items, context)


def cip_identity(device: Device) -> dict[str, int | str]:
    """The CIP identity a model device answers with: vendor, type, product code, revision, serial, name."""
    cip = settings()["cip"]
    major, _, minor = device.firmware.partition(".")
    return {
        "vendor": int(cip["vendor_ids"][device.maker]),
        "device_type": int(cip["device_types"][device.role]),
        "product_code": int(cip["product_codes"].get(device.model, 1)),
        "major": int(major or 0),
        "minor": int(minor or 0),
        "status": int(cip["status"]),
        "serial": cip_serial(device),
        "name": device.model,
    }


def cip_serial(device: Device) -> int:
    """A 32-bit CIP serial number: an 8-hex-digit model serial is hexadecimal (as Rockwell prints it), else decimal."""
    text = device.serial
    if len(text) <= 8 and all(char in "0123456789abcdefABCDEF" for char in text):
        return int(text, 16)
    return int(text) % (1 << 32)


def identity_attributes(identity: dict[str, int | str]) -> bytes:
    name = str(identity["name"]).encode()[:32]
    return struct.pack(
        "<HHHBBHI", identity["vendor"], identity["device_type"], identity["product_code"], identity["major"],
        identity["minor"], identity["status"], identity["serial"],
    ) + bytes([len(name)]) + name  # fmt: skip


def list_identity_reply(device: Device, context: bytes) -> bytes:
    identity = cip_identity(device)
    socket = struct.pack("!HH", 2, ENIP_PORT) + bytes(int(part) for part in device.ip.split(".")) + bytes(8)
    item = (
        struct.pack("<H", 1) + socket + identity_attributes(identity) + bytes([int(settings()["cip"]["device_state"])])
    )
    return encapsulation(0x0063, 0, struct.pack("<HHH", 1, 0x000C, len(item)) + item, context)


def cip_path_tag(tag: str) -> bytes:
    name = tag.encode()
    segment = bytes([0x91, len(name)]) + name + bytes(len(name) % 2)
    return bytes([len(segment) // 2]) + segment


Patch = Callable[[np.ndarray, np.ndarray, FrameBlock, FrameBlock], None]


class Connection:
    """One engineering TCP connection built in parts, in time order.

    The one-off exchanges (connect, identification, a write, the close) go
    through ``tcp_session``; the watch-table refresh, one request and one
    answer a second for minutes, is built vectorised from two templates like
    the polling loops (the request acknowledges the previous answer, so no
    bare ACKs). Sequence numbers carry on from part to part.
    """

    def __init__(
        self, client: Endpoint, server: Endpoint, client_port: int, server_port: int, protocol: str,
        initial_sequence: tuple[int, int],
    ) -> None:  # fmt: skip
        self.client, self.server = client, server
        self.ports = (client_port, server_port)
        self.protocol = protocol
        self.sequence = list(initial_sequence)
        self.now = 0.0
        self.opened = False
        self.blocks: list[FrameBlock] = []

    def exchange(self, start: float, exchanges: list[tuple[int, bytes, float]], close: bool = False) -> None:
        handshake = not self.opened
        blocks, self.now = tcp_session(
            self.client, self.server, *self.ports, start, exchanges, self.protocol, handshake=handshake, close=close,
            initial_sequence=(self.sequence[0], self.sequence[1]),
        )  # fmt: skip
        self.blocks += bucket(blocks, self.protocol)
        for direction in (TO_SERVER, TO_CLIENT):
            self.sequence[direction] += int(handshake) + sum(
                len(data) for side, data, _ in exchanges if side == direction
            )
        self.opened = True

    def monitor(
        self, count: int, period: float, request: bytes, response: bytes, patch: Patch,
        latency: tuple[float, float], random: np.random.Generator,
    ) -> None:  # fmt: skip
        if count <= 0:
            return
        indexes = np.arange(count, dtype=np.int64)
        jitter = np.minimum(np.abs(random.normal(0, period * 0.01, count)), period * 0.2)
        requests_at = self.now + (indexes + 1) * period + jitter
        responses_at = requests_at + random.uniform(*latency, count)
        outbound_template = Template(self.client, self.server, 6, *self.ports, request)
        inbound_template = Template(self.server, self.client, 6, self.ports[1], self.ports[0], response)
        identification = int(random.integers(0, 1 << 16))
        outbound = outbound_template.build(requests_at, self.protocol, identification + indexes)
        inbound = inbound_template.build(responses_at, self.protocol, identification * 7 + indexes)
        client, server = self.sequence
        outbound_template.set_sequence(outbound, client + indexes * len(request), server + indexes * len(response))
        inbound_template.set_sequence(inbound, server + indexes * len(response), client + (indexes + 1) * len(request))
        patch(indexes, requests_at, outbound, inbound)
        self.sequence = [client + count * len(request), server + count * len(response)]
        self.now = float(responses_at[-1])
        self.blocks += [outbound, inbound]


class Engineering(Source):
    """Work-hours engineering sessions from the two OT engineering workstations."""

    name = "engineering"

    def __init__(self, context: SimulationContext) -> None:
        super().__init__(context)
        self.settings = settings()
        self.ports = context.ports(self.name)
        self.pending = PendingFrames()
        self.siemens = self.model.device("eng-ws-01")
        self.rockwell = self.model.device("eng-ws-02")
        self.sessions = self._schedule()

    # -- schedule -------------------------------------------------------------------------------------

    def _in_hours(self, start: float, end: float) -> bool:
        hours = self.model.work_hours
        return hours.contains(self.model.local_time(start)) and hours.contains(self.model.local_time(end))

    def _schedule(self) -> list[Session]:
        sessions: list[Session] = []
        plan = self.settings["sessions"]
        context = self.context
        hours = self.model.work_hours
        for workstation in (self.siemens.name, self.rockwell.name):
            times: list[float] = []
            if self._in_hours(context.start, context.start + 1):
                low, high = plan["first_session_seconds"][workstation]
                times.append(context.start + float(self.random.uniform(low, high)))
            day = self.model.local_time(context.start).date()
            while dt.datetime.combine(day, dt.time(0), self.model.timezone).timestamp() < context.end:
                opens = dt.datetime.combine(day, hours.start, self.model.timezone).timestamp()
                closes = dt.datetime.combine(day, hours.end, self.model.timezone).timestamp()
                count = int(self.random.integers(plan["per_day"][0], plan["per_day"][1] + 1))
                times += [float(moment) for moment in self.random.uniform(opens, closes, count)]
                day += dt.timedelta(days=1)
            times.sort()
            last_end = -np.inf
            for moment in times:
                duration = float(self.random.uniform(*plan["duration_seconds"]))
                zone, targets = self._targets(workstation)
                write = bool(self.random.random() < plan["write_probability"])
                if moment < last_end + 60 or not context.start <= moment < context.end:
                    continue
                if not self._in_hours(moment, moment + duration):
                    continue
                sessions.append(Session(workstation, moment, duration, zone, targets, write))
                last_end = moment + duration
        return sorted(sessions, key=lambda session: session.start)

    def _targets(self, workstation: str) -> tuple[str, tuple[str, ...]]:
        cranes = self.model.cranes
        if workstation == self.siemens.name:
            crane = int(self.random.integers(1, cranes + 1))
            names = [
                device.name
                for device in self.model.crane_devices(crane)
                if device.role == "PLC" and device.maker == "Siemens"
            ]
            return f"sts-crane-{crane:02d}", tuple(names)
        zones = self._cip_zones()
        zone = zones[int(self.random.integers(0, len(zones)))]
        plcs = self._cip_devices(zone, "PLC")
        return zone, (plcs[int(self.random.integers(0, len(plcs)))].name,)

    def _cip_devices(self, zone: str, role: str | None = None) -> list[Device]:
        makers = self.settings["cip"]["vendor_ids"]
        roles = self.settings["cip"]["device_types"]
        return [
            device
            for device in self.model.devices
            if device.zone == zone and device.maker in makers and device.role in roles
            and (role is None or device.role == role)
        ]  # fmt: skip

    # -- window -----------------------------------------------------------------------------------------

    def window(self, start: float, end: float) -> list[FrameBlock]:
        for session in self.sessions:
            if start <= session.start < end:
                if session.workstation == self.siemens.name:
                    self._tia_session(session)
                else:
                    self._studio_session(session)
        return self.pending.take(end)

    def _isn(self) -> tuple[int, int]:
        return int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31))

    def _write_poll(self, duration: float, period: float) -> int:
        """Which watch-table refresh the setpoint change follows: some tens of seconds into the session."""
        low, high = self.settings["sessions"]["write_after_seconds"]
        return int(float(self.random.uniform(low, max(low, min(high, 0.8 * duration)))) / period)

    def _registers(self, device: Device, moment: float) -> bytes:
        values = self.context.physics.registers(device.crane or 1, np.array([moment]))[0]
        return values.astype(">u2").tobytes()

    # -- TIA Portal -----------------------------------------------------------------------------------

    def _tia_session(self, session: Session) -> None:
        """TIA Portal goes online with every CPU of the crane's project at once, one connection each."""
        moment = session.start
        for target in session.targets:
            self._s7_online(self.model.device(target), moment, session.duration, session.write)
            moment += float(self.random.uniform(0.5, 2.0))

    def _s7_online(self, plc: Device, start: float, duration: float, write: bool) -> None:
        s7 = self.settings["s7"]
        family = plc.model.split(" ")[0]
        pdu = min(960, int(s7["max_pdu"].get(family, 480)))
        slot = 1
        reference = iter(range(1, 1 << 16))
        exchanges: list[tuple[int, bytes, float]] = [
            (TO_SERVER, cotp_connect(s7["source_tsap"], 0x0100 | slot, confirm=False), 0.001),
            (TO_CLIENT, cotp_connect(s7["source_tsap"], 0x0100 | slot, confirm=True), 0.002),
        ]
        number = next(reference)
        exchanges += [(TO_SERVER, s7_setup(number, 960, False), 0.001), (TO_CLIENT, s7_setup(number, pdu, True), 0.003)]
        number = next(reference)
        exchanges += [
            (TO_SERVER, szl_request(number, 0x0011, 0, 0), 0.02),
            (TO_CLIENT, szl_response(number, 0x0011, 0, 1, 28, module_identification(plc)), 0.004),
        ]
        components = component_identification(plc)
        if pdu >= 480:
            number = next(reference)
            exchanges += [
                (TO_SERVER, szl_request(number, 0x001C, 0, 0), 0.02),
                (TO_CLIENT, szl_response(number, 0x001C, 0, 1, 34, list(components.values())), 0.005),
            ]
        else:  # a small PDU: one component record at a time (SZL 0x011C, one index)
            for index in (1, 2, 5, 7):
                number = next(reference)
                exchanges += [
                    (TO_SERVER, szl_request(number, 0x011C, index, 0), 0.01),
                    (TO_CLIENT, szl_response(number, 0x011C, index, 1, 34, [components[index]]), 0.004),
                ]
        client, server = self.context.endpoints(self.siemens, plc)
        connection = Connection(client, server, self.ports.take(), S7_PORT, "s7comm", self._isn())
        connection.exchange(start, exchanges)
        for index in (3, 5):  # after the handshake: the COTP connect request and confirm (each one segment)
            connection.blocks[index].protocol = "cotp"
        period = float(self.settings["sessions"]["monitor_period_seconds"])
        polls = max(int(duration / period), 1)
        write_at = self._write_poll(duration, period) if write else polls
        crane = plc.crane or 1
        physics = self.context.physics
        first_reference = next(reference)
        request = s7_read_var(0, int(s7["read_db"]), 0, 20)
        response = s7_read_ack(0, bytes(20))

        def patch(indexes: np.ndarray, times: np.ndarray, outbound: FrameBlock, inbound: FrameBlock) -> None:
            references = u16(first_reference + offset + indexes)
            outbound.frames[:, -len(request) + S7_REFERENCE : -len(request) + S7_REFERENCE + 2] = references
            inbound.frames[:, -len(response) + S7_REFERENCE : -len(response) + S7_REFERENCE + 2] = references
            values = physics.registers(crane, times).astype(">u2").view(np.uint8).reshape(-1, 20)
            inbound.frames[:, -20:] = values

        offset = 0
        before = min(write_at + 1, polls)
        connection.monitor(before, period, request, response, patch, (0.002, 0.006), self.random)
        if before < polls:
            setpoint = s7["setpoint"]
            value = int(self.random.integers(setpoint["low"], setpoint["high"] + 1))
            number = (first_reference + before) & 0xFFFF
            connection.exchange(
                connection.now + 0.3,
                [
                    (TO_SERVER, s7_write_var(number, setpoint["db"], setpoint["byte"], value), 0.0),
                    (TO_CLIENT, s7_write_ack(number), 0.004),
                ],
            )
            offset = before + 1
            connection.monitor(polls - before, period, request, response, patch, (0.002, 0.006), self.random)
        connection.exchange(connection.now + period * 0.5, [], close=True)
        self.pending.add(connection.blocks)

    # -- RSLinx and Studio 5000 ---------------------------------------------------------------------------

    def _studio_session(self, session: Session) -> None:
        """RSLinx browses every zone with CIP devices (List Identity), then Studio 5000 goes online with one PLC."""
        moment = session.start
        for zone_name in self._cip_zones():
            self._list_identity(zone_name, moment)
            moment += float(self.random.uniform(0.3, 0.8))
        plc = self.model.device(session.targets[0])
        self._cip_online(plc, moment + float(self.random.uniform(3, 8)), session.duration, session.write)

    def _cip_zones(self) -> list[str]:
        return [name for name in self.model.zones if self._cip_devices(name, "PLC")]

    def _list_identity(self, zone_name: str, moment: float) -> None:
        context = self.random.bytes(8)
        devices = self._cip_devices(zone_name)
        zone = self.model.zones[zone_name]
        # The broadcast as seen on the zone's VLAN after the firewall forwards it: its MAC, its VLAN, TTL minus one.
        broadcast_source, _ = self.context.endpoints(self.rockwell, devices[0])
        broadcast = Endpoint("broadcast", str(zone.subnet.broadcast_address), b"\xff" * 6, zone.vlan, 0)
        source_port = self.ports.take()
        request = encapsulation(0x0063, 0, b"", context)
        blocks = [udp_datagram(moment, broadcast_source, broadcast, source_port, ENIP_PORT, request, "enip")]
        for device in devices:
            device_endpoint, workstation = self.context.endpoints(device, self.rockwell)
            answer_at = moment + float(self.random.uniform(0.002, 0.05))
            reply = list_identity_reply(device, context)
            blocks.append(udp_datagram(answer_at, device_endpoint, workstation, ENIP_PORT, source_port, reply, "enip"))
        self.pending.add(blocks)

    def _cip_online(self, plc: Device, start: float, duration: float, write: bool) -> None:
        cip = self.settings["cip"]
        handle = int(self.random.integers(1, 2**31))
        counter = iter(range(1, 1 << 62))

        def context() -> bytes:
            return struct.pack("<Q", next(counter))

        register = struct.pack("<HH", 1, 0)
        first = context()
        exchanges: list[tuple[int, bytes, float]] = [
            (TO_SERVER, encapsulation(0x0065, 0, register, first), 0.002),
            (TO_CLIENT, encapsulation(0x0065, handle, register, first), 0.002),
        ]
        tag = context()
        identity = bytes([0x01, 0x02, 0x20, 0x01, 0x24, 0x01])
        exchanges += [
            (TO_SERVER, send_rr_data(handle, identity, tag), 0.01),
            (TO_CLIENT, send_rr_data(handle, b"\x81\x00\x00\x00" + identity_attributes(cip_identity(plc)), tag), 0.003),
        ]
        client, server = self.context.endpoints(self.rockwell, plc)
        connection = Connection(client, server, self.ports.take(), ENIP_PORT, "enip", self._isn())
        connection.exchange(start, exchanges)
        period = float(self.settings["sessions"]["monitor_period_seconds"])
        polls = max(int(duration / period), 1)
        write_at = self._write_poll(duration, period) if write else polls
        crane = plc.crane or 1
        physics = self.context.physics
        request = send_rr_data(handle, b"\x4c" + cip_path_tag(cip["read_tag"]) + struct.pack("<H", 10), bytes(8))
        response = send_rr_data(handle, b"\xcc\x00\x00\x00\xc3\x00" + bytes(20), bytes(8))
        first_context = next(counter)

        def patch(indexes: np.ndarray, times: np.ndarray, outbound: FrameBlock, inbound: FrameBlock) -> None:
            contexts = (first_context + offset + indexes).astype("<u8").view(np.uint8).reshape(-1, 8)
            outbound.frames[:, -len(request) + 12 : -len(request) + 20] = contexts
            inbound.frames[:, -len(response) + 12 : -len(response) + 20] = contexts
            inbound.frames[:, -20:] = physics.registers(crane, times).astype("<u2").view(np.uint8).reshape(-1, 20)

        offset = 0
        before = min(write_at + 1, polls)
        connection.monitor(before, period, request, response, patch, (0.001, 0.004), self.random)
        if before < polls:
            limit = cip["write_tag"]
            value = int(self.random.integers(limit["low"], limit["high"] + 1))
            tag = struct.pack("<Q", first_context + before)
            write_request = b"\x4d" + cip_path_tag(limit["name"]) + b"\xc3\x00" + struct.pack("<Hh", 1, value)
            connection.exchange(
                connection.now + 0.4,
                [
                    (TO_SERVER, send_rr_data(handle, write_request, tag), 0.0),
                    (TO_CLIENT, send_rr_data(handle, b"\xcd\x00\x00\x00", tag), 0.003),
                ],
            )
            offset = before + 1
            connection.monitor(polls - before, period, request, response, patch, (0.001, 0.004), self.random)
        goodbye = encapsulation(0x0066, handle, b"", struct.pack("<Q", first_context + polls + 1))
        connection.exchange(connection.now + 0.5, [(TO_SERVER, goodbye, 0.0)], close=True)
        self.pending.add(connection.blocks)

    # -- policy -----------------------------------------------------------------------------------------

    def policy(self) -> dict[str, list[dict[str, Any]]]:
        operations = ["write", "download", "upload", "stop", "start"]
        siemens_zones = sorted({self.model.device(d.name).zone for d in self.model.find(role="PLC", maker="Siemens")})
        rockwell_zones = sorted({d.zone for d in self.model.find(role="PLC", maker="Rockwell")})
        engineering_hosts = [
            {
                "name": "eng-ws-01-tia-portal",
                "hosts": [self.siemens.ip],
                "zones": siemens_zones,
                "operations": operations,
                "description": "TIA Portal workstation: Siemens crane and spreader PLCs",
            },
            {
                "name": "eng-ws-02-studio-5000",
                "hosts": [self.rockwell.ip],
                "zones": rockwell_zones,
                "operations": operations,
                "description": "Studio 5000 / RSLinx workstation: Rockwell crane and RTG PLCs",
            },
        ]
        conduits: list[dict[str, Any]] = []
        source = self.siemens.zone
        for zone in siemens_zones:
            conduits.append(
                {
                    "name": f"engineering-to-{zone}-s7comm",
                    "from": source,
                    "to": zone,
                    "protocol": "s7comm",
                    "ports": [S7_PORT],
                    "initiator": "from",
                    "allow": {
                        "s7comm": {
                            "operations": ["read", "write", "diagnostics", "download", "upload", "stop", "control"]
                        }
                    },
                    "description": "TIA Portal online: identification, watch tables, setpoint writes, downloads",
                }
            )
        for zone in rockwell_zones:
            for protocol in ("enip", "enip_udp"):
                conduits.append(
                    {
                        "name": f"engineering-to-{zone}-{protocol.replace('_', '-')}",
                        "from": source,
                        "to": zone,
                        "protocol": protocol,
                        "ports": [ENIP_PORT],
                        "initiator": "from",
                        "allow": {"enip": {"operations": ["read", "write", "control", "start", "stop"]}},
                        "description": "RSLinx List Identity browse and Studio 5000 online",
                    }
                )
        return {"engineering_hosts": engineering_hosts, "conduits": conduits}

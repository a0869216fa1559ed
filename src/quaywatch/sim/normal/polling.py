"""Cyclic PLC polling: the bulk of a terminal's OT traffic, built vectorised.

Each poll loop is one long-lived TCP connection (opened before the capture
started, as on a real SPAN) on which a client asks the same question every
period and the server answers with live process values from the crane
physics. Request times carry small jitter; responses follow after a device
latency. Sequence numbers and transaction ids continue across windows.

Who polls whom, per crane: the cab HMI and the CMS read the crane PLC (S7comm
on Siemens cranes, EtherNet/IP Read Tag on Rockwell cranes), the CMS reads the
spreader PLC, the crane PLC reads its boom anemometer and the shore weather
station over Modbus/TCP, and a Rockwell crane PLC exchanges CIP class-1 I/O
with its three drives. The CMS also reads the yard's RTG PLCs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from quaywatch.sim.engine import SimulationContext, Source
from quaywatch.sim.frames import Endpoint, FrameBlock, Template, u16, u32
from quaywatch.sim.model import Device

Patch = Callable[[np.ndarray, np.ndarray, FrameBlock, FrameBlock], None]

S7_REGISTERS = 10
CIP_SESSION = 0x1A2B3C4D


@dataclass(slots=True)
class PollLoop:
    client: Endpoint
    server: Endpoint
    client_port: int
    server_port: int
    period: float
    offset: float
    protocol: str
    request: Template
    response: Template
    patch: Patch
    latency: tuple[float, float]
    client_isn: int
    server_isn: int
    transport: int = 6
    # Per request time, the scenario label of a response whose values a scenario changed (0: none). The weather
    # station's lying firmware uses it: those responses carry the label, their requests stay normal traffic.
    response_labels: Callable[[np.ndarray], np.ndarray] | None = None

    def window(self, origin: float, start: float, end: float, random: np.random.Generator) -> list[FrameBlock]:
        first = int(np.ceil((start - origin - self.offset) / self.period))
        last = int(np.ceil((end - origin - self.offset) / self.period))
        if last <= first:
            return []
        indexes = np.arange(max(first, 0), last, dtype=np.int64)
        if indexes.shape[0] == 0:
            return []
        jitter = np.abs(random.normal(0, self.period * 0.01, indexes.shape[0]))
        requests_at = origin + self.offset + indexes * self.period + np.minimum(jitter, self.period * 0.2)
        responses_at = requests_at + random.uniform(*self.latency, indexes.shape[0])
        outbound = self.request.build(requests_at, self.protocol, indexes)
        inbound = self.response.build(responses_at, self.protocol, indexes * 7 + 3)
        if self.transport == 6:
            request_length = self.request.payload_length
            response_length = self.response.payload_length
            self.request.set_sequence(
                outbound, self.client_isn + indexes * request_length, self.server_isn + indexes * response_length
            )
            self.response.set_sequence(
                inbound, self.server_isn + indexes * response_length, self.client_isn + (indexes + 1) * request_length
            )
        self.patch(indexes, requests_at, outbound, inbound)
        if self.response_labels is not None:
            labels = self.response_labels(requests_at)
            if labels.any():
                return [outbound, *split_by_label(inbound, labels)]
        return [outbound, inbound]


def split_by_label(block: FrameBlock, labels: np.ndarray) -> list[FrameBlock]:
    """One block per label value, so that only the frames a scenario changed carry its label."""
    return [
        FrameBlock(block.timestamps[labels == label], block.frames[labels == label], block.protocol, int(label))
        for label in np.unique(labels).tolist()
    ]


def modbus_read(unit: int, address: int, quantity: int) -> tuple[bytes, bytes]:
    request = bytes.fromhex("00000000") + (6).to_bytes(2, "big") + bytes([unit, 3])
    request += address.to_bytes(2, "big") + quantity.to_bytes(2, "big")
    response = bytes.fromhex("00000000") + (3 + 2 * quantity).to_bytes(2, "big") + bytes([unit, 3, 2 * quantity])
    return request, response + bytes(2 * quantity)


def s7_read(db: int, start_byte: int, length: int) -> tuple[bytes, bytes]:
    """An S7comm Read Var job for one DB item and its Ack-Data (TPKT + COTP DT + S7)."""
    item = bytes([0x12, 0x0A, 0x10, 0x02]) + length.to_bytes(2, "big") + db.to_bytes(2, "big") + b"\x84"
    item += (start_byte * 8).to_bytes(3, "big")
    parameter = bytes([0x04, 0x01]) + item
    job = bytes.fromhex("32010000") + b"\x00\x00" + len(parameter).to_bytes(2, "big") + b"\x00\x00" + parameter
    data = bytes([0xFF, 0x04]) + (length * 8).to_bytes(2, "big") + bytes(length)
    ack = (
        bytes.fromhex("32030000")
        + b"\x00\x00"
        + (2).to_bytes(2, "big")
        + len(data).to_bytes(2, "big")
        + b"\x00\x00"
        + bytes([0x04, 0x01])
        + data
    )

    def tpkt(body: bytes) -> bytes:
        return b"\x03\x00" + (7 + len(body)).to_bytes(2, "big") + b"\x02\xf0\x80" + body

    return tpkt(job), tpkt(ack)


S7_REFERENCE_OFFSET = 11  # TPKT 4 + COTP 3 + S7 header bytes 0-3
S7_DATA_OFFSET = 25  # TPKT 4 + COTP 3 + Ack-Data header 12 + parameter 2 + item header 4


def cip_read_tag(tag: str, elements: int) -> tuple[bytes, bytes]:
    """EtherNet/IP SendRRData carrying a CIP Read Tag (0x4C) of an INT array, and its reply."""
    name = tag.encode()
    segment = bytes([0x91, len(name)]) + name + bytes(len(name) % 2)
    cip = bytes([0x4C, len(segment) // 2]) + segment + elements.to_bytes(2, "little")
    reply = bytes([0xCC, 0x00, 0x00, 0x00]) + bytes([0xC3, 0x00]) + bytes(2 * elements)

    def encapsulate(message: bytes) -> bytes:
        items = bytes(4) + (0).to_bytes(2, "little") + (2).to_bytes(2, "little")  # interface handle, timeout, count
        items += bytes(4)  # null address item
        items += (0x00B2).to_bytes(2, "little") + len(message).to_bytes(2, "little") + message
        header = (0x006F).to_bytes(2, "little") + len(items).to_bytes(2, "little") + CIP_SESSION.to_bytes(4, "little")
        return header + bytes(4) + bytes(8) + bytes(4) + items

    return encapsulate(cip), encapsulate(reply)


CIP_CONTEXT_OFFSET = 12  # sender context in the encapsulation header
CIP_REPLY_DATA_OFFSET = 24 + 16 + 6  # header, CPF with items, reply header and type


def cip_io(connection: int, size: int) -> bytes:
    """A class-1 I/O datagram: sequenced address item and connected data item (sequence count + data)."""
    payload = (2).to_bytes(2, "little")
    payload += (0x8002).to_bytes(2, "little") + (8).to_bytes(2, "little") + connection.to_bytes(4, "little") + bytes(4)
    payload += (0x00B1).to_bytes(2, "little") + (size + 2).to_bytes(2, "little") + bytes(2 + size)
    return payload


class CranePolling(Source):
    """Every cyclic poll of the terminal's PLCs and sensors."""

    name = "polling"

    def __init__(self, context: SimulationContext) -> None:
        super().__init__(context)
        self.loops: list[PollLoop] = []
        self.ports = context.ports(self.name)
        scale = context.scale
        for crane in range(1, self.model.cranes + 1):
            plc = self.model.device(f"sts{crane:02d}-plc")
            cab = self.model.device(f"sts{crane:02d}-cab-hmi")
            cms = self.model.device("cms-server")
            spreader = self.model.device(f"sts{crane:02d}-spreader-plc")
            anemometer = self.model.device(f"sts{crane:02d}-anemometer")
            weather = self.model.device("weather-station")
            self._plc_poll(cab, plc, crane, 0.2 / scale)
            self._plc_poll(cms, plc, crane, 1.0 / scale)
            self._plc_poll(cms, spreader, crane, 1.0 / scale)
            self._modbus_wind(plc, anemometer, 0.5 / scale, unit=1)
            self._modbus_wind(plc, weather, 1.0 / scale, unit=crane, shore=True)
            if plc.maker == "Rockwell":
                for drive in ("hoist", "trolley", "gantry"):
                    self._cip_io(plc, self.model.device(f"sts{crane:02d}-{drive}-drive"), 0.05 / scale)
        for rtg in self.model.find(role="PLC", zone="yard"):
            self._plc_poll(self.model.device("cms-server"), rtg, 1 + len(self.loops) % self.model.cranes, 1.0 / scale)

    def _endpoints(self, client: Device, server: Device) -> tuple[Endpoint, Endpoint]:
        return self.context.endpoints(client, server)

    def _loop(
        self,
        client: Device,
        server: Device,
        server_port: int,
        period: float,
        protocol: str,
        request: bytes,
        response: bytes,
        patch: Patch,
        latency: tuple[float, float],
    ) -> None:
        client_endpoint, server_endpoint = self._endpoints(client, server)
        port = self.ports.take()
        number = len(self.loops) + 1
        self.loops.append(
            PollLoop(
                client=client_endpoint,
                server=server_endpoint,
                client_port=port,
                server_port=server_port,
                period=period,
                offset=float(self.random.uniform(0, period)),
                protocol=protocol,
                request=Template(client_endpoint, server_endpoint, 6, port, server_port, request),
                response=Template(server_endpoint, client_endpoint, 6, server_port, port, response),
                patch=patch,
                latency=latency,
                client_isn=int(self.random.integers(1, 2**31)) + number,
                server_isn=int(self.random.integers(1, 2**31)) + number,
            )
        )

    def _plc_poll(self, client: Device, plc: Device, crane: int, period: float) -> None:
        physics = self.context.physics
        if plc.maker == "Siemens":
            request, response = s7_read(db=10, start_byte=0, length=2 * S7_REGISTERS)
            holder: dict[str, PollLoop] = {}

            def s7_patch(indexes: np.ndarray, times: np.ndarray, outbound: FrameBlock, inbound: FrameBlock) -> None:
                loop = holder["loop"]
                reference = u16(indexes + 1)
                loop.request.set_payload(outbound, S7_REFERENCE_OFFSET, reference)
                loop.response.set_payload(inbound, S7_REFERENCE_OFFSET, reference)
                values = physics.registers(crane, times)
                loop.response.set_payload(inbound, S7_DATA_OFFSET, values.astype(">u2").view(np.uint8).reshape(-1, 20))

            self._loop(client, plc, 102, period, "s7comm", request, response, s7_patch, (0.002, 0.006))
            holder["loop"] = self.loops[-1]
        else:
            request, response = cip_read_tag("CraneStatus", S7_REGISTERS)
            holder = {}

            def cip_patch(indexes: np.ndarray, times: np.ndarray, outbound: FrameBlock, inbound: FrameBlock) -> None:
                loop = holder["loop"]
                context_bytes = np.concatenate([u32(indexes), np.zeros((indexes.shape[0], 4), np.uint8)], axis=1)
                loop.request.set_payload(outbound, CIP_CONTEXT_OFFSET, context_bytes)
                loop.response.set_payload(inbound, CIP_CONTEXT_OFFSET, context_bytes)
                values = physics.registers(crane, times)
                loop.response.set_payload(
                    inbound, CIP_REPLY_DATA_OFFSET, values.astype("<u2").view(np.uint8).reshape(-1, 20)
                )

            self._loop(client, plc, 44818, period, "enip", request, response, cip_patch, (0.001, 0.004))
            holder["loop"] = self.loops[-1]

    def _modbus_wind(self, client: Device, sensor: Device, period: float, unit: int, shore: bool = False) -> None:
        """``shore``: the weather station, whose firmware a scenario may make lie (physics.tamper_wind)."""
        physics = self.context.physics
        request, response = modbus_read(unit, 0, 4)
        holder: dict[str, PollLoop] = {}
        registers = physics.weather_station_registers if shore else physics.anemometer_registers

        def patch(indexes: np.ndarray, times: np.ndarray, outbound: FrameBlock, inbound: FrameBlock) -> None:
            loop = holder["loop"]
            transaction = u16(indexes + 1)
            loop.request.set_payload(outbound, 0, transaction)
            loop.response.set_payload(inbound, 0, transaction)
            values = registers(times)
            loop.response.set_payload(inbound, 9, values.astype(">u2").view(np.uint8).reshape(-1, 8))

        self._loop(client, sensor, 502, period, "modbus", request, response, patch, (0.003, 0.012))
        holder["loop"] = self.loops[-1]
        if shore:
            self.loops[-1].response_labels = physics.weather_station_labels

    def _cip_io(self, plc: Device, drive: Device, period: float) -> None:
        plc_endpoint, drive_endpoint = self._endpoints(plc, drive)
        connection = int(self.random.integers(1, 2**31))
        to_drive = Template(plc_endpoint, drive_endpoint, 17, 2222, 2222, cip_io(connection, 8))
        to_plc = Template(drive_endpoint, plc_endpoint, 17, 2222, 2222, cip_io(connection + 1, 8))

        def patch(indexes: np.ndarray, times: np.ndarray, outbound: FrameBlock, inbound: FrameBlock) -> None:
            sequence = u32(indexes + 1)
            to_drive.set_payload(outbound, 10, sequence)
            to_plc.set_payload(inbound, 10, sequence)
            to_drive.set_payload(outbound, 18, u16(indexes + 1))
            to_plc.set_payload(inbound, 18, u16(indexes + 1))

        self.loops.append(
            PollLoop(
                plc_endpoint,
                drive_endpoint,
                2222,
                2222,
                period,
                float(self.random.uniform(0, period)),
                "cipio",
                to_drive,
                to_plc,
                patch,
                (0.0005, 0.002),
                0,
                0,
                transport=17,
            )
        )

    def policy(self) -> dict[str, list[dict[str, Any]]]:
        conduits: list[dict[str, Any]] = []
        for crane in range(1, self.model.cranes + 1):
            zone = f"sts-crane-{crane:02d}"
            plc = self.model.device(f"sts{crane:02d}-plc")
            if plc.maker == "Siemens":
                protocol, ports, allow = "s7comm", [102], {"s7comm": {"functions": ["setup_communication", "read_var"]}}
            else:
                protocol, ports, allow = "enip", [44818], {"enip": {"operations": ["read"]}}
            conduits.append(
                {
                    "name": f"cms-to-{zone}",
                    "from": "cms-ocr",
                    "to": zone,
                    "protocol": protocol,
                    "ports": ports,
                    "initiator": "from",
                    "allow": allow,
                    "description": f"CMS reads crane {crane}'s PLC and spreader PLC",
                }
            )
            if protocol == "enip":  # the spreader PLC is an S7 on every crane
                conduits.append(
                    {
                        "name": f"cms-to-{zone}-spreader",
                        "from": "cms-ocr",
                        "to": zone,
                        "protocol": "s7comm",
                        "ports": [102],
                        "initiator": "from",
                        "allow": {"s7comm": {"functions": ["setup_communication", "read_var"]}},
                    }
                )
            conduits.append(
                {
                    "name": f"{zone}-to-weather",
                    "from": zone,
                    "to": "weather",
                    "protocol": "modbus",
                    "ports": [502],
                    "initiator": "from",
                    "allow": {"modbus": {"functions": [3]}},
                    "description": "the crane PLC reads the shore weather station for the wind stop",
                }
            )
        if self.model.find(role="PLC", zone="yard"):
            conduits.append(
                {
                    "name": "cms-to-yard",
                    "from": "cms-ocr",
                    "to": "yard",
                    "protocol": "enip",
                    "ports": [44818],
                    "initiator": "from",
                    "allow": {"enip": {"operations": ["read"]}},
                }
            )
        return {"conduits": conduits}

    def window(self, start: float, end: float) -> list[FrameBlock]:
        blocks: list[FrameBlock] = []
        for loop in self.loops:
            blocks += loop.window(self.context.start, start, end, self.random)
        return blocks

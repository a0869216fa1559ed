"""The simulation loop: traffic sources, scenarios, labels and accounting.

Normal operations and attack scenarios are both *sources*: objects that,
asked for a window of simulated time, return the frames of that window
(mitmproxy-addon style: each behaviour is one small class in its own file,
listed in a registry). The engine merges every source's frames in time order
and streams them to the capture, so memory is bounded by one window.

Every source draws from its own random generator, seeded from the run's seed
and the source's name, so switching a scenario on or off never changes the
normal traffic around it: a clean day and an attacked day differ only by the
attack. Frames a scenario emits carry its label id; the engine derives each
label's first and last packet, packet numbers and flows from what was actually
written, so the labels cover exactly the injected packets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import struct
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from quaywatch.sim.frames import Endpoint, FrameBlock, mac_bytes
from quaywatch.sim.model import Device, TerminalModel
from quaywatch.sim.pcapng import PcapngWriter
from quaywatch.sim.physics import TerminalPhysics

WINDOW_SECONDS = 30.0  # simulated seconds merged per write: larger windows amortise per-source work
EXTERNAL_PURDUE = 99.0
ROLE_TTL = {"workstation": 128, "engineering workstation": 128, "HMI": 128}


def stable_seed(seed: int, name: str) -> list[int]:
    digest = hashlib.sha256(name.encode()).digest()
    return [seed, *struct.unpack("<4I", digest[:16])]


class Ports:
    """Ephemeral client ports, deterministic per source."""

    def __init__(self, first: int = 49152, last: int = 65535, offset: int = 0) -> None:
        self.first = first
        self.span = last - first + 1
        self.next = offset % self.span

    def take(self) -> int:
        port = self.first + self.next
        self.next = (self.next + 1) % self.span
        return port


@dataclass(slots=True)
class Label:
    """Ground truth for one scenario instance (written to labels.jsonl)."""

    label_id: int
    scenario: str
    instance: str
    techniques: list[str]
    hosts: list[str]
    expect: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    packets: int = 0
    first_packet: int | None = None
    last_packet: int | None = None
    start: float | None = None
    end: float | None = None
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def comment(self) -> bytes:
        return f"quaywatch-label: {self.label_id} {self.instance}".encode()


class SimulationContext:
    """What every source can use: the model, the physics, generators, endpoints and labels."""

    def __init__(self, model: TerminalModel, seed: int, start: float, end: float, scale: float) -> None:
        self.model = model
        self.seed = seed
        self.start = start
        self.end = end
        self.scale = scale
        self.physics = TerminalPhysics(model, start, end, seed)
        self.labels: dict[int, Label] = {}
        self._firewall = next((device for device in model.devices if device.gateway_ips), None)

    def random(self, name: str) -> np.random.Generator:
        return np.random.default_rng(stable_seed(self.seed, name))

    def ports(self, name: str) -> Ports:
        return Ports(offset=int(self.random(name + "/ports").integers(0, 16384)))

    def label(
        self,
        scenario: str,
        instance: str,
        techniques: list[str],
        hosts: list[str],
        expect: dict[str, Any],
        parameters: dict[str, Any] | None = None,
    ) -> int:
        label_id = len(self.labels) + 1
        self.labels[label_id] = Label(label_id, scenario, instance, techniques, hosts, expect, parameters or {})
        return label_id

    def purdue(self, device: Device) -> float:
        if device.external:
            return EXTERNAL_PURDUE
        return self.model.zones[device.zone].purdue

    def endpoints(self, first: Device, second: Device) -> tuple[Endpoint, Endpoint]:
        """How two devices appear at the capture point, a SPAN on the OT core switch.

        Within a zone both real MACs show on the zone's VLAN. Across zones the
        copy captured is the leg on the more-OT side (lower Purdue level): that
        device's own MAC and VLAN, and the firewall's MAC for the far side,
        whose TTL has been decremented once by the routing.
        """
        if first.zone == second.zone and not first.external:
            return self._endpoint(first, first.vlan), self._endpoint(second, second.vlan)
        near_first = self.purdue(first) <= self.purdue(second)
        near, far = (first, second) if near_first else (second, first)
        if self._firewall is None:
            raise ValueError("the terminal model has no router (a device with zone: all) for traffic across zones")
        gateway_mac = mac_bytes(self._firewall.mac)
        near_endpoint = self._endpoint(near, near.vlan)
        far_ttl = (52 if far.external else ROLE_TTL.get(far.role, 64)) - 1
        far_endpoint = Endpoint(far.name, far.ip, gateway_mac, near.vlan, far_ttl)
        return (near_endpoint, far_endpoint) if near_first else (far_endpoint, near_endpoint)

    def _endpoint(self, device: Device, vlan: int | None) -> Endpoint:
        return Endpoint(device.name, device.ip, mac_bytes(device.mac), vlan, ROLE_TTL.get(device.role, 64))


class Source:
    """A behaviour that produces frames window by window."""

    name: ClassVar[str] = "source"

    def __init__(self, context: SimulationContext) -> None:
        self.context = context
        self.model = context.model
        self.random = context.random(self.name)

    def window(self, start: float, end: float) -> list[FrameBlock]:
        raise NotImplementedError

    def policy(self) -> dict[str, list[dict[str, Any]]]:
        """Site-policy entries this behaviour needs, by section (conduits, engineering_hosts ...).

        The simulator's policy.yaml is the union of these, so normal operations
        comply by construction. Scenarios declare none: they are what breaks it.
        """
        return {}


class Scenario(Source):
    """An attack from the public reports; switched on by name with parameters.

    ``prepare`` runs before any source is built, so a scenario can add the
    devices it needs to the model (the undeclared modem).
    """

    techniques: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: True when the scenario changes normal frames on purpose (a stopped crane stops its OCR reads, a lying
    #: sensor's answers carry the label), so "normal traffic is unchanged" holds only for the others.
    alters_normal_traffic: ClassVar[bool] = False
    #: Scenarios are built in this order (then as given): one that adds a device others use (the modem, an
    #: attacker's foothold) comes first, so ``--scenario sabotage --scenario cellular-modem`` uses the modem too.
    build_order: ClassVar[int] = 100

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context)
        self.parameters = {**self.defaults, **parameters}

    @classmethod
    def prepare(cls, model: TerminalModel, parameters: dict[str, Any]) -> None:
        """Change the model before traffic is built (default: nothing)."""

    def at(self, key: str, default: float = 0.0) -> float:
        """A parameter given in seconds after the simulation start, as an epoch time."""
        return self.context.start + float(self.parameters.get(key, default))


@dataclass(slots=True)
class RunSummary:
    packets: int
    bytes: int
    simulated_seconds: float
    wall_seconds: float
    packets_per_second: float
    peak_memory_bytes: int
    packets_by_protocol: dict[str, int]
    labels: list[Label]


def run(
    context: SimulationContext,
    sources: list[Source],
    capture: Path,
    progress: Callable[[float], None] | None = None,
    measure_memory: bool = False,
) -> RunSummary:
    """Generate the whole span into ``capture``; labels are completed from what was written."""
    began = time.perf_counter()
    if measure_memory:
        tracemalloc.start()
    counts: Counter[str] = Counter()
    comments = {label_id: label.comment() for label_id, label in context.labels.items()}
    with capture.open("wb") as handle:
        writer = PcapngWriter(handle, f"{context.model.name}: simulated by quaywatch sim, seed {context.seed}")
        window_start = context.start
        while window_start < context.end:
            window_end = min(window_start + WINDOW_SECONDS, context.end)
            blocks: list[FrameBlock] = []
            for source in sources:
                blocks += [block for block in source.window(window_start, window_end) if block.frames.shape[0]]
            blocks = [_clip(block, window_start, window_end) for block in blocks]
            for block in blocks:
                counts[block.protocol] += block.frames.shape[0]
            comments.update({i: label.comment() for i, label in context.labels.items() if i not in comments})
            first_number = writer.packets + 1
            labels = writer.write(blocks, comments)
            if np.any(labels):
                _account_labels(context, blocks, labels, first_number)
            window_start = window_end
            if progress is not None:
                progress((window_start - context.start) / (context.end - context.start))
    peak = 0
    if measure_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    wall = time.perf_counter() - began
    return RunSummary(
        packets=writer.packets,
        bytes=writer.bytes,
        simulated_seconds=context.end - context.start,
        wall_seconds=wall,
        packets_per_second=writer.packets / wall if wall else 0.0,
        peak_memory_bytes=peak,
        packets_by_protocol=dict(sorted(counts.items())),
        labels=list(context.labels.values()),
    )


def _clip(block: FrameBlock, start: float, end: float) -> FrameBlock:
    """Frames a source placed past the window's end (a reply after the boundary) stay in this window's merge.

    Sources own their timing; the engine only requires each window's frames to
    come after the previous window's. A frame placed before the window start is
    a source bug and is moved to the start rather than written out of order.
    """
    if block.timestamps.shape[0] and block.timestamps.min() < start:
        block.timestamps = np.maximum(block.timestamps, start)
    return block


def _account_labels(
    context: SimulationContext, blocks: list[FrameBlock], labels: np.ndarray, first_number: int
) -> None:
    numbers = np.flatnonzero(labels) + first_number
    values = labels[labels != 0]
    for label_id in np.unique(values).tolist():
        label = context.labels[label_id]
        mine = numbers[values == label_id]
        label.packets += int(mine.shape[0])
        label.first_packet = int(mine[0]) if label.first_packet is None else label.first_packet
        label.last_packet = int(mine[-1])
    for block in blocks:
        if not block.label:
            continue
        label = context.labels[block.label]
        times = block.timestamps
        label.start = float(times.min()) if label.start is None else min(label.start, float(times.min()))
        label.end = float(times.max()) if label.end is None else max(label.end, float(times.max()))
        for frame, moment in zip(block.frames, times, strict=True):
            flow = five_tuple(frame.tobytes())
            if flow is None:
                continue
            key = json.dumps(flow)
            entry = label.flows.setdefault(key, {"tuple": flow, "packets": 0, "first": float(moment)})
            entry["packets"] += 1


def five_tuple(frame: bytes) -> tuple[str, int, str, int, int] | None:
    """(source ip, port, destination ip, port, ip protocol) of an Ethernet frame, or None below IP."""
    offset = 12
    ether_type = int.from_bytes(frame[offset : offset + 2], "big")
    while ether_type in (0x8100, 0x88A8):
        offset += 4
        ether_type = int.from_bytes(frame[offset : offset + 2], "big")
    offset += 2
    if ether_type == 0x0800:
        header_length = (frame[offset] & 0x0F) * 4
        protocol = frame[offset + 9]
        source = str(ipaddress.IPv4Address(frame[offset + 12 : offset + 16]))
        destination = str(ipaddress.IPv4Address(frame[offset + 16 : offset + 20]))
        transport = offset + header_length
    elif ether_type == 0x86DD:
        protocol = frame[offset + 6]
        source = str(ipaddress.IPv6Address(frame[offset + 8 : offset + 24]))
        destination = str(ipaddress.IPv6Address(frame[offset + 24 : offset + 40]))
        transport = offset + 40
    else:
        return None
    if protocol in (6, 17):
        source_port, destination_port = struct.unpack("!HH", frame[transport : transport + 4])
    else:
        source_port = destination_port = 0
    return source, source_port, destination, destination_port, protocol

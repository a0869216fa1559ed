"""What the attack scenarios share: their reference data, the attacker's host, and the OT messages they send.

Scenarios emit few packets (an attacker's session, not a poll loop), so they
build every session once for the whole span in ``__init__`` with ``tcp_session``
and hand each window its part (``PlannedScenario``). The message builders follow
the layouts Wireshark's dissectors decode (packet-s7comm.c, packet-mbtcp.c,
packet-enip.c), which the scenario tests check with tshark.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from importlib import resources
from typing import Any

import numpy as np

from quaywatch.sim.engine import ROLE_TTL, Scenario, SimulationContext
from quaywatch.sim.frames import Endpoint, FrameBlock, Template, mac_bytes, tcp_session
from quaywatch.sim.model import Device
from quaywatch.sim.pending import PendingFrames
from quaywatch.yaml_files import load_yaml

MODEM_ROLE = "cellular router or modem"
DEFAULT_ATTACKER = "office-014"
S7_PDU_SIZE = 480


@functools.cache
def attack_data() -> dict[str, Any]:
    """data/sim/attacks.yaml: device answers and attacker inputs of scenarios 4, 5, 7 and 8."""
    text = resources.files("quaywatch.data").joinpath("sim", "attacks.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = load_yaml(text)
    return data


def attacker(context: SimulationContext, name: str | None) -> Device:
    """The unauthorised host: a named model device, else the undeclared modem if a scenario added one, else an
    office workstation (the corporate foothold of most OT intrusions)."""
    if name:
        return context.model.device(str(name))
    modems = context.model.find(role=MODEM_ROLE)
    return modems[0] if modems else context.model.device(DEFAULT_ATTACKER)


def toward_address(context: SimulationContext, source: Device, address: str) -> tuple[Endpoint, Endpoint] | None:
    """How a probe to ``address`` appears when no device has it: only on the sender's leg, addressed to the
    router (which then fails to resolve it and drops it). None in the sender's own subnet, where only ARP would
    show."""
    zone = next((zone for zone in context.model.zones.values() if ipaddress.ip_address(address) in zone.subnet), None)
    if zone is None or zone.name == source.zone:
        return None
    router = next(device for device in context.model.devices if device.gateway_ips)
    near = Endpoint(source.name, source.ip, mac_bytes(source.mac), source.vlan, ROLE_TTL.get(source.role, 64))
    return near, Endpoint("", address, mac_bytes(router.mac), source.vlan, 64)


class PlannedScenario(Scenario):
    """A scenario whose frames are all planned up front; ``window`` hands out the part before its end."""

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        self.pending = PendingFrames()

    def window(self, start: float, end: float) -> list[FrameBlock]:
        return self.pending.take(end)

    def keep(self, blocks: list[FrameBlock]) -> None:
        """Plan frames, dropping any after the simulated span (a session cut by the end of the capture)."""
        self.pending.add([block for block in blocks if block.timestamps[0] < self.context.end])


# -- S7comm (ISO-on-TCP, port 102) -----------------------------------------------------------------------------


def tpkt(body: bytes) -> bytes:
    return b"\x03\x00" + (4 + len(body)).to_bytes(2, "big") + body


def cotp_data(s7: bytes) -> bytes:
    return tpkt(b"\x02\xf0\x80" + s7)


def cotp_connect(request: bool, client_reference: int, server_reference: int, slot: int = 1) -> bytes:
    """COTP CR (client) or CC (server) with TPDU size 1024 and the S7 TSAPs (PG 0x0100, CPU rack 0 slot ``slot``)."""
    code = 0xE0 if request else 0xD0
    destination = 0 if request else client_reference
    source = client_reference if request else server_reference
    parameters = bytes.fromhex("c0010a") + bytes.fromhex("c1020100") + bytes([0xC2, 0x02, 0x01, slot])
    body = bytes([6 + len(parameters), code]) + struct.pack("!HHB", destination, source, 0) + parameters
    return tpkt(body)


def s7_job(reference: int, parameter: bytes, data: bytes = b"") -> bytes:
    return cotp_data(b"\x32\x01\x00\x00" + struct.pack("!HHH", reference, len(parameter), len(data)) + parameter + data)


def s7_ack_data(reference: int, parameter: bytes, data: bytes = b"") -> bytes:
    header = b"\x32\x03\x00\x00" + struct.pack("!HHH", reference, len(parameter), len(data)) + b"\x00\x00"
    return cotp_data(header + parameter + data)


def s7_userdata(reference: int, parameter: bytes, data: bytes) -> bytes:
    return cotp_data(b"\x32\x07\x00\x00" + struct.pack("!HHH", reference, len(parameter), len(data)) + parameter + data)


def s7_setup(reference: int) -> tuple[bytes, bytes]:
    """Setup Communication job and its Ack-Data (one parallel job each way, 480-byte PDUs as an S7-1500 offers)."""
    parameter = b"\xf0\x00" + struct.pack("!HHH", 1, 1, S7_PDU_SIZE)
    return s7_job(reference, parameter), s7_ack_data(reference, parameter)


def s7_connection(client_reference: int, reference: int) -> list[tuple[int, bytes, float, str]]:
    """The opening every S7 client sends: COTP connect and Setup Communication (direction, payload, delay, bucket)."""
    setup, setup_ack = s7_setup(reference)
    return [
        (0, cotp_connect(True, client_reference, 0), 0.0, "cotp"),
        (1, cotp_connect(False, client_reference, 0x4431), 0.0015, "cotp"),
        (0, setup, 0.002, "s7comm"),
        (1, setup_ack, 0.003, "s7comm"),
    ]


def szl_request(reference: int, szl_id: int, index: int = 0) -> bytes:
    parameter = bytes.fromhex("0001120411440100")
    return s7_userdata(reference, parameter, b"\xff\x09\x00\x04" + struct.pack("!HH", szl_id, index))


def szl_response(reference: int, sequence: int, szl_id: int, record_size: int, records: list[bytes]) -> bytes:
    parameter = bytes.fromhex("000112081284") + bytes([0x01, sequence & 0xFF]) + b"\x00\x00\x00\x00"
    body = struct.pack("!HHHH", szl_id, 0, record_size, len(records)) + b"".join(records)
    return s7_userdata(reference, parameter, b"\xff\x09" + len(body).to_bytes(2, "big") + body)


def szl_module_identification(order_number: str, firmware: str) -> list[bytes]:
    """SZL 0x0011 records 1 (module), 6 (basic hardware) and 7 (firmware 'V' major minor patch), 28 bytes each."""
    order = order_number.encode().ljust(20)[:20]
    parts = [int(part) for part in firmware.lstrip("Vv").split(".")[:3]] + [0, 0, 0]
    return [
        struct.pack("!H", 1) + order + b"\x00\xc0\x00\x01\x00\x01",
        struct.pack("!H", 6) + order + b"\x00\xc0\x00\x01\x00\x01",
        struct.pack("!H", 7) + b" " * 20 + b"\x00\xc0V" + bytes(parts[:3]),
    ]


def szl_component_identification(components: dict[int, str]) -> list[bytes]:
    """SZL 0x001C records: index and 32 characters, NUL padded."""
    return [struct.pack("!H", index) + text.encode()[:32].ljust(32, b"\x00") for index, text in components.items()]


# -- Modbus/TCP and EtherNet/IP ---------------------------------------------------------------------------------


def modbus(transaction: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack("!HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


def device_identification(vendor: str, product_code: str, revision: str) -> tuple[bytes, bytes]:
    """FC43/14 read device identification, basic stream (code 1) from object 0, and a complete answer."""
    objects = b"".join(
        bytes([number, len(text.encode())]) + text.encode()
        for number, text in enumerate((vendor, product_code, revision))
    )
    return bytes([0x2B, 0x0E, 0x01, 0x00]), bytes([0x2B, 0x0E, 0x01, 0x81, 0x00, 0x00, 0x03]) + objects


def list_identity_request(context_id: int) -> bytes:
    """EtherNet/IP List Identity (command 0x63): a 24-byte header and no data."""
    return struct.pack("<HHII8sI", 0x0063, 0, 0, 0, context_id.to_bytes(8, "little"), 0)


def list_identity_reply(context_id: int, device: Device, identity: dict[str, Any]) -> bytes:
    """The CPF identity item a CIP device answers with: who it says it is."""
    major, _, minor = device.firmware.partition(".")
    name = identity["product_name"].encode()
    socket = struct.pack("!HH4s8x", 2, 44818, bytes(int(part) for part in device.ip.split(".")))
    serial = int(device.serial) if device.serial.isdigit() else int(device.serial or "0", 16)
    item = struct.pack("<H", 1) + socket
    item += struct.pack(
        "<HHHBBHI", identity["vendor_id"], identity["device_type"], identity["product_code"],
        int(major or 1) & 0xFF, int(minor or 1) & 0xFF, 0x0030, serial & 0xFFFFFFFF,
    )  # fmt: skip
    item += bytes([len(name)]) + name + b"\x03"
    data = struct.pack("<HHH", 1, 0x000C, len(item)) + item
    return struct.pack("<HHII8sI", 0x0063, len(data), 0, 0, context_id.to_bytes(8, "little"), 0) + data


# -- sessions ---------------------------------------------------------------------------------------------------

Exchange = tuple[int, bytes, float, str]  # direction (0 to server, 1 to client), payload, delay before it, bucket
_PENDING = "\x00message"


def session(
    context: SimulationContext,
    client: Device,
    server: Device,
    client_port: int,
    server_port: int,
    start: float,
    exchanges: list[Exchange],
    label: int,
    random: np.random.Generator,
    close: bool = True,
) -> tuple[list[FrameBlock], float]:
    """A TCP connection between two model devices whose messages may count in different buckets (COTP then S7).

    Accounting follows tcp_session: each message's last segment counts as the message's protocol bucket (its
    tshark top protocol), every other frame as "tcp".
    """
    near, far = context.endpoints(client, server)
    isn = (int(random.integers(1, 2**31)), int(random.integers(1, 2**31)))
    blocks, finished = tcp_session(
        near, far, client_port, server_port, start, [(d, p, delay) for d, p, delay, _ in exchanges], _PENDING,
        label=label, initial_sequence=isn, close=close,
    )  # fmt: skip
    buckets = iter(bucket for _, _, _, bucket in exchanges)
    for block in blocks:
        if block.protocol == _PENDING:
            block.protocol = next(buckets)
    return blocks, finished


def syn(near: Endpoint, far: Endpoint, client_port: int, port: int, at: float, label: int, sequence: int) -> FrameBlock:
    """One SYN of a port scan (nmap -sS style: window 1024, no options)."""
    template = Template(near, far, 6, client_port, port, b"", tcp_flags=0x02, window=1024)
    block = template.build(np.array([at]), "tcp", np.array([sequence & 0xFFFF]), label)
    template.set_sequence(block, np.array([sequence]), np.array([0]))
    return block


def reset(context: SimulationContext, server: Device, client: Device, port: int, client_port: int, at: float,
          label: int, acknowledgement: int) -> FrameBlock:  # fmt: skip
    """The RST/ACK a closed port answers a SYN with."""
    near, far = context.endpoints(server, client)
    template = Template(near, far, 6, port, client_port, b"", tcp_flags=0x14, window=0)
    block = template.build(np.array([at]), "tcp", np.array([acknowledgement & 0xFFFF]), label)
    template.set_sequence(block, np.array([0]), np.array([acknowledgement]))
    return block

"""Entry points of the testbed's protocol peers, one process per namespace.

    python -m quaywatch.sim.live.peer server modbus --device crane-plc [--topology FILE]
    python -m quaywatch.sim.live.peer client cms --device cms-station --duration 30

Servers are the real libraries (pymodbus, asyncua, python-snap7, cpppo), so
the traffic on the bridge is what those stacks really send, not a replay.
The testbed runs each peer with ``ip netns exec`` inside its device's
namespace; the peers themselves know nothing of namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quaywatch.sim.live.crane import Crane
from quaywatch.sim.live.topology import Device, Topology, load_topology

S7_DB = 1  # data block holding the crane values as big-endian REALs, in Crane.values() order
TICK_SECONDS = 0.1
log = logging.getLogger("quaywatch.sim.live.peer")


def opcua_url(address: str, port: int) -> str:
    return f"opc.tcp://{address}:{port}/quaywatch/cms"


def opcua_node_id(crane: str, tag: str) -> str:
    return f"ns=2;s={crane}.{tag}"


# ---------------------------------------------------------------- servers


def serve_modbus(topology: Topology, device: Device, seed: int) -> None:
    """Crane main PLC: holding registers that follow the process model.

    pymodbus calls ``access`` on every request: the model is first advanced to
    the present in fixed ticks, then its registers are copied into the block
    that the reply is built from. Writes to the setpoint and the wind-sensor
    enable register change the crane's behaviour, as on a real PLC.
    """
    from pymodbus.server import StartAsyncTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    registers: dict[str, int] = {str(k): int(v) for k, v in topology.crane["registers"].items()}
    by_address = {address: name for name, address in registers.items()}
    crane = Crane(topology.crane, seed)
    clock = [time.monotonic()]

    async def access(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        written: list[int] | list[bool] | None,
    ) -> None:
        now = time.monotonic()
        while clock[0] + TICK_SECONDS <= now:
            crane.step(TICK_SECONDS)
            clock[0] += TICK_SECONDS
        for offset, value in enumerate(written or []):
            name = by_address.get(address + offset)
            if name == "wind_sensor_enabled":
                crane.wind_sensor_enabled = bool(value)
            elif name == "hoist_speed_setpoint_cm_s":
                crane.hoist_speed_setpoint_m_s = int(value) / 100.0
        for name, value in crane.registers().items():
            current[registers[name] - start_address] = value & 0xFFFF

    from pymodbus.pdu.device import ModbusDeviceIdentification

    identity = ModbusDeviceIdentification(  # what function 43/14 reports, as asset fingerprinting reads it
        info_name={
            "VendorName": device.maker,
            "ProductCode": device.identity.get("product_code", ""),
            "MajorMinorRevision": device.identity.get("revision", ""),
            "ProductName": device.model,
            "ModelName": device.identity.get("model_name", device.model),
        }
    )
    size = max(registers.values()) + 1
    plc = SimDevice(
        id=0,
        simdata=[SimData(0, values=[0] * size, datatype=DataType.REGISTERS)],
        action=access,
    )
    asyncio.run(StartAsyncTcpServer(context=plc, identity=identity, address=(device.address, topology.ports["modbus"])))


def serve_opcua(topology: Topology, device: Device, seed: int) -> None:
    """The CMS server: crane tags as OPC UA variables (security policy None, as many CMS installations run)."""
    from asyncua import Server, ua

    crane = Crane(topology.crane, seed)
    name = str(topology.crane.get("name", "STS01"))

    async def main() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(opcua_url(device.address, topology.ports["opcua"]))
        server.set_server_name(f"quaywatch testbed CMS {name}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        namespace = await server.register_namespace("urn:quaywatch:testbed:cms")
        folder = await server.nodes.objects.add_object(f"ns={namespace};s={name}", name)
        variables = {
            tag: await folder.add_variable(f"ns={namespace};s={name}.{tag}", tag, value)
            for tag, value in crane.values().items()
        }
        async with server:
            print(f"opcua server ready on {opcua_url(device.address, topology.ports['opcua'])}", flush=True)
            while True:
                await asyncio.sleep(0.5)
                crane.step(0.5)
                for tag, value in crane.values().items():
                    await variables[tag].write_value(value)

    asyncio.run(main())


def szl_lists(device: Device) -> dict[int, bytes]:
    """Standard SZL 0x0011 and 0x001C answers from the topology's identity of the S7 PLC.

    python-snap7's server answers these with fixed identities and, for 0x0011, 26-byte records where the S7
    specification (and Wireshark) expects 28: we answer in the standard layout instead, so the capture is clean
    and passive fingerprinting sees the order number and firmware that the topology declares.
    """
    identity = device.identity
    order_number = identity.get("order_number", "6ES7 315-2EH14-0AB0").encode("ascii")
    major, minor, patch = (int(part) for part in identity.get("firmware", "3.3.0").split("."))

    def module_record(index: int, mlfb: bytes, version: bytes) -> bytes:  # index, MLFB, BGTyp, Ausbg, Ausbe
        return struct.pack(">H20sH", index, mlfb.ljust(20, b" "), 0) + version

    firmware = bytes([ord("V"), major, minor, patch])
    module = [
        module_record(1, order_number, struct.pack(">HH", 0, 1)),
        module_record(6, order_number, struct.pack(">HH", 0, 1)),
        module_record(7, b"", firmware),
    ]
    texts = [
        (1, identity.get("automation_system_name", device.name)),
        (2, identity.get("module_name", device.model)),
        (3, identity.get("plant_id", "")),
        (4, "Original Siemens Equipment"),
        (5, identity.get("serial", "")),
        (7, identity.get("module_type_name", identity.get("module_name", device.model))),
    ]
    component = [struct.pack(">H32s", index, text.encode("ascii", "replace")[:32]) for index, text in texts]
    return {
        0x0011: struct.pack(">HH", 28, len(module)) + b"".join(module),
        0x001C: struct.pack(">HH", 34, len(component)) + b"".join(component),
    }


def serve_s7(topology: Topology, device: Device, seed: int) -> None:
    """Spreader PLC: python-snap7's S7 server with the crane values in DB1."""
    from snap7.server import Server
    from snap7.type import SrvArea

    lists = szl_lists(device)

    class IdentifiedServer(Server):
        def _get_szl_data(self, szl_id: int, szl_index: int) -> bytes | None:
            return lists.get(szl_id) or super()._get_szl_data(szl_id, szl_index)

    crane = Crane(topology.crane, seed)
    tags = list(crane.values())
    block = bytearray(4 * len(tags))
    server = IdentifiedServer(log=False)
    server.register_area(SrvArea.DB, S7_DB, block)
    server.start_to(device.address, topology.ports["s7"])
    print(f"s7 server ready on {device.address}:{topology.ports['s7']}", flush=True)
    try:
        while True:
            time.sleep(TICK_SECONDS)
            crane.step(TICK_SECONDS)
            block[:] = struct.pack(f">{len(tags)}f", *crane.values().values())
    finally:
        server.stop()


def serve_enip(topology: Topology, device: Device, seed: int) -> None:
    """Gantry PLC: cpppo's EtherNet/IP CIP server with one REAL tag per crane value, updated by a thread."""
    import cpppo.server.enip.main as enip_main

    crane = Crane(topology.crane, seed)
    values = crane.values()

    def update() -> None:
        while not enip_main.tags:
            time.sleep(0.05)
        while True:
            time.sleep(TICK_SECONDS)
            crane.step(TICK_SECONDS)
            for tag, value in crane.values().items():
                entry = enip_main.tags.get(tag)
                if entry is not None:
                    entry.attribute[0] = value

    threading.Thread(target=update, daemon=True).start()
    bind = f"{device.address}:{topology.ports['enip']}"
    argv = ["--no-config", "--no-print", "-a", bind, *(f"{tag}=REAL" for tag in values)]
    sys.exit(enip_main.main(argv=argv))


SERVERS: dict[str, Callable[[Topology, Device, int], None]] = {
    "modbus": serve_modbus,
    "opcua": serve_opcua,
    "s7": serve_s7,
    "enip": serve_enip,
}


# ---------------------------------------------------------------- clients


class Poller:
    """One protocol session of a client that reconnects after any failure, so peers may start in any order."""

    def __init__(self, kind: str, connect: Callable[[], Any], poll: Callable[[Any], Any]) -> None:
        self.kind = kind
        self.connect = connect
        self.poll = poll
        self.session: Any = None
        self.successes = 0
        self.failures = 0

    def __call__(self) -> None:
        try:
            if self.session is None:
                self.session = self.connect()
            self.poll(self.session)
            self.successes += 1
        except Exception as error:  # any library's failure: log, drop the session and retry next cycle
            self.failures += 1
            if self.failures == 1 or self.failures % 20 == 0:  # enough to diagnose, not a flood
                log.warning("%s: failure %d: %s: %s", self.kind, self.failures, type(error).__name__, error)
            self.close()

    def close(self) -> None:
        session, self.session = self.session, None
        for method in ("close", "disconnect"):
            if session is not None and hasattr(session, method):
                with contextlib.suppress(Exception):  # closing a broken session may fail too
                    getattr(session, method)()
                break


def modbus_poller(address: str, port: int, registers: dict[str, int]) -> Poller:
    from pymodbus.client import ModbusTcpClient

    def connect() -> Any:
        client = ModbusTcpClient(address, port=port, timeout=1, retries=0)
        if not client.connect():
            raise ConnectionError(f"no Modbus/TCP at {address}")
        return client

    process = [registers[name] for name in registers if name != "hoist_speed_setpoint_cm_s"]

    def poll(client: Any) -> None:
        response = client.read_holding_registers(min(process), count=max(process) - min(process) + 1)
        if response.isError():
            raise ConnectionError(str(response))
        client.read_holding_registers(registers["hoist_speed_setpoint_cm_s"], count=1)

    return Poller("modbus", connect, poll)


def s7_poller(address: str, port: int, size: int) -> Poller:
    import snap7

    def connect() -> Any:
        client = snap7.client.Client()
        client.connect(address, 0, 1, port)
        try:  # the CMS records which module it talks to (SZL 0x0011 and 0x001C); polling works without it
            client.get_order_code()
            client.get_cpu_info()
        except Exception as error:
            log.warning("s7: identification failed: %s: %s", type(error).__name__, error)
        return client

    return Poller("s7", connect, lambda client: client.db_read(S7_DB, 0, size))


def enip_poller(address: str, port: int, tags: list[str]) -> Poller:
    from cpppo.server.enip import client as enip_client

    def connect() -> Any:
        connection = enip_client.connector(host=address, port=port, timeout=2)
        with connection:  # List Identity first, as a CMS does to learn what answers at the address
            connection.list_identity(timeout=2)
            reply, _elapsed = enip_client.await_response(connection, timeout=2)
            if reply is None:
                raise ConnectionError(f"no List Identity reply from {address}")
        return connection

    def poll(connection: Any) -> None:
        operations = enip_client.parse_operations(tags)
        with connection:  # cpppo's parser must be held by one caller at a time
            for _index, _descr, _op, _reply, status, _value in connection.pipeline(operations=operations, depth=2):
                if status not in (0, None):
                    raise ConnectionError(f"CIP status {status}")

    return Poller("enip", connect, poll)


def opcua_poller(address: str, port: int, crane: str, tags: list[str]) -> Poller:
    from asyncua.sync import Client

    def connect() -> Any:
        client = Client(opcua_url(address, port), timeout=2)
        client.connect()
        return client

    def poll(client: Any) -> None:
        client.read_values([client.get_node(opcua_node_id(crane, tag)) for tag in tags])

    return Poller("opcua", connect, poll)


def run_cms(topology: Topology, device: Device, duration: float, interval: float) -> None:
    """The crane management system: polls every PLC and the CMS server at a fixed cycle."""
    registers = {str(k): int(v) for k, v in topology.crane["registers"].items()}
    tags = list(Crane(topology.crane).values())
    crane = str(topology.crane.get("name", "STS01"))
    ports = topology.ports
    pollers: list[Poller] = []
    builders: dict[str, Callable[[str], Poller]] = {
        "modbus": lambda address: modbus_poller(address, ports["modbus"], registers),
        "s7": lambda address: s7_poller(address, ports["s7"], 4 * len(tags)),
        "enip": lambda address: enip_poller(address, ports["enip"], tags),
        "opcua": lambda address: opcua_poller(address, ports["opcua"], crane, tags),
    }
    for kind, build in builders.items():
        address = topology.target_address(device, kind)
        if address is not None:
            pollers.append(build(address))
    _cycle(pollers, duration, interval)


def run_engineering(topology: Topology, device: Device, duration: float, interval: float) -> None:
    """An engineering session: tunes the hoist speed setpoint, then reads it back."""
    from pymodbus.client import ModbusTcpClient

    address = topology.target_address(device, "modbus")
    register = int(topology.crane["registers"]["hoist_speed_setpoint_cm_s"])
    setpoints = [150, 120]

    def connect() -> Any:
        client = ModbusTcpClient(str(address), port=topology.ports["modbus"], timeout=1, retries=0)
        if not client.connect():
            raise ConnectionError(f"no Modbus/TCP at {address}")
        client.read_device_information(read_code=2)  # the engineering tool identifies the PLC first (43/14)
        return client

    def poll(client: Any) -> None:
        value = setpoints[0]
        response = client.write_register(register, value)
        if response.isError():
            raise ConnectionError(str(response))
        client.read_holding_registers(register, count=1)
        setpoints.reverse()

    _cycle([Poller("engineering", connect, poll)], duration, max(interval, 2.0))


def run_attacker(topology: Topology, device: Device, duration: float, interval: float) -> None:
    """The sabotage of the reports: disable the crane's wind sensor over Modbus, then STOP the S7 PLC."""
    from pymodbus.client import ModbusTcpClient

    modbus = topology.target_address(device, "modbus")
    s7 = topology.target_address(device, "s7")
    register = int(topology.crane["registers"]["wind_sensor_enabled"])
    done: set[str] = set()

    def attack_modbus(_session: Any) -> None:
        client = ModbusTcpClient(str(modbus), port=topology.ports["modbus"], timeout=1, retries=0)
        try:
            if not client.connect() or client.write_register(register, 0).isError():
                raise ConnectionError(f"Modbus write to {modbus} failed")
        finally:
            client.close()
        done.add("modbus")

    def attack_s7(_session: Any) -> None:
        import snap7

        client = snap7.client.Client()
        try:
            client.connect(str(s7), 0, 1, topology.ports["s7"])
            client.plc_stop()
        finally:
            client.disconnect()
        done.add("s7")

    # Each attack is retried until it has landed once (the target may still be starting), then never again.
    attacks = {"modbus": (modbus, attack_modbus), "s7": (s7, attack_s7)}
    pollers = {
        kind: Poller(f"attack-{kind}", lambda: True, step) for kind, (address, step) in attacks.items() if address
    }
    time.sleep(min(interval * 4, duration / 3 if duration else interval * 4))  # after normal polling has begun
    deadline = time.monotonic() + duration if duration else None
    while set(pollers) - done and (deadline is None or time.monotonic() < deadline):
        for kind, poller in pollers.items():
            if kind not in done:
                poller()
        time.sleep(interval)
    log.warning("attacker: done %s", ", ".join(sorted(done)) or "nothing")


def _cycle(pollers: list[Poller], duration: float, interval: float) -> None:
    """Run every poller once per interval until the duration has passed (forever when it is 0)."""
    deadline = time.monotonic() + duration if duration else None
    try:
        while deadline is None or time.monotonic() < deadline:
            started = time.monotonic()
            for poller in pollers:
                poller()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        for poller in pollers:
            log.warning("%s: %d polls answered, %d failed", poller.kind, poller.successes, poller.failures)
            poller.close()


CLIENTS: dict[str, Callable[[Topology, Device, float, float], None]] = {
    "cms": run_cms,
    "engineering": run_engineering,
    "attacker": run_attacker,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quaywatch.sim.live.peer", description=__doc__)
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("kind", choices=sorted({*SERVERS, *CLIENTS}))
    parser.add_argument("--device", required=True, help="device name in the topology")
    parser.add_argument("--topology", type=Path, default=None, help="topology YAML (default: the packaged one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=0.0, help="client: seconds to run (0: until killed)")
    parser.add_argument("--interval", type=float, default=0.5, help="client: seconds between poll cycles")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.device} %(levelname)s %(message)s")
    # asyncua logs every teardown of a session it considers unclean; the pollers log what matters.
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    topology = load_topology(args.topology)
    device = topology.device(args.device)
    if args.role == "server":
        if args.kind not in SERVERS:
            parser.error(f"{args.kind} is not a server")
        SERVERS[args.kind](topology, device, args.seed)
    else:
        if args.kind not in CLIENTS:
            parser.error(f"{args.kind} is not a client")
        # The testbed stops clients with SIGTERM: exit through the finally blocks so they log their counts.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
        CLIENTS[args.kind](topology, device, args.duration, args.interval)


if __name__ == "__main__":
    main()

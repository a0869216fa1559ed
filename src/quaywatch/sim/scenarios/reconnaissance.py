"""Scenario 7, reconnaissance: an intruder maps the crane network before acting (plcscan, nmap's s7-info,
modbus-discover and enip-info scripts do exactly this).

From one host (an office workstation by default, the undeclared modem if a
scenario added one), sequentially and fast, as a tool does:

1. S7 SZL reads, 0x0011 (module identification: order number, firmware) and
   0x001C (component identification: names, serial), of every Siemens PLC;
2. Modbus FC43/14 Read Device Identification of every Modbus server (the boom
   anemometers, the weather station), answered with vendor, product code and
   revision from the terminal model;
3. an EtherNet/IP List Identity (UDP 44818) unicast sweep of the crane and yard
   subnets; only CIP devices answer (Rockwell PLCs, ABB drive adapters), the rest
   of the addresses stay silent;
4. TCP SYNs to 102, 502 and 44818 of the sweep's addresses where no device
   lives: nobody answers.

One label covers the sweep.
"""

from __future__ import annotations

from typing import Any, ClassVar

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.frames import udp_datagram
from quaywatch.sim.model import Device
from quaywatch.sim.scenarios.toolkit import (
    PlannedScenario,
    attack_data,
    attacker,
    device_identification,
    list_identity_reply,
    list_identity_request,
    modbus,
    s7_connection,
    session,
    syn,
    szl_component_identification,
    szl_module_identification,
    szl_request,
    szl_response,
    toward_address,
)

SCAN_PORTS = (102, 502, 44818)


class Reconnaissance(PlannedScenario):
    name = "reconnaissance"
    description = "S7 SZL, Modbus 43/14 and CIP List Identity sweeps of the crane and yard networks, and a SYN scan"
    techniques: ClassVar[tuple[str, ...]] = ("T0846", "T0888", "T0840")
    defaults: ClassVar[dict[str, Any]] = {
        "source": None,  # a model device name; default the modem if present, else an office workstation
        "at": 10.0,
        "sweep_hosts": 40,  # addresses .1 to .N of each crane and yard subnet get a List Identity
        "syn_probes": 6,  # empty addresses per subnet probed on 102, 502 and 44818
    }

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        self.source = attacker(context, self.parameters["source"])
        self.ports = context.ports(self.name)
        self.by_ip = {device.ip: device for device in self.model.devices if not device.external}
        siemens = self.model.find(role="PLC", maker="Siemens")
        modbus_servers = [device for device in self.model.devices if device.role == "weather station"]
        subnets = [zone for zone in self.model.zones.values() if zone.kind in ("crane", "yard")]
        identities = attack_data()["cip_identities"]
        cip = [
            device for zone in subnets for device in self.model.devices
            if device.zone == zone.name and device.maker in identities and device.role in ("PLC", "drive")
        ]  # fmt: skip
        targets = sorted({device.ip for device in [*siemens, *modbus_servers, *cip]})
        self.label_id = context.label(
            self.name, f"{self.name}/sweep", list(self.techniques), [self.source.ip, *targets],
            {
                "detections": ["D1", "D8"], "source": self.source.ip, "destination": None, "assets": targets,
                "details": {
                    "s7_szl": [device.ip for device in siemens], "modbus_device_identification":
                    [device.ip for device in modbus_servers], "cip_list_identity_answered": [d.ip for d in cip],
                    "subnets": [str(zone.subnet) for zone in subnets], "szl_ids": ["0x0011", "0x001c"],
                },
            },
            dict(self.parameters),
        )  # fmt: skip
        moment = self.at("at")
        for plc in siemens:
            moment = self._szl(plc, moment) + float(self.random.uniform(0.01, 0.05))
        for sensor in modbus_servers:
            moment = self._device_identification(sensor, moment) + float(self.random.uniform(0.01, 0.05))
        empty: list[str] = []
        for zone in subnets:
            hosts = [
                str(zone.subnet.network_address + host) for host in range(1, int(self.parameters["sweep_hosts"]) + 1)
            ]
            for address in hosts:
                moment = self._list_identity(address, moment)
            empty += [address for address in hosts if address not in self.by_ip][: int(self.parameters["syn_probes"])]
        sequence = int(self.random.integers(1, 2**31))
        for address in empty:
            legs = toward_address(context, self.source, address)
            for port in SCAN_PORTS:
                if legs is not None:
                    self.keep([syn(*legs, self.ports.take(), port, moment, self.label_id, sequence)])
                moment += float(self.random.uniform(0.0003, 0.0012))

    def _szl(self, plc: Device, moment: float) -> float:
        components = attack_data()["s7_components"]
        identification = {
            1: f"{plc.name.upper()}",
            2: "CPU " + plc.model.split(" CPU ")[-1] if " CPU " in plc.model else plc.model,
            3: components["plant_id"],
            4: components["copyright"],
            5: f"S C-{plc.serial[:10]}",
            7: plc.model.split(" ")[0] if plc.model else "",
            8: f"MMC {plc.serial[-8:]}",
            11: f"STS crane {plc.crane}" if plc.crane else plc.zone,
        }
        exchanges = list(s7_connection(0x0005, 0x0500))
        exchanges += [
            (0, szl_request(0x0501, 0x0011), 0.004, "s7comm"),
            (1, szl_response(0x0501, 1, 0x0011, 28, szl_module_identification(plc.order_number, plc.firmware)),
             0.006, "s7comm"),
            (0, szl_request(0x0502, 0x001C), 0.003, "s7comm"),
            (1, szl_response(0x0502, 2, 0x001C, 34, szl_component_identification(identification)), 0.007, "s7comm"),
        ]  # fmt: skip
        blocks, finished = session(
            self.context, self.source, plc, self.ports.take(), 102, moment, exchanges, self.label_id, self.random
        )
        self.keep(blocks)
        return finished

    def _device_identification(self, sensor: Device, moment: float) -> float:
        vendor = attack_data()["modbus_vendor_names"].get(sensor.maker, sensor.maker)
        request, answer = device_identification(vendor, sensor.model, sensor.firmware)
        exchanges = [(0, modbus(1, 1, request), 0.0, "modbus"), (1, modbus(1, 1, answer), 0.009, "modbus")]
        blocks, finished = session(
            self.context, self.source, sensor, self.ports.take(), 502, moment, exchanges, self.label_id, self.random
        )
        self.keep(blocks)
        return finished

    def _list_identity(self, address: str, moment: float) -> float:
        device = self.by_ip.get(address)
        legs = (
            self.context.endpoints(self.source, device)
            if device
            else toward_address(self.context, self.source, address)
        )
        if legs is None:
            return moment + float(self.random.uniform(0.004, 0.012))
        near, far = legs
        port = self.ports.take()
        context_id = int(self.random.integers(0, 2**63))
        self.keep(
            [udp_datagram(moment, near, far, port, 44818, list_identity_request(context_id), "enip", self.label_id)]
        )
        identity = attack_data()["cip_identities"].get(device.maker) if device else None
        if device is not None and identity is not None and device.role in ("PLC", "drive"):
            reply = list_identity_reply(context_id, device, identity)
            answered = moment + float(self.random.uniform(0.0008, 0.003))
            self.keep([udp_datagram(answered, far, near, 44818, port, reply, "enip", self.label_id)])
        return moment + float(self.random.uniform(0.004, 0.012))

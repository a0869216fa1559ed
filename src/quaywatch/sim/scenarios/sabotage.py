"""Scenario 4, sabotage: "it wouldn't be hard for an attacker to disable one sensor on a crane" (BRIEF.md).

An unauthorised host (an office workstation by default, the undeclared modem
when the cellular-modem scenario put one on the crane) does up to three things,
each its own labelled instance:

- ``write``: Modbus/TCP writes to the weather station's configuration: FC6
  "wind sensor enable" = 0 and (variant ``threshold``) FC16 setting the high-wind
  alarm threshold far outside any safe bound (999 m/s);
- ``stop``: an S7comm PLC STOP (job function 0x29, PI service ``P_PROGRAM``) to
  a Siemens crane PLC, acknowledged; the crane's physics is stopped at that
  instant (physics.stop_crane), so the polled process values show it frozen;
- ``download``: a program-block download to a Siemens PLC: Request Download
  (0x1A), the PLC pulling the block in several Download Block (0x1B) segments,
  Download Ended (0x1C).
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.model import Device
from quaywatch.sim.scenarios.toolkit import (
    S7_PDU_SIZE,
    Exchange,
    PlannedScenario,
    attack_data,
    attacker,
    modbus,
    s7_ack_data,
    s7_connection,
    s7_job,
    session,
)

ACTIONS = ("write", "stop", "download")
OUT_OF_BOUNDS_THRESHOLD = 9990  # 999.0 m/s in 0.1 m/s: no wind alarm will ever fire
SEGMENT = S7_PDU_SIZE - 24  # block bytes per Download Block answer: PDU minus S7 header, parameter and data header


class Sabotage(PlannedScenario):
    name = "sabotage"
    alters_normal_traffic = True  # a stopped crane stops moving and its OCR stops reading
    description = "unauthorised Modbus write disabling the wind sensor, S7 PLC STOP, and a program-block download"
    techniques: ClassVar[tuple[str, ...]] = ("T0855", "T0836", "T0878", "T0858", "T0816", "T0843")
    defaults: ClassVar[dict[str, Any]] = {
        "source": None,  # a model device name; default the modem if present, else an office workstation
        "actions": "write+stop+download",  # any of write, stop, download joined by '+'
        "write_target": "weather-station",
        "variant": "both",  # disable (FC6 enable=0), threshold (FC16 out-of-bounds alarm threshold), or both
        "plc": None,  # the Siemens PLC stopped and downloaded to; default the first Siemens crane PLC
        "write_at": 20.0,
        "stop_at": 45.0,
        "download_at": 75.0,
    }

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        self.source = attacker(context, self.parameters["source"])
        self.ports = context.ports(self.name)
        actions = self.parameters["actions"]
        chosen = actions if isinstance(actions, list) else str(actions).split("+")
        unknown = sorted(set(chosen) - set(ACTIONS))
        if unknown:
            raise ValueError(f"sabotage: unknown action {unknown[0]!r} (actions: {', '.join(ACTIONS)})")
        plc_name = self.parameters["plc"] or next(
            device.name for device in self.model.find(role="PLC", maker="Siemens") if device.name.endswith("-plc")
            and device.crane and "spreader" not in device.name
        )  # fmt: skip
        self.plc = self.model.device(plc_name)
        if "write" in chosen:
            self._write(self.model.device(self.parameters["write_target"]), self.at("write_at"))
        if "stop" in chosen:
            self._stop(self.at("stop_at"))
        if "download" in chosen:
            self._download(self.at("download_at"))

    def _label(self, instance: str, techniques: list[str], target: Device, details: dict[str, Any]) -> int:
        return self.context.label(
            self.name,
            f"{self.name}/{instance}",
            techniques,
            [self.source.ip, target.ip],
            {
                "detections": ["D7"],
                "source": self.source.ip,
                "destination": target.ip,
                "assets": [target.ip],
                "details": details,
            },
            {key: self.parameters[key] for key in ("actions", "variant", "write_at", "stop_at", "download_at")},
        )

    def _write(self, target: Device, at: float) -> None:
        registers = attack_data()["sensor_registers"]
        variant = self.parameters["variant"]
        if variant not in ("disable", "threshold", "both"):
            raise ValueError(f"sabotage: variant {variant!r}: expected disable, threshold or both")
        details: dict[str, Any] = {"function_codes": [], "writes": []}
        requests: list[bytes] = []
        if variant in ("disable", "both"):
            register = registers["wind_sensor_enable"]
            requests.append(struct.pack("!BHH", 6, register, 0))
            details["function_codes"].append(6)
            details["writes"].append({"register": register, "name": "wind_sensor_enable", "value": 0})
        if variant in ("threshold", "both"):
            register = registers["high_wind_alarm_threshold"]
            requests.append(struct.pack("!BHHBH", 16, register, 1, 2, OUT_OF_BOUNDS_THRESHOLD))
            details["function_codes"].append(16)
            details["writes"].append(
                {"register": register, "name": "high_wind_alarm_threshold", "value": OUT_OF_BOUNDS_THRESHOLD,
                 "safe_bounds": [0, 400], "unit": "0.1 m/s"}
            )  # fmt: skip
        label = self._label("modbus-write", ["T0855", "T0836", "T0878"], target, details)
        exchanges: list[Exchange] = []
        for transaction, pdu in enumerate(requests, start=1):
            answer = pdu if pdu[0] == 6 else pdu[:5]  # FC6 echoes the request; FC16 answers address and quantity
            exchanges += [
                (0, modbus(transaction, 1, pdu), 0.05, "modbus"),
                (1, modbus(transaction, 1, answer), 0.008, "modbus"),
            ]
        blocks, _ = session(
            self.context, self.source, target, self.ports.take(), 502, at, exchanges, label, self.random
        )
        self.keep(blocks)

    def _stop(self, at: float) -> None:
        label = self._label(
            "plc-stop", ["T0858", "T0816", "T0855"], self.plc, {"function_code": 0x29, "pi_service": "P_PROGRAM"}
        )
        stop = b"\x29\x00\x00\x00\x00\x00\x09P_PROGRAM"
        exchanges = [*s7_connection(0x0001, 0x0100), (0, s7_job(0x0200, stop), 0.01, "s7comm"),
                     (1, s7_ack_data(0x0200, b"\x29"), 0.006, "s7comm")]  # fmt: skip
        blocks, _ = session(
            self.context, self.source, self.plc, self.ports.take(), 102, at, exchanges, label, self.random
        )
        self.keep(blocks)
        stopped_at = max(float(block.timestamps[0]) for block in blocks if block.protocol == "s7comm")  # its Ack-Data
        if self.plc.crane is not None:
            self.context.physics.stop_crane(self.plc.crane, stopped_at)

    def _download(self, at: float) -> None:
        block_data = attack_data()["download_block"]
        filename = block_data["filename"].encode()
        code = self._block_bytes(int(block_data["length"]))
        label = self._label(
            "download",
            ["T0843", "T0855"],
            self.plc,
            {"functions": [0x1A, 0x1B, 0x1C], "filename": block_data["filename"], "block_bytes": len(code)},
        )
        name = bytes([len(filename)]) + filename
        lengths = b"\x0d1" + f"{len(code):06d}{len(code) - 36:06d}".encode()
        exchanges: list[Exchange] = list(s7_connection(0x0002, 0x0300))
        exchanges += [
            (0, s7_job(0x0301, b"\x1a\x00\x01\x00\x00\x00\x00\x00" + name + lengths), 0.02, "s7comm"),
            (1, s7_ack_data(0x0301, b"\x1a"), 0.004, "s7comm"),
        ]
        segments = [code[offset : offset + SEGMENT] for offset in range(0, len(code), SEGMENT)]
        for number, segment in enumerate(segments):
            reference = 0x0100 + number  # the PLC's own jobs: it pulls the block
            more = 0x01 if number < len(segments) - 1 else 0x00
            exchanges += [
                (1, s7_job(reference, b"\x1b\x00\x01\x00\x00\x00\x00\x00" + name), 0.003, "s7comm"),
                (0, s7_ack_data(reference, bytes([0x1B, more]), struct.pack("!HH", len(segment), 0x00FB) + segment),
                 0.002, "s7comm"),
            ]  # fmt: skip
        ended = 0x0100 + len(segments)
        exchanges += [
            (1, s7_job(ended, b"\x1c\x00\x00\x00\x00\x00\x00\x00" + name), 0.004, "s7comm"),
            (0, s7_ack_data(ended, b"\x1c"), 0.002, "s7comm"),
        ]
        blocks, _ = session(
            self.context, self.source, self.plc, self.ports.take(), 102, at, exchanges, label, self.random
        )
        self.keep(blocks)

    def _block_bytes(self, length: int) -> bytes:
        """An MC7 block image: the 'pp' block header (OB, number 1, load length) and compiled code."""
        header = b"\x70\x70\x01\x01\x01\x08" + struct.pack("!HI", 1, length) + bytes(26)
        return header + self.random.integers(0, 256, length - len(header), dtype="uint8").tobytes()

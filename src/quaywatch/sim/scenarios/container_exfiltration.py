"""Scenario 3: container intelligence leaves the crane/OCR zone for a host that is no partner.

US officials said crane sensors "register and track the provenance and
destination of containers". Here the OCR server (or a crane's OCR controller)
ships what the cranes actually moved (the physics' ISO 6346 ids, size types,
weights, ports of loading and discharge) to a public address that is in no
partner list, in batches:

* ``cleartext``: raw TCP carrying a COARRI interchange (``sim/edifact.py``, as the terminal sends its line):
  ``EQD+CN+<id>``, ``LOC+9`` (port of loading) and ``LOC+11`` (port of discharge) pairs, ``MEA`` weight;
* ``mqtt``: MQTT 3.1.1 CONNECT, then one QoS 1 PUBLISH of JSON per container, to a broker on 1883;
* ``https``: TLS to a non-partner SNI; the content is invisible, so a detection can only go by destination
  and volume (the label says so);
* ``all`` (default): one instance of each, each with its own label.
"""

from __future__ import annotations

import datetime as dt
import json
from functools import partial
from typing import Any, ClassVar

from quaywatch.sim import edifact
from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.frames import TO_CLIENT, TO_SERVER, FrameBlock, tcp_session
from quaywatch.sim.model import ModelError, TerminalModel
from quaywatch.sim.normal.ocr_edi import settings
from quaywatch.sim.pending import bucket
from quaywatch.sim.physics import Move
from quaywatch.sim.scenarios.wire import (
    MQTT_CONNACK,
    MQTT_DISCONNECT,
    ScheduledScenario,
    external_host,
    mqtt_connect,
    mqtt_puback,
    mqtt_publish,
    reference,
    tls_data,
    tls_opening,
)

VARIANTS = ("cleartext", "mqtt", "https")
# Accounting bucket of payload frames: tshark's top protocol ("data": raw TCP with no dissector on the port).
BUCKETS = {"cleartext": "data", "mqtt": "mqtt", "https": "tls"}
HOST_NAME = "exfiltration-sink"


def coarri_interchange(moves: list[Move], reference_number: int, prepared: float, timezone: dt.tzinfo) -> bytes:
    """The same COARRI the terminal sends its shipping line (sim/edifact.py): EQD, LOC+9/LOC+11, MEA per box."""
    vessel = settings()["vessel"]
    ship = edifact.Vessel(vessel["name"], vessel["call_sign"], vessel["voyage"], vessel["carrier"])
    kind = "load" if sum(move.kind == "load" for move in moves) * 2 > len(moves) else "discharge"
    message = edifact.coarri(f"X{reference_number:05d}", kind, ship, moves, prepared, timezone)
    moment = dt.datetime.fromtimestamp(prepared, timezone)
    sender, recipient = reference("container_exfiltration")["edifact_parties"]
    return edifact.interchange(sender, recipient, f"{reference_number:09d}", moment, [message]).encode()


class ContainerExfiltration(ScheduledScenario):
    """OCR reads and crane moves sent to a non-partner host in cleartext, over MQTT, or over HTTPS."""

    name = "container-exfiltration"
    description = (
        "Container ids with ports of loading/discharge leave the crane/OCR zone for a non-partner host: "
        "cleartext EDIFACT-like segments, MQTT JSON publishes, or HTTPS (by destination and volume only)"
    )
    techniques = ("T0802", "T0811", "T0882", "T0869", "T1048")
    defaults: ClassVar[dict[str, Any]] = {
        "variant": "all",
        "source": "ocr-server",
        "start": 15,
        "period": 30,
        "destination_ip": reference("container_exfiltration")["destination_ip"],
        "destination_domain": reference("container_exfiltration")["destination_domain"],
    }

    @classmethod
    def prepare(cls, model: TerminalModel, parameters: dict[str, Any]) -> None:
        chosen = {**cls.defaults, **parameters}
        if chosen["variant"] not in (*VARIANTS, "all"):
            raise ModelError(f"scenario {cls.name}: variant={chosen['variant']!r}: expected one of "
                             f"{', '.join(VARIANTS)} or all")  # fmt: skip
        external_host(model, HOST_NAME, str(chosen["destination_ip"]), str(chosen["destination_domain"]))

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        self.data = reference("container_exfiltration")
        self.source = self.model.device(str(self.parameters["source"]))
        self.sink = self.model.device(HOST_NAME)
        self.client, self.server = context.endpoints(self.source, self.sink)
        cranes = [self.source.crane] if self.source.crane else list(range(1, self.model.cranes + 1))
        variant = str(self.parameters["variant"])
        chosen = VARIANTS if variant == "all" else (variant,)
        period = float(self.parameters["period"])
        for number, name in enumerate(chosen):
            first = self.at("start", 15) + 5.0 * number
            batches: list[tuple[float, list[Move]]] = []
            previous = context.start - 300.0  # the bridge ships what it buffered before the capture began
            moment = first
            while moment < context.end:
                moves = sorted(
                    (move for crane in cranes for move in context.physics.moves_between(crane, previous, moment)),
                    key=lambda move: move.locked_at,
                )
                if moves:
                    batches.append((moment, moves))
                previous = moment
                moment += period * (1 + float(self.random.uniform(-0.05, 0.05)))
            ids = sorted({move.container for _, moves in batches for move in moves})
            port = {"cleartext": int(self.data["cleartext_port"]), "mqtt": 1883, "https": 443}[name]
            details: dict[str, Any] = {
                "variant": name, "server_port": port, "batches": len(batches), "container_ids": len(ids),
                "container_id_list": ids, "partner": False, "content_visible": name != "https",
            }  # fmt: skip
            if name == "https":
                details["server_name"] = self.sink.domain
                details["evidence"] = (
                    "payload encrypted: container ids are not visible; detect by destination (no partner, "
                    "from the crane/OCR zone) and by upload volume"
                )
            label = context.label(
                self.name, f"{self.name}/{name}", list(self.techniques), [self.source.ip, self.sink.ip],
                {
                    "detections": ["D6", "D1"] if name != "https" else ["D1"], "source": self.source.ip,
                    "destination": self.sink.ip, "assets": [self.source.ip], "details": details,
                },
                self.parameters,
            )  # fmt: skip
            for number_in_run, (at, moves) in enumerate(batches, start=1):
                self.schedule(at, partial(self._batch, at, moves, name, label, port, number_in_run))

    def _batch(
        self, moment: float, moves: list[Move], variant: str, label: int, port: int, sequence: int
    ) -> list[FrameBlock]:
        if variant == "cleartext":
            interchange = coarri_interchange(moves, sequence, moment, self.model.timezone)
            exchanges = [(TO_SERVER, interchange, 0.0), (TO_CLIENT, b"OK\n", 0.08)]
        elif variant == "mqtt":
            topic = str(self.data["mqtt_topic"]).format(site=self.model.domain.split(".")[0])
            exchanges = [
                (TO_SERVER, mqtt_connect(str(self.data["mqtt_client_id"]).format(serial=self.source.serial),
                                         "ocr-bridge"), 0.0),
                (TO_CLIENT, MQTT_CONNACK, 0.06),
            ]  # fmt: skip
            for index, move in enumerate(moves, start=1):
                document = {
                    "container": move.container, "iso_type": move.size_type, "weight_kg": move.weight_kg,
                    "crane": f"STS{move.crane:02d}", "move": move.kind, "pol": move.port_of_loading,
                    "pod": move.port_of_discharge,
                    "read_at": self.model.local_time(move.locked_at).isoformat(timespec="seconds"),
                }  # fmt: skip
                payload = json.dumps(document, separators=(",", ":")).encode()
                exchanges.append((TO_SERVER, mqtt_publish(topic, payload, index), 0.01))
                exchanges.append((TO_CLIENT, mqtt_puback(index), 0.06))
            exchanges.append((TO_SERVER, MQTT_DISCONNECT, 0.01))
        else:
            size = sum(120 + len(move.container) for move in moves)
            exchanges = tls_opening(self.sink.domain, self.random, self.name)
            exchanges += [(TO_SERVER, tls_data(self.random, 400 + size), 0.003),
                          (TO_CLIENT, tls_data(self.random, 90), 0.1)]  # fmt: skip
        blocks, _ = tcp_session(
            self.client, self.server, self.ports.take(), port, moment, exchanges, "tcp", label=label,
            round_trip=0.04,
            initial_sequence=(int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31))),
        )  # fmt: skip
        return bucket(blocks, BUCKETS[variant], reassembled=variant != "cleartext")

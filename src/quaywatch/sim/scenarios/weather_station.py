"""Scenario 5: the shore weather station ships with malicious code (South Korea's NIS found such code in a
China-made meteorological instrument in 2023), and wind data drives the cranes' stop decisions.

Three labelled behaviours, each switchable:

- ``tunnel``: DNS tunnelling. TXT queries for long, high-entropy names under the
  attacker's zone carry the station's readings and configuration, base32
  encoded; they go to the OT DNS server, which forwards them to a public
  resolver (``resolver=ot-dns``), or straight to that resolver (``resolver=external``).
- ``beacon``: periodic check-ins with jitter to an internet C2 over HTTPS (SNI
  the C2's name) or cleartext HTTP.
- ``tamper``: from ``tamper_at`` for ``tamper_duration`` s the station's Modbus
  answers to the crane PLCs report the wind frozen at its value at the start
  (``mode=frozen``) or replay the window just before (``mode=replay``), while a
  gust front (physics.add_gust_front) takes the real wind above the stop limit.
  The crane anemometers keep reporting the real wind, and the cranes keep
  working: the tampered polling responses carry this label (physics.tamper_wind).
"""

from __future__ import annotations

import base64
import struct
from typing import Any, ClassVar

import numpy as np

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.frames import udp_datagram
from quaywatch.sim.model import Device
from quaywatch.sim.scenarios.toolkit import PlannedScenario, attack_data, session
from quaywatch.sim.scenarios.wire import dns_name, external_host, http_ok, http_post, tls_data, tls_opening

LABEL_LENGTH = 52  # characters of base32 per DNS label (at most 63, RFC 1035 section 2.3.4)


class WeatherStationMalware(PlannedScenario):
    name = "weather-station-malware"
    alters_normal_traffic = True  # the station's tampered answers to the crane PLCs carry the label
    description = "weather station with pre-installed malicious code: DNS tunnel, C2 beacon, frozen or replayed wind"
    techniques: ClassVar[tuple[str, ...]] = ("T0862", "T0869", "T1048", "T1071", "T0856", "T0832")
    defaults: ClassVar[dict[str, Any]] = {
        "behaviours": "tunnel+beacon+tamper",  # any of tunnel, beacon, tamper joined by '+'
        "resolver": "ot-dns",  # ot-dns (forwarded by the OT DNS server) or external (straight to the internet)
        "tunnel_at": 5.0,
        "tunnel_period": 6.0,  # seconds between bursts of queries
        "beacon_at": 8.0,
        "beacon_period": 20.0,
        "beacon_jitter": 0.15,  # fraction of the period
        "beacon_protocol": "https",  # https or http
        "mode": "frozen",  # frozen or replay
        "tamper_at": 60.0,
        "tamper_duration": 50.0,
        "gust_peak_mps": 27.0,  # the real wind the lying sensor hides (stop limit: the model's wind_stop_mps)
        "gust_rise": 12.0,
    }

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        self.station = self.model.device("weather-station")
        self.implant = attack_data()["weather_implant"]
        self.ports = context.ports(self.name)
        behaviours = self.parameters["behaviours"]
        chosen = behaviours if isinstance(behaviours, list) else str(behaviours).split("+")
        unknown = sorted(set(chosen) - {"tunnel", "beacon", "tamper"})
        if unknown:
            raise ValueError(f"{self.name}: unknown behaviour {unknown[0]!r} (tunnel, beacon, tamper)")
        if "tamper" in chosen:  # first: it changes the physics the tunnel reports from
            self._tamper()
        if "tunnel" in chosen:
            self._tunnel()
        if "beacon" in chosen:
            self._beacon()

    # -- DNS tunnel -----------------------------------------------------------------------------------------

    def _tunnel(self) -> None:
        resolver_entry = self.implant["resolver"]
        resolver = external_host(self.model, resolver_entry["name"], resolver_entry["ip"])
        via = self.parameters["resolver"]
        if via not in ("ot-dns", "external"):
            raise ValueError(f"{self.name}: resolver {via!r}: expected ot-dns or external")
        forwarder = self.model.device("ot-dns") if via == "ot-dns" else None
        domain = self.implant["tunnel_domain"]
        label = self.context.label(
            self.name, f"{self.name}/dns-tunnel", ["T0869", "T1048", "T1071"],
            [self.station.ip, (forwarder or resolver).ip, resolver.ip],
            {
                "detections": ["D5", "D1"], "source": self.station.ip, "destination": (forwarder or resolver).ip,
                "assets": [self.station.ip],
                "details": {"domain": domain, "query_type": "TXT", "encoding": "base32", "via": via,
                            "forwarded_to": resolver.ip if forwarder else None},
            },
            {key: self.parameters[key] for key in ("resolver", "tunnel_at", "tunnel_period")},
        )  # fmt: skip
        moment = self.at("tunnel_at")
        sequence = 0
        while moment < self.context.end:
            for _ in range(2):  # a burst: the readings and the configuration, one query each
                name = self._tunnel_name(moment, sequence, domain)
                self._dns_exchange(moment, name, sequence, forwarder, resolver, label)
                sequence += 1
                moment += float(self.random.uniform(0.15, 0.4))
            moment += self.parameters["tunnel_period"] * float(self.random.uniform(0.8, 1.2))

    def _tunnel_name(self, moment: float, sequence: int, domain: str) -> str:
        registers = self.context.physics.anemometer_registers(np.array([moment]))[0]
        local = self.model.local_time(moment)
        if sequence % 2 == 0:
            record = f"r|{local:%Y%m%dT%H%M%S}|ws={registers[0]}|wm={registers[1]}|wd={registers[2]}|st={registers[3]}"
        else:
            record = f"c|id={self.station.serial}|fw={self.station.firmware}|mb=502|u=1-{self.model.cranes}|alarm=200"
        secret = self.random.bytes(8)  # the implant's per-message nonce: why every name is unique
        text = base64.b32encode(record.encode() + secret).decode().rstrip("=").lower()
        labels = [text[offset : offset + LABEL_LENGTH] for offset in range(0, len(text), LABEL_LENGTH)]
        return ".".join([*labels, f"{sequence:04x}", domain])

    def _dns_exchange(
        self, moment: float, name: str, sequence: int, forwarder: Device | None, resolver: Device, label: int
    ) -> None:
        transaction = int(self.random.integers(0, 65536))
        port = self.ports.take()
        answer = base64.b32encode(self.random.bytes(10)).decode().rstrip("=").lower()
        query = _txt_query(transaction, name)
        first = forwarder or resolver
        station, server = self.context.endpoints(self.station, first)
        blocks = [udp_datagram(moment, station, server, port, 53, query, "dns", label)]
        now = moment + 0.0004
        if forwarder is not None:  # the OT DNS server has no answer: it asks the internet
            upstream = int(self.random.integers(0, 65536))
            upstream_port = int(self.random.integers(10_000, 65_000))
            near, far = self.context.endpoints(forwarder, resolver)
            blocks.append(udp_datagram(now, near, far, upstream_port, 53, _txt_query(upstream, name), "dns", label))
            now += float(self.random.uniform(0.02, 0.06))
            blocks.append(
                udp_datagram(now, far, near, 53, upstream_port, _txt_answer(upstream, name, answer), "dns", label)
            )
            now += 0.0003
        else:
            now += float(self.random.uniform(0.02, 0.06))
        blocks.append(
            udp_datagram(now, server, station, 53, port, _txt_answer(transaction, name, answer), "dns", label)
        )
        self.keep(blocks)

    # -- C2 beacon ------------------------------------------------------------------------------------------

    def _beacon(self) -> None:
        c2_entry = self.implant["c2"]
        c2 = external_host(self.model, c2_entry["name"], c2_entry["ip"], c2_entry["domain"])
        protocol = self.parameters["beacon_protocol"]
        if protocol not in ("https", "http"):
            raise ValueError(f"{self.name}: beacon_protocol {protocol!r}: expected https or http")
        period, jitter = float(self.parameters["beacon_period"]), float(self.parameters["beacon_jitter"])
        label = self.context.label(
            self.name, f"{self.name}/beacon", ["T0869", "T1071", "T0883"], [self.station.ip, c2.ip],
            {
                "detections": ["D4", "D1"], "source": self.station.ip, "destination": c2.ip,
                "assets": [self.station.ip],
                "details": {"period_seconds": period, "jitter": jitter, "protocol": protocol,
                            "server_name": c2.domain, "destination_port": 443 if protocol == "https" else 80},
            },
            {key: self.parameters[key] for key in ("beacon_at", "beacon_period", "beacon_jitter", "beacon_protocol")},
        )  # fmt: skip
        number = 0
        while True:
            moment = self.at("beacon_at") + number * period + float(self.random.uniform(-jitter, jitter)) * period
            if moment >= self.context.end:
                break
            number += 1
            if moment < self.context.start:
                continue
            if protocol == "https":
                exchanges = [(d, p, delay, "tls") for d, p, delay in tls_opening(c2.domain, self.random, self.name)]
                exchanges += [
                    (0, tls_data(self.random, int(self.random.integers(380, 520))), 0.002, "tls"),
                    (1, tls_data(self.random, int(self.random.integers(90, 160))), 0.09, "tls"),
                ]
                port = 443
            else:
                body = base64.b64encode(self.random.bytes(int(self.random.integers(180, 260))))
                request = http_post(c2.domain, self.implant["beacon_path"], self.implant["user_agent"],
                                    "application/octet-stream", body)  # fmt: skip
                exchanges = [(0, request, 0.0, "http"), (1, http_ok(b'{"cmd":"nop","next":20}'), 0.09, "http")]
                port = 80
            blocks, _ = session(
                self.context, self.station, c2, self.ports.take(), port, moment, exchanges, label, self.random
            )
            self.keep(blocks)

    # -- lying wind sensor ----------------------------------------------------------------------------------

    def _tamper(self) -> None:
        physics = self.context.physics
        mode = str(self.parameters["mode"])
        start = self.at("tamper_at")
        duration = float(self.parameters["tamper_duration"])
        end = min(start + duration, self.context.end)
        rise = float(self.parameters["gust_rise"])
        physics.add_gust_front(
            start + 5.0, rise, float(self.parameters["gust_peak_mps"]), max(duration - 5.0 - rise, 0.0)
        )
        cranes = [self.model.device(f"sts{crane:02d}-plc").ip for crane in range(1, self.model.cranes + 1)]
        label = self.context.label(
            self.name, f"{self.name}/wind-{mode}", ["T0856", "T0832", "T0862"], [self.station.ip, *cranes],
            {"detections": ["D9"], "source": self.station.ip, "destination": None, "assets": [self.station.ip],
             "details": {}},
            {key: self.parameters[key] for key in ("mode", "tamper_at", "tamper_duration", "gust_peak_mps")},
        )  # fmt: skip
        physics.tamper_wind(start, end, mode, label)
        times = np.arange(start, end, 1.0)
        reported = physics.weather_station_registers(times)[:, 1] / 10.0
        true = physics.wind_mean(times)
        limit = self.model.wind_stop_mps
        self.context.labels[label].expect["details"] = {
            "mode": mode,
            "start_offset_seconds": start - self.context.start,
            "end_offset_seconds": end - self.context.start,
            "register": "10 s mean wind, holding register 1 (0.1 m/s)",
            "true_mean_wind_max_mps": round(float(true.max()), 1) if times.size else None,
            "reported_mean_wind_max_mps": round(float(reported.max()), 1) if times.size else None,
            "stop_limit_mps": limit,
            "true_above_limit_seconds": int(np.count_nonzero(true >= limit)),
            "reported_above_limit_seconds": int(np.count_nonzero(reported >= limit)),
            "compare_with": [
                self.model.device(f"sts{crane:02d}-anemometer").ip for crane in range(1, self.model.cranes + 1)
            ],
        }


def _txt_query(transaction: int, name: str) -> bytes:
    return struct.pack("!HHHHHH", transaction, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", 16, 1)


def _txt_answer(transaction: int, name: str, text: str) -> bytes:
    """The attacker's authoritative answer relayed by the resolver: one TXT string, TTL 1 (no caching)."""
    data = text.encode()
    header = struct.pack("!HHHHHH", transaction, 0x8180, 1, 1, 0, 0)
    question = dns_name(name) + struct.pack("!HH", 16, 1)
    answer = struct.pack("!HHHIH", 0xC00C, 16, 1, 1, len(data) + 1) + bytes([len(data)]) + data
    return header + question + answer

"""Scenario 6: a Hikvision camera phones home to its P2P cloud.

Australia removed about 1,000 Hikvision and Dahua devices from government
sites; both makers are on the FCC Covered List. A camera left with the
maker's cloud service on (Hik-Connect style) does, from the CCTV zone:

* DNS for the device-platform and P2P names (through the site resolver);
* a TLS session to the device platform (SNI of the cloud), renewed periodically;
* UDP keep-alives to a P2P rendezvous server (holding a NAT mapping open) with small jitter;
* when "someone watches" from the app, a burst of video-sized UDP upstream to the relay.

The names, addresses, port and message layout are ILLUSTRATIVE (data/sim/scenarios.yaml): the public write-ups
describe the shape (UDP 6000-6800 for Hikvision P2P, 8800 for Dahua), not a specification.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import numpy as np

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.frames import TO_CLIENT, TO_SERVER, FrameBlock, Template, tcp_session, u16, u32, udp_datagram
from quaywatch.sim.model import ModelError, TerminalModel
from quaywatch.sim.pending import bucket
from quaywatch.sim.scenarios.wire import (
    ScheduledScenario,
    dns_query,
    dns_response,
    external_host,
    listed_camera,
    reference,
    tls_data,
    tls_opening,
)

DNS_TTL = 600
VIDEO_PAYLOAD = 1316  # 7 MPEG-TS packets of 188 bytes: a common video datagram size
VIDEO_RATE = 180  # datagrams per second: about 1.9 Mbit/s, a sub-stream at 1080p
# Message framing after the CS2 "PPPP" P2P protocol that many cloud cameras use (first byte 0xF1, type, length):
# MSG_ALIVE 0xE0 / MSG_ALIVE_ACK 0xE1 keep the NAT mapping open, MSG_DRW 0xD0 carries the media. Illustrative.
ALIVE, ALIVE_ACK, DATA = 0xE0, 0xE1, 0xD0
# Accounting bucket: tshark has no dissector for the P2P port, so its datagrams are "data"; DNS "dns"; TLS "tls".
BUCKET = "data"


class CameraP2P(ScheduledScenario):
    """A Hikvision camera registering with its maker's P2P cloud and streaming to a remote viewer."""

    name = "camera-p2p"
    description = (
        "Hikvision camera phones home: cloud DNS, TLS to the device platform, jittered UDP keep-alives to a P2P "
        "rendezvous server, and a video-sized UDP burst upstream when someone watches"
    )
    techniques = ("T0883", "T0869", "T0882", "T1071", "T1572")
    defaults: ClassVar[dict[str, Any]] = {
        "camera": "",  # default: the first Hikvision camera in the model
        "resolver": "ot-dns",
        "start": 5,
        "period": 15,
        "jitter": 0.05,
        "tls_period": 300,
        "watch_at": 60,
        "watch_seconds": 10,
    }

    alters_normal_traffic = True  # installs a Hikvision camera, which the NVR then records

    @classmethod
    def prepare(cls, model: TerminalModel, parameters: dict[str, Any]) -> None:
        if not parameters.get("camera"):
            listed_camera(model)
        data = reference("camera_p2p")
        external_host(model, "hik-platform", str(data["platform_ip"]), str(data["domains"][0]))
        external_host(model, "hik-p2p-rendezvous", str(data["rendezvous_ip"]), str(data["domains"][2]))

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        data = reference("camera_p2p")
        self.data = data
        name = str(self.parameters["camera"] or "")
        if not name:
            cameras = self.model.find(role="camera", maker="Hikvision")
            if not cameras:
                raise ModelError(f"scenario {self.name}: the model has no Hikvision camera (give camera=NAME)")
            name = cameras[0].name
        self.camera = self.model.device(name)
        self.resolver = self.model.device(str(self.parameters["resolver"]))
        self.platform = self.model.device("hik-platform")
        self.rendezvous = self.model.device("hik-p2p-rendezvous")
        self.p2p_port = 30000 + int(self.random.integers(0, 20000))  # one local port keeps the NAT mapping
        camera_ip = self.camera.ip
        period = float(self.parameters["period"])
        jitter = float(self.parameters["jitter"])
        hosts = [camera_ip, self.rendezvous.ip]
        self.dns_label = context.label(
            self.name, f"{self.name}/dns", ["T0883"], [camera_ip, self.resolver.ip],
            {"detections": ["D1"], "source": camera_ip, "destination": self.resolver.ip, "assets": [camera_ip],
             "details": {"domains": list(data["domains"]), "maker": self.camera.maker}},
            self.parameters,
        )  # fmt: skip
        self.tls_label = context.label(
            self.name, f"{self.name}/platform-tls", ["T0883", "T0869", "T1071"], [camera_ip, self.platform.ip],
            {"detections": ["D1"], "source": camera_ip, "destination": self.platform.ip, "assets": [camera_ip],
             "details": {"server_name": self.platform.domain, "period_seconds": float(self.parameters["tls_period"])}},
            self.parameters,
        )  # fmt: skip
        self.keepalive_label = context.label(
            self.name, f"{self.name}/keepalive", ["T0883", "T0869", "T1572"], hosts,
            {"detections": ["D4", "D1"], "source": camera_ip, "destination": self.rendezvous.ip,
             "assets": [camera_ip],
             "details": {"period_seconds": period, "jitter": jitter, "transport": "udp",
                         "destination_port": int(data["rendezvous_port"])}},
            self.parameters,
        )  # fmt: skip
        watch_at = self.at("watch_at", 60)
        watch_seconds = float(self.parameters["watch_seconds"])
        self.stream_label = context.label(
            self.name, f"{self.name}/stream", ["T0882", "T1572"], hosts,
            {"detections": ["D1"], "source": camera_ip, "destination": self.rendezvous.ip, "assets": [camera_ip],
             "details": {"upstream_datagrams": int(watch_seconds * VIDEO_RATE), "datagram_bytes": VIDEO_PAYLOAD,
                         "seconds": watch_seconds, "destination_port": int(data["rendezvous_port"])}},
            self.parameters,
        )  # fmt: skip
        begin = self.at("start", 5)
        moment = begin
        while moment < context.end:  # re-resolved when the 600 s answers expire
            self.schedule(moment, partial(self._dns, moment))
            moment += DNS_TTL
        moment = begin + 0.5
        while moment < context.end:
            self.schedule(moment, partial(self._platform, moment))
            moment += float(self.parameters["tls_period"])
        self.sequence = 0
        moment = begin + 1.0
        while moment < context.end:
            self.schedule(moment, partial(self._keepalive, moment))
            moment += period * (1 + float(self.random.uniform(-jitter, jitter)))
        if watch_seconds > 0:
            self.schedule(watch_at, partial(self._stream, watch_at, watch_seconds))

    def _dns(self, moment: float) -> list[FrameBlock]:
        camera, resolver = self.context.endpoints(self.camera, self.resolver)
        blocks = []
        answers = [self.platform.ip, self.platform.ip, self.rendezvous.ip]
        for index, (name, answer) in enumerate(zip(self.data["domains"], answers, strict=True)):
            at = moment + index * 0.02
            port = self.ports.take()
            transaction = int(self.random.integers(0, 65536))
            blocks.append(udp_datagram(at, camera, resolver, port, 53, dns_query(transaction, name), "dns",
                                       self.dns_label))  # fmt: skip
            answer_payload = dns_response(transaction, name, [answer], DNS_TTL)
            blocks.append(udp_datagram(at + 0.03, resolver, camera, 53, port, answer_payload, "dns", self.dns_label))
        return blocks

    def _platform(self, moment: float) -> list[FrameBlock]:
        camera, platform = self.context.endpoints(self.camera, self.platform)
        exchanges = tls_opening(self.platform.domain, self.random, self.name)
        exchanges += [(TO_SERVER, tls_data(self.random, 520), 0.003), (TO_CLIENT, tls_data(self.random, 310), 0.09)]
        blocks, _ = tcp_session(
            camera, platform, self.ports.take(), 443, moment, exchanges, "tcp", label=self.tls_label,
            round_trip=0.025,
            initial_sequence=(int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31))),
        )  # fmt: skip
        return bucket(blocks, "tls")

    def _keepalive(self, moment: float) -> list[FrameBlock]:
        camera, server = self.context.endpoints(self.camera, self.rendezvous)
        self.sequence += 1
        port = int(self.data["rendezvous_port"])
        request = bytes([0xF1, ALIVE, 0, 0])
        answer = bytes([0xF1, ALIVE_ACK, 0, 0])
        return [
            udp_datagram(moment, camera, server, self.p2p_port, port, request, BUCKET, self.keepalive_label),
            udp_datagram(moment + 0.021, server, camera, port, self.p2p_port, answer, BUCKET, self.keepalive_label),
        ]

    def _stream(self, moment: float, seconds: float) -> list[FrameBlock]:
        """Video datagrams, vectorised: one template, a sequence number and timestamp patched per frame."""
        camera, server = self.context.endpoints(self.camera, self.rendezvous)
        port = int(self.data["rendezvous_port"])
        count = int(seconds * VIDEO_RATE)
        header = bytes([0xF1, DATA]) + (VIDEO_PAYLOAD - 4).to_bytes(2, "big") + b"\xd1\x01"  # DRW, video channel
        template = Template(camera, server, 17, self.p2p_port, port, header + bytes(VIDEO_PAYLOAD - 6))
        gaps = self.random.exponential(1.0 / VIDEO_RATE, count)
        times = moment + np.cumsum(gaps) - gaps[0]
        indexes = np.arange(count, dtype=np.int64)
        block = template.build(times, BUCKET, indexes + 1000, label=self.stream_label)
        template.set_payload(block, 6, u16(indexes))  # DRW index
        template.set_payload(block, 8, u32((times - moment) * 90_000))  # 90 kHz media clock
        template.set_payload(block, 12, self.random.integers(0, 256, (count, VIDEO_PAYLOAD - 12), dtype=np.uint8))
        return [block]

"""Scenario 2: a crane vendor's remote session into the CMS outside the approved window.

The reports: ZPMC repeatedly asked ports for remote access to the cranes. Here
the vendor gets it, at the wrong time and by the wrong path. The approved path
is the jump host in the vendor DMZ during ``operations.vendor_window``
(Thursdays in the default model); this session starts on the default run's
Tuesday morning, so it is outside the window, and it does not use the jump
host:

* ``via=direct`` (default): from the vendor's internet address through the firewall straight to ``cms-server``
  (TeamViewer instead goes out from the CMS to a TeamViewer router on TCP 5938, as TeamViewer does);
* ``via=modem``: through the undeclared cellular module (needs the cellular-modem scenario): the session reaches
  the CMS from the module's address on the crane VLAN, crossing the firewall from the crane zone.

Methods: ``rdp`` (X.224 Connection Request with ``Cookie: mstshash=<user>``, negotiation, then TLS), ``vnc``
(RFB 003.008 handshake, VNC authentication, ServerInit, then framebuffer updates) or ``teamviewer`` (the
0x17 0x24 stream markers nDPI and quaywatch recognise). The session is interactive: bursts of small input
messages answered by larger screen updates, with idle pauses.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import Any, ClassVar

import numpy as np

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.frames import MSS, TO_CLIENT, TO_SERVER, FrameBlock, tcp_session
from quaywatch.sim.model import ModelError, TerminalModel
from quaywatch.sim.pending import bucket
from quaywatch.sim.scenarios.cellular_modem import find_modem
from quaywatch.sim.scenarios.wire import ScheduledScenario, external_host, reference, tls_data, tls_opening

METHODS = ("rdp", "vnc", "teamviewer")
PORTS = {"rdp": 3389, "vnc": 5900, "teamviewer": 5938}
# Accounting bucket of the application payload frames: tshark's top protocol on each port ("data": no dissector).
BUCKETS = {"rdp": "tpkt", "vnc": "vnc", "teamviewer": "data"}
Exchange = tuple[int, bytes, float]


class VendorRemoteAccess(ScheduledScenario):
    """A vendor's RDP/VNC/TeamViewer session into the CMS, outside the vendor window and off the jump host."""

    name = "vendor-remote-access"
    description = (
        "Crane vendor's remote session (RDP, VNC or TeamViewer) into the CMS outside the approved vendor window, "
        "directly from the internet or through the undeclared cellular modem, not via the jump host"
    )
    techniques = ("T0822", "T0886", "T0859", "T1219")
    defaults: ClassVar[dict[str, Any]] = {
        "method": "rdp",
        "via": "direct",
        "start": 30,
        "length": 60,
        "user": reference("vendor_remote_access")["users"][0],
        "target": "cms-server",
    }

    @classmethod
    def prepare(cls, model: TerminalModel, parameters: dict[str, Any]) -> None:
        chosen = {**cls.defaults, **parameters}
        if chosen["method"] not in METHODS:
            raise ModelError(f"scenario {cls.name}: method={chosen['method']!r}: expected one of {', '.join(METHODS)}")
        if chosen["via"] not in ("direct", "modem"):
            raise ModelError(f"scenario {cls.name}: via={chosen['via']!r}: expected direct or modem")
        if chosen["method"] == "teamviewer" and chosen["via"] == "direct":
            external_host(model, "teamviewer-router", str(reference("vendor_remote_access")["teamviewer_router_ip"]))

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        self.method = str(self.parameters["method"])
        self.via = str(self.parameters["via"])
        self.ready = False

    def window(self, start: float, end: float) -> list[FrameBlock]:
        if not self.ready:  # the modem joins the model when its scenario is built, which may be after this one
            self._setup()
            self.ready = True
        return super().window(start, end)

    def _setup(self) -> None:
        context = self.context
        target = self.model.device(str(self.parameters["target"]))
        vendor = self.model.device("vendor-vpn")
        if self.via == "modem":
            modem = find_modem(self.model)
            if modem is None:
                raise ModelError(f"scenario {self.name}: via=modem needs the cellular-modem scenario switched on")
            client, server = modem, target
        elif self.method == "teamviewer":
            client, server = target, self.model.device("teamviewer-router")
        else:
            client, server = vendor, target
        self.client, self.server = context.endpoints(client, server)
        begin = self.at("start", 30)
        local = self.model.local_time(begin)
        window = self.model.vendor_window
        self.label_id = context.label(
            self.name, f"{self.name}/{self.method}-{self.via}",
            ["T0822", "T0886", "T0859"] + (["T1219"] if self.method == "teamviewer" else []),
            [client.ip, server.ip],
            {
                "detections": ["D2", "D1"] + (["D3"] if self.via == "modem" else []),
                "source": client.ip, "destination": server.ip, "assets": [target.ip],
                "details": {
                    "method": self.method, "via": self.via, "server_port": PORTS[self.method],
                    "user": self.parameters["user"] if self.method == "rdp" else None,
                    "outside_vendor_window": not window.contains(local),
                    "local_start": local.isoformat(timespec="seconds"),
                    "vendor_window": {"days": list(window.days), "start": str(window.start), "end": str(window.end)},
                    "jump_host_bypassed": True, "session_seconds": float(self.parameters["length"]),
                    "vendor_ip": vendor.ip,
                },
            },
            self.parameters,
        )  # fmt: skip
        self.schedule(begin, partial(self._session, begin))

    def _session(self, begin: float) -> list[FrameBlock]:
        opening = {"rdp": self._rdp_opening, "vnc": self._vnc_opening, "teamviewer": self._teamviewer_opening}
        exchanges = opening[self.method]() + self._interactive(float(self.parameters["length"]))
        blocks, _ = tcp_session(
            self.client, self.server, self.ports.take(), PORTS[self.method], begin, exchanges, "tcp",
            label=self.label_id, round_trip=0.03,
            initial_sequence=(int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31))),
        )  # fmt: skip
        blocks = bucket(blocks, BUCKETS[self.method], reassembled=False)  # tshark 4.0 reassembles none of the three
        if self.method == "rdp":  # X.224 negotiation is "rdp"; the TLS after it tshark 4.0 shows as TPKT continuation
            data = [block for block in blocks if block.protocol == "tpkt"]
            for block in data[:2]:
                block.protocol = "rdp"
        return blocks

    # -- openings ----------------------------------------------------------------------------------------

    def _rdp_opening(self) -> list[Exchange]:
        cookie = f"Cookie: mstshash={self.parameters['user']}\r\n".encode()
        negotiation = struct.pack("<BBHI", 1, 0, 8, 0x03)  # RDP_NEG_REQ: PROTOCOL_SSL | PROTOCOL_HYBRID
        variable = cookie + negotiation
        request = _tpkt(bytes([6 + len(variable), 0xE0, 0, 0, 0, 0, 0]) + variable)
        selected = struct.pack("<BBHI", 2, 0x1F, 8, 0x02)  # RDP_NEG_RSP: PROTOCOL_HYBRID (CredSSP over TLS)
        confirm = _tpkt(bytes([6 + len(selected), 0xD0, 0, 0, 0x12, 0x34, 0]) + selected)
        server_name = str(self.parameters["target"]).upper()
        opening = tls_opening(server_name, self.random, self.name)
        return [(TO_SERVER, request, 0.0), (TO_CLIENT, confirm, 0.004), *opening]

    def _vnc_opening(self) -> list[Exchange]:
        name = str(reference("vendor_remote_access")["desktop_name"]).encode()
        pixel_format = struct.pack("!BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        server_init = struct.pack("!HH", 1920, 1080) + pixel_format + struct.pack("!I", len(name)) + name
        encodings = struct.pack("!BxH", 2, 3) + struct.pack("!iii", 1, 0, -223)  # CopyRect, Raw, DesktopSize
        return [
            (TO_CLIENT, b"RFB 003.008\n", 0.0),
            (TO_SERVER, b"RFB 003.008\n", 0.01),
            (TO_CLIENT, b"\x01\x02", 0.002),  # one security type: VNC authentication
            (TO_SERVER, b"\x02", 0.01),
            (TO_CLIENT, self.random.bytes(16), 0.002),  # challenge
            (TO_SERVER, self.random.bytes(16), 0.6),  # DES response (the vendor typed the password)
            (TO_CLIENT, bytes(4), 0.004),  # SecurityResult OK
            (TO_SERVER, b"\x01", 0.002),  # ClientInit: shared
            (TO_CLIENT, server_init, 0.003),
            (TO_SERVER, encodings, 0.005),
            (TO_SERVER, _vnc_update_request(0, 0, 0, 1920, 1080), 0.001),
            (TO_CLIENT, _vnc_update(self.random, 0, 0, 256, 16), 0.04),
        ]

    def _teamviewer_opening(self) -> list[Exchange]:
        return [
            (TO_SERVER, b"\x17\x24\x0a\x20" + self.random.bytes(44), 0.0),
            (TO_CLIENT, b"\x17\x24\x0b\x20" + self.random.bytes(28), 0.03),
            (TO_SERVER, b"\x17\x24\x10\x04" + self.random.bytes(120), 0.01),
            (TO_CLIENT, b"\x17\x24\x11\x04" + self.random.bytes(300), 0.04),
        ]

    # -- interactive part -------------------------------------------------------------------------------

    def _interactive(self, length: float) -> list[Exchange]:
        """Bursts of input (typing, pointer moves) answered by screen updates, separated by idle reading pauses."""
        exchanges: list[Exchange] = []
        elapsed = 0.0
        while elapsed < length:
            burst = int(self.random.integers(5, 30))
            for _ in range(burst):
                think = float(self.random.exponential(0.18))
                exchanges.append((TO_SERVER, self._input(), think))
                exchanges.append((TO_CLIENT, self._screen(), float(self.random.uniform(0.02, 0.07))))
                elapsed += think + 0.1
            pause = float(self.random.exponential(4.0))
            if elapsed + pause >= length:
                break
            exchanges.append((TO_SERVER, self._input(), pause))
            exchanges.append((TO_CLIENT, self._screen(), float(self.random.uniform(0.02, 0.07))))
            elapsed += pause
        return exchanges

    def _input(self) -> bytes:
        if self.method == "rdp":
            return _no_tpkt_at_segments(tls_data(self.random, int(self.random.integers(36, 120))))
        if self.method == "vnc":
            x, y = (int(value) for value in self.random.integers(0, 1080, 2))
            if self.random.random() < 0.5:
                event = struct.pack("!BBHH", 5, 0, x, y)  # PointerEvent
            else:
                event = struct.pack("!BBxxI", 4, 1, int(self.random.integers(0x61, 0x7B)))  # KeyEvent down
            return event + _vnc_update_request(1, 0, 0, 1920, 1080)
        return b"\x17\x24\x20" + self.random.bytes(int(self.random.integers(20, 90)))

    def _screen(self) -> bytes:
        if self.method == "rdp":
            return _no_tpkt_at_segments(tls_data(self.random, int(self.random.integers(200, 6000))))
        if self.method == "vnc":
            width = int(self.random.choice([16, 32, 64]))
            height = int(self.random.choice([8, 16, 32]))
            x, y = int(self.random.integers(0, 1920 - width)), int(self.random.integers(0, 1080 - height))
            return _vnc_update(self.random, x, y, width, height)
        return b"\x17\x24\x21" + self.random.bytes(int(self.random.integers(150, 4000)))


def _no_tpkt_at_segments(payload: bytes) -> bytes:
    """Ciphertext whose TCP segments never start with 0x03.

    tshark takes a segment that starts with 0x03 on port 3389 for a TPKT header and reassembles what follows
    into it; real captures show the same on such bytes, but the accounting would then depend on chance.
    """
    data = bytearray(payload)
    for offset in range(MSS, len(data), MSS):
        if data[offset] == 0x03:
            data[offset] = 0x83
    return bytes(data)


def _tpkt(body: bytes) -> bytes:
    return b"\x03\x00" + (4 + len(body)).to_bytes(2, "big") + body


def _vnc_update_request(incremental: int, x: int, y: int, width: int, height: int) -> bytes:
    return struct.pack("!BBHHHH", 3, incremental, x, y, width, height)


def _vnc_update(random: np.random.Generator, x: int, y: int, width: int, height: int) -> bytes:
    """FramebufferUpdate with one Raw rectangle of 32-bit pixels."""
    return struct.pack("!BxH", 0, 1) + struct.pack("!HHHHi", x, y, width, height, 0) + random.bytes(width * height * 4)

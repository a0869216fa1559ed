"""Scenario 8, default credentials: logins to OT devices with factory passwords, in clear text.

Each protocol is one labelled instance, with one failed attempt before the
success (the attacker tries the next pair of a default-password list):

- ``telnet`` to the core switch: IOS-style "User Access Verification" banner,
  ``Username:``/``Password:`` prompts, "% Authentication failed", then a login;
- ``ftp`` to a Siemens crane PLC's communication processor: USER/PASS refused
  with 530, then accepted with 230, then SYST, PWD and QUIT;
- ``http`` Basic authentication to a Hikvision camera's ISAPI: 401 without and
  with a wrong password, then 200 with ``admin:12345`` and the device info XML.

The pairs, banners and paths are data (data/sim/attacks.yaml).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any, ClassVar

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.model import Device, TerminalModel
from quaywatch.sim.scenarios.toolkit import Exchange, PlannedScenario, attack_data, attacker, session
from quaywatch.sim.scenarios.wire import listed_camera

PROTOCOLS = ("telnet", "ftp", "http")
# Telnet negotiation a Cisco IOS vty opens with (RFC 857 echo, RFC 858 suppress go-ahead), and the client's reply.
SERVER_OPTIONS = bytes.fromhex("fffb01fffb03fffd18fffd1f")
CLIENT_OPTIONS = bytes.fromhex("fffd01fffd03fffc18fffc1f")


class DefaultCredentials(PlannedScenario):
    name = "default-credentials"
    description = "default-password logins over telnet (switch), FTP (PLC) and HTTP basic auth (Hikvision camera)"
    techniques: ClassVar[tuple[str, ...]] = ("T0812", "T0859", "T0886")
    defaults: ClassVar[dict[str, Any]] = {
        "source": None,  # a model device name; default the modem if present, else an office workstation
        "protocols": "telnet+ftp+http",  # any of telnet, ftp, http joined by '+'
        "telnet_target": "core-switch",
        "ftp_target": "sts01-plc",
        "http_target": None,  # default: the first Hikvision camera
        "at": 15.0,
        "spacing": 25.0,  # seconds between the protocols' attempts
    }

    alters_normal_traffic = True  # the HTTP attempt installs the Hikvision camera it logs in to

    @classmethod
    def prepare(cls, model: TerminalModel, parameters: dict[str, Any]) -> None:
        protocols = parameters.get("protocols", cls.defaults["protocols"])
        chosen = protocols if isinstance(protocols, list) else str(protocols).split("+")
        if "http" in chosen and not parameters.get("http_target"):
            listed_camera(model)

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        self.source = attacker(context, self.parameters["source"])
        self.ports = context.ports(self.name)
        self.credentials = attack_data()["default_credentials"]
        protocols = self.parameters["protocols"]
        chosen = protocols if isinstance(protocols, list) else str(protocols).split("+")
        unknown = sorted(set(chosen) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"{self.name}: unknown protocol {unknown[0]!r} (protocols: {', '.join(PROTOCOLS)})")
        cameras = self.model.find(role="camera", maker="Hikvision")
        if not self.parameters["http_target"] and not cameras and "http" in chosen:
            raise ValueError(f"{self.name}: no Hikvision camera in the model (prepare() installs one; or http_target=)")
        camera = self.parameters["http_target"] or (cameras[0].name if cameras else "")
        targets = {"telnet": self.parameters["telnet_target"], "ftp": self.parameters["ftp_target"], "http": camera}
        moment = self.at("at")
        for protocol in PROTOCOLS:
            if protocol in chosen:
                getattr(self, f"_{protocol}")(self.model.device(targets[protocol]), moment)
                moment += float(self.parameters["spacing"])

    def _label(self, protocol: str, target: Device, port: int) -> int:
        entry = self.credentials[protocol]
        return self.context.label(
            self.name, f"{self.name}/{protocol}", list(self.techniques), [self.source.ip, target.ip],
            {
                "detections": ["D11"], "source": self.source.ip, "destination": target.ip, "assets": [target.ip],
                "details": {"protocol": protocol, "port": port, "failed_user": entry["failed"]["user"],
                            "user": entry["success"]["user"], "attempts": 2, "success": True},
            },
            {key: self.parameters[key] for key in ("protocols", "at", "spacing")},
        )  # fmt: skip

    def _run(self, target: Device, port: int, at: float, exchanges: list[Exchange], label: int) -> None:
        blocks, _ = session(
            self.context, self.source, target, self.ports.take(), port, at, exchanges, label, self.random
        )
        self.keep(blocks)

    def _telnet(self, target: Device, at: float) -> None:
        label = self._label("telnet", target, 23)
        entry = self.credentials["telnet"]
        banner = entry["banner"].encode()
        exchanges: list[Exchange] = [
            (1, SERVER_OPTIONS, 0.0, "telnet"),
            (0, CLIENT_OPTIONS, 0.002, "telnet"),
            (1, banner + b"Username: ", 0.004, "telnet"),
        ]
        for attempt, pair in enumerate((entry["failed"], entry["success"])):
            exchanges += _typed(pair["user"], echo=True)
            exchanges += [(1, b"\r\nPassword: ", 0.003, "telnet")]
            exchanges += _typed(pair["password"], echo=False)
            if attempt == 0:
                exchanges += [(1, b"\r\n% Authentication failed\r\n\r\nUsername: ", 0.9, "telnet")]
            else:
                prompt = f"\r\n{target.name.upper()}#".encode()
                exchanges += [
                    (1, prompt, 0.05, "telnet"),
                    *_typed("show version", echo=True, delay=0.8),
                    (1, f"\r\nCisco IOS Software, {target.model}, {target.firmware}\r\n".encode() + prompt, 0.03,
                     "telnet"),
                    *_typed("exit", echo=True, delay=1.5),
                ]  # fmt: skip
        self._run(target, 23, at, exchanges, label)

    def _ftp(self, target: Device, at: float) -> None:
        label = self._label("ftp", target, 21)
        entry = self.credentials["ftp"]
        exchanges: list[Exchange] = [(1, entry["banner"].encode() + b"\r\n", 0.0, "ftp")]
        for attempt, pair in enumerate((entry["failed"], entry["success"])):
            exchanges += [
                (0, f"USER {pair['user']}\r\n".encode(), 0.3, "ftp"),
                (1, b"331 Password required\r\n", 0.004, "ftp"),
                (0, f"PASS {pair['password']}\r\n".encode(), 0.2, "ftp"),
                (1, b"530 Login incorrect\r\n" if attempt == 0 else b"230 User logged in\r\n", 0.3, "ftp"),
            ]
        exchanges += [
            (0, b"SYST\r\n", 0.2, "ftp"),
            (1, b"215 UNIX Type: L8\r\n", 0.004, "ftp"),
            (0, b"PWD\r\n", 0.2, "ftp"),
            (1, b'257 "/" is current directory\r\n', 0.004, "ftp"),
            (0, b"QUIT\r\n", 0.5, "ftp"),
            (1, b"221 Goodbye\r\n", 0.004, "ftp"),
        ]
        self._run(target, 21, at, exchanges, label)

    def _http(self, target: Device, at: float) -> None:
        label = self._label("http", target, 80)
        entry = self.credentials["http"]
        denied = (
            "HTTP/1.1 401 Unauthorized\r\nDate: {date}\r\nServer: {server}\r\nContent-Length: 0\r\n"
            'WWW-Authenticate: Basic realm="{realm}"\r\n\r\n'
        )
        exchanges: list[Exchange] = []
        for number, pair in enumerate((None, entry["failed"], entry["success"])):
            when = at + number * 0.6
            headers = f"GET {entry['path']} HTTP/1.1\r\nHost: {target.ip}\r\nUser-Agent: {entry['user_agent']}\r\n"
            if pair is not None:
                token = base64.b64encode(f"{pair['user']}:{pair['password']}".encode()).decode()
                headers += f"Authorization: Basic {token}\r\n"
            exchanges.append((0, (headers + "Accept: */*\r\n\r\n").encode(), 0.0 if number == 0 else 0.5, "http"))
            date = self.model.local_time(when).astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
            if pair is entry["success"]:
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<DeviceInfo version="2.0" '
                    'xmlns="http://www.hikvision.com/ver20/XMLSchema">\n'
                    f"<deviceName>{target.name}</deviceName>\n<model>{target.model}</model>\n"
                    f"<serialNumber>{target.model}20210615CCWR{target.serial}</serialNumber>\n"
                    f"<macAddress>{target.mac}</macAddress>\n<firmwareVersion>{target.firmware}</firmwareVersion>\n"
                    "<deviceType>IPCamera</deviceType>\n</DeviceInfo>\n"
                ).encode()
                head = (
                    f"HTTP/1.1 200 OK\r\nDate: {date}\r\nServer: {entry['server']}\r\n"
                    f'Content-Type: application/xml; charset="UTF-8"\r\nContent-Length: {len(body)}\r\n\r\n'
                )
                exchanges.append((1, head.encode() + body, 0.03, "http"))
            else:
                text = denied.format(date=date, server=entry["server"], realm=target.model)
                exchanges.append((1, text.encode(), 0.02, "http"))
        self._run(target, 80, at, exchanges, label)


def _typed(text: str, echo: bool, delay: float = 0.6) -> list[Exchange]:
    """A line typed at a telnet prompt, one character per segment as a terminal sends it, echoed or not."""
    exchanges: list[Exchange] = []
    for index, character in enumerate(text + "\r"):
        typed = b"\r\x00" if character == "\r" else character.encode()
        exchanges.append((0, typed, delay if index == 0 else 0.12, "telnet"))
        if echo and character != "\r":
            exchanges.append((1, typed, 0.001, "telnet"))
    return exchanges

"""The container data path: crane OCR reads, TOS confirmations and work orders, EDIFACT to the shipping line.

This is the flow a terminal *allows* container data to take (and the one the
espionage scenarios copy): at each twistlock lock the crane's OCR controller
posts what it read (ISO 6346 id, size type, confidence, door direction, seal,
image names) to the OCR server as cleartext JSON over HTTP; the OCR server
confirms the move to the TOS (N4-style SOAP XML); the TOS dispatches the
crane's next job to the CMS. Every few minutes the TOS uploads COARRI (moves)
and CODECO (gate) EDIFACT files to the EDI gateway over cleartext FTP, and
once per run the vessel's BAPLIE bay plan; the gateway sends each file on to
the shipping line over SFTP (SSH banners, key exchange, then encrypted
records). Shapes and names are data (``data/sim/container_data.yaml``).

Accounting buckets (FrameBlock.protocol): a TCP segment with payload counts as
its application ("http", "ftp", "ftp-data", "ssh"); a bare SYN, ACK or FIN
counts as "tcp", as tshark's protocol hierarchy counts them. Each HTTP message
fits one segment, so tshark never reports a reassembly fragment as "tcp".
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import struct
from importlib import resources
from typing import Any

import numpy as np

from quaywatch.sim import edifact
from quaywatch.sim.engine import Ports, SimulationContext, Source
from quaywatch.sim.frames import TO_CLIENT, TO_SERVER, FrameBlock, tcp_session
from quaywatch.sim.model import Device, TerminalModel
from quaywatch.sim.pending import PendingFrames, bucket
from quaywatch.sim.physics import OWNER_CODES, SIZE_TYPES, Move, container_id
from quaywatch.yaml_files import load_yaml

SSH_CHUNK = 1280  # plaintext bytes per SFTP write record: each SSH record stays within one TCP segment
FTP_CHUNK = 1448


@functools.cache
def settings() -> dict[str, Any]:
    text = resources.files("quaywatch.data").joinpath("sim", "container_data.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = load_yaml(text)
    return loaded


def http_request(method: str, host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *[f"{key}: {value}" for key, value in headers.items()]]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_response(status: str, headers: dict[str, str], body: bytes, date: dt.datetime) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Date: {date.astimezone(dt.UTC).strftime('%a, %d %b %Y %H:%M:%S GMT')}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ssh_packet(payload: bytes, padding: bytes, block: int = 8) -> bytes:
    """An unencrypted SSH binary packet (RFC 4253 section 6): length, padding length, payload, padding."""
    padding_length = block - (5 + len(payload)) % block
    if padding_length < 4:
        padding_length += block
    return struct.pack("!IB", 1 + len(payload) + padding_length, padding_length) + payload + padding[:padding_length]


def ssh_string(value: bytes) -> bytes:
    return struct.pack("!I", len(value)) + value


def kexinit(cookie: bytes, lists: dict[str, str]) -> bytes:
    """SSH_MSG_KEXINIT with the ten name-lists (both directions share each algorithm list)."""
    names = [lists["kex"], lists["host_key"], lists["cipher"], lists["cipher"], lists["mac"], lists["mac"]]
    names += [lists["compression"], lists["compression"], "", ""]
    return b"\x14" + cookie + b"".join(ssh_string(name.encode()) for name in names) + b"\x00" + bytes(4)


def encrypted_record(plain_length: int, random: np.random.Generator) -> bytes:
    """A chacha20-poly1305@openssh.com record: encrypted length, encrypted packet (8-byte blocks), 16-byte tag."""
    padding = 8 - (5 + plain_length) % 8
    if padding < 4:
        padding += 8
    length = 1 + plain_length + padding
    return random.bytes(4 + length + 16)


def negotiated(client: str, server: str) -> str:
    """RFC 4253 section 7.1: the first algorithm on the client's list that the server also offers."""
    offered = server.split(",")
    return next(name for name in client.split(",") if name in offered)


def mpint(value: bytes) -> bytes:
    return ssh_string(b"\x00" + value if value[0] & 0x80 else value)


def host_key_blobs(algorithm: str, random: np.random.Generator) -> tuple[bytes, bytes]:
    """The server's host key and exchange-hash signature (RFC 8709, 5656, 8332) with random key material."""
    if algorithm == "ssh-ed25519":
        key = ssh_string(b"ssh-ed25519") + ssh_string(random.bytes(32))
        signature = ssh_string(b"ssh-ed25519") + ssh_string(random.bytes(64))
    elif algorithm.startswith("ecdsa-sha2-nistp256"):
        key = ssh_string(b"ecdsa-sha2-nistp256") + ssh_string(b"nistp256") + ssh_string(b"\x04" + random.bytes(64))
        signature = ssh_string(b"ecdsa-sha2-nistp256") + ssh_string(mpint(random.bytes(32)) + mpint(random.bytes(32)))
    else:
        key = ssh_string(b"ssh-rsa") + mpint(b"\x01\x00\x01") + mpint(b"\xc1" + random.bytes(383))
        signature = ssh_string(algorithm.encode()) + ssh_string(random.bytes(384))
    return ssh_string(key), ssh_string(signature)


def shift_activity(model: TerminalModel, epoch: float) -> float:
    """The share of cranes the shift at ``epoch`` works (gate traffic follows the same rhythm)."""
    moment = model.local_time(epoch).time()
    for shift in model.shifts:
        inside = (
            shift.start <= moment < shift.end if shift.start <= shift.end else not shift.end <= moment < shift.start
        )
        if inside:
            return shift.cranes_active
    return 1.0


class OcrEdi(Source):
    """OCR reads, TOS messages and EDIFACT exchange: the container data every terminal moves on purpose."""

    name = "ocr_edi"

    def __init__(self, context: SimulationContext) -> None:
        super().__init__(context)
        self.settings = settings()
        self.ports = context.ports(self.name)
        self.pending = PendingFrames()
        self.timezone = self.model.timezone
        vessel = self.settings["vessel"]
        self.vessel = edifact.Vessel(vessel["name"], vessel["call_sign"], vessel["voyage"], vessel["carrier"])
        self.tos = self.model.device("tos-app")
        self.ocr_server = self.model.device("ocr-server")
        self.cms = self.model.device("cms-server")
        self.gateway = self.model.device("edi-gateway")
        self.partner = self.model.device("edi-partner")
        self.interchange = int(self.random.integers(1000, 9000)) * 100
        schedule = self.settings["schedule"]
        self.ocr_delay = float(schedule["ocr_delay_seconds"])
        period = float(schedule["edi_period_seconds"])
        first = context.start + float(schedule["first_edi_seconds"])
        codeco_offset = float(schedule["codeco_offset_seconds"])
        # (time, kind, covered span start): the EDI uploads of the whole run, decided up front.
        self.uploads: list[tuple[float, str, float]] = [
            (context.start + float(schedule["baplie_seconds"]), "BAPLIE", 0.0)
        ]
        moment = first
        while moment < context.end:
            self.uploads += [(moment, "COARRI", moment - period), (moment + codeco_offset, "CODECO", moment - period)]
            moment += period
        self.uploads.sort()
        self.forward_delay = float(schedule["forward_delay_seconds"])
        # The vessel's stowage as planned before the run: what a crane stop later does cannot change the bay plan.
        self.stowage_plan = [move for crane in context.physics.moves for move in context.physics.moves[crane]]

    # -- window -----------------------------------------------------------------------------------------

    def window(self, start: float, end: float) -> list[FrameBlock]:
        for crane in range(1, self.model.cranes + 1):
            for move in self.context.physics.moves_between(crane, start - self.ocr_delay, end - self.ocr_delay):
                self._event(f"move/{move.crane}/{move.cycle}")
                self._move(move)
        for number, (moment, kind, since) in enumerate(self.uploads):
            if start <= moment < end:
                self._event(f"upload/{number}")
                self._upload(moment, kind, since)
        return self.pending.take(end)

    def _event(self, key: str) -> None:
        """Draw each event's values and client ports from its own generator.

        A scenario can take moves away (a PLC STOP stops its crane), so a
        generator shared across events would shift every later OCR read and
        upload; per-event generators keep the rest of the day identical.
        Client ports are Linux's ephemeral range, randomised per connection.
        """
        self.random = self.context.random(f"{self.name}/{key}")
        self.ports = Ports(first=32768, last=60999, offset=int(self.random.integers(0, 28232)))

    # -- per move ---------------------------------------------------------------------------------------

    def _crane_name(self, crane: int) -> str:
        return f"STS{crane:02d}"

    def _move(self, move: Move) -> None:
        ocr = self.model.device(f"sts{move.crane:02d}-ocr")
        read_at = move.locked_at + self.ocr_delay
        local = self.model.local_time(read_at)
        crane = self._crane_name(move.crane)
        read_id = f"{crane}-{local:%Y%m%d%H%M%S}-{move.cycle:05d}"
        stamp = f"{local:%Y%m%dT%H%M%S}"
        ocr_settings = self.settings["ocr"]
        read = {
            "readId": read_id,
            "crane": crane,
            "timestamp": local.isoformat(timespec="milliseconds"),
            "moveKind": "DSCH" if move.kind == "discharge" else "LOAD",
            "containerId": move.container,
            "isoSizeType": move.size_type,
            "confidence": round(float(self.random.uniform(0.93, 0.995)), 3),
            "doorDirection": "aft" if self.random.random() < 0.5 else "fore",
            "sealPresent": bool(self.random.random() < 0.8),
            "lane": int(self.random.integers(1, 7)),
            "images": [f"{crane}_{stamp}_{move.cycle:05d}_{side}.jpg" for side in ("left", "right", "top", "door")],
        }
        body = json.dumps(read, separators=(",", ":")).encode()
        request = http_request(
            "POST", f"{self.ocr_server.name}.{self.model.domain}:{ocr_settings['port']}", ocr_settings["path"],
            {"User-Agent": ocr_settings["user_agent"], "Content-Type": "application/json",
             "Accept": "application/json"}, body,
        )  # fmt: skip
        answer = json.dumps(
            {"readId": read_id, "status": "accepted", "containerId": move.container}, separators=(",", ":")
        ).encode()
        response = http_response(
            "200 OK", {"Server": ocr_settings["server"], "Content-Type": "application/json"}, answer, local
        )
        done = self._http(ocr, self.ocr_server, int(ocr_settings["port"]), read_at, request, response)
        done = self._confirm(move, read_id, done + 0.05)
        following = [later for later in self.context.physics.moves[move.crane] if later.cycle > move.cycle]
        if following:
            self._work_order(following[0], done + 0.08)

    def _confirm(self, move: Move, read_id: str, at: float) -> float:
        tos = self.settings["tos"]
        terminal = self.settings["terminal"]
        local = self.model.local_time(at)
        document = (
            f'<ocr-crane-move crane="{self._crane_name(move.crane)}" container="{move.container}" '
            f'iso-type="{move.size_type}" move-kind="{"DSCH" if move.kind == "discharge" else "LOAD"}" '
            f'vessel-position="{edifact.stowage(move.bay, move.row, move.tier)}" read-id="{read_id}" '
            f'status="COMPLETE" time="{local.isoformat(timespec="seconds")}"/>'
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:arg="http://www.navis.com/services/argoservice"><soapenv:Body><arg:genericInvoke>'
            f"<arg:scopeCoordinateIdsWsType><operatorId>{terminal['operator']}</operatorId>"
            f"<complexId>{terminal['complex']}</complexId><facilityId>{terminal['code']}</facilityId>"
            f"<yardId>{terminal['yard']}</yardId></arg:scopeCoordinateIdsWsType>"
            f"<arg:xmlDoc><![CDATA[{document}]]></arg:xmlDoc></arg:genericInvoke></soapenv:Body></soapenv:Envelope>"
        ).encode()
        request = http_request(
            "POST", f"{self.tos.name}.{self.model.domain}:{tos['port']}", tos["path"],
            {"User-Agent": tos["user_agent"], "Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}, body,
        )  # fmt: skip
        answer = (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><genericInvokeResponse>'
            f"<status>OK</status><container>{move.container}</container><job>DONE</job>"
            "</genericInvokeResponse></soapenv:Body></soapenv:Envelope>"
        ).encode()
        response = http_response(
            "200 OK", {"Server": tos["server"], "Content-Type": "text/xml;charset=UTF-8"}, answer, local
        )
        return self._http(self.ocr_server, self.tos, int(tos["port"]), at, request, response)

    def _work_order(self, move: Move, at: float) -> None:
        cms = self.settings["cms"]
        local = self.model.local_time(at)
        crane = self._crane_name(move.crane)
        if move.kind == "discharge":
            instruction = f"pick up from vessel bay {move.bay:02d} row {move.row:02d} tier {move.tier:02d}"
        else:
            instruction = f"load to vessel bay {move.bay:02d} row {move.row:02d} tier {move.tier:02d}"
        order = {
            "workOrder": f"WO-{crane}-{move.cycle:06d}",
            "crane": crane,
            "moveKind": "DSCH" if move.kind == "discharge" else "LOAD",
            "containerId": move.container,
            "isoSizeType": move.size_type,
            "weightKg": move.weight_kg,
            "vessel": self.vessel.name,
            "voyage": self.vessel.voyage,
            "vesselPosition": {"bay": move.bay, "row": move.row, "tier": move.tier},
            "instruction": instruction,
            "issued": local.isoformat(timespec="seconds"),
        }
        body = json.dumps(order, separators=(",", ":")).encode()
        request = http_request(
            "POST", f"{self.cms.name}.{self.model.domain}:{cms['port']}", cms["path"],
            {"User-Agent": cms["user_agent"], "Content-Type": "application/json"}, body,
        )  # fmt: skip
        answer = json.dumps({"workOrder": order["workOrder"], "status": "queued"}, separators=(",", ":")).encode()
        response = http_response(
            "202 Accepted", {"Server": cms["server"], "Content-Type": "application/json"}, answer, local
        )
        self._http(self.tos, self.cms, int(cms["port"]), at, request, response)

    def _isn(self) -> tuple[int, int]:
        return int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31))

    def _http(self, client: Device, server: Device, port: int, at: float, request: bytes, response: bytes) -> float:
        client_endpoint, server_endpoint = self.context.endpoints(client, server)
        blocks, done = tcp_session(
            client_endpoint, server_endpoint, self.ports.take(), port, at,
            [(TO_SERVER, request, 0.0002), (TO_CLIENT, response, float(self.random.uniform(0.004, 0.03)))],
            "http", initial_sequence=self._isn(),
        )  # fmt: skip
        self.pending.add(bucket(blocks, "http"))
        return done

    # -- EDI ----------------------------------------------------------------------------------------------

    def _upload(self, at: float, kind: str, since: float) -> None:
        self.interchange += 1
        control = str(self.interchange)
        prepared = self.model.local_time(at)
        terminal = self.settings["terminal"]
        partner = self.settings["partner"]
        messages: list[list[str]] = []
        physics = self.context.physics
        if kind == "BAPLIE":
            cells = list(self.stowage_plan)
            cells.sort(key=lambda move: (move.bay, move.row, move.tier))
            unique = {edifact.stowage(cell.bay, cell.row, cell.tier): cell for cell in cells}
            messages.append(edifact.baplie(f"{control}01", self.vessel, list(unique.values()), at, self.timezone))
        elif kind == "COARRI":
            moves = [move for crane in physics.moves for move in physics.moves_between(crane, since, at)]
            for number, report in enumerate(("discharge", "load"), start=1):
                batch = sorted((move for move in moves if move.kind == report), key=lambda move: move.locked_at)
                if batch:
                    messages.append(
                        edifact.coarri(f"{control}{number:02d}", report, self.vessel, batch, at, self.timezone)
                    )
        else:
            visits = self._gate_moves(since, at)
            for number, direction in enumerate(("gate_in", "gate_out"), start=1):
                gate = [visit for visit in visits if visit.direction == direction]
                if gate:
                    messages.append(
                        edifact.codeco(f"{control}{number:02d}", direction, terminal["code"], gate, at, self.timezone)
                    )
        if not messages:
            return
        text = edifact.interchange(terminal["edi_id"], partner["edi_id"], control, prepared, messages)
        file_name = f"{kind}_{terminal['code']}_{prepared:%Y%m%d_%H%M%S}_{control}.edi"
        done = self._ftp(at, kind, file_name, text.encode("ascii"))
        self._sftp(done + self.forward_delay, file_name, len(text))

    def _gate_moves(self, since: float, until: float) -> list[edifact.GateMove]:
        """Trucks through the gate in the batch's span: fewer at night, as the shifts' crane activity."""
        activity = shift_activity(self.model, until)
        count = int(self.random.poisson(6 * activity))
        visits = []
        for _ in range(count):
            owner = OWNER_CODES[int(self.random.integers(0, len(OWNER_CODES)))]
            visits.append(
                edifact.GateMove(
                    container=container_id(owner[:3] + "U", int(self.random.integers(0, 1_000_000))),
                    size_type=SIZE_TYPES[int(self.random.integers(0, len(SIZE_TYPES)))],
                    weight_kg=int(self.random.integers(3_800, 30_480)),
                    direction="gate_in" if self.random.random() < 0.5 else "gate_out",
                    at=float(self.random.uniform(since, until)),
                    booking=f"{self.vessel.carrier}{int(self.random.integers(10_000_000, 99_999_999))}",
                    truck=f"{chr(65 + int(self.random.integers(0, 26)))}{chr(65 + int(self.random.integers(0, 26)))}-"
                    f"{int(self.random.integers(100, 999))}-{chr(65 + int(self.random.integers(0, 26)))}",
                    full=bool(self.random.random() < 0.85),
                )
            )
        visits.sort(key=lambda visit: visit.at)
        return visits

    def _ftp(self, at: float, kind: str, file_name: str, data: bytes) -> float:
        """TOS -> EDI gateway: login, passive mode, STOR on a second connection, 226, QUIT."""
        ftp = self.settings["ftp"]
        client, server = self.context.endpoints(self.tos, self.gateway)
        low, high = ftp["passive_ports"]
        data_port = int(self.random.integers(low, high + 1))
        address = ",".join(self.gateway.ip.split("."))

        def line(text: str) -> bytes:
            return (text + "\r\n").encode()

        first = [
            (TO_CLIENT, line(ftp["banner"]), 0.002),
            (TO_SERVER, line(f"USER {ftp['user']}"), 0.01),
            (TO_CLIENT, line("331 Please specify the password."), 0.001),
            (TO_SERVER, line(f"PASS {ftp['password']}"), 0.01),
            (TO_CLIENT, line("230 Login successful."), 0.02),
            (TO_SERVER, line(f"CWD {ftp['directories'][kind]}"), 0.005),
            (TO_CLIENT, line("250 Directory successfully changed."), 0.001),
            (TO_SERVER, line("TYPE A"), 0.005),
            (TO_CLIENT, line("200 Switching to ASCII mode."), 0.001),
            (TO_SERVER, line("PASV"), 0.005),
            (TO_CLIENT, line(f"227 Entering Passive Mode ({address},{data_port >> 8},{data_port & 0xFF})."), 0.001),
            (TO_SERVER, line(f"STOR {file_name}"), 0.003),
            (TO_CLIENT, line("150 Ok to send data."), 0.002),
        ]
        control_isn = self._isn()
        control_port = self.ports.take()
        blocks, now = tcp_session(
            client, server, control_port, 21, at, first, "ftp", close=False, initial_sequence=control_isn
        )
        self.pending.add(bucket(blocks, "ftp"))
        transfer, now = tcp_session(
            client, server, self.ports.take(), data_port, now + 0.001, [(TO_SERVER, data, 0.0005)], "ftp-data",
            initial_sequence=self._isn(),
        )  # fmt: skip
        self.pending.add(bucket(transfer, "ftp-data", reassembled=False))
        sent = [sum(len(p) for d, p, _ in first if d == direction) for direction in (TO_SERVER, TO_CLIENT)]
        rest = [
            (TO_CLIENT, line("226 Transfer complete."), 0.003),
            (TO_SERVER, line("QUIT"), 0.01),
            (TO_CLIENT, line("221 Goodbye."), 0.001),
        ]
        blocks, now = tcp_session(
            client, server, control_port, 21, now, rest, "ftp", handshake=False,
            initial_sequence=(control_isn[0] + 1 + sent[0], control_isn[1] + 1 + sent[1]),
        )  # fmt: skip
        self.pending.add(bucket(blocks, "ftp"))
        return now

    def _sftp(self, at: float, file_name: str, size: int) -> None:
        """EDI gateway -> shipping line: SSH banners and key exchange in the clear, then the SFTP upload encrypted."""
        ssh = self.settings["ssh"]
        client, server = self.context.endpoints(self.gateway, self.partner)
        random = self.random
        host_key, signature = host_key_blobs(negotiated(ssh["client"]["host_key"], ssh["server"]["host_key"]), random)
        exchanges: list[tuple[int, bytes, float]] = [
            (TO_CLIENT, (ssh["server_banner"] + "\r\n").encode(), 0.08),
            (TO_SERVER, (ssh["client_banner"] + "\r\n").encode(), 0.002),
            (TO_SERVER, ssh_packet(kexinit(random.bytes(16), ssh["client"]), random.bytes(16)), 0.001),
            (TO_CLIENT, ssh_packet(kexinit(random.bytes(16), ssh["server"]), random.bytes(16)), 0.07),
            (TO_SERVER, ssh_packet(b"\x1e" + ssh_string(random.bytes(32)), random.bytes(16)), 0.002),
            (
                TO_CLIENT,
                ssh_packet(b"\x1f" + host_key + ssh_string(random.bytes(32)) + signature, random.bytes(16))
                + ssh_packet(b"\x15", random.bytes(16)),
                0.075,
            ),
            (TO_SERVER, ssh_packet(b"\x15", random.bytes(16)), 0.002),
        ]
        # Service request, public-key authentication, session channel, sftp subsystem, open, writes, close.
        plain = [(TO_SERVER, 28), (TO_CLIENT, 28), (TO_SERVER, 380), (TO_CLIENT, 60), (TO_SERVER, 96), (TO_CLIENT, 40),
                 (TO_SERVER, 52), (TO_CLIENT, 48), (TO_SERVER, 40 + len(file_name)), (TO_CLIENT, 28)]  # fmt: skip
        plain += [(TO_SERVER, min(SSH_CHUNK, size - offset) + 40) for offset in range(0, size, SSH_CHUNK)]
        plain += [(TO_CLIENT, 28), (TO_SERVER, 36), (TO_CLIENT, 28), (TO_SERVER, 32), (TO_CLIENT, 32)]
        for direction, length in plain:
            exchanges.append(
                (
                    direction,
                    encrypted_record(length, random),
                    float(random.uniform(0.001, 0.004)) + 0.07 * (direction == TO_CLIENT),
                )
            )
        blocks, _ = tcp_session(client, server, self.ports.take(), 22, at, exchanges, "ssh", round_trip=0.07,
                                initial_sequence=self._isn())  # fmt: skip
        self.pending.add(bucket(blocks, "ssh"))

    # -- policy -----------------------------------------------------------------------------------------

    def policy(self) -> dict[str, list[dict[str, Any]]]:
        ocr_port = int(self.settings["ocr"]["port"])
        crane_zones = [f"sts-crane-{crane:02d}" for crane in range(1, self.model.cranes + 1)]
        conduits: list[dict[str, Any]] = [
            {
                "name": f"{zone}-ocr-to-cms",
                "from": zone,
                "to": "cms-ocr",
                "protocol": "http",
                "ports": [ocr_port],
                "initiator": "from",
                "description": "the crane OCR controller posts each container read to the OCR server",
            }
            for zone in crane_zones
        ]
        conduits += [
            {
                "name": "ocr-to-tos",
                "from": "cms-ocr",
                "to": "tos-edi",
                "protocol": "http",
                "ports": [int(self.settings["tos"]["port"])],
                "initiator": "from",
                "description": "the OCR server confirms crane moves to the TOS",
            },
            {
                "name": "tos-to-cms-work-orders",
                "from": "tos-edi",
                "to": "cms-ocr",
                "protocol": "http",
                "ports": [int(self.settings["cms"]["port"])],
                "initiator": "from",
                "description": "the TOS dispatches each crane's next job to the CMS",
            },
            {
                "name": "edi-to-partners",
                "from": "tos-edi",
                "to": "external",
                "protocol": "ssh",
                "ports": [22],
                "initiator": "from",
                "description": "the EDI gateway sends BAPLIE, COARRI and CODECO to the shipping line over SFTP",
            },
        ]
        external = [
            {
                "name": "edi-partners",
                "reason": "EDIFACT to the shipping line over SFTP",
                "cidrs": [f"{self.partner.ip}/32"],
                "domains": [self.partner.domain],
                "zones": ["tos-edi"],
            }
        ]
        container_data = [
            {
                "name": "crane-ocr-reads",
                "kinds": ["container_ids"],
                "zones": [*crane_zones, "cms-ocr"],
                "conduits": [f"{zone}-ocr-to-cms" for zone in crane_zones],
                "reason": "crane OCR -> OCR server: container ids read at each lift",
            },
            {
                "name": "ocr-tos-cms",
                "kinds": ["container_ids"],
                "zones": ["cms-ocr", "tos-edi"],
                "conduits": ["ocr-to-tos", "tos-to-cms-work-orders"],
                "reason": "OCR server -> TOS confirmations; TOS -> CMS work orders",
            },
            {
                "name": "tos-edi-gateway",
                "kinds": ["container_ids", "edifact"],
                "zones": ["tos-edi"],
                "conduits": ["edi-to-partners"],
                "partners": ["edi-partners"],
                "reason": "TOS -> EDI gateway (FTP, intra-zone) -> the shipping line only",
            },
        ]
        return {"conduits": conduits, "external_destinations": external, "container_data": container_data}

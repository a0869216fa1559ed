"""CCTV: the NVR records every camera, and each crane's OCR controller pulls its OCR cameras.

Recording sessions run for days, so a capture starts mid-stream: RTP video,
RTCP reports and RTSP GET_PARAMETER keep-alives on control connections opened
long before. One camera (chosen from the seed) comes back from a reboot just
after the start, and its recorder runs a whole RTSP set-up (OPTIONS, DESCRIBE
with a Digest challenge and an SDP answer, SETUP, PLAY), so every capture shows
a session start. The NVR also re-reads each camera's ONVIF device information
now and then.

Video is RTP over UDP (RFC 3550, RFC 6184 single NAL unit packets of H.264,
dynamic payload type 96, 90 kHz timestamps, an IDR picture every GOP, marker
on the last packet of each picture), built vectorised per window. The rate is
deliberately modest (25 packets/s per camera, times --scale) so that CCTV does
not dwarf the OT traffic. Server headers and user agents are illustrative
(data/sim/services.yaml).

Accounting buckets follow what tshark shows with its default settings: "rtp"
for the video of the session whose SETUP is in the capture (tshark maps its
ports from the SETUP reply), "data" for the video of sessions set up before
the capture (tshark shows those as RTP with ``--enable-heuristic rtp_udp``),
"rtcp", "rtsp" and "http" for segments that complete a message, "tcp"
otherwise (streams.py).
"""

from __future__ import annotations

import email.utils
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from quaywatch.sim.engine import SimulationContext, Source
from quaywatch.sim.frames import Endpoint, FrameBlock, Template, u16, u32, udp_datagram
from quaywatch.sim.model import Device
from quaywatch.sim.normal.background import ntp_timestamp, services
from quaywatch.sim.normal.streams import TcpStream, merge, periodic
from quaywatch.sim.pending import PendingFrames

RTP_CLOCK = 90_000
PAYLOAD_TYPE = 96
RTSP_USER = "recorder"


@dataclass(slots=True)
class VideoSession:
    camera: Device
    client: Device
    camera_end: Endpoint
    client_end: Endpoint
    url: str
    control: TcpStream
    client_port: int
    camera_port: int
    ssrc: int
    client_ssrc: int
    sequence: int
    rtp_time: int
    origin: float  # time of video frame 0
    streaming_from: float  # first RTP packet (after PLAY for the session set up in the capture)
    keepalive: float
    keepalive_offset: float
    cseq: int
    session_id: str
    nonce: str
    templates: list[Template]
    lengths: list[int]
    setup_at: float | None = None


class CctvStreams(Source):
    """RTSP/RTP recording of every camera, RTCP reports, and ONVIF device-information reads."""

    name = "cctv"

    def __init__(self, context: SimulationContext) -> None:
        super().__init__(context)
        self.data = services()["cctv"]
        self.ports = context.ports(self.name)
        self.pending = PendingFrames()
        self.fps = float(self.data["frames_per_second"]) * context.scale
        self.tick = max(1, round(RTP_CLOCK / self.fps))  # RTP timestamp step per picture
        self.sessions: list[VideoSession] = []
        pairs: list[tuple[Device, Device]] = []
        for recorder in self.model.find(role="NVR"):
            pairs += [(camera, recorder) for camera in self.model.find(role="camera", zone=recorder.zone)]
        for controller in self.model.devices:
            if controller.role == "server" and controller.crane is not None and controller.name.endswith("-ocr"):
                pairs += [(camera, controller) for camera in self.model.find(role="camera", zone=controller.zone)]
        for number, (camera, client) in enumerate(pairs):
            self.sessions.append(self._session(number, camera, client))
        if self.sessions:
            chosen = self.sessions[int(self.random.integers(len(self.sessions)))]
            span = context.end - context.start
            chosen.setup_at = context.start + float(self.random.uniform(min(5.0, span / 4), min(25.0, span / 2)))
            chosen.streaming_from = chosen.setup_at + 0.05
            chosen.cseq = 1
        self.onvif = [
            (session, float(self.random.uniform(*self.data["onvif_seconds"])))
            for session in self.sessions
            if session.client.role == "NVR"
        ]
        self.onvif_offsets = [float(self.random.uniform(0, period)) for _, period in self.onvif]

    def _maker(self, camera: Device) -> dict[str, Any]:
        makers: dict[str, Any] = self.data["makers"]
        return makers.get(camera.maker, makers["Axis"])

    def _session(self, number: int, camera: Device, client: Device) -> VideoSession:
        camera_end, client_end = self.context.endpoints(camera, client)
        maker = self._maker(camera)
        camera_port = int(maker["server_port_base"]) + 2 * number
        client_port = 40000 + 2 * number if client.role == "NVR" else 50000 + 2 * number
        control = TcpStream(
            client_end, camera_end, self.ports.take(), 554,
            int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31)),
        )  # fmt: skip
        age = float(self.random.uniform(3600, 20 * 86400))
        origin = self.context.start - age
        keepalive = float(self.random.uniform(*self.data["keepalive_seconds"]))
        templates: list[Template] = []
        smallest, largest = (float(value) for value in self.data["slice_bytes"])
        lengths = [int(self.data["idr_bytes"]), *np.linspace(smallest, largest, 3).astype(int).tolist()]
        for index, length in enumerate(lengths):
            nal = 0x65 if index == 0 else 0x41  # IDR slice / non-IDR slice, nal_ref_idc 3 / 2
            body = bytes([nal, 0x88 if index == 0 else 0x9A]) + bytes(
                (i * 37 + 11) % 251 + 1 for i in range(length - 2)
            )
            header = struct.pack("!BBHII", 0x80, 0x80 | PAYLOAD_TYPE, 0, 0, 0)
            templates.append(Template(camera_end, client_end, 17, camera_port, client_port, header + body))
        return VideoSession(
            camera=camera,
            client=client,
            camera_end=camera_end,
            client_end=client_end,
            url=f"rtsp://{camera.ip}:554{maker['path']}",
            control=control,
            client_port=client_port,
            camera_port=camera_port,
            ssrc=int(self.random.integers(1, 2**32)),
            client_ssrc=int(self.random.integers(1, 2**32)),
            sequence=int(self.random.integers(0, 65536)),
            rtp_time=int(self.random.integers(0, 2**32)),
            origin=origin,
            streaming_from=origin,
            keepalive=keepalive,
            keepalive_offset=float(self.random.uniform(0, keepalive)),
            cseq=4 + int(age / keepalive),
            session_id=f"{int(self.random.integers(0, 2**48)):012X}",
            nonce=hashlib.md5(f"{camera.name}{self.context.seed}".encode()).hexdigest(),
            templates=templates,
            lengths=lengths,
        )

    # -- RTP and RTCP ---------------------------------------------------------------------------------------

    def _rtp(self, session: VideoSession, start: float, end: float) -> list[FrameBlock]:
        begin = max(start, session.streaming_from)
        if begin >= end:
            return []
        first = int(np.ceil((begin - session.origin) * self.fps))
        last = int(np.ceil((end - session.origin) * self.fps))
        if last <= first:
            return []
        index = np.arange(first, last, dtype=np.int64)
        times = session.origin + index / self.fps + self.random.uniform(0.0001, 0.0015, index.shape[0])
        gop = int(self.data["gop_frames"])
        kind = np.where(index % gop == 0, 0, 1 + (index * 7919) % (len(session.templates) - 1))
        bucket = "rtp" if session.setup_at is not None else "data"  # what tshark calls it (module docstring)
        blocks = []
        for number, template in enumerate(session.templates):
            mine = kind == number
            if not mine.any():
                continue
            chosen = index[mine]
            block = template.build(times[mine], bucket, chosen * 3 + number)
            template.set_payload(block, 2, u16(session.sequence + chosen))
            template.set_payload(block, 4, u32(session.rtp_time + chosen * self.tick))
            template.set_payload(block, 8, u32(np.full(chosen.shape[0], session.ssrc)))
            blocks.append(block)
        return blocks

    def _rtcp(self, session: VideoSession, start: float, end: float) -> list[FrameBlock]:
        period = float(self.data["rtcp_seconds"])
        blocks: list[FrameBlock] = []
        for moment in periodic(max(start, session.streaming_from + 0.5), end, session.origin, period, 0.3).tolist():
            frames = int((moment - session.origin) * self.fps)
            octets = frames * int(np.mean(session.lengths))
            cname = f"{session.camera.name}@{session.camera.ip}".encode()
            report = struct.pack("!BBHI", 0x80, 200, 6, session.ssrc) + ntp_timestamp(moment)
            report += struct.pack(
                "!III",
                (session.rtp_time + frames * self.tick) % (1 << 32),
                frames % (1 << 32),
                octets % (1 << 32),
            )
            report += sdes(session.ssrc, cname)
            blocks.append(
                udp_datagram(
                    moment,
                    session.camera_end,
                    session.client_end,
                    session.camera_port + 1,
                    session.client_port + 1,
                    report,
                    "rtcp",
                )
            )
            answered = moment + float(self.random.uniform(0.2, 1.5))
            highest = (session.sequence + frames) % (1 << 16) | (((session.sequence + frames) >> 16) << 16)
            middle = int.from_bytes(ntp_timestamp(moment)[2:6], "big")
            receiver = struct.pack("!BBHI", 0x81, 201, 7, session.client_ssrc)
            receiver += struct.pack(
                "!IIIII", session.ssrc, 0, highest % (1 << 32), int(self.random.integers(20, 400)), middle
            )
            receiver += struct.pack("!I", int((answered - moment) * 65536))
            receiver += sdes(session.client_ssrc, f"{session.client.name}@{session.client.ip}".encode())
            blocks.append(
                udp_datagram(
                    answered,
                    session.client_end,
                    session.camera_end,
                    session.client_port + 1,
                    session.camera_port + 1,
                    receiver,
                    "rtcp",
                )
            )
        return blocks

    # -- RTSP -----------------------------------------------------------------------------------------------

    def _request(self, session: VideoSession, method: str, uri: str, headers: list[str], auth: bool = True) -> bytes:
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {session.cseq}"]
        if auth:
            lines.append(self._authorization(session, method, uri))
        lines += headers
        client_agents = self.data["clients"]
        agent = client_agents["NVR"] if session.client.role == "NVR" else client_agents["server"]
        lines.append("User-Agent: " + agent.format(firmware=session.client.firmware))
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _authorization(self, session: VideoSession, method: str, uri: str) -> str:
        realm = self._realm(session.camera)
        secret = hashlib.md5(f"{RTSP_USER}:{realm}:{session.camera.serial}".encode()).hexdigest()
        operation = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
        response = hashlib.md5(f"{secret}:{session.nonce}:{operation}".encode()).hexdigest()
        return (
            f'Authorization: Digest username="{RTSP_USER}", realm="{realm}", nonce="{session.nonce}", '
            f'uri="{uri}", response="{response}"'
        )

    def _realm(self, camera: Device) -> str:
        return str(self._maker(camera)["realm"]).format(serial=camera.serial)

    def _response(
        self, session: VideoSession, moment: float, headers: list[str], body: bytes = b"", status: str = "200 OK"
    ) -> bytes:
        server = str(self._maker(session.camera)["rtsp_server"]).format(
            model=session.camera.model, firmware=session.camera.firmware
        )
        lines = [f"RTSP/1.0 {status}", f"CSeq: {session.cseq}", f"Server: {server}"]
        lines.append("Date: " + email.utils.formatdate(moment, usegmt=True))
        lines += headers
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _exchange(
        self, session: VideoSession, moment: float, request: bytes, response: bytes
    ) -> tuple[list[FrameBlock], float]:
        session.cseq += 1
        latency = float(self.random.uniform(0.002, 0.012))
        return session.control.exchange(moment, request, response, "rtsp", latency)

    def _setup(self, session: VideoSession, moment: float) -> list[FrameBlock]:
        """The whole RTSP set-up of a recording session, right after the camera came back."""
        stream = session.control
        blocks, now = stream.handshake(moment)
        url, track = session.url, session.url + "/trackID=1"
        steps: list[tuple[bytes, bytes]] = []
        public = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER"
        steps.append((self._request(session, "OPTIONS", url, [], auth=False), self._response(session, now, [public])))
        challenge = (
            f'WWW-Authenticate: Digest realm="{self._realm(session.camera)}", nonce="{session.nonce}", stale="FALSE"'
        )
        accept = ["Accept: application/sdp"]
        steps.append(
            (
                self._request(session, "DESCRIBE", url, accept, auth=False),
                self._response(session, now, [challenge], status="401 Unauthorized"),
            )
        )
        sdp = self._sdp(session)
        described = ["Content-Base: " + url + "/", "Content-Type: application/sdp"]
        steps.append((self._request(session, "DESCRIBE", url, accept), self._response(session, now, described, sdp)))
        transport = f"Transport: RTP/AVP;unicast;client_port={session.client_port}-{session.client_port + 1}"
        ports = f"server_port={session.camera_port}-{session.camera_port + 1}"
        answer = f'{transport};{ports};ssrc={session.ssrc:08X};mode="play"'
        steps.append(
            (
                self._request(session, "SETUP", track, [transport]),
                self._response(session, now, [answer, f"Session: {session.session_id};timeout=60"]),
            )
        )
        frame = int(np.ceil((session.streaming_from - session.origin) * self.fps))
        rtp_time = (session.rtp_time + frame * self.tick) % (1 << 32)
        info = f"RTP-Info: url={track};seq={(session.sequence + frame) % 65536};rtptime={rtp_time}"
        play = [f"Session: {session.session_id}", "Range: npt=0.000-"]
        steps.append(
            (
                self._request(session, "PLAY", url + "/", play),
                self._response(session, now, [f"Session: {session.session_id}", "Range: npt=now-", info]),
            )
        )
        for request, response in steps:
            exchanged, now = self._exchange(session, now + 0.001, request, response)
            blocks += exchanged
        session.streaming_from = now + 0.02
        return blocks

    def _sdp(self, session: VideoSession) -> bytes:
        camera = session.camera
        lines = [
            "v=0",
            f"o=- {session.ssrc} 1 IN IP4 {camera.ip}",
            f"s=Media Presentation {camera.model}",
            "c=IN IP4 0.0.0.0",
            "t=0 0",
            "a=control:*",
            "a=range:npt=now-",
            f"m=video 0 RTP/AVP {PAYLOAD_TYPE}",
            f"a=rtpmap:{PAYLOAD_TYPE} H264/{RTP_CLOCK}",
            f"a=fmtp:{PAYLOAD_TYPE} packetization-mode=0;profile-level-id=4d0029",
            "a=control:trackID=1",
            f"a=framerate:{self.fps:g}",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    def _keepalives(self, session: VideoSession, start: float, end: float) -> list[FrameBlock]:
        blocks: list[FrameBlock] = []
        after = session.setup_at + 1.0 if session.setup_at is not None else start
        for moment in periodic(
            max(start, after), end, session.origin, session.keepalive, session.keepalive_offset
        ).tolist():
            request = self._request(session, "GET_PARAMETER", session.url + "/", [f"Session: {session.session_id}"])
            response = self._response(session, moment, [f"Session: {session.session_id};timeout=60"])
            exchanged, _ = self._exchange(session, moment, request, response)
            blocks += exchanged
        return blocks

    # -- ONVIF ----------------------------------------------------------------------------------------------

    def _onvif(self, session: VideoSession, moment: float) -> list[FrameBlock]:
        camera, recorder = session.camera, session.client
        stream = TcpStream(
            session.client_end, session.camera_end, self.ports.take(), 80,
            int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31)),
        )  # fmt: skip
        envelope = (
            b'<?xml version="1.0" encoding="UTF-8"?>'
            b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">'
            b'<s:Body><GetDeviceInformation xmlns="http://www.onvif.org/ver10/device/wsdl"/></s:Body></s:Envelope>'
        )
        request = (
            "POST /onvif/device_service HTTP/1.1\r\n"
            f"Host: {camera.ip}\r\n"
            'Content-Type: application/soap+xml; charset=utf-8; action="http://www.onvif.org/ver10/device/wsdl/GetDeviceInformation"\r\n'
            f"User-Agent: {self.data['clients']['NVR'].format(firmware=recorder.firmware)}\r\n"
            f"Content-Length: {len(envelope)}\r\n\r\n"
        ).encode() + envelope
        manufacturer = "AXIS" if camera.maker == "Axis" else camera.maker.upper()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><SOAP-ENV:Body><tds:GetDeviceInformationResponse>'
            f"<tds:Manufacturer>{manufacturer}</tds:Manufacturer><tds:Model>{camera.model}</tds:Model>"
            f"<tds:FirmwareVersion>{camera.firmware}</tds:FirmwareVersion>"
            f"<tds:SerialNumber>{camera.serial}</tds:SerialNumber><tds:HardwareId>{camera.model}</tds:HardwareId>"
            "</tds:GetDeviceInformationResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"
        ).encode()
        response = (
            "HTTP/1.1 200 OK\r\n"
            f"Server: {self._maker(camera)['http_server']}\r\n"
            f"Date: {email.utils.formatdate(moment, usegmt=True)}\r\n"
            "Content-Type: application/soap+xml; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        blocks, now = stream.handshake(moment)
        exchanged, now = stream.exchange(
            now + 0.0005, request, response, "http", float(self.random.uniform(0.01, 0.05))
        )
        closed, _ = stream.close(now + 0.002)
        return blocks + exchanged + closed

    # -- the window -----------------------------------------------------------------------------------------

    def window(self, start: float, end: float) -> list[FrameBlock]:
        blocks: list[FrameBlock] = []
        control: list[FrameBlock] = []
        for session in self.sessions:
            if session.setup_at is not None and start <= session.setup_at < end:
                control += self._setup(session, session.setup_at)
            control += self._keepalives(session, start, end)
            blocks += self._rtp(session, start, end) + self._rtcp(session, start, end)
        for (session, period), offset in zip(self.onvif, self.onvif_offsets, strict=True):
            for moment in periodic(start, end, self.context.start, period, offset).tolist():
                control += self._onvif(session, moment)
        self.pending.add(control)
        return merge(blocks + self.pending.take(end))


def sdes(ssrc: int, cname: bytes) -> bytes:
    """An RTCP SDES packet with one CNAME item, padded to a 32-bit boundary (RFC 3550 6.5)."""
    chunk = struct.pack("!I", ssrc) + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += bytes(-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk

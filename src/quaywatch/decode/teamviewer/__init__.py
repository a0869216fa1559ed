"""TeamViewer, identified by content after nDPI's rule (protocols/teamviewer.c).

nDPI's markers: over TCP, payloads starting 0x17 0x24 (and later 0x11 0x30); over UDP, payloads longer than 13
bytes with byte 0 zero (a counter) and bytes 11-12 equal to 0x17 0x24. nDPI counts marked packets; a TCP
session here sees a byte stream, not packets, so it looks at the start of each direction's stream instead:
a TCP flow is TeamViewer when both directions start with a marker (0x17 0x24, or 0x11 0x30 for the answer).
That keeps one-byte-at-a-time feeding equivalent to whole segments. Datagrams are whole, so a UDP flow is
TeamViewer after four marked datagrams, as nDPI requires off its port. Port 5938 only orders the probes, as
for every decoder: nDPI's shortcut on that port and its address-range rule (TeamViewer GmbH networks) are not
used. One ``remote_access`` row per identified flow; the protocol is proprietary and encrypted, so nothing
else is decoded. This decoder is registered last: the two-byte marker is weak, every other decoder gets the
flow first.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode import remote_access
from quaywatch.decode.base import Decoder, Direction, Event, Session

PROTOCOL = "teamviewer"
PORT = 5938
DATAGRAMS = 4
STREAM_MARKERS = (b"\x17\x24", b"\x11\x30")
TABLES = {remote_access.TABLE: remote_access.SCHEMA}


def marked(payload: bytes, stream: bool) -> bool:
    if stream:
        return len(payload) >= 2 and payload[:2] == b"\x17\x24"
    return len(payload) > 13 and payload[0] == 0 and payload[11:13] == b"\x17\x24"


class TeamviewerSession(Session):
    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.starts = {Direction.TO_SERVER: b"", Direction.TO_CLIENT: b""}  # first two bytes of each stream
        self.datagrams = 0
        self.reported = False

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if self.reported:
            return []
        if self.stream:
            start = self.starts[direction]
            if len(start) < 2:
                self.starts[direction] = start + data[: 2 - len(start)]
            if not all(start in STREAM_MARKERS for start in self.starts.values()):
                return []
            evidence = "both TCP streams start with a TeamViewer marker (0x17 0x24 / 0x11 0x30, nDPI rule)"
        else:
            self.datagrams += marked(data, stream=False)
            if self.datagrams < DATAGRAMS:
                return []
            evidence = f"{DATAGRAMS} UDP datagrams marked 0x17 0x24 at bytes 11-12 (nDPI rule)"
        self.reported = True
        return [remote_access.remote_access("teamviewer", evidence, version="TeamViewer")]


class _Teamviewer(Decoder):
    name = PROTOCOL
    ports = frozenset({PORT})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES
    stream: ClassVar[bool] = True

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        return marked(payload, self.stream)

    def session(self) -> Session:
        return TeamviewerSession(self.stream)


class TeamviewerTcpDecoder(_Teamviewer):
    name = "teamviewer_tcp"
    transport = "tcp"


class TeamviewerUdpDecoder(_Teamviewer):
    name = "teamviewer_udp"
    transport = "udp"
    stream = False

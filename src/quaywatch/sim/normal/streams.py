"""Helpers shared by the background, CCTV and corporate sources: long-lived TCP streams and spill-over.

A conversation that starts near a window's end continues past it (a web page
still downloading), so sources keep the frames after the window in a
``PendingFrames`` buffer and hand them out with the next windows: no frame is
ever emitted before its window, and none is lost.

``TcpStream`` is one TCP connection whose sequence numbers persist across
messages and windows (an RTSP control connection open for days). Accounting
bucket rule: a segment in which at least one protocol data unit (an RTSP or
HTTP message, a TLS record) ends is counted under that application protocol,
as tshark shows it once reassembled; so is a segment in which a TLS record
begins (tshark's TLS dissector lists itself there too); a segment carrying
only the middle of a PDU, and every bare handshake, ACK or FIN, is "tcp".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quaywatch.sim.frames import MSS, Endpoint, FrameBlock, Template

SYN, ACK, PSH_ACK, FIN_ACK, SYN_ACK = 0x02, 0x10, 0x18, 0x11, 0x12


class TcpStream:
    """One TCP connection seen on the capture point, message by message."""

    def __init__(
        self,
        client: Endpoint,
        server: Endpoint,
        client_port: int,
        server_port: int,
        client_isn: int,
        server_isn: int,
        round_trip: float = 0.0006,
        label: int = 0,
    ) -> None:
        self.sides = (client, server)
        self.ports = ((client_port, server_port), (server_port, client_port))
        self.sequence = [client_isn, server_isn]
        self.ip_ids = [client_isn & 0xFFFF, server_isn & 0xFFFF]
        self.round_trip = round_trip
        self.label = label
        self.windows = (64240, 65160)

    def _frame(self, direction: int, at: float, flags: int, payload: bytes, protocol: str) -> FrameBlock:
        source, destination = self.sides[direction], self.sides[1 - direction]
        template = Template(source, destination, 6, *self.ports[direction], payload, flags, self.windows[direction])
        block = template.build(np.array([at]), protocol, np.array([self.ip_ids[direction]]), self.label)
        self.ip_ids[direction] = (self.ip_ids[direction] + 1) & 0xFFFF
        acknowledgement = self.sequence[1 - direction] if flags & ACK else 0
        template.set_sequence(block, np.array([self.sequence[direction]]), np.array([acknowledgement]))
        self.sequence[direction] += len(payload) + (1 if flags & (SYN | 0x01) else 0)
        return block

    def handshake(self, at: float) -> tuple[list[FrameBlock], float]:
        half = self.round_trip / 2
        blocks = [
            self._frame(0, at, SYN, b"", "tcp"),
            self._frame(1, at + half, SYN_ACK, b"", "tcp"),
            self._frame(0, at + 2 * half, ACK, b"", "tcp"),
        ]
        return blocks, at + 2 * half

    def send(
        self,
        direction: int,
        at: float,
        payload: bytes,
        protocol: str,
        ends: Sequence[int] | None = None,
        gap: float = 0.00004,
        ack_every: int = 0,
        starts: Sequence[int] = (),
    ) -> tuple[list[FrameBlock], float]:
        """``payload`` in MSS segments; ``ends`` are the offsets where PDUs end (default: the whole payload).

        ``starts``: offsets where PDUs begin that tshark lists already in their first segment (TLS records).
        With ``ack_every`` the receiver acknowledges every that many segments (delayed ACK: 2).
        """
        if not payload:
            return [], at
        boundaries = np.asarray(list(ends) if ends is not None else [len(payload)], np.int64)
        beginnings = np.asarray(list(starts), np.int64)
        count = (len(payload) + MSS - 1) // MSS
        offsets = np.arange(count, dtype=np.int64) * MSS
        stops = np.minimum(offsets + MSS, len(payload))
        times = at + np.arange(count) * gap
        completes = np.searchsorted(boundaries, stops, "right") > np.searchsorted(boundaries, offsets, "right")
        if beginnings.shape[0]:
            completes |= np.searchsorted(beginnings, stops, "left") > np.searchsorted(beginnings, offsets, "left")
        source, destination = self.sides[direction], self.sides[1 - direction]
        sequences = self.sequence[direction] + offsets
        acknowledgement = self.sequence[1 - direction]
        ids = self.ip_ids[direction] + np.arange(count, dtype=np.int64)
        blocks: list[FrameBlock] = []
        full = count - 1  # every segment but the last is a full MSS without PSH
        if full:
            body = np.frombuffer(payload[: full * MSS], np.uint8).reshape(full, MSS)
            template = Template(
                source, destination, 6, *self.ports[direction], bytes(MSS), ACK, self.windows[direction]
            )
            block = template.build(times[:full], "tcp", ids[:full], self.label)
            template.set_payload(block, 0, body)
            template.set_sequence(block, sequences[:full], np.full(full, acknowledgement))
            blocks += _split(block, completes[:full], protocol)
        last = payload[full * MSS :]
        template = Template(source, destination, 6, *self.ports[direction], last, PSH_ACK, self.windows[direction])
        block = template.build(times[full:], protocol if completes[-1] else "tcp", ids[full:], self.label)
        template.set_sequence(block, sequences[full:], np.array([acknowledgement]))
        blocks.append(block)
        self.ip_ids[direction] = int(ids[-1] + 1) & 0xFFFF
        self.sequence[direction] += len(payload)
        if ack_every and count > ack_every:
            acked = np.arange(ack_every - 1, count - 1, ack_every)
            receiver, sender = self.sides[1 - direction], self.sides[direction]
            template = Template(receiver, sender, 6, *self.ports[1 - direction], b"", ACK, self.windows[1 - direction])
            ack_ids = self.ip_ids[1 - direction] + np.arange(acked.shape[0], dtype=np.int64)
            block = template.build(times[acked] + gap / 2, "tcp", ack_ids, self.label)
            template.set_sequence(
                block, np.full(acked.shape[0], self.sequence[1 - direction]), stops[acked] + sequences[0] - offsets[0]
            )
            blocks.append(block)
            self.ip_ids[1 - direction] = int(ack_ids[-1] + 1) & 0xFFFF
        return blocks, float(times[-1])

    def ack(self, direction: int, at: float) -> FrameBlock:
        return self._frame(direction, at, ACK, b"", "tcp")

    def exchange(
        self,
        at: float,
        request: bytes,
        response: bytes,
        protocol: str,
        latency: float,
        request_ends: Sequence[int] | None = None,
        response_ends: Sequence[int] | None = None,
        response_protocol: str | None = None,
        gap: float = 0.00004,
        response_starts: Sequence[int] = (),
    ) -> tuple[list[FrameBlock], float]:
        """A request, the server's answer after ``latency``, and the client's ACK of it."""
        blocks, now = self.send(0, at, request, protocol, request_ends)
        answer, now = self.send(
            1, now + latency, response, response_protocol or protocol, response_ends, gap, 2, response_starts
        )
        blocks += answer
        now += self.round_trip / 2
        blocks.append(self.ack(0, now))
        return blocks, now

    def close(self, at: float, client_first: bool = True) -> tuple[list[FrameBlock], float]:
        first = 0 if client_first else 1
        half = self.round_trip / 2
        blocks = [self._frame(first, at, FIN_ACK, b"", "tcp"), self._frame(1 - first, at + half, FIN_ACK, b"", "tcp")]
        blocks.append(self._frame(first, at + 2 * half, ACK, b"", "tcp"))
        return blocks, at + 2 * half


def _split(block: FrameBlock, mask: np.ndarray, protocol: str) -> list[FrameBlock]:
    """The frames of ``block`` where ``mask`` holds, under ``protocol``; the others stay "tcp"."""
    if not mask.any():
        return [block]
    if mask.all():
        block.protocol = protocol
        return [block]
    return [
        FrameBlock(block.timestamps[mask], block.frames[mask], protocol, block.label),
        FrameBlock(block.timestamps[~mask], block.frames[~mask], "tcp", block.label),
    ]


def merge(blocks: Sequence[FrameBlock]) -> list[FrameBlock]:
    """Frames of equal length, bucket and label joined into one block each (fewer, larger blocks write faster)."""
    groups: dict[tuple[int, str, int], list[FrameBlock]] = {}
    for block in blocks:
        if block.frames.shape[0]:
            groups.setdefault((block.frames.shape[1], block.protocol, block.label), []).append(block)
    merged = []
    for (_, protocol, label), members in groups.items():
        if len(members) == 1:
            merged.append(members[0])
            continue
        timestamps = np.concatenate([member.timestamps for member in members])
        frames = np.concatenate([member.frames for member in members])
        merged.append(FrameBlock(timestamps, frames, protocol, label))
    return merged


def periodic(start: float, end: float, origin: float, period: float, offset: float) -> np.ndarray:
    """Times origin + offset + k * period that fall in [start, end)."""
    first = max(int(np.ceil((start - origin - offset) / period)), 0)
    last = int(np.ceil((end - origin - offset) / period))
    if last <= first:
        return np.empty(0, np.float64)
    return origin + offset + np.arange(first, last, dtype=np.float64) * period


def tile(frame: bytes, timestamps: np.ndarray, protocol: str) -> FrameBlock:
    """The same layer-2 frame at many times (LLDP, ARP)."""
    row = np.frombuffer(frame, np.uint8)
    return FrameBlock(np.asarray(timestamps, np.float64), np.tile(row, (timestamps.shape[0], 1)), protocol)

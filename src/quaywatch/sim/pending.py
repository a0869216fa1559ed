"""Frames built ahead of their window: whole sessions are built once, then handed out window by window.

A one-off conversation (an OCR post, an FTP upload, an engineering session) is
easiest to build whole with ``tcp_session``, but it may run past the window in
which it starts. Keeping the built frames here and releasing each window only
the frames that fall in it keeps every window's frames inside [start, end),
as the engine requires, without splitting the conversation's logic.
"""

from __future__ import annotations

import numpy as np

from quaywatch.sim.frames import FrameBlock


class PendingFrames:
    """A queue of built frame blocks, released by timestamp."""

    def __init__(self) -> None:
        self.blocks: list[FrameBlock] = []

    def add(self, blocks: list[FrameBlock]) -> None:
        self.blocks += blocks

    def take(self, end: float) -> list[FrameBlock]:
        """Every queued frame before ``end``, merged into one block per frame length and bucket; later frames wait."""
        ready: dict[tuple[int, str, int], list[FrameBlock]] = {}
        later: list[FrameBlock] = []
        for block in self.blocks:
            before = block.timestamps < end
            if not before.all():
                if before.any():
                    later.append(
                        FrameBlock(block.timestamps[~before], block.frames[~before], block.protocol, block.label)
                    )
                    block = FrameBlock(block.timestamps[before], block.frames[before], block.protocol, block.label)
                else:
                    later.append(block)
                    continue
            ready.setdefault((block.frames.shape[1], block.protocol, block.label), []).append(block)
        self.blocks = later
        return [
            group[0]
            if len(group) == 1
            else FrameBlock(
                np.concatenate([block.timestamps for block in group]),
                np.concatenate([block.frames for block in group]),
                protocol,
                label,
            )
            for (_, protocol, label), group in ready.items()
        ]


def tcp_payload_length(frame: np.ndarray) -> tuple[int, int] | None:
    """(TCP payload bytes, TCP flags) of one IPv4 Ethernet frame, VLAN-tagged or not; None if it is not TCP/IPv4."""
    offset = 12
    while (int(frame[offset]) << 8 | int(frame[offset + 1])) in (0x8100, 0x88A8):
        offset += 4
    if (int(frame[offset]) << 8 | int(frame[offset + 1])) != 0x0800:
        return None
    network = offset + 2
    if int(frame[network + 9]) != 6:
        return None
    total = int(frame[network + 2]) << 8 | int(frame[network + 3])
    header = (int(frame[network]) & 0x0F) * 4
    transport = network + header
    return total - header - (int(frame[transport + 12]) >> 4) * 4, int(frame[transport + 13])


def bucket(blocks: list[FrameBlock], protocol: str, reassembled: bool = True) -> list[FrameBlock]:
    """Accounting rule, as tshark's protocol hierarchy counts frames (each block: one frame of ``tcp_session``).

    A segment carrying payload counts as ``protocol``; a bare SYN, ACK or FIN
    counts as "tcp". With ``reassembled`` (HTTP, SSH: tshark joins a message
    split over segments and shows it on the last one), the segments before a
    message's last (those without PSH, as ``tcp_session`` sends them) count
    as "tcp" too; payloads tshark does not reassemble (FTP data, TPKT
    continuation, undissected data) count segment by segment. Frames that are
    not TCP count as ``protocol``.
    """
    for block in blocks:
        found = tcp_payload_length(block.frames[0])
        if found is None:
            block.protocol = protocol
            continue
        length, flags = found
        block.protocol = protocol if length > 0 and (flags & 0x08 or not reassembled) else "tcp"
    return blocks

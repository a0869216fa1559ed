"""A streaming pcapng writer: one Ethernet interface, microsecond timestamps, comments on labelled packets.

Scenario packets carry an ``opt_comment`` naming their label (``quaywatch-label:
<id> <scenario>``), so tshark's ``frame.comment`` shows ground truth packet by
packet and a test can check that the labels cover exactly the injected packets.
Records are assembled in numpy per block of equal-length frames and written
window by window, so memory stays bounded whatever the capture length.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

from quaywatch import __version__
from quaywatch.sim.frames import FrameBlock, gather

LINKTYPE_ETHERNET = 1
SNAP_LENGTH = 65535


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def header(description: str) -> bytes:
    """Section header (with the generator named) and one Ethernet interface description."""
    options = _option(4, f"quaywatch sim {__version__}".encode()) + _option(1, description.encode()) + bytes(4)
    section = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + options)
    interface_options = _option(2, b"span0") + _option(9, b"\x06") + bytes(4)  # if_name, if_tsresol = microseconds
    interface = _block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAP_LENGTH) + interface_options)
    return section + interface


def records(
    blocks: list[FrameBlock], comments: dict[int, bytes]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flatten blocks into enhanced packet blocks: (blob, offsets, lengths, timestamps, labels)."""
    pieces, offsets, lengths, stamps, labels = [], [], [], [], []
    position = 0
    for block in blocks:
        count, length = block.frames.shape
        if count == 0:
            continue
        micros = np.round(block.timestamps * 1e6).astype(np.int64)
        padding = -length % 4
        options = b""
        if block.label:
            options = _option(1, comments[block.label]) + bytes(4)
        record_length = 32 + length + padding + len(options)
        head = np.empty((count, 7), "<u4")
        head[:, 0] = 6
        head[:, 1] = record_length
        head[:, 2] = 0
        head[:, 3] = (micros >> 32).astype(np.uint32)
        head[:, 4] = (micros & 0xFFFFFFFF).astype(np.uint32)
        head[:, 5] = length
        head[:, 6] = length
        tail = np.frombuffer(bytes(padding) + options + struct.pack("<I", record_length), np.uint8)
        assembled = np.concatenate(
            [head.view(np.uint8).reshape(count, 28), block.frames, np.tile(tail, (count, 1))], axis=1
        )
        pieces.append(assembled.reshape(-1))
        offsets.append(position + np.arange(count, dtype=np.int64) * record_length)
        lengths.append(np.full(count, record_length, np.int64))
        stamps.append(block.timestamps)
        labels.append(np.full(count, block.label, np.int32))
        position += count * record_length
    if not pieces:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.uint8), empty, empty, np.zeros(0), np.zeros(0, np.int32)
    return (
        np.concatenate(pieces),
        np.concatenate(offsets),
        np.concatenate(lengths),
        np.concatenate(stamps),
        np.concatenate(labels),
    )


class PcapngWriter:
    """Writes windows of blocks in time order; returns each written packet's label for accounting."""

    def __init__(self, handle: BinaryIO, description: str) -> None:
        self.handle = handle
        self.handle.write(header(description))
        self.packets = 0
        self.bytes = 0

    def write(self, blocks: list[FrameBlock], comments: dict[int, bytes], limit: int | None = None) -> np.ndarray:
        blob, offsets, lengths, stamps, labels = records(blocks, comments)
        order = np.argsort(stamps, kind="stable")
        if limit is not None:
            order = order[:limit]
        out = np.empty(int(lengths[order].sum()), np.uint8)
        gather(blob, offsets, lengths, order, out)
        self.handle.write(out.data)
        self.packets += order.shape[0]
        self.bytes += out.shape[0]
        return labels[order]

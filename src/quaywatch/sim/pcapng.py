"""A streaming pcapng writer: one Ethernet interface, microsecond timestamps, comments on labelled packets.

Scenario packets carry an ``opt_comment`` naming their label (``quaywatch-label:
<id> <scenario>``), so tshark's ``frame.comment`` shows ground truth packet by
packet and a test can check that the labels cover exactly the injected packets.
Each window's records are written in time order by one compiled pass straight
from the sources' frame arrays, so memory stays bounded by one window whatever
the capture length.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np
from numba import njit

from quaywatch import __version__
from quaywatch.sim.frames import FrameBlock

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


def _comment_option(comment: bytes) -> bytes:
    """opt_comment then opt_endofopt, padded: the options of a labelled packet."""
    return _option(1, comment) + bytes(4)


@njit(cache=True)
def _assemble(
    blob: np.ndarray, frame_offsets: np.ndarray, frame_lengths: np.ndarray, micros: np.ndarray, labels: np.ndarray,
    option_blob: np.ndarray, option_offsets: np.ndarray, option_lengths: np.ndarray, order: np.ndarray,
    out: np.ndarray,
) -> int:  # fmt: skip
    """Write enhanced packet blocks in ``order`` straight into ``out``: one pass, one copy of each frame."""
    position = 0
    header = np.empty(7, np.uint32)
    trailer = np.empty(1, np.uint32)
    for index in order:
        length = frame_lengths[index]
        padding = (4 - length % 4) % 4
        label = labels[index]
        option_length = option_lengths[label] if label > 0 else 0
        total = 32 + length + padding + option_length
        header[0] = 6
        header[1] = total
        header[2] = 0
        header[3] = np.uint32(micros[index] >> 32)
        header[4] = np.uint32(micros[index] & 0xFFFFFFFF)
        header[5] = length
        header[6] = length
        out[position : position + 28] = header.view(np.uint8)
        position += 28
        start = frame_offsets[index]
        out[position : position + length] = blob[start : start + length]
        position += length
        for _ in range(padding):
            out[position] = 0
            position += 1
        if option_length:
            first = option_offsets[label]
            out[position : position + option_length] = option_blob[first : first + option_length]
            position += option_length
        trailer[0] = total
        out[position : position + 4] = trailer.view(np.uint8)
        position += 4
    return position


class PcapngWriter:
    """Writes windows of blocks in time order; returns each written packet's label for accounting."""

    def __init__(self, handle: BinaryIO, description: str) -> None:
        self.handle = handle
        self.handle.write(header(description))
        self.packets = 0
        self.bytes = 0

    def write(self, blocks: list[FrameBlock], comments: dict[int, bytes], limit: int | None = None) -> np.ndarray:
        """Write the blocks' frames in time order (stable for equal times); return each written packet's label."""
        blocks = [block for block in blocks if block.frames.shape[0]]
        if not blocks:
            return np.zeros(0, np.int32)
        counts = np.array([block.frames.shape[0] for block in blocks], np.int64)
        widths = np.array([block.frames.shape[1] for block in blocks], np.int64)
        blob = np.concatenate([block.frames.reshape(-1) for block in blocks])
        frame_lengths = np.repeat(widths, counts)
        frame_offsets = np.concatenate([[0], np.cumsum(frame_lengths)[:-1]]).astype(np.int64)
        stamps = np.concatenate([block.timestamps for block in blocks])
        labels = np.repeat(np.array([block.label for block in blocks], np.int64), counts)
        order = np.argsort(stamps, kind="stable")
        if limit is not None:
            order = order[:limit]
        top = int(labels.max())
        option_lengths = np.zeros(top + 1, np.int64)
        option_offsets = np.zeros(top + 1, np.int64)
        pieces = []
        cursor = 0
        for label in np.unique(labels[labels > 0]).tolist():
            option = _comment_option(comments[label])
            option_offsets[label], option_lengths[label] = cursor, len(option)
            pieces.append(option)
            cursor += len(option)
        option_blob = np.frombuffer(b"".join(pieces) or bytes(1), np.uint8)
        chosen = frame_lengths[order]
        size = int((32 + chosen + (-chosen % 4)).sum() + option_lengths[labels[order]].sum())
        out = np.empty(size, np.uint8)
        micros = np.round(stamps * 1e6).astype(np.int64)
        written = _assemble(
            blob, frame_offsets, frame_lengths, micros, labels, option_blob, option_offsets, option_lengths, order, out
        )
        self.handle.write(out[:written].data)
        self.packets += order.shape[0]
        self.bytes += written
        return labels[order].astype(np.int32)

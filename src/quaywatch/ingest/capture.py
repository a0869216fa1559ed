"""Stream packet records out of pcap, pcapng and gzip-compressed capture files.

The reader is the only place that touches capture files. It yields
:class:`RecordBatch` objects: one buffer of file bytes plus columns that locate
each packet inside it. Memory stays bounded by the buffer size whatever the
size of the capture.

When the file is damaged the reader stops at the first untrustworthy byte,
yields everything before it and records a :class:`Fault` naming the file and
the byte offset, so that the caller keeps what was valid and marks the capture
partial.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from quaywatch.ingest import records
from quaywatch.ingest.linktypes import SUPPORTED_LINK_TYPES, link_type_name
from quaywatch.threads import give_way

PCAP_MAGICS: dict[bytes, tuple[bool, bool]] = {
    # magic bytes as stored -> (big endian, nanosecond timestamps)
    b"\xd4\xc3\xb2\xa1": (False, False),
    b"\xa1\xb2\xc3\xd4": (True, False),
    b"\x4d\x3c\xb2\xa1": (False, True),
    b"\xa1\xb2\x3c\x4d": (True, True),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

DEFAULT_BUFFER_BYTES = 16 << 20
DEFAULT_BATCH_PACKETS = 1 << 18


class CaptureFormatError(Exception):
    """The file is not a capture we can read at all."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Fault:
    """Why reading stopped early; everything before ``offset`` was delivered."""

    path: Path
    offset: int
    reason: str
    #: A cut-off final record is what a killed capture process leaves; the
    #: rest of the file is intact, so it warrants a warning, not an error.
    truncated_tail: bool = False

    def __str__(self) -> str:
        return f"{self.path}: byte {self.offset}: {self.reason}"


@dataclass(slots=True)
class RecordBatch:
    """Packets located inside one buffer of capture bytes."""

    buffer: np.ndarray  # uint8, file bytes (decompressed)
    offsets: np.ndarray  # int64, start of each packet's data in ``buffer``
    captured_lengths: np.ndarray  # int32
    original_lengths: np.ndarray  # int32
    timestamps: np.ndarray  # int64 nanoseconds since the epoch
    link_types: np.ndarray  # int32
    first_packet_number: int  # 1-based number of the first packet, as in Wireshark
    file_offset: int  # offset of ``buffer[0]`` in the (decompressed) file

    @property
    def count(self) -> int:
        return int(self.offsets.shape[0])


def detect_format(head: bytes) -> str | None:
    """Name the container format from the first bytes, or None."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_MAGIC:
        return "pcapng"
    return None


class _GzipStream(io.RawIOBase):
    """Decompresses gzip members as bytes arrive.

    Unlike :class:`gzip.GzipFile`, a stream cut short still yields every byte
    decompressed before the cut, and the cut is reported afterwards, so a
    damaged ``.pcap.gz`` keeps its valid packets.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.inflater = zlib.decompressobj(wbits=47)
        self.output = bytearray()
        self.ended = False
        self.member_complete = False
        self.error: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while len(self.output) < len(target) and not self.ended:
            chunk = self.raw.read(1 << 20)
            if not chunk:
                self.ended = True
                if not self.member_complete:
                    self.output += self.inflater.flush()
                    self.error = "compressed stream ends before its end-of-stream marker"
                break
            data = chunk
            while data:
                try:
                    self.output += self.inflater.decompress(data)
                except zlib.error as error:
                    # Deliver what was decompressed before the damage (e.g. garbage after a
                    # complete member); the error is raised once that is consumed.
                    self.ended = True
                    self.error = str(error)
                    break
                if self.inflater.eof:
                    self.member_complete = True
                    data = self.inflater.unused_data
                    self.inflater = zlib.decompressobj(wbits=47)
                    if data:
                        self.member_complete = False
                else:
                    data = b""
        count = min(len(target), len(self.output))
        target[:count] = self.output[:count]
        del self.output[:count]
        if count == 0 and self.error:
            raise EOFError(self.error)
        return count


class _HashingFile(io.RawIOBase):
    """Hashes the raw file bytes as they are read, so the sha256 costs no second pass.

    With ``background`` the digest is updated on a thread of its own (hashlib releases the GIL for large
    buffers), so hashing overlaps the parsing on a second core. Bytes read into a caller's buffer stay in use
    until :meth:`settle`: the reader's window calls it before it overwrites them.
    """

    def __init__(self, raw: BinaryIO, digest: Any, background: bool = False) -> None:
        self.raw = raw
        self.digest = digest
        self.position = 0
        self.executor = (
            ThreadPoolExecutor(1, thread_name_prefix="quaywatch-sha256", initializer=give_way) if background else None
        )
        self.pending: Future[None] | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self._update(data)
        self.position += len(data)
        return data

    def readinto(self, target: Any) -> int:
        count = self.raw.readinto(target)  # type: ignore[attr-defined]
        if count:
            self._update(memoryview(target)[:count])
            self.position += count
        return int(count or 0)

    def _update(self, data: bytes | memoryview) -> None:
        if self.executor is None:
            self.digest.update(data)
        else:  # one worker runs the updates in submission order
            self.pending = self.executor.submit(self.digest.update, data)

    def settle(self) -> None:
        """Wait until every byte read so far is in the digest (the caller may then reuse its buffers)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def drain(self) -> None:
        """Hash whatever was not read, e.g. after a fault stopped the reader."""
        while self.read(8 << 20):
            pass
        self.settle()

    def close(self) -> None:
        self.settle()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.raw.close()
        super().close()


class _Window:
    """A reusable read buffer that slides along the file.

    Batches point into it, so a batch's bytes are valid only until the next
    batch is requested; consumers copy what they keep.
    """

    def __init__(
        self,
        stream: io.RawIOBase,
        size: int,
        initial: bytes,
        start_offset: int,
        settle: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        #: Called before bytes already read are overwritten (a background hash may still read them).
        self.settle = settle or (lambda: None)
        self.storage = bytearray(size)
        self.view = memoryview(self.storage)
        self.array = np.frombuffer(self.storage, np.uint8)
        self.storage[: len(initial)] = initial
        self.filled = len(initial)
        self.file_offset = start_offset  # file offset of storage[0]
        self.at_end = False
        self.error: str | None = None

    def grow(self) -> None:
        """Double the buffer when one record does not fit (small buffers in tests, huge blocks)."""
        self.settle()
        storage = bytearray(len(self.storage) * 2)
        storage[: self.filled] = self.view[: self.filled]
        self.view.release()
        self.storage = storage
        self.view = memoryview(storage)
        self.array = np.frombuffer(storage, np.uint8)

    def slide(self, consumed: int) -> None:
        """Drop ``consumed`` bytes from the front and fill the rest from the stream."""
        remaining = self.filled - consumed
        self.settle()
        if consumed:
            self.storage[:remaining] = self.view[consumed : self.filled]
            self.file_offset += consumed
        self.filled = remaining
        while self.filled < len(self.storage) and not self.at_end:
            try:
                count = self.stream.readinto(self.view[self.filled :])
            except (OSError, EOFError, zlib.error) as error:
                self.error = f"compressed stream is damaged: {error}"
                self.at_end = True
                break
            if not count:
                self.at_end = True
                break
            self.filled += count


class CaptureReader:
    """Iterate over :class:`RecordBatch` objects of one capture file."""

    def __init__(
        self,
        path: Path,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        batch_packets: int = DEFAULT_BATCH_PACKETS,
        background_hash: bool = False,
    ) -> None:
        self.path = path
        #: Hash the file on a second thread (see _HashingFile), for runs that have a second core.
        self.background_hash = background_hash
        self.buffer_bytes = buffer_bytes
        self.batch_packets = batch_packets
        self.fault: Fault | None = None
        self.format: str = ""
        self.compressed = False
        self.bytes_read = 0
        self.packets = 0
        self._digest = hashlib.sha256()
        self._raw: _HashingFile | None = None

    @property
    def file_position(self) -> int:
        """Bytes of the file as stored read so far (compressed bytes for gzip): drives progress bars."""
        return self._raw.position if self._raw is not None else 0

    @property
    def sha256(self) -> str:
        """Digest of the whole file as stored; complete once ``batches`` is exhausted."""
        if self._raw is not None:
            self._raw.settle()
        return self._digest.hexdigest()

    # -- public -----------------------------------------------------------------

    def batches(self) -> Generator[RecordBatch, None, None]:
        """Yield batches until the end of the file or the first fault."""
        raw = self._raw = _HashingFile(self.path.open("rb"), self._digest, self.background_hash)
        self.compressed = raw.raw.peek(2)[:2] == GZIP_MAGIC  # type: ignore[attr-defined]
        stream: io.RawIOBase = _GzipStream(raw) if self.compressed else raw  # type: ignore[arg-type]
        try:
            try:
                head = stream.read(4)
            except (OSError, EOFError, zlib.error) as error:
                raise CaptureFormatError(self.path, 0, f"cannot decompress: {error}") from error
            if not head:
                raise CaptureFormatError(self.path, 0, "empty file")
            kind = detect_format(head)
            if kind == "pcap":
                self.format = "pcap"
                yield from self._pcap(stream, head)
            elif kind == "pcapng":
                self.format = "pcapng"
                yield from self._pcapng(stream, head)
            else:
                raise CaptureFormatError(self.path, 0, f"not a pcap or pcapng capture (first bytes {head.hex()})")
        finally:
            raw.drain()
            stream.close()
            raw.close()

    # -- reading helpers ----------------------------------------------------------

    def _window_bytes(self) -> int:
        """The read buffer: ``buffer_bytes``, or the file's size when that is smaller.

        Zeroing a 16 MiB buffer costs more than reading a small capture whole (about 10 ms: a quarter of the time of
        a rotated one-minute capture or a fuzz example). A gzip file's data is larger than the file, and the window
        grows for a record that does not fit, so the bound only saves work.
        """
        if self.compressed:
            return self.buffer_bytes
        try:
            size = self.path.stat().st_size
        except OSError:
            return self.buffer_bytes
        return min(self.buffer_bytes, max(1 << 16, size + 4096))

    def _settle(self) -> Callable[[], None] | None:
        """What the window calls before reusing its bytes: only uncompressed reads hash the window in place."""
        return self._raw.settle if self._raw is not None and not self.compressed else None

    def _set_fault(self, offset: int, reason: str, truncated_tail: bool = False) -> None:
        if self.fault is None:
            self.fault = Fault(self.path, offset, reason, truncated_tail)

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        size = self.batch_packets
        return (
            np.empty(size, np.int64),
            np.empty(size, np.int32),
            np.empty(size, np.int32),
            np.empty(size, np.int64),
            np.empty(size, np.int32),
        )

    # -- pcap ---------------------------------------------------------------------

    def _pcap(self, stream: io.RawIOBase, head: bytes) -> Iterator[RecordBatch]:
        big_endian, nanoseconds = PCAP_MAGICS[head[:4]]
        header = head + stream.read(20)
        if len(header) < 24:
            raise CaptureFormatError(self.path, len(header), "pcap file header is cut short")
        order = ">" if big_endian else "<"
        _major, _minor, _zone, _sigfigs, snap_length, link_field = struct.unpack(order + "HHiIII", header[4:])
        link_type = link_field & 0x0FFFFFFF
        if link_type not in SUPPORTED_LINK_TYPES:
            raise CaptureFormatError(self.path, 20, f"unsupported link type {link_type} ({link_type_name(link_type)})")
        window = _Window(stream, self._window_bytes(), b"", 24, self._settle())
        window.slide(0)
        while True:
            buffer = window.array
            base = window.file_offset
            position = 0
            end = window.filled
            while True:
                offsets, captured, original, stamps, links = self._columns()
                status, position, count = records.walk_pcap(
                    buffer, position, end, big_endian, nanoseconds, snap_length,
                    offsets, captured, original, stamps, 0,
                )  # fmt: skip
                if count:
                    links[:count] = link_type
                    self.bytes_read = base + position
                    yield self._batch(buffer, offsets, captured, original, stamps, links, count, base)
                if status == records.FULL:
                    continue
                if status == records.CORRUPT_LENGTH:
                    self._set_fault(base + position, self._pcap_corruption(buffer, position, big_endian))
                    return
                break
            self.bytes_read = base + position
            if window.at_end:
                if window.error:
                    self._set_fault(base + position, f"{window.error} (offset in the decompressed data)")
                elif position < end:
                    carry = bytes(buffer[position:end])
                    self._set_fault(base + position, self._truncation(carry, 16, 8, big_endian), True)
                return
            if position == 0 and window.filled == len(window.storage):
                window.grow()
            window.slide(position)

    def _pcap_corruption(self, buffer: np.ndarray, position: int, big_endian: bool) -> str:
        order = ">" if big_endian else "<"
        _s, fraction, captured, _o = struct.unpack(order + "IIII", bytes(buffer[position : position + 16]))
        return f"corrupt pcap record header (captured length {captured}, sub-second field {fraction})"

    def _truncation(self, carry: bytes, header_size: int, length_at: int, big_endian: bool) -> str:
        if len(carry) < header_size:
            return f"last record is cut short: {len(carry)} bytes of a {header_size}-byte record header"
        order = ">" if big_endian else "<"
        (length,) = struct.unpack(order + "I", carry[length_at : length_at + 4])
        wanted = length + header_size if header_size == 16 else length
        return f"last record is cut short: {len(carry)} of {wanted} bytes present"

    # -- pcapng -------------------------------------------------------------------

    def _pcapng(self, stream: io.RawIOBase, head: bytes) -> Iterator[RecordBatch]:
        link_types = np.zeros(256, np.int32)
        units = np.ones(256, np.int64)
        time_offsets = np.zeros(256, np.int64)
        interface_count = 0
        big_endian = False
        window = _Window(stream, self._window_bytes(), head, 0, self._settle())
        window.slide(0)
        while True:
            buffer = window.array
            base = window.file_offset
            position = 0
            end = window.filled
            while True:
                offsets, captured, original, stamps, links = self._columns()
                status, position, count = records.walk_pcapng(
                    buffer, position, end, big_endian, interface_count, link_types, units, time_offsets,
                    offsets, captured, original, stamps, links, 0,
                )  # fmt: skip
                if count:
                    self.bytes_read = base + position
                    yield self._batch(buffer, offsets, captured, original, stamps, links, count, base)
                if status == records.FULL:
                    continue
                if status == records.NEEDS_PYTHON:
                    block = self._python_block(buffer, position, end, big_endian)
                    if block is None:
                        break  # block continues in the next window
                    if isinstance(block, str):
                        self._set_fault(base + position, block)
                        return
                    kind, length, value = block
                    if kind == "section":
                        big_endian = bool(value)
                        interface_count = 0
                    else:
                        if interface_count >= 256:
                            self._set_fault(base + position, "more than 256 interfaces in one section")
                            return
                        assert isinstance(value, tuple)
                        link_type, unit, offset = (int(v) for v in value)
                        if link_type not in SUPPORTED_LINK_TYPES:
                            self._set_fault(
                                base + position,
                                f"interface {interface_count} has unsupported link type {link_type} "
                                f"({link_type_name(link_type)})",
                            )
                            return
                        link_types[interface_count] = link_type
                        units[interface_count] = unit
                        time_offsets[interface_count] = offset
                        interface_count += 1
                    position += length
                    continue
                if status == records.CORRUPT_LENGTH:
                    self._set_fault(base + position, "corrupt pcapng block length")
                    return
                if status == records.BAD_INTERFACE:
                    self._set_fault(base + position, "packet block names an interface that was never described")
                    return
                break
            self.bytes_read = base + position
            if window.at_end:
                if window.error:
                    self._set_fault(base + position, f"{window.error} (offset in the decompressed data)")
                elif position < end:
                    self._set_fault(
                        base + position,
                        f"last block is cut short: {end - position} bytes remain of a block that needs more",
                        True,
                    )
                return
            if position == 0 and window.filled == len(window.storage):
                window.grow()
            window.slide(position)

    def _python_block(
        self, buffer: np.ndarray, position: int, end: int, big_endian: bool
    ) -> tuple[str, int, object] | str | None:
        """Read a section header or interface description block; None if incomplete."""
        if position + 12 > end:
            return None
        raw = bytes(buffer[position : min(end, position + 12)])
        block_type = struct.unpack("<I", raw[:4])[0]
        if block_type == 0x0A0D0D0A:
            magic = raw[8:12]
            if magic == b"\x4d\x3c\x2b\x1a":
                big_endian = False
            elif magic == b"\x1a\x2b\x3c\x4d":
                big_endian = True
            else:
                return f"pcapng section header has a bad byte-order magic {magic.hex()}"
        order = ">" if big_endian else "<"
        (length,) = struct.unpack(order + "I", raw[4:8])
        if length < 12 or length % 4 or length > 1 << 24:
            return f"corrupt pcapng block length {length}"
        if position + length > end:
            return None
        block = bytes(buffer[position : position + length])
        if struct.unpack(order + "I", block[-4:])[0] != length:
            return "pcapng block length fields disagree"
        if block_type == 0x0A0D0D0A:
            return "section", length, big_endian
        if length < 20:
            return "corrupt interface description block"
        link_type, _reserved, _snap = struct.unpack(order + "HHI", block[8:16])
        unit, offset = _interface_options(block[16:-4], order)
        return "interface", length, (link_type, unit, offset)

    def _batch(
        self,
        buffer: np.ndarray,
        offsets: np.ndarray,
        captured: np.ndarray,
        original: np.ndarray,
        stamps: np.ndarray,
        links: np.ndarray,
        count: int,
        base: int,
    ) -> RecordBatch:
        batch = RecordBatch(
            buffer=buffer,
            offsets=offsets[:count],
            captured_lengths=captured[:count],
            original_lengths=original[:count],
            timestamps=stamps[:count],
            link_types=links[:count],
            first_packet_number=self.packets + 1,
            file_offset=base,
        )
        self.packets += count
        return batch


def _interface_options(options: bytes, order: str) -> tuple[int, int]:
    """Timestamp resolution (units per second) and offset (seconds) of an interface."""
    unit = 1_000_000
    offset = 0
    position = 0
    while position + 4 <= len(options):
        code, length = struct.unpack(order + "HH", options[position : position + 4])
        value = options[position + 4 : position + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            resolution = value[0]
            exponent = resolution & 0x7F
            unit = 2**exponent if resolution & 0x80 else 10**exponent
            if unit == 0 or unit > 10**18:
                unit = 1_000_000
        elif code == 14 and length == 8:  # if_tsoffset
            offset = struct.unpack(order + "q", value)[0]
        position += 4 + length + ((4 - length % 4) % 4)
    return unit, offset

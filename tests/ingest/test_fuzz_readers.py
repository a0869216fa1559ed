"""Property-based fuzzing of the capture readers, the compiled header walker and the whole analysis.

``make test`` runs QUAYWATCH_FUZZ_EXAMPLES=150 examples per property (the default); ``make fuzz``
raises it. numba compiles without bounds checks, so an out-of-bounds read in a kernel reads
neighbouring memory silently: the fuzz tests run once more in a subprocess with NUMBA_BOUNDSCHECK=1
(and a separate numba cache), where such a read raises IndexError.

Inputs that once broke something or sit on an edge are kept in ``corpus/`` (each under 4 KiB) and
replayed by ``test_regression_corpus``. The seeds built here are regenerated with
``python -m tests.ingest.test_fuzz_readers``; add a crashing input found by the fuzzer as a raw file
next to them (any name ending in .pcap, .pcapng or .gz).
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.ingest import layers
from quaywatch.ingest.linktypes import SUPPORTED_LINK_TYPES
from quaywatch.store.database import Store
from tests.ingest.test_bad_input import (
    Record,
    block,
    enip_plus_modbus,
    interface_block,
    packet_block,
    pcap_bytes,
    pcap_records,
    pcapng_blocks,
)

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
CORPUS = Path(__file__).with_name("corpus")
CORPUS_SUFFIXES = (".pcap", ".pcapng", ".gz")
BOUNDS_CHECKED = os.environ.get("NUMBA_BOUNDSCHECK") == "1"
LINK_TYPES = [*sorted(SUPPORTED_LINK_TYPES), 147, 999]  # and two the walker must refuse per packet


# -- invariants of one analysis ----------------------------------------------------------------------


def decompressed(data: bytes) -> bytes:
    """What a tolerant gzip reader can get out of ``data`` (members in a row, a cut last member)."""
    if data[:2] != b"\x1f\x8b":
        return data
    out, rest = b"", data
    while rest:
        inflater = zlib.decompressobj(wbits=47)
        try:
            out += inflater.decompress(rest) + inflater.flush()
        except zlib.error:
            break
        if not inflater.eof:
            break
        rest = inflater.unused_data
    return out


def check(analyzer: Analyzer, path: Path, data: bytes) -> None:
    """Analyse ``data``: no exception, a finished captures row, and counts the file can hold."""
    path.write_bytes(data)
    result = analyzer.analyze(path, force=True)
    assert result.status in ("complete", "partial")
    content = decompressed(data)
    # Every packet needs a 16-byte record header after the 24-byte file header (pcap), or at least a
    # 16-byte simple packet block after a section header block of 28 bytes or more (pcapng).
    assert result.packets <= max(0, len(content) - 24) // 16
    assert 0 <= result.malformed_packets <= result.packets
    if result.status == "complete":
        assert result.fault is None
    else:
        assert result.fault and str(path) in result.fault
        assert result.fault_offset is not None and 0 <= result.fault_offset <= max(len(content), len(data))
    store = analyzer.store
    store.flush()
    status, packets, flows = store.connection.execute(
        "SELECT status, packets, flows FROM captures WHERE capture_id = ?", [result.capture_id]
    ).fetchone()
    assert (status, packets, flows) == (result.status, result.packets, result.flows)
    (count, in_flows) = store.connection.execute(
        "SELECT count(*), coalesce(sum(packets_to_server + packets_to_client), 0) FROM flows WHERE capture_id = ?",
        [result.capture_id],
    ).fetchone()
    assert count == result.flows and in_flows <= result.packets


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def analyzer(workdir: Path) -> Analyzer:
    store = Store(Path(":memory:"))  # the store's logic, at half the cost of a database file
    yield Analyzer(store)  # every decoder: mutated Modbus and ENIP payloads reach them
    store.close()


@pytest.fixture(scope="module")
def seeds(modbus_pcap: Path, enip_pcapng: Path) -> dict[str, bytes]:
    modbus = modbus_pcap.read_bytes()
    enip = enip_pcapng.read_bytes()
    return {
        "modbus.pcap": modbus,
        "enip.pcapng": enip,
        "enip-modbus.pcapng": enip_plus_modbus(enip, pcap_records(modbus)[:40]),
        "modbus.pcap.gz": gzip.compress(modbus[:3000]),
    }


# -- readers on random and mutated files -------------------------------------------------------------

PCAP_HEADERS = st.builds(
    lambda magic, order, snap, link: struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snap, link),
    st.sampled_from([0xA1B2C3D4, 0xA1B23C4D]),
    st.sampled_from(["<", ">"]),
    st.sampled_from([0, 64, 65535, 262144, 0xFFFFFFFF]),
    st.sampled_from(sorted(SUPPORTED_LINK_TYPES)),
)


@st.composite
def pcap_records_strategy(draw: st.DrawFn) -> bytes:
    """Record headers that are plausible often enough to reach the packets, with random frames."""
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        frame = draw(st.binary(max_size=120))
        captured = draw(st.sampled_from([len(frame), len(frame), 0, len(frame) + 1, 0xFFFF, 0xFFFFFFFF]))
        original = draw(st.sampled_from([len(frame), 0, len(frame) + 100, 0xFFFFFFFF]))
        fraction = draw(st.sampled_from([0, 999_999, 1_000_000, 999_999_999, 0xFFFFFFFF]))
        out += struct.pack("<IIII", draw(st.integers(0, 0xFFFFFFFF)), fraction, captured, original) + frame
    return out + draw(st.binary(max_size=64))


@FUZZ
@given(header=PCAP_HEADERS, body=st.one_of(st.binary(max_size=2048), pcap_records_strategy()))
def test_random_records_after_a_pcap_header(analyzer: Analyzer, workdir: Path, header: bytes, body: bytes) -> None:
    check(analyzer, workdir / "random.pcap", header + body)


@st.composite
def pcapng_blocks_strategy(draw: st.DrawFn) -> bytes:
    """Blocks with plausible and implausible types, lengths and interface numbers."""
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from([1, 2, 3, 5, 6, 6, 6, 0x0A0D0D0A, 0xBAD, 0x80000001]))
        if kind == 1:
            link = draw(st.sampled_from([*sorted(SUPPORTED_LINK_TYPES), 147, 999]))
            options = draw(
                st.sampled_from([b"", b"\x09\x00\x01\x00\x06\x00\x00\x00", b"\x09\x00\x01\x00\x8a\x00\x00\x00"])
            )
            body = struct.pack("<HHI", link, 0, 0) + options
        elif kind == 6:
            frame = draw(st.binary(max_size=120))
            captured = draw(st.sampled_from([len(frame), len(frame) + 4, 0xFFFFFFFF]))
            body = struct.pack("<IIIII", draw(st.integers(0, 3)), 0, 0, captured, len(frame)) + frame
        elif kind == 0x0A0D0D0A:
            body = draw(st.sampled_from([b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d", b"\x00\x00\x00\x00"])) + bytes(12)
        else:
            body = draw(st.binary(max_size=64))
        data = bytearray(block(kind, body))
        if draw(st.integers(0, 5)) == 0:
            struct.pack_into("<I", data, draw(st.sampled_from([4, len(data) - 4])), draw(st.integers(0, 1 << 25)))
        out += bytes(data)
    return out + draw(st.binary(max_size=32))


@FUZZ
@given(body=st.one_of(st.binary(max_size=2048), pcapng_blocks_strategy()))
def test_random_blocks_after_a_pcapng_header(analyzer: Analyzer, workdir: Path, enip_pcapng: Path, body: bytes) -> None:
    head = enip_pcapng.read_bytes()[:48]  # the real section header and interface description blocks
    check(analyzer, workdir / "random.pcapng", head + body)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 8))):
        if not data:
            break
        operation = draw(st.sampled_from(["flip", "byte", "word", "insert", "delete", "duplicate"]))
        at = draw(st.integers(0, len(data) - 1))
        if operation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "byte":
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif operation == "word":
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 16, 28, 32]))
            data[at : at + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            length = draw(st.integers(1, 256))
            data[at:at] = data[draw(st.integers(0, len(data) - 1)) :][:length]
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut])


@FUZZ
@given(data=st.data())
def test_mutated_real_captures(analyzer: Analyzer, workdir: Path, seeds: dict[str, bytes], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(seeds)))
    check(analyzer, workdir / name, data.draw(mutated(seeds[name])))


# -- cutting a valid capture anywhere keeps exactly the complete records ------------------------------


@FUZZ
@given(data=st.data())
def test_a_cut_capture_keeps_exactly_its_complete_records(
    analyzer: Analyzer, workdir: Path, seeds: dict[str, bytes], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(["modbus.pcap", "enip-modbus.pcapng"]))
    whole = seeds[name]
    cut = data.draw(st.integers(0, len(whole)))
    path = workdir / f"cut-{name}"
    path.write_bytes(whole[:cut])
    result = analyzer.analyze(path, force=True)
    if name.endswith(".pcap"):
        boundaries = [24] + [record.end for record in pcap_records(whole)]
        packets = sum(1 for end in boundaries[1:] if end <= cut)
    else:
        blocks = pcapng_blocks(whole)
        boundaries = [offset + length for offset, _, length in blocks]
        packets = sum(1 for offset, kind, length in blocks if kind == 6 and offset + length <= cut)
    if cut < 4:
        assert (result.status, result.packets, result.fault_offset) == ("partial", 0, 0)
        assert ("empty file" if cut == 0 else "not a pcap or pcapng capture") in (result.fault or "")
    elif cut < boundaries[0] and name.endswith(".pcap"):
        assert (result.status, result.packets, result.fault_offset) == ("partial", 0, cut)
        assert "pcap file header is cut short" in (result.fault or "")
    elif cut in boundaries:
        assert (result.status, result.packets, result.fault) == ("complete", packets, None)
    else:
        start = max([0, *(b for b in boundaries if b < cut)])
        assert (result.status, result.packets, result.fault_offset, result.truncated_tail) == (
            "partial",
            packets,
            start,
            True,
        )


# -- the compiled header walker ------------------------------------------------------------------------

ADDRESSES_V4 = [socket.inet_aton(a) for a in ("10.0.0.1", "10.0.0.2", "192.168.1.6")]
ADDRESSES_V6 = [socket.inet_pton(socket.AF_INET6, a) for a in ("fd00::1", "fd00::2", "::ffff:10.0.0.1")]
IP_PROTOCOLS = [6, 17, 1, 58, 132, 4, 41, 47, 0, 43, 44, 51, 60, 135, 255]


@st.composite
def transport_layer(draw: st.DrawFn, protocol: int) -> bytes:
    ports = struct.pack("!HH", draw(st.sampled_from([502, 40000, 0, 65535])), draw(st.sampled_from([502, 102, 0])))
    tail = draw(st.binary(max_size=40))
    if protocol == 6:
        offset = draw(st.sampled_from([5, 5, 8, 15, 4, 0]))
        return ports + struct.pack("!IIBBHHH", 1, 2, offset << 4, draw(st.integers(0, 255)), 0, 0, 0) + tail
    if protocol == 17:
        return ports + struct.pack("!HH", draw(st.sampled_from([8 + len(tail), 0, 0xFFFF])), 0) + tail
    if protocol == 132:
        return ports + bytes(8) + tail
    if protocol in (1, 58):
        return bytes([draw(st.sampled_from([0, 3, 8, 11, 128, 129, 134])), 0, 0, 0]) + tail
    return tail


@st.composite
def ipv4_layer(draw: st.DrawFn) -> bytes:
    ihl = draw(st.sampled_from([5, 5, 5, 6, 15, 4, 0]))
    protocol = draw(st.one_of(st.sampled_from(IP_PROTOCOLS), st.integers(0, 255)))
    body = draw(st.binary(min_size=max(0, ihl * 4 - 20), max_size=max(0, ihl * 4 - 20)))
    body += draw(transport_layer(protocol))
    total = draw(st.sampled_from([20 + len(body), 20 + len(body), 0, 19, 0xFFFF, ihl * 4]))
    fragment = draw(
        st.one_of(st.sampled_from([0, 0x4000, 0x2000, 0x2000 | 185, 185, 0x1FFF, 1]), st.integers(0, 0xFFFF))
    )
    source, destination = draw(st.sampled_from(ADDRESSES_V4)), draw(st.sampled_from(ADDRESSES_V4))
    version = draw(st.sampled_from([4, 4, 4, 6, 0]))
    header = struct.pack(
        "!BBHHHBBH4s4s", version << 4 | ihl, 0, total, draw(st.integers(0, 2)), fragment, 64, protocol, 0,
        source, destination,
    )  # fmt: skip
    return header + body


@st.composite
def ipv6_layer(draw: st.DrawFn) -> bytes:
    chain = draw(st.lists(st.sampled_from([0, 43, 60, 44, 51, 135]), max_size=4))
    final = draw(st.one_of(st.sampled_from(IP_PROTOCOLS), st.integers(0, 255)))
    headers = b""
    for kind, following in zip(chain, [*chain[1:], final], strict=False):  # one more when chain is empty
        if kind == 44:
            field = draw(st.sampled_from([0, 1, 185 << 3, (185 << 3) | 1, 0xFFF9]))
            headers += struct.pack("!BBHI", following, 0, field, draw(st.integers(0, 2)))
        else:
            length = draw(st.sampled_from([0, 0, 1, 2, 255]))
            size = (length + 2) * 4 if kind == 51 else (length + 1) * 8
            headers += bytes([following, length]) + bytes(min(size, 64) - 2)
    body = headers + draw(transport_layer(final))
    length = draw(st.sampled_from([len(body), len(body), 0, 0xFFFF, max(0, len(body) - 7)]))
    first = chain[0] if chain else final
    source, destination = draw(st.sampled_from(ADDRESSES_V6)), draw(st.sampled_from(ADDRESSES_V6))
    version = draw(st.sampled_from([6, 6, 6, 4]))
    return struct.pack("!IHBB16s16s", version << 28, length, first, 64, source, destination) + body


@st.composite
def network_layer(draw: st.DrawFn) -> tuple[int, bytes]:
    kind = draw(st.sampled_from([0x0800, 0x0800, 0x86DD, 0x86DD, 0x0806, 0x88CC]))
    if kind == 0x0800:
        return kind, draw(ipv4_layer())
    if kind == 0x86DD:
        return kind, draw(ipv6_layer())
    if kind == 0x0806:
        hardware = draw(st.sampled_from([1, 6]))
        return kind, struct.pack("!HHBBH", 1, 0x0800, hardware, 4, draw(st.integers(0, 3))) + draw(
            st.binary(max_size=24)
        )
    return kind, draw(st.binary(max_size=40))


@st.composite
def shim_layers(draw: st.DrawFn, ether_type: int, packet: bytes) -> bytes:
    """VLAN tags, PPPoE or MPLS between the link header and the network layer; returns type and rest."""
    inner = packet
    wrap = draw(st.sampled_from(["none", "none", "pppoe", "mpls"]))
    if wrap == "pppoe":
        protocol = {0x0800: 0x0021, 0x86DD: 0x0057}.get(ether_type, 0xC021)
        inner, ether_type = struct.pack("!BBHHH", 0x11, 0, 1, len(packet) + 2, protocol) + packet, 0x8864
    elif wrap == "mpls":
        labels = draw(st.integers(1, 17))
        bottom = draw(st.booleans())
        stack = b"".join(struct.pack("!I", (16 << 12) | (bottom and i == labels - 1) << 8 | 64) for i in range(labels))
        inner, ether_type = stack + packet, 0x8847
    tags = draw(st.lists(st.sampled_from([0x8100, 0x88A8, 0x9100]), max_size=3))
    out = struct.pack("!H", tags[0] if tags else ether_type)
    for index, _ in enumerate(tags):
        following = tags[index + 1] if index + 1 < len(tags) else ether_type
        out += struct.pack("!HH", draw(st.integers(0, 0xFFFF)), following)
    return out + inner


@st.composite
def frames(draw: st.DrawFn, link_type: int) -> bytes:
    """A frame of ``link_type`` whose headers are plausible enough to reach deep into the walker."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=160))
    ether_type, packet = draw(network_layer())
    if link_type == 1:
        frame = draw(st.binary(min_size=12, max_size=12)) + draw(shim_layers(ether_type, packet))
    elif link_type == 113:
        frame = struct.pack("!HHH8s", 0, 1, draw(st.sampled_from([6, 0, 8])), bytes(8)) + draw(
            shim_layers(ether_type, packet)
        )
    elif link_type == 276:
        shimmed = draw(shim_layers(ether_type, packet))
        frame = shimmed[:2] + struct.pack("!HIHBB8s", 0, 1, 1, 0, draw(st.sampled_from([6, 0])), bytes(8)) + shimmed[2:]
    elif link_type in (0, 108):
        family = draw(st.sampled_from([2, 10, 24, 28, 30, 7, 0x02000000]))
        frame = struct.pack("<I" if link_type == 0 and draw(st.booleans()) else "!I", family) + packet
    elif link_type in SUPPORTED_LINK_TYPES:  # raw IP
        frame = packet
    else:
        frame = draw(st.binary(max_size=100))
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, len(frame))))
    return frame[:cut]


def walk(frames_: list[bytes], link_type: int, prefix: bytes = b"", suffix: bytes = b"") -> np.ndarray:
    """parse_packets over ``frames_`` laid out one after another between ``prefix`` and ``suffix``."""
    data = prefix + b"".join(frames_) + suffix
    buffer = np.frombuffer(data, np.uint8) if data else np.zeros(0, np.uint8)
    lengths = np.array([len(f) for f in frames_], np.int32)
    offsets = (len(prefix) + np.concatenate([[0], np.cumsum(lengths)[:-1]])).astype(np.int64)
    packets = np.zeros(len(frames_), layers.PACKET_DTYPE)
    tally = layers.parse_packets(buffer, offsets, lengths, np.full(len(frames_), link_type, np.int32), packets)
    assert int(tally.sum()) == len(frames_)
    starts, ends = offsets, offsets + lengths
    parsed = packets["status"] == layers.STATUS_OK
    inside = parsed & (packets["payload_captured"] > 0)
    assert (packets["payload_offset"][inside] >= starts[inside]).all()
    assert (packets["payload_offset"][inside] + packets["payload_captured"][inside] <= ends[inside]).all()
    assert (packets["network_offset"] >= starts).all() and (packets["network_offset"] <= ends).all()
    assert (packets["payload_captured"] >= 0).all()
    if link_type not in SUPPORTED_LINK_TYPES:
        assert (packets["status"] == layers.STATUS_UNKNOWN_LINK).all()
    packets["network_offset"] -= starts  # make rows comparable wherever the frames sit
    packets["payload_offset"] -= starts
    return packets


@FUZZ
@given(data=st.data(), link_type=st.sampled_from(LINK_TYPES))
def test_header_walker_on_random_frames(data: st.DataObject, link_type: int) -> None:
    batch = data.draw(st.lists(frames(link_type), min_size=1, max_size=12))
    together = walk(batch, link_type)
    for index, frame in enumerate(batch):
        # Alone in a buffer of exactly its size: any read past the frame is out of bounds (caught by
        # NUMBA_BOUNDSCHECK), and the bytes around a frame must not change what is read from it.
        alone = walk([frame], link_type)
        assert alone[0] == together[index]
        assert walk([frame], link_type, prefix=b"\xff" * 7, suffix=b"\x00" * 64)[0] == alone[0]
        assert walk([frame], link_type, suffix=b"\xff" * 64)[0] == alone[0]


# -- the same tests with numba's bounds checks ------------------------------------------------------------


if BOUNDS_CHECKED:  # collected only in the NUMBA_BOUNDSCHECK=1 subprocess, not reported as skipped elsewhere

    @pytest.mark.fuzz
    def test_bounds_checks_are_active() -> None:
        from numba import njit

        @njit
        def read(values: np.ndarray, index: int) -> int:
            return values[index]

        with pytest.raises(IndexError):
            read(np.zeros(4, np.uint8), 4)


@pytest.mark.skipif(BOUNDS_CHECKED, reason="already running with NUMBA_BOUNDSCHECK=1")
def test_fuzz_again_with_numba_bounds_checks(tmp_path: Path) -> None:
    """Re-run this module in a fresh process with NUMBA_BOUNDSCHECK=1: out-of-bounds reads raise."""
    cache = Path(tempfile.gettempdir()) / f"quaywatch-numba-boundscheck-{os.getuid()}"  # not numba's usual cache
    environment = dict(
        os.environ,
        NUMBA_BOUNDSCHECK="1",
        NUMBA_CACHE_DIR=str(cache),
        QUAYWATCH_FUZZ_EXAMPLES=str(max(30, EXAMPLES // 5)),
    )
    environment.pop("PYTEST_XDIST_WORKER", None)
    process = subprocess.run(
        [
            sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
            "-p", "no:randomly", "--basetemp", str(tmp_path / "run"), "-m", "fuzz", "-rA",
        ],
        capture_output=True, text=True, env=environment, cwd=Path(__file__).parents[2], timeout=1800,
    )  # fmt: skip
    summary = process.stdout.strip().splitlines()[-1] if process.stdout.strip() else ""
    print(f"\nwith NUMBA_BOUNDSCHECK=1: {summary}")
    assert process.returncode == 0, process.stdout[-6000:] + process.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary
    assert "PASSED tests/ingest/test_fuzz_readers.py::test_bounds_checks_are_active" in process.stdout


# -- regression corpus ---------------------------------------------------------------------------------------


def eth(ether_type: int, payload: bytes) -> bytes:
    return b"\x00\x80\xf4\x00\x00\x02\x00\x1b\x1b\x00\x00\x01" + struct.pack("!H", ether_type) + payload


def ip4(protocol: int, body: bytes, total: int | None = None, ihl: int = 5, fragment: int = 0, ident: int = 7) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(body) if total is None else total, ident, fragment, 64, protocol, 0,
        ADDRESSES_V4[0], ADDRESSES_V4[1],
    )  # fmt: skip
    return header + body


def ip6(next_header: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return struct.pack("!IHBB16s16s", 0x60000000, size, next_header, 64, ADDRESSES_V6[0], ADDRESSES_V6[1]) + body


def tcp(flags: int = 0x02, offset: int = 5, payload: bytes = b"") -> bytes:
    return (
        struct.pack("!HHIIBBHHH", 40000, 502, 1, 0, offset << 4, flags, 8192, 0, 0)
        + bytes(max(0, offset - 5) * 4)
        + payload
    )


def udp(payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", 40000, 502, 8 + len(payload), 0) + payload


def frames_pcap(frames_: list[bytes], link_type: int = 1, **kwargs: int) -> bytes:
    return pcap_bytes([Record(0, 1_700_000_000, i, 0, f) for i, f in enumerate(frames_)], link_type, **kwargs)


def pcapng(*blocks: bytes, order: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order) + b"".join(blocks)


def epb(frame: bytes, interface: int = 0, order: str = "<") -> bytes:
    return packet_block(Record(0, 1_700_000_000, 0, 0, frame), interface, order)


MODBUS_REQUEST = tcp(0x18, payload=b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x01")

#: Seed files of the corpus, built here so that each is documented by its construction.
SEEDS: dict[str, Callable[[], bytes]] = {
    "zero-length-record.pcap": lambda: frames_pcap([b""]),
    "captured-longer-than-original.pcap": lambda: pcap_bytes(
        [Record(0, 1, 0, 20, eth(0x0800, ip4(6, MODBUS_REQUEST)))]
    ),
    "microseconds-overflow.pcap": lambda: pcap_bytes([Record(0, 1, 1_000_000, 0, eth(0x0800, ip4(17, udp())))]),
    "snap-length-zero.pcap": lambda: frames_pcap([eth(0x0800, ip4(17, udp(b"x" * 40)))], snap_length=0),
    "pcap-header-cut-short.pcap": lambda: frames_pcap([])[:20],
    "pcapng-section-header-only.pcapng": lambda: pcapng(),
    "pcapng-simple-packet-block-without-interface.pcapng": lambda: pcapng(
        block(3, struct.pack("<I", 54) + eth(0x0800, ip4(6, tcp())))
    ),
    "pcapng-simple-packet-block.pcapng": lambda: pcapng(
        interface_block(1), block(3, struct.pack("<I", 54) + eth(0x0800, ip4(6, tcp())))
    ),
    "pcapng-obsolete-packet-block.pcapng": lambda: pcapng(
        interface_block(1),
        block(2, struct.pack("<HHIIII", 0, 0, 0, 0, 42, 42) + eth(0x0800, ip4(17, udp()))),
    ),
    "pcapng-enhanced-block-for-missing-interface.pcapng": lambda: pcapng(
        interface_block(1), epb(eth(0x0800, ip4(6, tcp())), interface=3)
    ),
    "pcapng-big-endian-two-sections.pcapng": lambda: (
        pcapng(interface_block(1), epb(eth(0x0800, ip4(6, tcp()))))
        + pcapng(
            interface_block(101, ">"), interface_block(1, ">"), epb(eth(0x86DD, ip6(17, udp())), 1, ">"), order=">"
        )
    ),
    "pcapng-section-with-bad-byte-order-magic.pcapng": lambda: block(0x0A0D0D0A, b"\x01\x02\x03\x04" + bytes(12)),
    "pcapng-interface-resolution-and-offset.pcapng": lambda: pcapng(
        block(1, struct.pack("<HHI", 1, 0, 0) + b"\x09\x00\x01\x00\x8a\x00\x00\x00" + b"\x0e\x00\x08\x00" + bytes(8)),
        epb(eth(0x0800, ip4(17, udp()))),
    ),
    "pcapng-block-length-not-multiple-of-four.pcapng": lambda: pcapng(
        interface_block(1), struct.pack("<II", 6, 33) + bytes(25) + struct.pack("<I", 33)
    ),
    "pcapng-packet-longer-than-its-block.pcapng": lambda: pcapng(
        interface_block(1), block(6, struct.pack("<IIIII", 0, 0, 0, 4000, 4000) + bytes(8))
    ),
    "ipv4-header-length-below-minimum.pcap": lambda: frames_pcap([eth(0x0800, ip4(6, tcp(), ihl=4))]),
    "ipv4-total-length-zero.pcap": lambda: frames_pcap([eth(0x0800, ip4(6, MODBUS_REQUEST, total=0))]),
    "ipv4-fragment-at-maximum-offset.pcap": lambda: frames_pcap(
        [eth(0x0800, ip4(17, b"\x00" * 8, fragment=0x1FFF)), eth(0x0800, ip4(17, b"", fragment=0x2000))]
    ),
    "ipv4-overlapping-fragments.pcap": lambda: frames_pcap(
        [
            eth(0x0800, ip4(17, udp(bytes(16))[:16], fragment=0x2000)),
            eth(0x0800, ip4(17, bytes(16), fragment=0x2001)),
            eth(0x0800, ip4(17, bytes(8), fragment=2)),
        ]
    ),
    "ipv6-extension-header-chain-of-twenty.pcap": lambda: frames_pcap(
        [eth(0x86DD, ip6(0, b"".join(bytes([0 if i < 19 else 6, 0]) + bytes(6) for i in range(20)) + tcp()))]
    ),
    "ipv6-extension-length-past-the-frame.pcap": lambda: frames_pcap(
        [eth(0x86DD, ip6(60, bytes([6, 255]) + bytes(6) + tcp()))]
    ),
    "ipv6-fragment-header-cut.pcap": lambda: frames_pcap([eth(0x86DD, ip6(44, b"\x11\x00\x00", length=8))]),
    "ipv6-payload-length-zero.pcap": lambda: frames_pcap([eth(0x86DD, ip6(6, tcp(), length=0))]),
    "tcp-data-offset-below-five.pcap": lambda: frames_pcap([eth(0x0800, ip4(6, tcp(offset=4)))]),
    "tcp-header-cut-after-ports.pcap": lambda: frames_pcap([eth(0x0800, ip4(6, tcp()))[:38]]),
    "vlan-eight-tags.pcap": lambda: frames_pcap(
        [eth(0x8100, b"".join(struct.pack("!HH", i, 0x8100 if i < 7 else 0x0800) for i in range(8)) + ip4(17, udp()))]
    ),
    "vlan-tag-cut.pcap": lambda: frames_pcap([eth(0x8100, b"\x00\x01")]),
    "mpls-without-bottom-of-stack.pcap": lambda: frames_pcap([eth(0x8847, struct.pack("!I", 16 << 12) * 17)]),
    "pppoe-session-cut.pcap": lambda: frames_pcap([eth(0x8864, b"\x11\x00\x00\x01")]),
    "linux-cooked-v2-cut.pcap": lambda: frames_pcap([b"\x08\x00" + bytes(17)], link_type=276),
    "bsd-null-unknown-family.pcap": lambda: frames_pcap([struct.pack("<I", 7) + ip4(17, udp())], link_type=0),
    "raw-ip-version-seven.pcap": lambda: frames_pcap([b"\x70" + bytes(30)], link_type=101),
    "arp-cut.pcap": lambda: frames_pcap([eth(0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1))]),
    "gzip-member-then-garbage.pcap.gz": lambda: (
        gzip.compress(frames_pcap([eth(0x0800, ip4(17, udp()))]), mtime=0) + b"not gzip"
    ),
    "gzip-empty.pcap.gz": lambda: gzip.compress(b"", mtime=0),
}

#: What quaywatch makes of each seed: (status, packets, malformed packets, flows).
EXPECTED: dict[str, tuple[str, int, int, int]] = {
    "zero-length-record.pcap": ("complete", 1, 1, 0),
    "captured-longer-than-original.pcap": ("complete", 1, 0, 1),
    "microseconds-overflow.pcap": ("partial", 0, 0, 0),
    "snap-length-zero.pcap": ("complete", 1, 0, 1),
    "pcap-header-cut-short.pcap": ("partial", 0, 0, 0),
    "pcapng-section-header-only.pcapng": ("complete", 0, 0, 0),
    "pcapng-simple-packet-block-without-interface.pcapng": ("partial", 0, 0, 0),
    "pcapng-simple-packet-block.pcapng": ("complete", 1, 0, 1),
    "pcapng-obsolete-packet-block.pcapng": ("complete", 1, 0, 1),
    "pcapng-enhanced-block-for-missing-interface.pcapng": ("partial", 0, 0, 0),
    "pcapng-big-endian-two-sections.pcapng": ("complete", 2, 0, 2),
    "pcapng-section-with-bad-byte-order-magic.pcapng": ("partial", 0, 0, 0),
    "pcapng-interface-resolution-and-offset.pcapng": ("complete", 1, 0, 1),
    "pcapng-block-length-not-multiple-of-four.pcapng": ("partial", 0, 0, 0),
    "pcapng-packet-longer-than-its-block.pcapng": ("partial", 0, 0, 0),
    "ipv4-header-length-below-minimum.pcap": ("complete", 1, 1, 0),
    "ipv4-total-length-zero.pcap": ("complete", 1, 1, 0),
    "ipv4-fragment-at-maximum-offset.pcap": ("complete", 2, 0, 0),
    "ipv4-overlapping-fragments.pcap": ("complete", 3, 0, 1),
    "ipv6-extension-header-chain-of-twenty.pcap": ("complete", 1, 0, 1),
    "ipv6-extension-length-past-the-frame.pcap": ("complete", 1, 1, 0),
    "ipv6-fragment-header-cut.pcap": ("complete", 1, 1, 0),
    "ipv6-payload-length-zero.pcap": ("complete", 1, 0, 1),
    "tcp-data-offset-below-five.pcap": ("complete", 1, 1, 0),
    "tcp-header-cut-after-ports.pcap": ("complete", 1, 1, 0),
    "vlan-eight-tags.pcap": ("complete", 1, 0, 1),
    "vlan-tag-cut.pcap": ("complete", 1, 1, 0),
    "mpls-without-bottom-of-stack.pcap": ("complete", 1, 0, 0),  # an unknown payload, not malformed
    "pppoe-session-cut.pcap": ("complete", 1, 1, 0),
    "linux-cooked-v2-cut.pcap": ("complete", 1, 1, 0),
    "bsd-null-unknown-family.pcap": ("complete", 1, 0, 0),
    "raw-ip-version-seven.pcap": ("complete", 1, 1, 0),
    "arp-cut.pcap": ("complete", 1, 1, 0),
    "gzip-member-then-garbage.pcap.gz": ("partial", 1, 0, 1),
    "gzip-empty.pcap.gz": ("partial", 0, 0, 0),
}


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.name.endswith(CORPUS_SUFFIXES)) if CORPUS.is_dir() else []


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_regression_corpus(analyzer: Analyzer, workdir: Path, path: Path) -> None:
    data = path.read_bytes()
    assert len(data) < 4096, "keep corpus files small"
    check(analyzer, workdir / path.name, data)
    if path.name in EXPECTED:
        result = analyzer.analyze(workdir / path.name, force=True)
        assert (result.status, result.packets, result.malformed_packets, result.flows) == EXPECTED[path.name]


def test_corpus_seeds_are_current() -> None:
    stale = [
        name
        for name, build in SEEDS.items()
        if not (CORPUS / name).is_file() or (CORPUS / name).read_bytes() != build()
    ]
    assert not stale, f"regenerate with `python -m tests.ingest.test_fuzz_readers`: {stale}"
    assert set(EXPECTED) == set(SEEDS)


if __name__ == "__main__":
    CORPUS.mkdir(exist_ok=True)
    for name, build in SEEDS.items():
        (CORPUS / name).write_bytes(build())
        print(f"wrote {CORPUS / name} ({(CORPUS / name).stat().st_size} bytes)")

"""Property-based fuzzing of the capture readers and the compiled header walker.

Bounded in ``make test``; ``make fuzz`` raises the example count through QUAYWATCH_FUZZ_EXAMPLES.
Inputs that once broke something are kept in ``corpus/`` and replayed by ``test_regression_corpus``.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.ingest import layers
from quaywatch.ingest.linktypes import SUPPORTED_LINK_TYPES
from quaywatch.store.database import Store
from tests.factories import pcapng_bytes, tcp_frame, udp_frame, write_pcap

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "150"))
CORPUS = Path(__file__).with_name("corpus")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
SEED_FRAMES = [
    (1.0, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 502, payload=b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x01")),
    (1.1, udp_frame("10.0.0.2", "10.0.0.1", 53, 40001, b"\x12\x34\x81\x80")),
    (1.2, tcp_frame("fd00::1", "fd00::2", 40002, 102, payload=b"\x03\x00\x00\x07\x02\xf0\x80", vlan=7)),
]

pytestmark = pytest.mark.fuzz


def check(store: Store, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    result = Analyzer(store, decoders=[]).analyze(path, force=True)
    assert result.status in ("complete", "partial")
    assert result.packets <= max(0, len(data)) // 16 + 1
    (status,) = store.connection.execute(
        "SELECT status FROM captures WHERE capture_id = ?", [result.capture_id]
    ).fetchone()
    assert status in ("complete", "partial")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb")


@FUZZ
@given(body=st.binary(max_size=2048))
def test_random_records_after_a_pcap_header(store: Store, tmp_path: Path, body: bytes) -> None:
    check(store, tmp_path / "f.pcap", PCAP_HEADER + body)


@FUZZ
@given(body=st.binary(max_size=2048))
def test_random_blocks_after_a_pcapng_header(store: Store, tmp_path: Path, body: bytes) -> None:
    check(store, tmp_path / "f.pcapng", pcapng_bytes([]) + body)


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    def mutate(data: bytearray, flips: list[tuple[int, int]], cut: int, splice: bytes, at: int) -> bytes:
        for position, value in flips:
            data[position % len(data)] ^= value
        data[at % len(data) : at % len(data)] = splice
        return bytes(data[: max(1, cut)])

    return st.builds(
        mutate,
        st.just(bytearray(seed)),
        st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=8),
        st.integers(1, len(seed) + 64),
        st.binary(max_size=64),
        st.integers(0, 1 << 20),
    )


@FUZZ
@given(data=st.data())
def test_mutated_real_captures(store: Store, tmp_path: Path, data: st.DataObject) -> None:
    seed_pcap = write_pcap(tmp_path / "seed.pcap", SEED_FRAMES).read_bytes()
    seed_pcapng = pcapng_bytes(SEED_FRAMES)
    mutated = data.draw(mutations(data.draw(st.sampled_from([seed_pcap, seed_pcapng]))))
    check(store, tmp_path / "m.cap", mutated)


@FUZZ
@given(
    frames=st.lists(st.binary(max_size=256), min_size=1, max_size=32),
    link=st.sampled_from(sorted(SUPPORTED_LINK_TYPES)),
)
def test_header_walker_on_random_frames(frames: list[bytes], link: int) -> None:
    run_walker(frames, link)


def run_walker(frames: list[bytes], link: int) -> None:
    buffer = np.frombuffer(b"".join(frames) or b"\x00", np.uint8)
    offsets = np.cumsum([0] + [len(f) for f in frames[:-1]]).astype(np.int64)
    lengths = np.array([len(f) for f in frames], np.int32)
    packets = np.zeros(len(frames), layers.PACKET_DTYPE)
    tally = layers.parse_packets(buffer, offsets, lengths, np.full(len(frames), link, np.int32), packets)
    assert tally.sum() == len(frames)
    inside = packets["payload_captured"] > 0
    ends = packets["payload_offset"][inside] + packets["payload_captured"][inside]
    assert (ends <= buffer.shape[0]).all(), "payload points past the buffer"


def test_header_walker_with_numba_bounds_checking() -> None:
    """numba does not check bounds by default; rerun the walker fuzz with checks on in a fresh process."""
    script = (
        "import random, numpy as np\n"
        "from quaywatch.ingest.linktypes import SUPPORTED_LINK_TYPES\n"
        "import tests.ingest.test_fuzz_readers as t\n"
        "r = random.Random(7)\n"
        "for _ in range(400):\n"
        "    frames = [bytes(r.getrandbits(8) for _ in range(r.randrange(0, 120))) for _ in range(r.randrange(1, 8))]\n"
        "    t.run_walker(frames, r.choice(sorted(SUPPORTED_LINK_TYPES)))\n"
        "print('ok')\n"
    )
    environment = dict(
        os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(Path(__file__).parent / ".numba-boundscheck")
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*")), ids=lambda p: p.name)
def test_regression_corpus(store: Store, tmp_path: Path, path: Path) -> None:
    check(store, tmp_path / path.name, path.read_bytes())

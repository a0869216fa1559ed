"""Damaged and unusual input: one clear message with file and byte offset, everything valid kept."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from quaywatch.analysis import Analyzer
from quaywatch.cli.main import EXIT_INPUT_PROBLEM, EXIT_OK, main
from quaywatch.store.database import Store
from tests.factories import pcapng_bytes, udp_frame, write_pcap

FRAMES = [(1_700_000_000.0 + i, udp_frame("10.0.0.1", "10.0.0.2", 40000 + i, 502, bytes(10 + i))) for i in range(10)]


def record_offsets(data: bytes) -> list[int]:
    offsets, position = [], 24
    while position + 16 <= len(data):
        offsets.append(position)
        position += 16 + struct.unpack_from("<I", data, position + 8)[0]
    return offsets


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    return write_pcap(tmp_path / "good.pcap", FRAMES)


def analyse_cli(tmp_path: Path, *paths: Path) -> tuple[int, dict[str, object], str]:
    result = CliRunner().invoke(main, ["analyze", *map(str, paths), "--db", str(tmp_path / "q.duckdb"), "--json"])
    return result.exit_code, json.loads(result.stdout), result.stderr


def stored(tmp_path: Path) -> dict[str, int]:
    store = Store(tmp_path / "q.duckdb")
    try:
        return {t: store.connection.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in store.tables()}
    finally:
        store.close()


def test_truncated_last_record_keeps_the_rest_and_exits_zero(tmp_path: Path, capture: Path) -> None:
    data = capture.read_bytes()
    last = record_offsets(data)[-1]
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: last + 20])
    code, summary, stderr = analyse_cli(tmp_path, cut)
    assert code == EXIT_OK
    (entry,) = summary["captures"]
    assert entry["status"] == "partial" and entry["packets"] == 9 and entry["flows"] == 9
    assert entry["fault_offset"] == last
    assert f"cut.pcap: byte {last}: last record is cut short: 20 of" in entry["fault"]
    assert "cut.pcap" in stderr and "marked partial" in stderr
    before = stored(tmp_path)
    code, summary, _ = analyse_cli(tmp_path, cut)
    assert summary["captures"][0]["status"] == "already_analysed"
    assert stored(tmp_path) == before


def test_corrupt_length_in_the_middle(tmp_path: Path, capture: Path) -> None:
    data = bytearray(capture.read_bytes())
    bad = record_offsets(bytes(data))[4]
    struct.pack_into("<I", data, bad + 8, 0xFFFFFF)
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(bytes(data))
    code, summary, _ = analyse_cli(tmp_path, corrupt)
    assert code == EXIT_INPUT_PROBLEM
    (entry,) = summary["captures"]
    assert (entry["status"], entry["packets"], entry["fault_offset"]) == ("partial", 4, bad)
    assert f"byte {bad}: corrupt pcap record header (captured length 16777215" in entry["fault"]
    assert stored(tmp_path)["flows"] == 4


def test_pcapng_corrupt_block_and_truncated_last_block(tmp_path: Path) -> None:
    data = pcapng_bytes(FRAMES)
    blocks, position = [], 0
    while position < len(data):
        blocks.append(position)
        position += struct.unpack_from("<I", data, position + 4)[0]
    corrupt = bytearray(data)
    struct.pack_into("<I", corrupt, blocks[6] + 4, 7)  # not a multiple of 4
    (tmp_path / "corrupt.pcapng").write_bytes(bytes(corrupt))
    (tmp_path / "cut.pcapng").write_bytes(data[: blocks[-1] + 10])
    store = Store(tmp_path / "q.duckdb")
    analyzer = Analyzer(store, decoders=[])
    broken = analyzer.analyze(tmp_path / "corrupt.pcapng")
    assert (broken.status, broken.packets, broken.fault_offset, broken.truncated_tail) == (
        "partial",
        3,
        blocks[6],
        False,
    )
    assert "corrupt pcapng block length" in (broken.fault or "")
    cut = analyzer.analyze(tmp_path / "cut.pcapng")
    assert (cut.status, cut.packets, cut.fault_offset, cut.truncated_tail) == ("partial", 9, blocks[-1], True)
    store.close()


def test_unknown_link_type_names_offset_and_type(tmp_path: Path, capture: Path) -> None:
    data = bytearray(capture.read_bytes())
    struct.pack_into("<I", data, 20, 147)
    odd = tmp_path / "user0.pcap"
    odd.write_bytes(bytes(data))
    code, summary, _ = analyse_cli(tmp_path, odd)
    assert code == EXIT_INPUT_PROBLEM
    assert "user0.pcap: byte 20: unsupported link type 147 (USER0)" in summary["captures"][0]["fault"]


def test_pcapng_interface_with_unknown_link_type_keeps_earlier_packets(tmp_path: Path) -> None:
    first = pcapng_bytes(FRAMES[:5])
    second = pcapng_bytes(FRAMES[5:], link_type=147)
    mixed = tmp_path / "mixed.pcapng"
    mixed.write_bytes(first + second)
    store = Store(tmp_path / "q.duckdb")
    result = Analyzer(store, decoders=[]).analyze(mixed)
    assert (result.status, result.packets) == ("partial", 5)
    assert result.fault_offset is not None and result.fault_offset > len(first)
    assert "interface 0 has unsupported link type 147" in (result.fault or "")
    store.close()


def test_empty_and_text_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pcap"
    text.write_text("not a capture at all\n")
    code, summary, _ = analyse_cli(tmp_path, empty, text)
    assert code == EXIT_INPUT_PROBLEM
    faults = [c["fault"] for c in summary["captures"]]
    assert faults[0].endswith("empty.pcap: byte 0: empty file")
    assert "notes.pcap: byte 0: not a pcap or pcapng capture (first bytes 6e6f7420)" in faults[1]


def test_folder_of_mixed_files(tmp_path: Path, capture: Path) -> None:
    folder = tmp_path / "evidence"
    (folder / "crane4").mkdir(parents=True)
    (folder / "crane4" / "a.pcap").write_bytes(capture.read_bytes())
    (folder / "b.pcapng").write_bytes(pcapng_bytes(FRAMES[:3]))
    data = capture.read_bytes()
    (folder / "c.pcap").write_bytes(data[: record_offsets(data)[-1] + 5])
    (folder / "README.txt").write_text("crane 4 SPAN port, 2026-11-20")
    (folder / "empty.bin").write_bytes(b"")
    code, summary, stderr = analyse_cli(tmp_path, folder)
    assert code == EXIT_OK
    by_name = {Path(c["path"]).name: c for c in summary["captures"]}
    assert by_name["a.pcap"]["status"] == "complete" and by_name["b.pcapng"]["status"] == "complete"
    assert by_name["c.pcap"]["status"] == "partial" and by_name["c.pcap"]["packets"] == 9
    assert (
        by_name["README.txt"]["status"] == "skipped"
        and "README.txt: byte 0: not a pcap" in by_name["README.txt"]["fault"]
    )
    assert by_name["empty.bin"]["status"] == "skipped" and "empty file" in by_name["empty.bin"]["fault"]
    assert "skipped" in stderr
    assert stored(tmp_path)["captures"] == 3


def test_gzip_reads_like_the_plain_file_and_a_cut_gzip_keeps_what_decompressed(tmp_path: Path, capture: Path) -> None:
    compressed = tmp_path / "good.pcap.gz"
    compressed.write_bytes(gzip.compress(capture.read_bytes()))
    store = Store(tmp_path / "q.duckdb")
    analyzer = Analyzer(store, decoders=[])
    plain = analyzer.analyze(capture)
    packed = analyzer.analyze(compressed)
    assert (packed.status, packed.packets, packed.flows) == ("complete", plain.packets, plain.flows)
    flows = store.connection.execute(
        "SELECT capture_id, list(flow_id ORDER BY flow_id) FROM flows GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert flows[0][1] == flows[1][1]
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(compressed.read_bytes()[:-30])
    broken = analyzer.analyze(cut)
    assert broken.status == "partial" and 0 < broken.packets <= plain.packets
    assert "cut.pcap.gz" in (broken.fault or "")
    store.close()


@pytest.mark.parametrize(
    ("magic", "order"), [(0xA1B2C3D4, "<"), (0xA1B2C3D4, ">"), (0xA1B23C4D, "<"), (0xA1B23C4D, ">")]
)
def test_pcap_magic_variants_give_identical_flows(tmp_path: Path, capture: Path, magic: int, order: str) -> None:
    nanoseconds = magic == 0xA1B23C4D
    out = bytearray(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1))
    data = capture.read_bytes()
    for offset in record_offsets(data):
        seconds, micros, captured, original = struct.unpack_from("<IIII", data, offset)
        fraction = micros * 1000 if nanoseconds else micros
        out += (
            struct.pack(order + "IIII", seconds, fraction, captured, original)
            + data[offset + 16 : offset + 16 + captured]
        )
    variant = tmp_path / "variant.pcap"
    variant.write_bytes(bytes(out))
    store = Store(tmp_path / "q.duckdb")
    analyzer = Analyzer(store, decoders=[])
    analyzer.analyze(capture)
    analyzer.analyze(variant)
    rows = store.connection.execute(
        "SELECT capture_id, list((flow_id, ts, packets_to_server, bytes_to_server) ORDER BY flow_id) "
        "FROM flows GROUP BY 1"
    ).fetchall()
    assert len(rows) == 2 and rows[0][1] == rows[1][1]
    store.close()


def test_pcapng_big_endian_and_several_interfaces(tmp_path: Path) -> None:
    little = tmp_path / "little.pcapng"
    little.write_bytes(pcapng_bytes(FRAMES))
    big = tmp_path / "big.pcapng"
    big.write_bytes(pcapng_bytes(FRAMES, big_endian=True, extra_interfaces=2))
    store = Store(tmp_path / "q.duckdb")
    analyzer = Analyzer(store, decoders=[])
    a, b = analyzer.analyze(little), analyzer.analyze(big)
    assert (a.status, a.packets, b.status, b.packets) == ("complete", 10, "complete", 10)
    assert a.first_timestamp == b.first_timestamp == 1_700_000_000 * 10**9
    store.close()

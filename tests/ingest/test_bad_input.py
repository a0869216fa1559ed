"""Damaged and unusual input, built in tmp_path from two real captures.

The inputs are the cisagov/icsnpp-modbus ``modbus_example.pcap`` (100 Ethernet frames) and the
cisagov/icsnpp-enip ``multiple_service_packet_cip.pcapng``, cut, corrupted, re-encapsulated or
re-headed with ``struct``. Each check goes through the CLI (exit code, the one message naming the
file and byte offset) and the Python API and the database (what was kept).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import socket
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from quaywatch.analysis import Analyzer, CaptureResult
from quaywatch.cli.main import EXIT_INPUT_PROBLEM, EXIT_OK, main
from quaywatch.store.database import Store

PCAP_MAGIC_MICRO = 0xA1B2C3D4
PCAP_MAGIC_NANO = 0xA1B23C4D
FLOW_COLUMNS = (
    "flow_id, community_id, ts, last_ts, transport, client_ip, client_port, server_ip, server_port, vlan, inner_vlan, "
    "client_mac, server_mac, client_ttl, server_ttl, packets_to_server, packets_to_client, bytes_to_server, "
    "bytes_to_client, ip_bytes_to_server, ip_bytes_to_client, payload_bytes_to_server, payload_bytes_to_client, "
    "tcp_flags_to_server, tcp_flags_to_client, state, end_reason, first_packet, last_packet, application"
)


# -- building captures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    offset: int  # of the 16-byte record header in the file
    seconds: int
    fraction: int  # micro- or nanoseconds, as in the file
    original: int
    frame: bytes

    @property
    def end(self) -> int:
        return self.offset + 16 + len(self.frame)


def pcap_records(data: bytes) -> list[Record]:
    """Records of a classic pcap (either byte order), located by their file offset."""
    order = ">" if data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") else "<"
    records, position = [], 24
    while position + 16 <= len(data):
        seconds, fraction, captured, original = struct.unpack_from(order + "IIII", data, position)
        if position + 16 + captured > len(data):
            break
        records.append(Record(position, seconds, fraction, original, data[position + 16 : position + 16 + captured]))
        position += 16 + captured
    return records


def pcap_bytes(
    records: list[Record],
    link_type: int = 1,
    order: str = "<",
    magic: int = PCAP_MAGIC_MICRO,
    snap_length: int = 262144,
) -> bytes:
    """A classic pcap; record fractions are taken as microseconds and scaled for the nanosecond magic."""
    scale = 1000 if magic == PCAP_MAGIC_NANO else 1
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snap_length, link_type)]
    for record in records:
        original = max(record.original, len(record.frame)) if record.original else len(record.frame)
        out.append(struct.pack(order + "IIII", record.seconds, record.fraction * scale, len(record.frame), original))
        out.append(record.frame)
    return b"".join(out)


def block(kind: int, body: bytes, order: str = "<") -> bytes:
    body += b"\x00" * (-len(body) % 4)
    return struct.pack(order + "II", kind, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))


def interface_block(link_type: int, order: str = "<") -> bytes:
    return block(1, struct.pack(order + "HHI", link_type, 0, 0), order)


def packet_block(record: Record, interface: int = 0, order: str = "<") -> bytes:
    stamp = record.seconds * 1_000_000 + record.fraction
    header = struct.pack(
        order + "IIIII", interface, stamp >> 32, stamp & 0xFFFFFFFF, len(record.frame), len(record.frame)
    )
    return block(6, header + record.frame, order)


def pcapng_blocks(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, length) of each block of a little-endian pcapng."""
    blocks, position = [], 0
    while position + 12 <= len(data):
        kind, length = struct.unpack_from("<II", data, position)
        blocks.append((position, kind, length))
        position += length
    return blocks


def enip_plus_modbus(enip: bytes, modbus: list[Record]) -> bytes:
    """The real ENIP pcapng (SHB, IDB, EPB) followed by one EPB per Modbus frame: 101 packets."""
    return enip + b"".join(packet_block(record) for record in modbus)


# -- running quaywatch -------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    summary: dict
    stderr: str

    def capture(self, name: str) -> dict:
        (entry,) = [c for c in self.summary["captures"] if Path(c["path"]).name == name]
        return entry

    def messages(self, name: str) -> list[str]:
        return [line for line in self.stderr.splitlines() if name in line]


def cli(database: Path, *inputs: Path, options: tuple[str, ...] = ()) -> Run:
    # A wide terminal, so that rich does not fold long temporary paths across lines.
    result = CliRunner().invoke(
        main, ["analyze", *map(str, inputs), "--db", str(database), "--json", *options], env={"COLUMNS": "1000"}
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, json.loads(result.stdout), result.stderr)


def row_counts(database: Path) -> dict[str, int]:
    with duckdb.connect(str(database), read_only=True) as connection:
        tables = [r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        return {t: connection.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in sorted(tables)}


def flows(store: Store, capture_id: str, columns: str = FLOW_COLUMNS) -> list[tuple]:
    store.flush()
    return store.connection.execute(
        f"SELECT {columns} FROM flows WHERE capture_id = ? ORDER BY first_packet, client_port", [capture_id]
    ).fetchall()


def analyse(store: Store, path: Path, data: bytes | None = None) -> CaptureResult:
    if data is not None:
        path.write_bytes(data)
    return Analyzer(store, decoders=[]).analyze(path, force=True)  # variants may be byte-identical


@pytest.fixture
def modbus(modbus_pcap: Path) -> list[Record]:
    records = pcap_records(modbus_pcap.read_bytes())
    assert len(records) == 100
    return records


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "api.duckdb")
    yield store
    store.close()


# -- cut and corrupt pcap ----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [5, 16, 40], ids=["in-header", "header-only", "in-data"])
def test_truncated_last_record_keeps_the_rest_exits_zero_and_reruns_unchanged(
    tmp_path: Path, modbus_pcap: Path, modbus: list[Record], keep: int
) -> None:
    data = modbus_pcap.read_bytes()
    last = modbus[-1]
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: last.offset + keep])
    database = tmp_path / "q.duckdb"

    run = cli(database, cut)
    assert run.code == EXIT_OK
    entry = run.capture("cut.pcap")
    assert (entry["status"], entry["packets"], entry["fault_offset"]) == ("partial", 99, last.offset)
    (message,) = run.messages("cut.pcap")
    assert f"cut.pcap: byte {last.offset}: last record is cut short" in message
    assert "99 packets before it were stored" in message
    with duckdb.connect(str(database), read_only=True) as connection:
        status, packets, offset = connection.execute("SELECT status, packets, fault_offset FROM captures").fetchone()
        stored = connection.execute("SELECT sum(packets_to_server + packets_to_client) FROM flows").fetchone()[0]
    assert (status, packets, offset, stored) == ("partial", 99, last.offset, 99)

    before = row_counts(database)
    again = cli(database, cut)
    assert again.code == EXIT_OK and again.capture("cut.pcap")["status"] == "already_analysed"
    assert row_counts(database) == before


def test_truncated_last_record_through_the_installed_command(tmp_path: Path, modbus_pcap: Path) -> None:
    data = modbus_pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-7])
    command = Path(sys.executable).with_name("quaywatch")
    process = subprocess.run(
        [str(command), "analyze", str(cut), "--db", str(tmp_path / "q.duckdb")],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="1000"),
        timeout=300,
    )
    assert process.returncode == EXIT_OK, process.stderr
    offset = pcap_records(data)[-1].offset
    assert f"{cut}: byte {offset}: last record is cut short" in process.stderr


def test_api_reports_the_cut_tail(store: Store, tmp_path: Path, modbus_pcap: Path, modbus: list[Record]) -> None:
    result = analyse(store, tmp_path / "cut.pcap", modbus_pcap.read_bytes()[: modbus[-1].end - 1])
    assert (result.status, result.packets, result.truncated_tail) == ("partial", 99, True)
    assert result.fault_offset == modbus[-1].offset and not result.needs_attention


@pytest.mark.parametrize("index", [1, 50, 99])
def test_corrupt_record_length_in_the_middle(
    tmp_path: Path, modbus_pcap: Path, modbus: list[Record], index: int
) -> None:
    data = bytearray(modbus_pcap.read_bytes())
    bad = modbus[index].offset
    struct.pack_into("<I", data, bad + 8, 0xFFFFFF)
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(bytes(data))
    database = tmp_path / "q.duckdb"
    run = cli(database, corrupt)
    assert run.code == EXIT_INPUT_PROBLEM
    entry = run.capture("corrupt.pcap")
    assert (entry["status"], entry["packets"], entry["fault_offset"]) == ("partial", index, bad)
    (message,) = run.messages("corrupt.pcap")
    assert f"corrupt.pcap: byte {bad}: corrupt pcap record header (captured length 16777215" in message
    with duckdb.connect(str(database), read_only=True) as connection:
        stored = connection.execute("SELECT coalesce(sum(packets_to_server + packets_to_client), 0) FROM flows")
        assert stored.fetchone()[0] == index
        assert connection.execute("SELECT status FROM captures").fetchone()[0] == "partial"


def test_corrupt_timestamp_fraction_is_a_corrupt_record(store: Store, tmp_path: Path, modbus: list[Record]) -> None:
    records = list(modbus)
    records[30] = replace(records[30], fraction=1_000_000)  # a microsecond field of one second
    data = pcap_bytes(records)
    result = analyse(store, tmp_path / "fraction.pcap", data)
    assert (result.status, result.packets, result.fault_offset) == ("partial", 30, pcap_records(data)[30].offset)
    assert "sub-second field 1000000" in (result.fault or "")


# -- pcapng ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("length", 7), ("length", 0xFFFFFF), ("length", 8), ("trailer", 40)], ids=str
)
def test_pcapng_corrupt_block_length_mid_file(
    tmp_path: Path, enip_pcapng: Path, modbus: list[Record], field: str, value: int
) -> None:
    data = bytearray(enip_plus_modbus(enip_pcapng.read_bytes(), modbus))
    blocks = pcapng_blocks(bytes(data))
    assert [kind for _, kind, _ in blocks[:3]] == [0x0A0D0D0A, 1, 6] and len(blocks) == 103
    offset, _, length = blocks[42]  # the 41st packet block: 40 packets before it
    struct.pack_into("<I", data, offset + 4 if field == "length" else offset + length - 4, value)
    corrupt = tmp_path / "corrupt.pcapng"
    corrupt.write_bytes(bytes(data))
    run = cli(tmp_path / "q.duckdb", corrupt)
    assert run.code == EXIT_INPUT_PROBLEM
    entry = run.capture("corrupt.pcapng")
    assert (entry["status"], entry["packets"], entry["fault_offset"]) == ("partial", 40, offset)
    (message,) = run.messages("corrupt.pcapng")
    assert f"corrupt.pcapng: byte {offset}: corrupt pcapng block length" in message


@pytest.mark.parametrize("keep", [4, 20, 60])
def test_pcapng_truncated_last_block(tmp_path: Path, enip_pcapng: Path, modbus: list[Record], keep: int) -> None:
    data = enip_plus_modbus(enip_pcapng.read_bytes(), modbus)
    last = pcapng_blocks(data)[-1][0]
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: last + keep])
    run = cli(tmp_path / "q.duckdb", cut)
    assert run.code == EXIT_OK
    entry = run.capture("cut.pcapng")
    assert (entry["status"], entry["packets"], entry["fault_offset"]) == ("partial", 100, last)
    (message,) = run.messages("cut.pcapng")
    assert f"cut.pcapng: byte {last}: last block is cut short" in message


def test_real_pcapng_cut_inside_its_only_packet(store: Store, tmp_path: Path, enip_pcapng: Path) -> None:
    data = enip_pcapng.read_bytes()
    whole = analyse(store, tmp_path / "whole.pcapng", data)
    assert (whole.status, whole.packets, whole.flows) == ("complete", 1, 1)
    cut = analyse(store, tmp_path / "cut.pcapng", data[:-30])
    assert (cut.status, cut.packets, cut.fault_offset, cut.truncated_tail) == ("partial", 0, 48, True)


# -- link types the reader refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(("link_type", "name"), [(147, "USER0"), (999, "unknown")])
def test_pcap_unknown_link_type(tmp_path: Path, modbus: list[Record], link_type: int, name: str) -> None:
    odd = tmp_path / "odd.pcap"
    odd.write_bytes(pcap_bytes(modbus, link_type=link_type))
    run = cli(tmp_path / "q.duckdb", odd)
    assert run.code == EXIT_INPUT_PROBLEM
    entry = run.capture("odd.pcap")
    assert (entry["status"], entry["packets"], entry["fault_offset"]) == ("partial", 0, 20)
    (message,) = run.messages("odd.pcap")
    assert f"odd.pcap: byte 20: unsupported link type {link_type} ({name})" in message


def test_pcapng_interface_with_unknown_link_type_after_packets(
    tmp_path: Path, enip_pcapng: Path, modbus: list[Record]
) -> None:
    valid = enip_plus_modbus(enip_pcapng.read_bytes(), modbus[:30])
    tail = interface_block(999) + b"".join(packet_block(record, interface=1) for record in modbus[30:])
    mixed = tmp_path / "mixed.pcapng"
    mixed.write_bytes(valid + tail)
    run = cli(tmp_path / "q.duckdb", mixed)
    assert run.code == EXIT_INPUT_PROBLEM
    entry = run.capture("mixed.pcapng")
    assert (entry["status"], entry["packets"], entry["fault_offset"]) == ("partial", 31, len(valid))
    (message,) = run.messages("mixed.pcapng")
    assert f"mixed.pcapng: byte {len(valid)}: interface 1 has unsupported link type 999 (unknown)" in message
    assert entry["flows"] == 2  # the ENIP connection and the first Modbus connection


# -- not captures at all ---------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    run = cli(tmp_path / "q.duckdb", empty)
    assert run.code == EXIT_INPUT_PROBLEM
    assert run.capture("empty.pcap")["fault"] == f"{empty}: byte 0: empty file"
    assert len(run.messages("empty.pcap")) == 1


@pytest.mark.parametrize(
    "content",
    [b"crane 4 SPAN port, berth 7\n", random.Random(7).randbytes(3000), b"\x0a\x0d\x0d"],
    ids=["text", "random-bytes", "three-bytes-of-a-magic"],
)
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    other = tmp_path / "notes.pcap"
    other.write_bytes(content)
    run = cli(tmp_path / "q.duckdb", other)
    assert run.code == EXIT_INPUT_PROBLEM
    fault = run.capture("notes.pcap")["fault"]
    assert fault.startswith(f"{other}: byte 0: not a pcap or pcapng capture (first bytes {content[:4].hex()})")
    assert len(run.messages("notes.pcap")) == 1


def test_folder_of_mixed_files(tmp_path: Path, modbus_pcap: Path, enip_pcapng: Path, modbus: list[Record]) -> None:
    folder = tmp_path / "evidence"
    (folder / "crane4").mkdir(parents=True)
    (folder / "modbus.pcap").write_bytes(modbus_pcap.read_bytes())
    (folder / "crane4" / "enip.pcapng").write_bytes(enip_pcapng.read_bytes())
    (folder / "README.txt").write_text("crane 4 SPAN port, 2026-11-20\n")
    (folder / "empty.pcap").write_bytes(b"")
    (folder / "cut.pcap").write_bytes(modbus_pcap.read_bytes()[: modbus[60].offset + 9])
    database = tmp_path / "q.duckdb"
    run = cli(database, folder)
    assert run.code == EXIT_OK, run.stderr
    statuses = {Path(c["path"]).name: (c["status"], c["packets"]) for c in run.summary["captures"]}
    assert statuses == {
        "modbus.pcap": ("complete", 100),
        "enip.pcapng": ("complete", 1),
        "cut.pcap": ("partial", 60),
        "README.txt": ("skipped", 0),
        "empty.pcap": ("skipped", 0),
    }
    (readme,) = run.messages("README.txt")
    assert "skipped" in readme and f"{folder / 'README.txt'}: byte 0: not a pcap or pcapng capture" in readme
    (empty,) = run.messages("empty.pcap")
    assert "skipped" in empty and "empty file" in empty
    with duckdb.connect(str(database), read_only=True) as connection:
        rows = connection.execute("SELECT name, status, packets FROM captures ORDER BY name").fetchall()
    assert rows == [("cut.pcap", "partial", 60), ("enip.pcapng", "complete", 1), ("modbus.pcap", "complete", 100)]


# -- gzip ------------------------------------------------------------------------------------------------


def test_gzip_reads_like_the_plain_file(store: Store, tmp_path: Path, modbus_pcap: Path) -> None:
    plain = analyse(store, modbus_pcap)
    packed = analyse(store, tmp_path / "modbus.pcap.gz", gzip.compress(modbus_pcap.read_bytes()))
    assert (packed.status, packed.packets, packed.bytes, packed.flows) == ("complete", 100, plain.bytes, plain.flows)
    assert (packed.first_timestamp, packed.last_timestamp) == (plain.first_timestamp, plain.last_timestamp)
    assert flows(store, packed.capture_id) == flows(store, plain.capture_id)
    row = store.connection.execute("SELECT compressed, format FROM captures WHERE capture_id = ?", [packed.capture_id])
    assert row.fetchone() == (True, "pcap")


def test_gzip_of_two_members_reads_as_one_stream(store: Store, tmp_path: Path, modbus_pcap: Path) -> None:
    data = modbus_pcap.read_bytes()
    half = pcap_records(data)[50].offset
    result = analyse(store, tmp_path / "two.pcap.gz", gzip.compress(data[:half]) + gzip.compress(data[half:]))
    assert (result.status, result.packets) == ("complete", 100)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_gzip_cut_mid_stream_keeps_what_was_decompressed(tmp_path: Path, modbus_pcap: Path, fraction: float) -> None:
    compressed = gzip.compress(modbus_pcap.read_bytes())
    cut = compressed[: int(len(compressed) * fraction)]
    inflater = zlib.decompressobj(wbits=47)
    available = inflater.decompress(cut) + inflater.flush()
    expected = len(pcap_records(available))
    assert 0 < expected < 100
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(cut)
    database = tmp_path / "q.duckdb"
    run = cli(database, path)
    entry = run.capture("cut.pcap.gz")
    assert (entry["status"], entry["packets"]) == ("partial", expected)
    (message,) = run.messages("cut.pcap.gz")
    assert "compressed stream" in message and "ends before its end-of-stream marker" in message
    assert f"{path}: byte " in message
    assert run.code == EXIT_INPUT_PROBLEM  # a damaged compressed stream is reported as an input problem
    with duckdb.connect(str(database), read_only=True) as connection:
        stored = connection.execute("SELECT sum(packets_to_server + packets_to_client) FROM flows").fetchone()[0]
    assert stored == expected


# -- the four classic pcap headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("magic", "order"),
    [(PCAP_MAGIC_MICRO, "<"), (PCAP_MAGIC_MICRO, ">"), (PCAP_MAGIC_NANO, "<"), (PCAP_MAGIC_NANO, ">")],
    ids=["micro-little", "micro-big", "nano-little", "nano-big"],
)
def test_pcap_magic_variants_give_identical_flows_and_timestamps(
    store: Store, tmp_path: Path, modbus_pcap: Path, modbus: list[Record], magic: int, order: str
) -> None:
    original = analyse(store, modbus_pcap)
    variant = analyse(store, tmp_path / "variant.pcap", pcap_bytes(modbus, order=order, magic=magic))
    assert (variant.status, variant.packets, variant.bytes) == ("complete", 100, original.bytes)
    assert (variant.first_timestamp, variant.last_timestamp) == (original.first_timestamp, original.last_timestamp)
    assert original.first_timestamp == 1595660608237857000
    assert flows(store, variant.capture_id) == flows(store, original.capture_id)
    spans = store.connection.execute(
        "SELECT DISTINCT first_ts, last_ts FROM captures WHERE capture_id IN (?, ?)",
        [original.capture_id, variant.capture_id],
    ).fetchall()
    assert len(spans) == 1


def test_nanosecond_fractions_are_kept(store: Store, tmp_path: Path, modbus: list[Record]) -> None:
    records = [replace(record, fraction=record.fraction * 1000 + 999) for record in modbus]
    data = bytearray(pcap_bytes(records))
    struct.pack_into("<I", data, 0, PCAP_MAGIC_NANO)
    result = analyse(store, tmp_path / "nano.pcap", bytes(data))
    assert result.first_timestamp == 1595660608237857999


# -- idempotence and merging -----------------------------------------------------------------------------


def test_the_same_capture_twice_changes_nothing(tmp_path: Path, modbus_pcap: Path) -> None:
    database = tmp_path / "q.duckdb"
    assert cli(database, modbus_pcap).code == EXIT_OK
    before = row_counts(database)
    assert before["flows"] == 2 and before["captures"] == 1 and before.get("modbus", 0) > 0
    run = cli(database, modbus_pcap)
    assert run.code == EXIT_OK and run.capture("modbus_example.pcap")["status"] == "already_analysed"
    assert "already in the database" in run.messages("modbus_example.pcap")[0]
    assert row_counts(database) == before
    forced = cli(database, modbus_pcap, options=("--force",))
    assert forced.code == EXIT_OK and forced.capture("modbus_example.pcap")["status"] == "complete"
    assert row_counts(database) == before


def test_two_captures_merge_into_one_database(tmp_path: Path, modbus_pcap: Path, enip_pcapng: Path) -> None:
    cli(tmp_path / "a.duckdb", modbus_pcap)
    cli(tmp_path / "b.duckdb", enip_pcapng)
    cli(tmp_path / "both.duckdb", modbus_pcap, enip_pcapng)
    a, b, both = (row_counts(tmp_path / f"{name}.duckdb") for name in ("a", "b", "both"))
    assert set(a) == set(b) == set(both)
    assert both == {table: a[table] + b[table] for table in both}
    assert both["captures"] == 2 and both["flows"] == 3


def test_a_capture_left_running_is_redone_without_duplicates(tmp_path: Path, modbus_pcap: Path) -> None:
    database = tmp_path / "q.duckdb"
    cli(database, modbus_pcap)
    before = row_counts(database)
    with duckdb.connect(str(database)) as connection:
        connection.execute("UPDATE captures SET status = 'running'")
        connection.execute("DELETE FROM flows WHERE client_port = 47785")  # the run died half way through
    run = cli(database, modbus_pcap)
    assert run.code == EXIT_OK and run.capture("modbus_example.pcap")["status"] == "complete"
    assert row_counts(database) == before
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT status FROM captures").fetchall() == [("complete",)]


# -- other link layers carry the same flows -----------------------------------------------------------------


def split_ethernet(frame: bytes) -> tuple[bytes, int, bytes]:
    return frame[6:12], struct.unpack_from("!H", frame, 12)[0], frame[14:]


def as_ipv6(frame: bytes) -> bytes:
    """The Ethernet/IPv4 frame as Ethernet/IPv6: fd00::<IPv4 address>, same transport bytes."""
    ip = frame[14:]
    header_length = (ip[0] & 0x0F) * 4
    total_length, ttl, protocol = struct.unpack_from("!H", ip, 2)[0], ip[8], ip[9]

    def address(raw: bytes) -> bytes:
        return socket.inet_pton(socket.AF_INET6, "fd00::" + socket.inet_ntoa(raw))

    body = ip[header_length:total_length]
    header = struct.pack("!IHBB16s16s", 0x60000000, len(body), protocol, ttl, address(ip[12:16]), address(ip[16:20]))
    return frame[:12] + b"\x86\xdd" + header + body


def reencapsulate(frame: bytes, link_type: int) -> bytes:
    source_mac, ether_type, payload = split_ethernet(frame)
    if link_type == 113:  # Linux cooked v1: packet type, ARPHRD_ETHER, address length, address, protocol
        return struct.pack("!HHH8sH", 0, 1, 6, source_mac + b"\x00\x00", ether_type) + payload
    if link_type == 276:  # Linux cooked v2: protocol, reserved, ifindex, ARPHRD_ETHER, type, address length
        return struct.pack("!HHIHBB8s", ether_type, 0, 3, 1, 0, 6, source_mac + b"\x00\x00") + payload
    if link_type in (101, 228, 229, 12, 14):
        return payload
    family = 2 if ether_type == 0x0800 else 24
    if link_type == 0:  # BSD null: address family in the capturing host's byte order
        return struct.pack("<I", family) + payload
    if link_type == 108:  # OpenBSD loop: network byte order
        return struct.pack("!I", family) + payload
    raise AssertionError(link_type)


LINK_LAYERS = [
    (113, "ipv4", 2),
    (276, "ipv4", 6),
    (101, "ipv4", -14),
    (228, "ipv4", -14),
    (12, "ipv4", -14),
    (14, "ipv4", -14),
    (0, "ipv4", -10),
    (108, "ipv4", -10),
    (113, "ipv6", 2),
    (276, "ipv6", 6),
    (101, "ipv6", -14),
    (229, "ipv6", -14),
    (0, "ipv6", -10),
    (108, "ipv6", -10),
]
COMPARED = (
    "flow_id, community_id, ts, last_ts, transport, client_ip, client_port, server_ip, server_port, vlan, inner_vlan, "
    "client_ttl, server_ttl, packets_to_server, packets_to_client, ip_bytes_to_server, ip_bytes_to_client, "
    "payload_bytes_to_server, payload_bytes_to_client, tcp_flags_to_server, tcp_flags_to_client, state, end_reason, "
    "first_packet, last_packet"
)
BYTES = "packets_to_server, packets_to_client, bytes_to_server, bytes_to_client"


@pytest.mark.parametrize(("link_type", "network", "delta"), LINK_LAYERS, ids=lambda v: str(v))
def test_link_layers_carry_the_same_flows_as_ethernet(
    store: Store, tmp_path: Path, modbus: list[Record], link_type: int, network: str, delta: int
) -> None:
    records = modbus if network == "ipv4" else [replace(r, frame=as_ipv6(r.frame), original=0) for r in modbus]
    ethernet = analyse(store, tmp_path / "ethernet.pcap", pcap_bytes(records))
    other = [replace(r, frame=reencapsulate(r.frame, link_type), original=0) for r in records]
    variant = analyse(store, tmp_path / "variant.pcap", pcap_bytes(other, link_type=link_type))
    assert (variant.status, variant.packets, variant.malformed_packets) == ("complete", 100, 0)
    assert flows(store, variant.capture_id, COMPARED) == flows(store, ethernet.capture_id, COMPARED)
    assert len(flows(store, variant.capture_id, COMPARED)) == 2
    expected = [
        (ps, pc, bs + delta * ps, bc + delta * pc) for ps, pc, bs, bc in flows(store, ethernet.capture_id, BYTES)
    ]
    assert flows(store, variant.capture_id, BYTES) == expected
    if network == "ipv6":
        assert flows(store, variant.capture_id, "client_ip")[0] == ("fd00::7f00:1",)


@pytest.mark.parametrize(
    "relative",
    [
        "icsnpp-s7comm/tests/traces/s7comm_plus.pcap",  # Linux cooked v1
        "suricata-verify/tests/dnp3/dnp3-flood/input.pcap",  # raw IPv4 (228)
        "iti-ics-security-tools/pcaps/dnp3/opendnp3-3/conformance/8.9.2.2/dump.pcap",  # BSD null
    ],
)
def test_real_captures_of_other_link_types(store: Store, modbus_pcap: Path, relative: str) -> None:
    path = modbus_pcap.parents[3] / relative
    if not path.is_file():
        pytest.skip(f"{path} not in the research data")
    result = analyse(store, path)
    assert result.status == "complete" and result.malformed_packets == 0
    in_flows = store.connection.execute(
        "SELECT sum(packets_to_server + packets_to_client) FROM flows WHERE capture_id = ?", [result.capture_id]
    ).fetchone()[0]
    assert in_flows == result.packets > 0


@pytest.mark.parametrize(
    ("tags", "outer", "inner"),
    [
        ([(0x8100, 210)], 210, None),
        ([(0x88A8, 100), (0x8100, 210)], 100, 210),
        ([(0x9100, 7), (0x8100, 4094)], 7, 4094),
    ],
    ids=["802.1Q", "QinQ-802.1ad", "QinQ-9100"],
)
def test_vlan_tags_keep_the_flows_and_set_the_vlan_columns(
    store: Store,
    tmp_path: Path,
    modbus_pcap: Path,
    modbus: list[Record],
    tags: list[tuple[int, int]],
    outer: int,
    inner: int | None,
) -> None:
    plain = analyse(store, modbus_pcap)
    shim = b"".join(struct.pack("!HH", tpid, (5 << 13) | vlan) for tpid, vlan in tags)
    tagged = [replace(r, frame=r.frame[:12] + shim + r.frame[12:], original=0) for r in modbus]
    variant = analyse(store, tmp_path / "vlan.pcap", pcap_bytes(tagged))
    assert (variant.status, variant.malformed_packets) == ("complete", 0)
    without_vlan = COMPARED.replace("flow_id, ", "").replace("vlan, inner_vlan, ", "")
    assert flows(store, variant.capture_id, without_vlan) == flows(store, plain.capture_id, without_vlan)
    assert flows(store, variant.capture_id, "vlan, inner_vlan") == [(outer, inner)] * 2
    delta = len(shim)
    expected = [(ps, pc, bs + delta * ps, bc + delta * pc) for ps, pc, bs, bc in flows(store, plain.capture_id, BYTES)]
    assert flows(store, variant.capture_id, BYTES) == expected


# -- fragments and IPv6 extension headers ------------------------------------------------------------------


def ethernet(ether_type: int, packet: bytes) -> bytes:
    return b"\x00\x80\xf4\x00\x00\x02" + b"\x00\x1b\x1b\x00\x00\x01" + struct.pack("!H", ether_type) + packet


def ipv4(source: str, destination: str, protocol: int, payload: bytes, ident: int = 0x4242, flags: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags, 64, protocol, 0,
        socket.inet_aton(source), socket.inet_aton(destination),
    )  # fmt: skip
    return header + payload


def test_ipv4_fragments_out_of_order_make_one_datagram(store: Store, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 15 + bytes(160)  # 4000 bytes
    datagram = struct.pack("!HHHH", 40000, 502, 8 + len(payload), 0) + payload  # 4008 bytes of IP payload
    pieces = [(0, datagram[:1480], True), (1480, datagram[1480:2960], True), (2960, datagram[2960:], False)]
    frames = {
        offset: ethernet(0x0800, ipv4("10.1.1.20", "10.1.1.10", 17, piece, flags=(more << 13) | (offset // 8)))
        for offset, piece, more in pieces
    }
    reply = ethernet(0x0800, ipv4("10.1.1.10", "10.1.1.20", 17, struct.pack("!HHHH", 502, 40000, 12, 0) + b"ack!"))
    order = [frames[2960], frames[0], frames[1480], reply]
    records = [Record(0, 1_700_000_000, index * 1000, 0, frame) for index, frame in enumerate(order)]
    result = analyse(store, tmp_path / "fragments.pcap", pcap_bytes(records))
    assert (result.status, result.packets, result.flows, result.malformed_packets) == ("complete", 4, 1, 0)
    (row,) = flows(
        store,
        result.capture_id,
        "client_ip, client_port, server_ip, server_port, transport, packets_to_server, packets_to_client, "
        "payload_bytes_to_server, ip_bytes_to_server, bytes_to_server, payload_bytes_to_client, first_packet",
    )
    frame_bytes = sum(len(frame) for frame in frames.values())
    assert row == ("10.1.1.20", 40000, "10.1.1.10", 502, "udp", 1, 1, 4000, 20 + 4008, frame_bytes, 4, 3)


def test_ipv6_extension_headers_before_tcp(store: Store, tmp_path: Path) -> None:
    source, destination = (socket.inet_pton(socket.AF_INET6, a) for a in ("fd00:10::20", "fd00:10::10"))
    segment = struct.pack("!HHIIBBHHH", 50123, 102, 1, 0, 5 << 4, 0x02, 8192, 0, 0) + b"\x03\x00\x00\x07\x02\xf0\x80"
    hop_by_hop = struct.pack("!BB", 60, 0) + b"\x05\x02\x00\x00\x01\x00"  # router alert, next: destination options
    destination_options = struct.pack("!BB", 6, 1) + b"\x01\x0c" + bytes(12)  # PadN, 16 bytes, next: TCP
    body = hop_by_hop + destination_options + segment
    header = struct.pack("!IHBB16s16s", 0x60000000, len(body), 0, 64, source, destination)
    records = [Record(0, 1_700_000_000, 0, 0, ethernet(0x86DD, header + body))]
    result = analyse(store, tmp_path / "ipv6.pcap", pcap_bytes(records))
    assert (result.status, result.flows, result.malformed_packets) == ("complete", 1, 0)
    (row,) = flows(
        store,
        result.capture_id,
        "client_ip, client_port, server_ip, server_port, transport, tcp_flags_to_server, payload_bytes_to_server, "
        "ip_bytes_to_server",
    )
    assert row == ("fd00:10::20", 50123, "fd00:10::10", 102, "tcp", "S", 7, 40 + len(body))

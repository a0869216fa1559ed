"""Two workers (inserts and sha256 on a second thread) store exactly what one worker stores.

Each capture is analysed with ``workers=1`` and ``workers=2`` into its own database and every table's rows are
compared. Small read windows and row groups make the background writer and hash see many batches. Writer
failures must come back to the caller as the same StoreError, without hanging.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from quaywatch.analysis import Analyzer, default_workers
from quaywatch.cli.main import main
from quaywatch.ingest.capture import CaptureReader
from quaywatch.sim.simulate import simulate
from quaywatch.store import database
from quaywatch.store.database import Store, StoreError
from tests.conftest import RESEARCH_DATA

REAL_CAPTURES = [
    "iti-ics-security-tools/pcaps/CIP/cip_only.pcap",
    "iti-ics-security-tools/pcaps/ModbusTCP/mb2.pcap",
    "iti-ics-security-tools/pcaps/s7/s7comm_varservice_libnodavedemo_bench.pcap",
    "iti-ics-security-tools/pcaps/MELSEC/melsoft_variant_clean.pcap",
    "icsnpp-enip/tests/traces/multiple_service_packet_cip.pcapng",
]

WINDOW = 1 << 16
#: Wall-clock columns: when the capture was analysed and its summaries built.
CLOCK_COLUMNS = {"captures": "analysed_at", "rollup_captures": "built_at"}


def _research(relative: str) -> Path:
    path = RESEARCH_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} not found: these tests build their inputs from ../shared/research-data")
    return path


def _tables(database_path: Path, capture: Path, workers: int) -> tuple[object, dict[str, list[tuple[object, ...]]]]:
    """The analysis result and every table's rows (sorted: only the set of rows is the contract)."""
    store = Store(database_path)
    try:
        result = Analyzer(store, buffer_bytes=WINDOW, workers=workers).analyze(capture)
        tables = {}
        for name in store.tables():
            exclude = f" EXCLUDE ({CLOCK_COLUMNS[name]})" if name in CLOCK_COLUMNS else ""
            rows = store.connection.execute(f'SELECT *{exclude} FROM "{name}"').fetchall()
            tables[name] = sorted(rows, key=repr)
    finally:
        store.close()
    summary = (result.status, result.packets, result.bytes, result.flows, result.fault, result.fault_offset)
    return summary, tables


def _assert_same(tmp_path: Path, capture: Path) -> dict[str, list[tuple[object, ...]]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    one = _tables(tmp_path / "one.duckdb", capture, 1)
    two = _tables(tmp_path / "two.duckdb", capture, 2)
    assert one[0] == two[0]
    assert one[1].keys() == two[1].keys()
    for name in one[1]:
        assert one[1][name] == two[1][name], name
    assert sum(len(rows) for rows in one[1].values()) > 0
    return one[1]


@pytest.fixture(autouse=True)
def _small_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many INSERTs per capture, so the writer thread is busy while the decoding goes on."""
    monkeypatch.setattr(Store, "FLUSH_ROWS", 64)


@pytest.mark.parametrize("relative", REAL_CAPTURES)
def test_two_workers_store_the_same_rows_on_real_captures(tmp_path: Path, relative: str) -> None:
    _assert_same(tmp_path, _research(relative))


def test_two_workers_store_the_same_rows_on_a_simulated_terminal(tmp_path: Path) -> None:
    simulate(tmp_path / "sim", seed=5, duration=60.0)
    tables = _assert_same(tmp_path, tmp_path / "sim" / "capture.pcapng")
    # The terminal's traffic exercises every path that moved: content scans, polling decoders, cyclic I/O.
    for name in ("cargo_content", "modbus", "s7comm", "cip", "cip_io", "flows"):
        assert tables.get(name), name


def test_two_workers_keep_every_row_before_a_cut_and_in_gzip(tmp_path: Path) -> None:
    source = _research(REAL_CAPTURES[1]).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(source[: len(source) * 2 // 3])
    _assert_same(tmp_path / "cut", cut)
    assert _tables(tmp_path / "cut" / "again.duckdb", cut, 2)[0][0] == "partial"
    damaged = tmp_path / "damaged.pcap"  # a record half way claims 4 GiB: a fault with its offset
    position = 24
    while position < len(source) // 2:
        position += 16 + int.from_bytes(source[position + 8 : position + 12], "little")
    damaged.write_bytes(source[: position + 8] + b"\xff" * 8 + source[position + 16 :])
    assert _assert_same(tmp_path / "damaged", damaged)
    assert _tables(tmp_path / "damaged" / "again.duckdb", damaged, 2)[0][4]
    not_a_capture = tmp_path / "text.pcap"  # the reader raises at once: the same fault with two workers
    not_a_capture.write_bytes(b"hello, not a capture\n" * 100)
    one = _tables(tmp_path / "text-one.duckdb", not_a_capture, 1)[0]
    assert one == _tables(tmp_path / "text-two.duckdb", not_a_capture, 2)[0]
    assert one[0] == "partial" and "not a pcap" in str(one[4])
    packed = tmp_path / "packed.pcap.gz"
    packed.write_bytes(gzip.compress(source))
    _assert_same(tmp_path / "gzip", packed)


def test_background_hash_is_the_file_sha256(tmp_path: Path) -> None:
    capture = tmp_path / "copy.pcap"
    shutil.copyfile(_research(REAL_CAPTURES[0]), capture)
    plain = CaptureReader(capture, buffer_bytes=WINDOW)
    background = CaptureReader(capture, buffer_bytes=WINDOW, background_hash=True)
    assert sum(b.count for b in plain.batches()) == sum(b.count for b in background.batches()) > 0
    assert plain.sha256 == background.sha256


@pytest.mark.parametrize(
    "failure", [StoreError("db.duckdb: cannot write table flows: disk full"), RuntimeError("boom")]
)
def test_a_writer_failure_is_raised_in_the_caller_and_nothing_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    capture = _research(REAL_CAPTURES[1])
    original = database._insert
    calls = {"count": 0}

    def failing(*arguments: object) -> None:
        calls["count"] += 1
        if calls["count"] == 3:
            raise failure
        original(*arguments)  # type: ignore[arg-type]

    monkeypatch.setattr(database, "_insert", failing)
    store = Store(tmp_path / "db.duckdb")
    before = threading.active_count()
    with pytest.raises(StoreError) as raised:
        Analyzer(store, buffer_bytes=WINDOW, workers=2).analyze(capture)
    expected = str(failure) if isinstance(failure, StoreError) else "the database writer failed: RuntimeError('boom')"
    assert expected in str(raised.value)
    assert store.writer is None
    assert threading.active_count() <= before  # the writer thread ended
    store.close()


def test_a_dead_writer_does_not_hang_the_caller(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.duckdb")
    store.ensure_table("t", database.event_schema(database.pa.schema([])))
    with pytest.raises(StoreError, match="the database writer stopped"), store.background_writes():
        assert store.writer is not None
        store.writer.queue.put(None)  # the thread ends as if it had died
        store.writer.thread.join()
        for _ in range(database._Writer.DEPTH + 2):
            store.writer.submit("t", database.pa.table({"event_type": ["x"]}))
    store.close()


def test_default_workers_follow_the_cores_this_process_may_use() -> None:
    assert 1 <= default_workers() <= 2


def test_the_command_takes_workers_and_stores_the_same(tmp_path: Path) -> None:
    capture = _research(REAL_CAPTURES[1])
    summaries = []
    for workers in ("1", "2", "8"):
        database_path = tmp_path / f"w{workers}.duckdb"
        result = CliRunner().invoke(
            main, ["analyze", str(capture), "--db", str(database_path), "--json", "--workers", workers]
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output.strip().splitlines()[-1])
        summaries.append({key: value for key, value in summary.items() if key not in ("database", "captures")})
    assert summaries[0] == summaries[1] == summaries[2]

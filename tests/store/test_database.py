"""The store: idempotent reruns, merging, resume after a crash, Parquet export."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.store.database import Store
from tests.factories import udp_frame, write_pcap

RESEARCH = Path(__file__).resolve().parents[2].parent / "shared" / "research-data"
MODBUS = RESEARCH / "icsnpp-modbus/testing/traces/modbus_example.pcap"
DNP3 = RESEARCH / "icsnpp-dnp3/testing/traces/dnp3_example.pcap"


def counts(store: Store) -> dict[str, int]:
    return {t: store.connection.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in store.tables()}


@pytest.fixture
def captures(tmp_path: Path) -> list[Path]:
    if MODBUS.exists() and DNP3.exists():
        return [MODBUS, DNP3]
    first = write_pcap(
        tmp_path / "a.pcap", [(1.0 + i, udp_frame("10.0.0.1", "10.0.0.2", 4000 + i, 53, b"x")) for i in range(5)]
    )
    second = write_pcap(
        tmp_path / "b.pcap", [(9.0 + i, udp_frame("10.0.0.3", "10.0.0.2", 4000 + i, 53, b"x")) for i in range(7)]
    )
    return [first, second]


def test_rerun_changes_nothing_and_captures_merge(tmp_path: Path, captures: list[Path]) -> None:
    store = Store(tmp_path / "q.duckdb")
    analyzer = Analyzer(store)
    first = analyzer.analyze(captures[0])
    after_first = counts(store)
    again = analyzer.analyze(captures[0])
    assert again.status == "already_analysed"
    assert counts(store) == after_first
    analyzer.analyze(captures[1])
    merged = counts(store)
    assert merged["captures"] == 2
    assert merged["flows"] > after_first["flows"]
    status = store.connection.execute("SELECT status, packets, sha256 FROM captures ORDER BY name").fetchall()
    assert all(row[0] == "complete" for row in status)
    assert first.capture_id in [r[0] for r in store.connection.execute("SELECT capture_id FROM captures").fetchall()]
    store.close()


def test_interrupted_capture_is_redone_without_duplicates(tmp_path: Path, captures: list[Path]) -> None:
    store = Store(tmp_path / "q.duckdb")
    analyzer = Analyzer(store)
    analyzer.analyze(captures[0])
    clean = counts(store)
    store.connection.execute("UPDATE captures SET status = 'running'")  # as if the process died mid-ingest
    result = analyzer.analyze(captures[0])
    assert result.status == "complete"
    assert counts(store) == clean
    store.close()


def test_sha256_recorded_is_the_whole_file(tmp_path: Path, captures: list[Path]) -> None:
    import hashlib

    store = Store(tmp_path / "q.duckdb")
    Analyzer(store).analyze(captures[0])
    (stored,) = store.connection.execute("SELECT sha256 FROM captures").fetchone()
    assert stored == hashlib.sha256(captures[0].read_bytes()).hexdigest()
    store.close()


def test_export_writes_every_table_as_parquet(tmp_path: Path, captures: list[Path]) -> None:
    store = Store(tmp_path / "q.duckdb")
    Analyzer(store).analyze(captures[0])
    expected = counts(store)
    written = store.export_parquet(tmp_path / "out")
    store.close()
    assert {p.stem for p in written} == set(expected)
    for path in written:
        assert pq.read_table(path).num_rows == expected[path.stem]


def test_unwritable_database_is_a_clear_error(tmp_path: Path) -> None:
    from quaywatch.store.database import StoreError

    bad = tmp_path / "no-such-dir" / "q.duckdb"
    with pytest.raises(StoreError, match="no-such-dir"):
        Store(bad)
    assert not isinstance(StoreError("x"), duckdb.Error)

"""Every query result is read to its end: DuckDB (2.x, as installed) keeps a connection busy while a result read
only in part (``fetchone()``) is open, and its next ``sql()`` or ``register()`` then fails with
ResourceInUseException, however unrelated."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa

from quaywatch.detect.baseline import learning_end
from quaywatch.store.database import CAPTURES_SCHEMA, Store

SOURCE = Path(__file__).resolve().parents[2] / "src" / "quaywatch"


def test_a_one_row_read_leaves_the_connection_free(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.duckdb")
    try:
        store.ensure_table("captures", CAPTURES_SCHEMA)
        store.begin_capture("c1", "one.pcap", "/captures/one.pcap", 10, "test")
        assert store.capture_record("c1") is not None
        store.connection.register("batch", pa.table({"a": [1]}))  # raised after a partial read
        assert store.connection.sql("SELECT a FROM batch").fetchall() == [(1,)]
    finally:
        store.close()
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE flows AS SELECT TIMESTAMPTZ '2026-01-01 00:00:00+00' AS ts, "
        "TIMESTAMPTZ '2026-01-02 00:00:00+00' AS last_ts"
    )
    assert learning_end(con, {"learning_share": 0.5}) is not None
    assert con.sql("SELECT 1").fetchall() == [(1,)]


def test_no_source_reads_a_result_in_part() -> None:
    """fetchall (or reading until a fetch returns nothing) instead of fetchone, everywhere in the package."""
    found = [
        f"{path.relative_to(SOURCE)}:{number}"
        for path in sorted(SOURCE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(r"\.fetchone\(\)", line)
    ]
    assert found == []

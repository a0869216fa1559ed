"""Running the real pipeline with one or more remote-access decoders, and reading their tables back."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Decoder
from quaywatch.store.database import Store

Record = dict[str, object]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def analyse(tmp_path: Path, capture: Path, decoders: list[Decoder]) -> dict[str, list[Record]]:
    """Every table of ``decoders`` (and the anomalies) of one capture, in capture order."""
    store = Store(tmp_path / f"{capture.stem}.duckdb")
    Analyzer(store, decoders=decoders).analyze(require(capture))
    names = {name for decoder in decoders for name in decoder.tables} | {"anomaly"}
    tables: dict[str, list[Record]] = {}
    for name in sorted(names):
        cursor = store.connection.execute(f'SELECT * FROM "{name}" ORDER BY packet_number')
        columns = [column[0] for column in cursor.description]
        tables[name] = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    store.close()
    return tables

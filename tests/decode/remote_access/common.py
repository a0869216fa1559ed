"""Running the real pipeline with one or more remote-access decoders, and reading their tables back."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.decode.base import Decoder
from tests.decode.oracles import analysed_tables

Record = dict[str, object]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def analyse(tmp_path: Path, capture: Path, decoders: list[Decoder]) -> dict[str, list[Record]]:
    """Every table of ``decoders`` (and the anomalies) of one capture, in capture order."""
    names = {name for decoder in decoders for name in decoder.tables} | {"anomaly"}
    return analysed_tables(tmp_path, capture, decoders, sorted(names))

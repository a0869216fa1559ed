"""Shared pieces of the HTTP tests: oracle locations, tshark, and running the analyser on a trace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from quaywatch.decode.base import Decoder
from quaywatch.decode.http import HttpDecoder
from tests.decode.oracles import RESEARCH, analysed_tables

ZEEK = RESEARCH / "zeek-btest/testing/btest"
TSHARK = "/usr/bin/tshark"

Record = dict[str, object]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def tshark(capture: Path, fields: list[str], extra: list[str]) -> list[list[str]]:
    """One list of field values per TCP frame tshark dissects as HTTP (first occurrence of each field)."""
    if not Path(TSHARK).exists() and shutil.which("tshark") is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    command = [TSHARK, "-r", str(capture), *extra, "-Y", "http && tcp", "-T", "fields", "-E", "separator=/t"]
    command += ["-E", "occurrence=f", *[a for name in fields for a in ("-e", name)]]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    return [line.split("\t") for line in result.stdout.splitlines()]


def analyse(tmp_path: Path, capture: Path, decoders: list[Decoder] | None = None) -> tuple[list[Record], list[Record]]:
    """The http rows and the anomalies of one capture, in capture order, through the real pipeline."""
    tables = analysed_tables(tmp_path, capture, decoders or [HttpDecoder()], ["http", "anomaly"])
    return tables["http"], tables["anomaly"]

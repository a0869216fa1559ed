"""A short simulated terminal day analysed into a real DuckDB store, shared by the D6 and D7 tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect.registry import build_context_views
from quaywatch.sim.simulate import simulate


def analysed(directory: Path, seed: int, duration: float, scenarios: list[tuple[str, dict[str, Any]]]) -> Path:
    """Simulate, then ``quaywatch analyze`` with the sim's policy and inventory; returns the database path."""
    simulate(directory, seed=seed, duration=duration, scale=0.2, scenarios=scenarios)
    database = directory / "db.duckdb"
    result = CliRunner().invoke(
        main,
        ["analyze", str(directory / "capture.pcapng"), "--db", str(database), "--policy",
         str(directory / "policy.yaml"), "--inventory", str(directory / "declared-inventory.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return database


def labels(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "labels.jsonl").read_text().splitlines() if line]


def connect(database: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection with the engine's context tables, as run_detections gives the modules."""
    con = duckdb.connect(str(database), read_only=True)
    build_context_views(con)
    return con

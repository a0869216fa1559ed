"""What every scenario test checks: tshark reads it cleanly, labels cover exactly the commented frames,
the generator's accounting matches tshark, and the normal traffic is the same as in a run without it."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import duckdb

from quaywatch.analysis import Analyzer
from quaywatch.sim.simulate import CAPTURE, LABELS, TRUTH, simulate
from quaywatch.store.database import Store
from tests.sim.sources import fields

SEED = 7
DURATION = 45.0


def run(directory: Path, scenarios: list[tuple[str, dict[str, Any]]]) -> Path:
    simulate(directory, seed=SEED, duration=DURATION, scenarios=scenarios)
    return directory


def labels(directory: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in (directory / LABELS).read_text().splitlines()]
    return {record["instance"]: record for record in records}


def check_capture(directory: Path, clean: Path) -> None:
    """The checks every scenario must pass (see the module docstring)."""
    capture = directory / CAPTURE
    rows = fields(capture, "frame.number", "frame.comment", "frame.protocols")
    serious = fields(capture, "frame.number", "_ws.expert.message",
                     display_filter="frame.comment && (_ws.malformed || _ws.expert.severity >= warning)")  # fmt: skip
    assert serious == [], f"tshark warns on scenario frames: {serious[:5]}"
    commented: collections.Counter[int] = collections.Counter()
    for _, comment, _ in rows:
        if comment.startswith("quaywatch-label:"):
            commented[int(comment.split()[1])] += 1
    by_label = {record["label"]: record["packets"] for record in labels(directory).values()}
    assert dict(commented) == {label: packets for label, packets in by_label.items() if packets}
    # The generator's accounting of the scenario's frames (this run's minus the clean run's, per bucket) equals
    # what tshark shows for the commented frames: the last accounting bucket in each frame's protocol stack.
    truth = json.loads((directory / TRUTH).read_text())["packets_by_protocol"]
    clean_truth = json.loads((clean / TRUTH).read_text())["packets_by_protocol"]
    added = {name: count - clean_truth.get(name, 0) for name, count in truth.items()}
    buckets = set(truth)
    counted: collections.Counter[str] = collections.Counter()
    for _, comment, protocols in rows:
        if comment:
            known = [name for name in protocols.split(":") if name in buckets]
            counted[known[-1] if known else f"unaccounted:{protocols}"] += 1
    expected = {name: count for name, count in added.items() if count}
    assert dict(counted) == expected, f"tshark {dict(counted)} != generator {expected}"
    normal = collections.Counter(protocols for _, comment, protocols in rows if not comment)
    clean_counts = collections.Counter(protocols for (protocols,) in fields(clean / CAPTURE, "frame.protocols"))
    assert normal == clean_counts, f"normal traffic changed: {(normal - clean_counts) + (clean_counts - normal)}"


def analyse(directory: Path) -> duckdb.DuckDBPyConnection:
    """quaywatch's own analysis of the capture, as a read-only connection to the store."""
    path = directory / "quaywatch.duckdb"
    store = Store(path)
    Analyzer(store).analyze(directory / CAPTURE)
    store.flush()
    store.close()
    return duckdb.connect(str(path), read_only=True)

"""Shared by the simulator source tests: one source run alone through the real engine, tshark and the pipeline.

Running a single source (instead of the whole simulator) keeps each test a few seconds long and makes the
generator's accounting comparable bucket by bucket with what tshark sees in exactly that source's frames.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.sim.engine import RunSummary, SimulationContext, Source, run
from quaywatch.sim.model import TerminalModel, load_model
from quaywatch.sim.site import site_policy

TSHARK = "/usr/bin/tshark"


@dataclass
class Generated:
    capture: Path
    policy: Path
    summary: RunSummary
    model: TerminalModel
    context: SimulationContext
    source: Source


def generate(
    directory: Path, source: type[Source], seed: int, duration: float, cranes: int, model: Path | None = None
) -> Generated:
    terminal = load_model(model, cranes)
    context = SimulationContext(terminal, seed, terminal.start_epoch, terminal.start_epoch + duration, 1.0)
    instance = source(context)
    directory.mkdir(parents=True, exist_ok=True)
    summary = run(context, [instance], directory / "capture.pcapng")
    policy = directory / "policy.yaml"
    policy.write_text(site_policy(terminal, [instance]))
    return Generated(directory / "capture.pcapng", policy, summary, terminal, context, instance)


def tshark_binary() -> str:
    """tshark's path; a failure, not a skip, without it: the oracle is the point of these tests."""
    path = shutil.which("tshark") or shutil.which(TSHARK)
    if path is None:
        pytest.fail("tshark is not installed: run `make system-packages` (Debian package tshark)")
    return path


def tshark(capture: Path, *arguments: str) -> str:
    result = subprocess.run(
        [tshark_binary(), "-n", "-r", str(capture), *arguments], capture_output=True, text=True, check=True
    )
    return result.stdout


def fields(
    capture: Path, *names: str, display_filter: str | None = None, options: tuple[str, ...] = ()
) -> list[list[str]]:
    """tshark's values of ``names`` per frame (every occurrence, tab-separated), optionally filtered."""
    command = [
        tshark_binary(),
        "-r",
        str(capture),
        *options,
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        "occurrence=a",
    ]
    if display_filter:
        command += ["-Y", display_filter]
    for name in names:
        command += ["-e", name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in output.splitlines()]


def tshark_buckets(capture: Path, buckets: set[str]) -> Counter[str]:
    """Frames per bucket as tshark dissects them: the last protocol of frame.protocols that is a bucket
    (test_simulate.py's rule for the whole simulator)."""
    counts: Counter[str] = Counter()
    for line in tshark(capture, "-T", "fields", "-e", "frame.protocols").splitlines():
        known = [layer for layer in line.split(":") if layer in buckets]
        counts[known[-1] if known else f"unaccounted:{line}"] += 1
    return counts


def warnings(capture: Path) -> str:
    return tshark(capture, "-Y", "_ws.malformed || _ws.expert.severity >= warning")


def analyse(generated: Generated) -> Path:
    """``quaywatch analyze`` with the source's own site policy into ``store.duckdb`` beside the capture."""
    database = generated.capture.parent / "store.duckdb"
    result = CliRunner().invoke(
        main, ["analyze", str(generated.capture), "--db", str(database), "--policy", str(generated.policy)]
    )
    assert result.exit_code == 0, result.output
    return database


def policy_check(generated: Generated) -> str:
    """``quaywatch policy check`` on the source's policy: must pass without errors or warnings."""
    result = CliRunner().invoke(main, ["policy", "check", str(generated.policy)])
    assert result.exit_code == 0, result.output
    return result.output


def rows(database: Path, sql: str) -> list[dict[str, Any]]:
    """Query the store read-only, closing it again so that CLI commands can open it."""
    with duckdb.connect(str(database), read_only=True) as connection:
        cursor = connection.execute(sql)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

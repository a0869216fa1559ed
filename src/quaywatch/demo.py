"""``make demo``: build a container-terminal capture, analyse it, show what is connected and what was found.

Everything runs offline: the capture is generated locally by the traffic
synthesiser, analysed into ``demo-output/quaywatch.duckdb`` and exported as
Parquet next to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from quaywatch.cli.main import main as command
from quaywatch.sim.synthetic import write_capture

OUTPUT = Path("demo-output")
DEMO_PACKETS = 400_000


def run(output: Path = OUTPUT, packets: int = DEMO_PACKETS) -> int:
    console = Console()
    output.mkdir(exist_ok=True)
    capture = output / "terminal.pcap"
    database = output / "quaywatch.duckdb"
    for stale in (database, database.with_name(database.name + ".wal")):
        stale.unlink(missing_ok=True)
    console.rule("[bold]quaywatch demo: a container terminal's OT network")
    console.print(f"generating {packets:,} packets of terminal traffic into {capture} ...")
    write_capture(capture, packets=packets, seed=2026)
    console.print(f"analysing {capture} into {database}\n")
    status = _invoke(["analyze", str(capture), "--db", str(database)])
    if status != 0:
        return status
    console.print("\n[bold]What is connected[/]: the passive asset inventory, with makers and restricted lists")
    status = _invoke(["assets", "--db", str(database)])
    if status != 0:
        return status
    parquet = output / "parquet"
    console.print(f"\nexporting every table to {parquet}/")
    status = _invoke(["export", "--format", "parquet", str(parquet), "--db", str(database)])
    console.print(
        f"\n[bold]Done.[/] Query the store with DuckDB, e.g.\n"
        f"  .venv/bin/python -c \"import duckdb; print(duckdb.connect('{database}').sql("
        f"'SELECT server_port, count(*) FROM flows GROUP BY 1 ORDER BY 2 DESC LIMIT 10'))\""
    )
    return status


def _invoke(arguments: list[str]) -> int:
    try:
        command.main(arguments, standalone_mode=False)
    except SystemExit as exit_status:
        return int(exit_status.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(run())

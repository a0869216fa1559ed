"""``make demo``: a few minutes of a container terminal's life under attack, analysed as a port analyst would.

Everything runs offline, through the same commands a user types:

1. ``quaywatch sim`` builds the terminal's capture with several of the reported attacks switched on, and the
   declared inventory and site policy a real terminal would hold;
2. ``quaywatch analyze`` reads it with that policy and inventory (assets, zones, risk);
3. ``quaywatch detect`` runs the detection catalogue;
4. the inventory and the alerts are printed, and ``quaywatch report`` writes the offline incident report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from quaywatch.cli.main import main as command

OUTPUT = Path("demo-output")
DURATION = "4m"
SEED = 2026
SCENARIOS = (
    "cellular-modem",
    "vendor-remote-access",
    "container-exfiltration",
    "sabotage",
    "weather-station-malware",
    "camera-p2p",
    "reconnaissance",
    "default-credentials",
)


def run(output: Path = OUTPUT, duration: str = DURATION) -> int:
    os.environ.setdefault("COLUMNS", "170")  # tables stay readable when make's output is not a terminal
    console = Console()
    simulated = output / "terminal"
    database = output / "quaywatch.duckdb"
    report = output / "report.html"
    for stale in (database, database.with_name(database.name + ".wal")):
        stale.unlink(missing_ok=True)
    console.rule("[bold]quaywatch demo: a container terminal's OT network")
    console.print(
        f"simulating {duration} of terminal life (4 STS cranes, CMS, OCR, TOS/EDI, CCTV, weather station, offices)\n"
        f"with the reported attacks switched on: {', '.join(SCENARIOS)}"
    )
    steps: list[tuple[str, list[str]]] = [
        ("", ["sim", "--out", str(simulated), "--duration", duration, "--seed", str(SEED), "--quiet",
              *[part for name in SCENARIOS for part in ("--scenario", name)]]),
        (f"\nanalysing {simulated / 'capture.pcapng'} with the terminal's policy and declared inventory",
         ["analyze", str(simulated / "capture.pcapng"), "--db", str(database),
          "--policy", str(simulated / "policy.yaml"), "--inventory", str(simulated / "declared-inventory.csv")]),
        ("\n[bold]What is connected[/]: the passive asset inventory, highest risk first",
         ["assets", "--db", str(database), "--risk", "medium"]),
        ("\n[bold]What was found[/]: the detection catalogue over the store",
         ["detect", "--db", str(database), "--policy", str(simulated / "policy.yaml")]),
        ("", ["alerts", "--db", str(database)]),
        ("\n[bold]The incident report[/]",
         ["report", "--db", str(database), "--policy", str(simulated / "policy.yaml"), "--out", str(report),
          "--title", "Demo terminal: findings of the last minutes"]),
    ]  # fmt: skip
    for title, arguments in steps:
        if title:
            console.print(title)
        status = _invoke(arguments)
        if status not in (0, 1):  # 1: problems found (findings, violations), which is what the demo shows
            console.print(f"[red]quaywatch {arguments[0]} failed with exit status {status}[/]")
            return status
    console.print(
        f"\n[bold]Done.[/] The report is [bold]{report}[/] (one offline HTML file); the store is {database}.\n"
        f"Ground truth of the simulation: {simulated / 'labels.jsonl'}. Try:\n"
        f"  .venv/bin/quaywatch alerts --db {database} --severity high\n"
        f"  .venv/bin/quaywatch alerts show ALERT_ID --db {database}\n"
        f"  .venv/bin/quaywatch map --db {database} --policy {simulated / 'policy.yaml'} --out {output / 'map.html'}"
    )
    return 0


def _invoke(arguments: list[str]) -> int:
    try:
        command.main(arguments, standalone_mode=False)
    except SystemExit as exit_status:
        return int(exit_status.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(run())

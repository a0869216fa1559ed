"""``quaywatch sim``: generate a container terminal's traffic with attack scenarios and ground truth.

Exit codes: 0 written, 2 usage error (bad duration, unknown scenario, bad model file).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from quaywatch.cli.sim_live import live

EXIT_USAGE = 2


@click.group(invoke_without_command=True)
@click.option("--out", "directory", type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same capture, byte for byte.")
@click.option("--duration", default="10m", show_default=True, help="Simulated time: 90s, 10m, 2h, 1d.")
@click.option("--cranes", type=click.IntRange(1, 99), default=None, help="STS cranes (default: the model's).")
@click.option("--scale", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="Traffic rate factor.")
@click.option(
    "--scenario",
    "scenario_texts",
    multiple=True,
    metavar="NAME[:KEY=VALUE,...]",
    help="Switch on a scenario (repeatable); `quaywatch sim scenarios` lists them.",
)
@click.option("--all-scenarios", is_flag=True, help="Switch on every scenario with its defaults.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the run's accounting as one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def sim(
    context: click.Context,
    directory: Path | None,
    seed: int,
    duration: str,
    cranes: int | None,
    scale: float,
    scenario_texts: tuple[str, ...],
    all_scenarios: bool,
    model_path: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """A container terminal in a box: realistic OT traffic, the reported attacks, and ground truth.

    Writes DIR/capture.pcapng, DIR/labels.jsonl, DIR/declared-inventory.csv, DIR/policy.yaml and DIR/truth.json.
    """
    # Imported here, not at the top: every other command would pay the simulator's import (0.1 s) at start-up.
    from quaywatch.sim.model import ModelError
    from quaywatch.sim.scenarios import SCENARIOS
    from quaywatch.sim.simulate import parse_duration, parse_scenario, simulate

    if context.invoked_subcommand is not None:
        return
    console = Console(stderr=True)
    if directory is None:
        raise click.UsageError("--out DIR is required (or a subcommand: scenarios, model, live)")
    try:
        seconds = parse_duration(duration)
        chosen = [parse_scenario(text) for text in scenario_texts]
    except (ValueError, KeyError) as error:
        raise click.UsageError(str(error.args[0] if isinstance(error, KeyError) else error)) from None
    if all_scenarios:
        named = {name for name, _ in chosen}
        chosen += [(scenario.name, {}) for scenario in SCENARIOS if scenario.name not in named]
    progress = Progress(
        TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
        console=console, disable=quiet or as_json,
    )  # fmt: skip
    try:
        with progress:
            task = progress.add_task("sim", total=1.0)
            result = simulate(
                directory,
                seed=seed,
                duration=seconds,
                cranes=cranes,
                scale=scale,
                scenarios=chosen,
                model_path=model_path,
                progress=lambda fraction: progress.update(task, completed=fraction),
            )
    except ModelError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    summary = result.summary
    if as_json:
        click.echo(json.dumps(json.loads((directory / "truth.json").read_text()) | {"directory": str(directory)}))
        return
    if not quiet:
        console.print(
            f"{summary.packets:,} packets ({summary.bytes / 1e6:,.1f} MB) over {summary.simulated_seconds:,.0f} s "
            f"of terminal time in {summary.wall_seconds:.1f} s ({summary.packets_per_second:,.0f} packets/s)"
        )
        for label in summary.labels:
            console.print(f"  scenario {label.instance}: {label.packets:,} packets, {len(label.flows)} flow directions")
        console.print(f"written to {directory}/")


@sim.command("scenarios")
def list_scenarios() -> None:
    """List the attack scenarios with their techniques and parameters."""
    from quaywatch.sim.scenarios import SCENARIOS

    table = Table(title="quaywatch sim scenarios")
    for column in ("name", "what", "ATT&CK", "parameters (defaults)"):
        table.add_column(column, overflow="fold")
    for scenario in SCENARIOS:
        parameters = ", ".join(f"{key}={value}" for key, value in scenario.defaults.items())
        table.add_row(scenario.name, scenario.description, " ".join(scenario.techniques), parameters)
    Console().print(table)


@sim.command("model")
@click.option("--out", "file", type=click.Path(dir_okay=False, path_type=Path), required=True)
def write_model(file: Path) -> None:
    """Write the default terminal model to FILE, to edit and pass back with --model."""
    text = resources.files("quaywatch.data").joinpath("sim", "terminal.yaml").read_text(encoding="utf-8")
    file.write_text(text, encoding="utf-8")
    click.echo(f"wrote {file}")


sim.add_command(live)

"""``quaywatch sim live``: start, stop and inspect the live testbed of real protocol peers."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from quaywatch.cli.text import terminal_safe
from quaywatch.sim.live import namespaces
from quaywatch.sim.live.testbed import Testbed, TestbedError, running, status, stop_leftovers
from quaywatch.sim.live.topology import Topology, TopologyError, load_topology

EXIT_INTERRUPTED = 130
DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from '30s', '2m', '1h', '500ms' or a plain number of seconds."""
    match = DURATION_PATTERN.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r}: use a number with s, m or h, such as 30s or 2m", param_hint="--duration")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


topology_option = click.option(
    "--topology",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Testbed topology YAML (default: the packaged data/sim/testbed.yaml).",
)
capture_option = click.option(
    "--capture",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Record the bridge with dumpcap into this pcapng file.",
)
seed_option = click.option("--seed", type=int, default=1, show_default=True, help="Seed of the crane process models.")
attacker_option = click.option(
    "--attacker/--no-attacker",
    default=True,
    show_default=True,
    help="Run the attack clients (unauthorised Modbus write, S7 STOP).",
)


def _usable(topology_path: Path | None) -> Topology:
    problem = namespaces.available()
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    try:
        return load_topology(topology_path)
    except TopologyError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(2)


def _print_devices(console: Console, topology: Topology, testbed: Testbed) -> None:
    table = Table(title="Live testbed", title_justify="left")
    for column in ("device", "namespace", "address", "mac", "maker", "runs"):
        table.add_column(column)
    for device in topology.devices:
        runs = [f"{device.server} server"] if device.server else []
        if device.client and (testbed.attacker or not device.attack):
            runs.append(f"{device.client} client")
        table.add_row(
            *(terminal_safe(value) for value in (device.name, device.namespace, device.address, device.mac)),
            terminal_safe(device.maker),
            ", ".join(runs),
        )
    console.print(table)


@click.group()
def live() -> None:
    """Live testbed: crane devices as real protocol peers in network namespaces (needs root)."""


@live.command()
@topology_option
@capture_option
@seed_option
@attacker_option
def start(topology: Path | None, capture: Path | None, seed: int, attacker: bool) -> None:
    """Start the testbed in the background; it runs until 'stop'. A running one is replaced."""
    loaded = _usable(topology)
    testbed = Testbed(loaded, capture=capture, seed=seed, attacker=attacker)
    try:
        testbed.start()
    except (TestbedError, namespaces.NamespaceError) as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(1)
    console = Console()
    _print_devices(console, loaded, testbed)
    bridge = terminal_safe(loaded.bridge)
    console.print(f"bridge {bridge} in namespace {namespaces.SWITCH}; logs in {testbed.state_directory}/logs")
    if capture:
        console.print(f"capturing to {terminal_safe(str(capture))}")
    console.print("stop it with: quaywatch sim live stop")


@live.command()
def stop() -> None:
    """Stop the testbed and remove every qw- namespace and link, including any left by a crash."""
    problem = namespaces.available()
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    removed = stop_leftovers()
    click.echo(f"removed {', '.join(removed)}" if removed else "nothing to remove: no testbed is running")


@live.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_command(as_json: bool) -> None:
    """Show the testbed's namespaces and the processes running in them."""
    problem = namespaces.available()
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    report = status()
    if as_json:
        click.echo(json.dumps(report))
        return
    console = Console()
    if not report["running"]:
        console.print("no testbed is running")
        return
    table = Table(title="Live testbed namespaces", title_justify="left")
    table.add_column("namespace")
    table.add_column("processes", justify="right")
    for name, pids in report["namespaces"].items():
        table.add_row(terminal_safe(name), str(len(pids)))
    console.print(table)
    capture = report["state"].get("capture")
    if capture:
        console.print(f"capturing to {terminal_safe(str(capture))}")


@live.command()
@topology_option
@capture_option
@seed_option
@attacker_option
@click.option("--duration", default="30s", show_default=True, help="How long the clients run (30s, 2m, 1h).")
def run(topology: Path | None, capture: Path | None, seed: int, attacker: bool, duration: str) -> None:
    """Start the testbed, run the scripted clients for DURATION while capturing, then always stop it."""
    seconds = parse_duration(duration)
    loaded = _usable(topology)
    testbed = Testbed(loaded, capture=capture, seed=seed, attacker=attacker)
    console = Console(stderr=True)
    try:
        with running(testbed):
            console.print(f"testbed running for {seconds:g} s ({len(testbed.peers)} peers)")
            time.sleep(seconds)
            exited = testbed.exited_peers()
    except KeyboardInterrupt:
        console.print("interrupted: testbed stopped and removed")
        sys.exit(EXIT_INTERRUPTED)
    except (TestbedError, namespaces.NamespaceError) as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(1)
    clients = {peer.name for peer in testbed.peers if "attacker" in peer.name}
    died = [name for name in exited if name not in clients]  # the attacker ends once its attack is done
    if died:
        console.print(f"[yellow]warning:[/] stopped early: {', '.join(died)} (see {testbed.state_directory}/logs)")
    if capture:
        size = capture.stat().st_size if capture.exists() else 0
        console.print(f"capture {terminal_safe(str(capture))}: {size:,} bytes")
    console.print("testbed stopped and removed")

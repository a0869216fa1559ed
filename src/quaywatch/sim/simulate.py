"""``quaywatch sim``: a container terminal in a box, written to a directory.

Outputs (docs/simulator.md):

* ``capture.pcapng``: the terminal's traffic, scenario packets commented with their label;
* ``labels.jsonl``: one object per scenario instance: scenario, techniques, start, end, hosts, flows, expect;
* ``declared-inventory.csv`` and ``policy.yaml``: what the terminal would hold (the modem is not declared);
* ``truth.json``: the generator's own accounting (packets per protocol, devices with makers and roles,
  throughput and peak memory), which the tests compare with tshark and with quaywatch's inventory.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quaywatch.flows.community_id import community_id
from quaywatch.sim.engine import Label, RunSummary, Scenario, SimulationContext, Source, run
from quaywatch.sim.frames import Endpoint
from quaywatch.sim.model import TerminalModel, load_model
from quaywatch.sim.normal import NORMAL_SOURCES
from quaywatch.sim.scenarios import SCENARIOS, scenario_named
from quaywatch.sim.site import declared_inventory, site_policy

CAPTURE = "capture.pcapng"
LABELS = "labels.jsonl"
INVENTORY = "declared-inventory.csv"
POLICY = "policy.yaml"
TRUTH = "truth.json"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"bad duration {text!r}: expected a number with s, m, h or d, such as 10m")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be more than zero")
    return seconds


def parse_scenario(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` (values read as YAML scalars: numbers, true, text)."""
    import yaml

    name, _, rest = text.partition(":")
    parameters: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"bad scenario parameter {item!r} in {text!r}: expected key=value")
        parameters[key.strip()] = yaml.safe_load(value)
    scenario_named(name.strip())  # raises with the known names
    return name.strip(), parameters


@dataclass(slots=True)
class SimulationResult:
    directory: Path
    summary: RunSummary
    model: TerminalModel
    scenarios: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def capture(self) -> Path:
        return self.directory / CAPTURE


def simulate(
    directory: Path,
    seed: int = 1,
    duration: float = 600.0,
    cranes: int | None = None,
    scale: float = 1.0,
    scenarios: list[tuple[str, dict[str, Any]]] | None = None,
    model_path: Path | None = None,
    progress: Callable[[float], None] | None = None,
    measure_memory: bool = False,
) -> SimulationResult:
    """Generate a terminal's traffic and its ground truth into ``directory``."""
    if scale <= 0:
        raise ValueError("scale must be more than zero")
    model = load_model(model_path, cranes)
    chosen = sorted(scenarios or [], key=lambda item: scenario_named(item[0]).build_order)
    for name, parameters in chosen:
        scenario_named(name).prepare(model, parameters)
    start = model.start_epoch
    context = SimulationContext(model, seed, start, start + duration, scale)
    sources: list[Source] = [source(context) for source in NORMAL_SOURCES]
    for name, parameters in chosen:
        scenario_class = scenario_named(name)
        instance: Scenario = scenario_class(context, parameters)
        sources.append(instance)
    directory.mkdir(parents=True, exist_ok=True)
    summary = run(context, sources, directory / CAPTURE, progress=progress, measure_memory=measure_memory)
    (directory / LABELS).write_text("".join(json.dumps(label_record(label)) + "\n" for label in summary.labels))
    (directory / INVENTORY).write_text(declared_inventory(model))
    (directory / POLICY).write_text(site_policy(model, sources))
    truth = {
        "seed": seed,
        "model": model.source,
        "cranes": model.cranes,
        "scale": scale,
        "start": _iso(start),
        "end": _iso(start + duration),
        "scenarios": [{"name": name, "parameters": parameters} for name, parameters in chosen],
        "packets": summary.packets,
        "bytes": summary.bytes,
        "packets_by_protocol": summary.packets_by_protocol,
        "wall_seconds": round(summary.wall_seconds, 3),
        "packets_per_second": round(summary.packets_per_second),
        "peak_memory_bytes": summary.peak_memory_bytes,
        "devices": [_device_truth(device) for device in model.devices if not device.external],
    }
    (directory / TRUTH).write_text(json.dumps(truth, indent=2) + "\n")
    return SimulationResult(directory, summary, model, chosen)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _device_truth(device: Any) -> dict[str, Any]:
    record = asdict(device)
    record["ips"] = [address for _, address in device.gateway_ips] or [device.ip]
    record.pop("gateway_ips")
    record["services"] = list(device.services)
    return record


def label_record(label: Label) -> dict[str, Any]:
    """One labels.jsonl object: what was injected, where, and what a correct detection should report."""
    flows = []
    for entry in sorted(label.flows.values(), key=lambda item: item["first"]):
        source, source_port, destination, destination_port, protocol = entry["tuple"]
        flows.append(
            {
                "community_id": community_id(
                    protocol,
                    Endpoint("", source, b"").ip_bytes,
                    Endpoint("", destination, b"").ip_bytes,
                    source_port,
                    destination_port,
                ),
                "source_ip": source,
                "source_port": source_port,
                "destination_ip": destination,
                "destination_port": destination_port,
                "ip_protocol": protocol,
                "packets": entry["packets"],
            }
        )
    unique: dict[str, dict[str, Any]] = {}
    for flow in flows:  # both directions of a flow share one Community ID
        if flow["community_id"] in unique:
            unique[flow["community_id"]]["packets"] += flow["packets"]
        else:
            unique[flow["community_id"]] = flow
    return {
        "label": label.label_id,
        "scenario": label.scenario,
        "instance": label.instance,
        "techniques": label.techniques,
        "start": _iso(label.start),
        "end": _iso(label.end),
        "hosts": label.hosts,
        "flows": list(unique.values()),
        "packets": label.packets,
        "first_packet": label.first_packet,
        "last_packet": label.last_packet,
        "parameters": label.parameters,
        "expect": label.expect,
    }


def scenario_names() -> list[str]:
    return [scenario.name for scenario in SCENARIOS]

"""Simulated terminal stores for the D1-D3 tests: the simulator's capture, analysed with its policy and inventory."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect import cellular, remote_access, unapproved_flows
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.policy.load import load_policy, load_policy_text
from quaywatch.policy.model import Policy
from quaywatch.sim.simulate import simulate

OUR_MODULES = [unapproved_flows, remote_access, cellular]


@dataclass
class SimulatedSite:
    """One simulated capture analysed into a store, with its policy and ground-truth labels."""

    directory: Path
    database: Path
    policy: Policy
    labels: list[dict[str, Any]]

    def detect(self, policy: Policy | None = None, use_policy: bool = True) -> list[dict[str, Any]]:
        """Run D1-D3 and return their alerts as dicts (detection, severity, key, assets, first/last seen ...)."""
        con = duckdb.connect(str(self.database))
        try:
            context = DetectionContext(policy=(policy or self.policy) if use_policy else None)
            run_detections(con, context, rules=[], modules=OUR_MODULES)
            rows = con.execute(
                "SELECT detection, severity, confidence, key_json, assets, first_seen, last_seen, explanation, "
                "techniques, packet_numbers, score_components FROM alerts WHERE detection LIKE 'D1.%' OR "
                "detection LIKE 'D2.%' OR detection LIKE 'D3.%'"
            ).fetchall()
        finally:
            con.close()
        names = ["detection", "severity", "confidence", "key", "assets", "first_seen", "last_seen", "explanation",
                 "techniques", "packet_numbers", "score_components"]  # fmt: skip
        alerts = [dict(zip(names, row, strict=True)) for row in rows]
        for alert in alerts:
            alert["key"] = json.loads(alert["key"])
        return alerts


def build_site(
    directory: Path,
    seed: int,
    duration: float,
    scenarios: list[tuple[str, dict[str, Any]]] | None = None,
    extra_policy: str = "",
) -> SimulatedSite:
    """Simulate, optionally append YAML to the sim's policy, then `quaywatch analyze` with policy and inventory."""
    simulate(directory, seed=seed, duration=duration, scenarios=scenarios)
    policy_file = directory / "policy.yaml"
    if extra_policy:  # the sim's policy.yaml stays as written, for with_remote_access
        policy_file = directory / "policy-analysed.yaml"
        base = _without_section((directory / "policy.yaml").read_text(encoding="utf-8"), "remote_access")
        policy_file.write_text(base + extra_policy, encoding="utf-8")
    database = directory / "site.duckdb"
    result = CliRunner().invoke(
        main,
        ["analyze", str(directory / "capture.pcapng"), "--db", str(database), "--policy", str(policy_file),
         "--inventory", str(directory / "declared-inventory.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    policy, problems = load_policy(policy_file)
    assert not [problem for problem in problems if problem.severity == "error"], problems
    labels = [json.loads(line) for line in (directory / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
    return SimulatedSite(directory, database, policy, labels)


def with_remote_access(site: SimulatedSite, rules: str) -> Policy:
    """The site's policy with a remote_access section added (YAML list items, indented by two spaces)."""
    text = _without_section((site.directory / "policy.yaml").read_text(encoding="utf-8"), "remote_access")
    text += "remote_access:\n" + rules
    policy, problems = load_policy_text(text)
    assert not [problem for problem in problems if problem.severity == "error"], problems
    return policy


def _without_section(text: str, section: str) -> str:
    """The policy text without one top-level section (the sim's own remote-access rule), so a test sets its own."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line and not line[0].isspace() and not line.startswith(("-", "#")):
            skipping = line.startswith(f"{section}:")
        if not skipping:
            kept.append(line)
    return "".join(kept)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def matches_label(alert: dict[str, Any], label: dict[str, Any], slack: float = 1.0) -> bool:
    """The alert names the label's hosts and overlaps its time span."""
    expect = label["expect"]
    hosts = set(alert["assets"]) | set(alert["key"].values())
    if not set(expect.get("assets") or []) <= hosts or not {expect["source"], expect["destination"]} & hosts:
        return False
    start = parse_time(label["start"]) - dt.timedelta(seconds=slack)
    end = parse_time(label["end"]) + dt.timedelta(seconds=slack)
    return bool(alert["first_seen"] <= end and alert["last_seen"] >= start)

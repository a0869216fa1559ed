"""Attack scenarios from the public reports, one per module.

To add a scenario: write a ``Scenario`` subclass in a module here (its ``name``
is what ``quaywatch sim --scenario NAME`` takes) and add it to ``SCENARIOS``
(one import line, one list entry).
"""

from __future__ import annotations

from quaywatch.sim.engine import Scenario

SCENARIOS: list[type[Scenario]] = []


def scenario_named(name: str) -> type[Scenario]:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    known = ", ".join(scenario.name for scenario in SCENARIOS) or "none"
    raise KeyError(f"unknown scenario {name!r} (known: {known})")

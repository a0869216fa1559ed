"""Attack scenarios from the public reports, one per module.

To add a scenario: write a ``Scenario`` subclass in a module here (its ``name``
is what ``quaywatch sim --scenario NAME`` takes) and add it to ``SCENARIOS``
(one import line, one list entry).
"""

from __future__ import annotations

from quaywatch.sim.engine import Scenario
from quaywatch.sim.scenarios.camera_p2p import CameraP2P
from quaywatch.sim.scenarios.cellular_modem import CellularModem
from quaywatch.sim.scenarios.container_exfiltration import ContainerExfiltration
from quaywatch.sim.scenarios.default_credentials import DefaultCredentials
from quaywatch.sim.scenarios.reconnaissance import Reconnaissance
from quaywatch.sim.scenarios.sabotage import Sabotage
from quaywatch.sim.scenarios.vendor_remote_access import VendorRemoteAccess
from quaywatch.sim.scenarios.weather_station import WeatherStationMalware

SCENARIOS: list[type[Scenario]] = [
    CellularModem,
    VendorRemoteAccess,
    ContainerExfiltration,
    CameraP2P,
    Sabotage,
    WeatherStationMalware,
    Reconnaissance,
    DefaultCredentials,
]


def scenario_named(name: str) -> type[Scenario]:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    known = ", ".join(scenario.name for scenario in SCENARIOS) or "none"
    raise KeyError(f"unknown scenario {name!r} (known: {known})")

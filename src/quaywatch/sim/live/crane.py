"""A small STS crane process model that the testbed's PLC servers publish.

Register values must follow crane physics (positions move at drive speeds,
the load changes only when the twistlocks lock, and wind above the stop limit
halts every motion) so that process-telemetry detections see believable data.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

IDLE, MOVING, WIND_STOP = 0, 1, 2
# One container move: (phase, axis, target as a fraction of the axis limit)
CYCLE: tuple[tuple[str, str, float], ...] = (
    ("trolley_to_ship", "trolley", 0.85),
    ("lower_to_ship", "hoist", 0.10),
    ("lock", "", 0.0),
    ("raise_from_ship", "hoist", 0.85),
    ("trolley_to_quay", "trolley", 0.05),
    ("lower_to_quay", "hoist", 0.05),
    ("unlock", "", 0.0),
    ("raise_from_quay", "hoist", 0.85),
)


@dataclass(slots=True)
class Crane:
    """State of one crane, advanced by ``step``; parameters come from the topology's ``crane`` mapping."""

    settings: dict[str, Any]
    seed: int = 1
    hoist_m: float = 30.0
    trolley_m: float = 5.0
    load_t: float = 0.0
    wind_m_s: float = 8.0
    locked: bool = False
    state: int = IDLE
    wind_sensor_enabled: bool = True
    hoist_speed_setpoint_m_s: float = 0.0
    phase: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.wind_m_s = float(self.settings.get("mean_wind_m_s", 9.0))

    def _limit(self, axis: str) -> float:
        return float(self.settings[f"{axis}_limit_m"])

    def step(self, seconds: float) -> None:
        """Advance the model; wind follows a mean-reverting random walk with gusts."""
        mean = float(self.settings.get("mean_wind_m_s", 9.0))
        gust = self.rng.gauss(0.0, 1.2) * math.sqrt(seconds)
        self.wind_m_s = max(0.0, self.wind_m_s + 0.2 * (mean - self.wind_m_s) * seconds + gust)
        stop = float(self.settings["wind_stop_m_s"])
        measured = self.measured_wind()
        if measured >= stop:
            self.state = WIND_STOP
            return
        if self.state == WIND_STOP and measured > 0.8 * stop:
            return  # hysteresis: resume only once the wind has clearly dropped
        name, axis, fraction = CYCLE[self.phase]
        if not axis:
            self.locked = name == "lock"
            self.load_t = round(self.rng.uniform(8.0, float(self.settings["rated_load_t"])), 1) if self.locked else 0.0
            self._next_phase()
            return
        speed = float(self.settings[f"{axis}_speed_m_s"])
        if axis == "hoist" and self.hoist_speed_setpoint_m_s > 0:
            speed = self.hoist_speed_setpoint_m_s
        current = self.hoist_m if axis == "hoist" else self.trolley_m
        target = fraction * self._limit(axis)
        move = max(-speed * seconds, min(speed * seconds, target - current))
        current += move
        if axis == "hoist":
            self.hoist_m = current
        else:
            self.trolley_m = current
        self.state = MOVING
        if abs(target - current) < 1e-6:
            self._next_phase()

    def _next_phase(self) -> None:
        self.phase = (self.phase + 1) % len(CYCLE)
        self.state = IDLE

    def measured_wind(self) -> float:
        """What the PLC reads from the anemometer: nothing once the sensor has been disabled."""
        return self.wind_m_s if self.wind_sensor_enabled else 0.0

    def values(self) -> dict[str, float]:
        """Engineering values, named as the OPC UA and CIP tags are."""
        return {
            "hoist_position_m": round(self.hoist_m, 2),
            "trolley_position_m": round(self.trolley_m, 2),
            "load_t": self.load_t,
            "wind_speed_m_s": round(self.measured_wind(), 1),
            "twistlocks_locked": float(self.locked),
            "crane_state": float(self.state),
        }

    def registers(self) -> dict[str, int]:
        """Scaled integers for the Modbus holding registers (names match the topology's register map)."""
        return {
            "hoist_position_cm": round(self.hoist_m * 100),
            "trolley_position_cm": round(self.trolley_m * 100),
            "load_100kg": round(self.load_t * 10),
            "wind_speed_dm_s": round(self.measured_wind() * 10),
            "twistlocks_locked": int(self.locked),
            "crane_state": self.state,
            "wind_sensor_enabled": int(self.wind_sensor_enabled),
            "hoist_speed_setpoint_cm_s": round(self.hoist_speed_setpoint_m_s * 100),
        }

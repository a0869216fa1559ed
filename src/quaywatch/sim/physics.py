"""Crane physics and weather: the process values the simulated PLCs serve.

A ship-to-shore crane discharging a vessel repeats one cycle per box, about
90-130 s: trolley out over the bay, hoist down into the cell, lock the
twistlocks, hoist up with the load, trolley in to the landside, lower to the
truck, unlock. Wind drives the stop decision: above the model's
``wind_stop_mps`` (10-second mean) a crane finishes nothing new and parks, so
in normal operation no crane moves in wind above its stop limit (a test checks
it). The cycle schedule, the wind and each box's identity are drawn once for
the whole simulated span from the seed, so any window of time can be evaluated
vectorised and the same instant always gives the same values.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from quaywatch.decode.cargo.iso6346 import check_digit, container_id
from quaywatch.sim.model import TerminalModel

__all__ = ["REGISTER_NAMES", "Move", "TerminalPhysics", "check_digit", "container_id"]

# Cycle phases as fractions of the cycle: (end fraction, name). Positions interpolate within a phase.
PHASES = (
    (0.10, "trolley_out"),
    (0.25, "hoist_down"),
    (0.30, "lock"),
    (0.45, "hoist_up"),
    (0.65, "trolley_in"),
    (0.80, "lower_to_truck"),
    (0.85, "unlock"),
    (1.00, "return"),
)
LOCK_AT = 0.28  # the twistlocks close within the lock phase: the OCR trigger
UNLOCK_AT = 0.83
HOIST_TOP_CM = 4000.0
HOIST_CELL_CM = 1100.0
HOIST_TRUCK_CM = 250.0
TROLLEY_WATERSIDE_CM = 6500.0
TROLLEY_LANDSIDE_CM = 600.0

# Owner codes of major carriers' boxes (BIC-registered prefixes as printed on boxes: Maersk, MSC, CMA CGM, COSCO,
# Hapag-Lloyd, Evergreen, ONE, HMM, Triton and Textainer leasing); serials are drawn at random, check digits computed.
OWNER_CODES = ("MSKU", "MSCU", "CMAU", "CSNU", "HLXU", "EGHU", "ONEU", "HDMU", "TRHU", "TEMU")
SIZE_TYPES = ("22G1", "42G1", "45G1", "45R1", "22T1")
PORTS = ("NLRTM", "CNSHA", "SGSIN", "DEHAM", "USNYC", "CNNGB", "KRPUS", "BEANR", "ESVLC", "USLAX")


@dataclass(frozen=True, slots=True)
class Move:
    """One box moved by a crane: what the OCR reads and the TOS reports."""

    crane: int
    cycle: int
    locked_at: float
    unlocked_at: float
    container: str
    size_type: str
    weight_kg: int
    kind: str  # discharge or load
    bay: int
    row: int
    tier: int
    port_of_loading: str
    port_of_discharge: str


class TerminalPhysics:
    """Wind and every crane's cycle schedule over one simulated span."""

    def __init__(self, model: TerminalModel, start: float, end: float, seed: int) -> None:
        self.model = model
        self.start = start
        self.end = end
        random = np.random.default_rng([seed, 0x5EED])
        seconds = int(np.ceil(end - start)) + 120
        # Wind: a slow mean (AR(1) over minutes) plus gusts; 1 s resolution.
        slow = np.cumsum(random.normal(0, 0.02, seconds))
        slow = 8.0 + 3.0 * np.tanh(slow / 3.0)
        gust = np.convolve(random.normal(0, 1.2, seconds), np.ones(5) / 5, mode="same")
        self._wind = np.clip(slow + gust, 0.0, None)
        kernel = np.ones(10) / 10
        self._wind_mean = np.convolve(self._wind, kernel, mode="full")[:seconds]
        self._direction = (240 + np.cumsum(random.normal(0, 0.5, seconds))) % 360
        self.cycles: dict[int, dict[str, np.ndarray]] = {}
        self.moves: dict[int, list[Move]] = {}
        self.stopped: dict[int, float] = {}  # crane -> when its PLC was put in STOP (sabotage scenario)
        self.wind_tampering: list[WindTampering] = []  # what the weather station reports instead of the wind
        for crane in range(1, model.cranes + 1):
            self._schedule(crane, random)

    # -- weather ------------------------------------------------------------------------------------------

    def _index(self, times: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(times) - self.start).astype(np.int64), 0, self._wind.shape[0] - 1)

    def wind(self, times: np.ndarray) -> np.ndarray:
        """Instantaneous wind speed, m/s."""
        return self._wind[self._index(times)]

    def wind_mean(self, times: np.ndarray) -> np.ndarray:
        """10-second mean wind, m/s: what the stop logic compares with the limit."""
        return self._wind_mean[self._index(times)]

    def wind_direction(self, times: np.ndarray) -> np.ndarray:
        return self._direction[self._index(times)]

    def add_gust_front(self, at: float, rise: float, peak_mps: float, hold: float) -> None:
        """A squall line: the wind rises to ``peak_mps`` over ``rise`` s from ``at``, holds ``hold`` s, then eases.

        Called by a scenario after the crane schedules are drawn, so the cycles
        are *not* re-planned: the cranes keep working as if the stop logic had
        seen calm air. Only the wind-tampering scenario uses it, to make the
        lying sensor matter (the real wind crosses the stop limit).
        """
        seconds = np.arange(self._wind.shape[0], dtype=np.float64) + self.start
        base = float(np.median(self._wind))
        ramp = np.clip((seconds - at) / max(rise, 1.0), 0.0, 1.0)
        ease = np.clip(1.0 - (seconds - at - rise - hold) / max(rise, 1.0), 0.0, 1.0)
        envelope = np.minimum(ramp, ease) * max(peak_mps - base, 0.0)
        self._wind = self._wind + envelope
        self._wind_mean = np.convolve(self._wind, np.ones(10) / 10, mode="full")[: self._wind.shape[0]]

    def tamper_wind(self, start: float, end: float, mode: str, label: int) -> None:
        """From ``start`` to ``end`` the shore weather station reports frozen (``frozen``) or replayed (``replay``)
        wind; the crane anemometers keep reporting the real wind, so a detector can compare the two."""
        if mode not in ("frozen", "replay"):
            raise ValueError(f"wind tampering mode {mode!r}: expected frozen or replay")
        self.wind_tampering.append(WindTampering(start, end, mode, label))

    def weather_station_registers(self, times: np.ndarray) -> np.ndarray:
        """What the shore weather station serves: the real wind, except where its firmware lies."""
        times = np.asarray(times, np.float64)
        values = self.anemometer_registers(times)
        for tampering in self.wind_tampering:
            inside = (times >= tampering.start) & (times < tampering.end)
            if not inside.any():
                continue
            if tampering.mode == "frozen":
                values[inside] = self.anemometer_registers(np.array([tampering.start]))[0]
            else:  # replay the window of the same length just before the tampering
                values[inside] = self.anemometer_registers(times[inside] - (tampering.end - tampering.start))
        return values

    def weather_station_labels(self, times: np.ndarray) -> np.ndarray:
        """Per time, the label of the tampering that changes the weather station's answer (0: none)."""
        times = np.asarray(times, np.float64)
        labels = np.zeros(times.shape[0], np.int64)
        for tampering in self.wind_tampering:
            labels[(times >= tampering.start) & (times < tampering.end)] = tampering.label
        return labels

    # -- cranes --------------------------------------------------------------------------------------------

    def _active_fraction(self, epoch: float) -> float:
        moment = self.model.local_time(epoch).time()
        for shift in self.model.shifts:
            if shift.start <= shift.end:
                inside = shift.start <= moment < shift.end
            else:
                inside = moment >= shift.start or moment < shift.end
            if inside:
                return shift.cranes_active
        return 1.0

    def _schedule(self, crane: int, random: np.random.Generator) -> None:
        span = self.end - self.start + 300
        count = int(span / 80) + 2
        durations = random.uniform(90.0, 130.0, count)
        starts = self.start - random.uniform(0, 100) + np.concatenate([[0.0], np.cumsum(durations[:-1])])
        rank = (crane - 1) / max(self.model.cranes, 1)
        worked = np.array(
            [
                rank < self._active_fraction(float(start))
                and self.wind_mean(np.array([start]))[0] < self.model.wind_stop_mps
                for start in starts
            ]
        )
        # Wind during the cycle also stops it: a cycle is only worked when the whole cycle stays below the limit.
        for index in np.flatnonzero(worked):
            window = np.arange(starts[index], starts[index] + durations[index], 1.0)
            if np.any(self.wind_mean(window) >= self.model.wind_stop_mps):
                worked[index] = False
        self.cycles[crane] = {"start": starts, "duration": durations, "worked": worked}
        moves = []
        bay = int(random.integers(1, 40)) * 2 - 1
        for index in np.flatnonzero(worked):
            owner = OWNER_CODES[int(random.integers(0, len(OWNER_CODES)))]
            serial = int(random.integers(0, 1_000_000))
            size = SIZE_TYPES[int(random.integers(0, len(SIZE_TYPES)))]
            if index % 25 == 0:
                bay = (bay + 2) % 80 + 1
            moves.append(
                Move(
                    crane=crane,
                    cycle=int(index),
                    locked_at=float(starts[index] + LOCK_AT * durations[index]),
                    unlocked_at=float(starts[index] + UNLOCK_AT * durations[index]),
                    container=container_id(owner[:3] + "U", serial),
                    size_type=size,
                    weight_kg=int(random.integers(3_800, 30_480)),
                    kind="discharge" if (index // 40) % 2 == 0 else "load",
                    bay=bay,
                    row=int(random.integers(0, 20)),
                    tier=int(random.integers(1, 10)) * 2 + (80 if random.random() < 0.5 else 0),
                    port_of_loading=PORTS[int(random.integers(0, len(PORTS)))],
                    port_of_discharge=PORTS[int(random.integers(0, len(PORTS)))],
                )
            )
        self.moves[crane] = moves

    def stop_crane(self, crane: int, at: float) -> None:
        """The crane's PLC goes to STOP at ``at``: outputs off, brakes on, the crane freezes where it is.

        From then on its process values hold their value at ``at`` with
        ``moving`` 0 and the run bit of ``status`` cleared, and no later cycle
        is worked (its moves, and so OCR reads and TOS reports, disappear).
        """
        self.stopped[crane] = at
        cycles = self.cycles[crane]
        cycles["worked"] = cycles["worked"] & (cycles["start"] < at)
        self.moves[crane] = [move for move in self.moves[crane] if move.locked_at < at]

    def moves_between(self, crane: int, start: float, end: float) -> list[Move]:
        return [move for move in self.moves[crane] if start <= move.locked_at < end]

    def state(self, crane: int, times: np.ndarray) -> dict[str, np.ndarray]:
        """Process values of one crane at ``times`` (vectorised)."""
        times = np.asarray(times, np.float64)
        stopped_at = self.stopped.get(crane)
        if stopped_at is not None and np.any(times >= stopped_at):
            state = self._state(crane, np.minimum(times, stopped_at))
            after = times >= stopped_at
            state["moving"] = np.where(after, 0.0, state["moving"])
            state["status"] = np.where(after, state["status"].astype(np.int64) & ~0x5, state["status"])
            live = self._state(crane, times)  # the wind and the drives' temperature do not stop with the PLC
            for name in ("wind_decimetres_per_second", "drive_temperature_decidegrees"):
                state[name] = live[name]
            return state
        return self._state(crane, times)

    def _state(self, crane: int, times: np.ndarray) -> dict[str, np.ndarray]:
        cycles = self.cycles[crane]
        index = np.clip(np.searchsorted(cycles["start"], times, side="right") - 1, 0, cycles["start"].shape[0] - 1)
        phase = np.clip((times - cycles["start"][index]) / cycles["duration"][index], 0.0, 1.0)
        worked = cycles["worked"][index]
        hoist = np.select(
            [phase < 0.10, phase < 0.25, phase < 0.30, phase < 0.45, phase < 0.65, phase < 0.80, phase < 0.85],
            [
                np.full_like(phase, HOIST_TOP_CM),
                HOIST_TOP_CM - (HOIST_TOP_CM - HOIST_CELL_CM) * (phase - 0.10) / 0.15,
                np.full_like(phase, HOIST_CELL_CM),
                HOIST_CELL_CM + (HOIST_TOP_CM - HOIST_CELL_CM) * (phase - 0.30) / 0.15,
                np.full_like(phase, HOIST_TOP_CM),
                HOIST_TOP_CM - (HOIST_TOP_CM - HOIST_TRUCK_CM) * (phase - 0.65) / 0.15,
                np.full_like(phase, HOIST_TRUCK_CM),
            ],
            HOIST_TRUCK_CM + (HOIST_TOP_CM - HOIST_TRUCK_CM) * (phase - 0.85) / 0.15,
        )
        trolley = np.select(
            [phase < 0.10, phase < 0.45, phase < 0.65, phase < 0.85],
            [
                TROLLEY_LANDSIDE_CM + (TROLLEY_WATERSIDE_CM - TROLLEY_LANDSIDE_CM) * phase / 0.10,
                np.full_like(phase, TROLLEY_WATERSIDE_CM),
                TROLLEY_WATERSIDE_CM - (TROLLEY_WATERSIDE_CM - TROLLEY_LANDSIDE_CM) * (phase - 0.45) / 0.20,
                np.full_like(phase, TROLLEY_LANDSIDE_CM),
            ],
            np.full_like(phase, TROLLEY_LANDSIDE_CM),
        )
        locked = (phase >= LOCK_AT) & (phase < UNLOCK_AT) & worked
        weights = self._weights(crane)
        load = np.where(locked, weights[index] / 100.0, 0.0)  # 0.1 t units
        parked_hoist, parked_trolley = HOIST_TOP_CM, TROLLEY_LANDSIDE_CM
        hoist = np.where(worked, hoist, parked_hoist)
        trolley = np.where(worked, trolley, parked_trolley)
        wind = self.wind(times)
        wind_stop = self.wind_mean(times) >= self.model.wind_stop_mps
        moving = worked & ~((phase >= 0.25) & (phase < 0.30)) & ~((phase >= 0.80) & (phase < 0.85))
        status = 0x0001 | (wind_stop.astype(np.int64) << 1) | (moving.astype(np.int64) << 2) | (1 << 3)
        gantry = np.full_like(times, 12_000.0 + 3_500.0 * crane)
        return {
            "hoist_cm": hoist,
            "trolley_cm": trolley,
            "gantry_cm": gantry,
            "load_decitonnes": load,
            "twistlocks_locked": locked.astype(np.float64),
            "wind_decimetres_per_second": wind * 10.0,
            "moving": moving.astype(np.float64),
            "cycle": index.astype(np.float64),
            "drive_temperature_decidegrees": 450 + 60 * np.sin((times - self.start) / 3600.0 + crane),
            "status": status.astype(np.float64),
        }

    def _weights(self, crane: int) -> np.ndarray:
        cycles = self.cycles[crane]
        weights = np.zeros(cycles["start"].shape[0])
        for move in self.moves[crane]:
            weights[move.cycle] = move.weight_kg
        return weights

    def registers(self, crane: int, times: np.ndarray) -> np.ndarray:
        """The crane PLC's ten process registers (the order of REGISTER_NAMES) as 16-bit values."""
        state = self.state(crane, times)
        values = np.stack([state[name] for name in REGISTER_NAMES], axis=1)
        return np.clip(np.round(values), 0, 65535).astype(np.int64)

    def anemometer_registers(self, times: np.ndarray) -> np.ndarray:
        """Wind speed (0.1 m/s), 10 s mean (0.1 m/s), direction (degrees), status: a Modbus wind sensor's map."""
        values = np.stack(
            [self.wind(times) * 10, self.wind_mean(times) * 10, self.wind_direction(times), np.ones(len(times))],
            axis=1,
        )
        return np.clip(np.round(values), 0, 65535).astype(np.int64)

    def local(self, epoch: float) -> dt.datetime:
        return self.model.local_time(epoch)


@dataclass(frozen=True, slots=True)
class WindTampering:
    """An interval in which the weather station's firmware reports wind that is not the real wind."""

    start: float
    end: float
    mode: str  # frozen or replay
    label: int


REGISTER_NAMES = (
    "hoist_cm",
    "trolley_cm",
    "gantry_cm",
    "load_decitonnes",
    "twistlocks_locked",
    "wind_decimetres_per_second",
    "moving",
    "cycle",
    "drive_temperature_decidegrees",
    "status",
)

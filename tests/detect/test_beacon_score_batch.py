"""The batched beacon score (``beacon_scores``, what D4 runs) equals the per-series reference (``beacon_score``).

Equal means value for value: the score, eligibility, every fitted value and every component with its explanation,
on the sweep's own beacons and normal traffic (tests/detect/test_beacon_score.py) and on awkward series: too short,
too few gaps after merging close connections, equal times, integer seconds, unsorted input, more than MAX_GAPS gaps.
"""

from __future__ import annotations

import numpy as np
import pytest

from quaywatch.detect.beacon_score import (
    EM_ITERATIONS,
    MAX_GAPS,
    MIN_CONNECTIONS,
    BeaconScore,
    PairContext,
    _hyperexponential_kernel,
    beacon_score,
    beacon_scores,
)
from tests.detect.test_beacon_score import DAY, INTRA_OT, beacon, browsing, polling, sessions

Series = tuple[np.ndarray, np.ndarray]


def _awkward(rng: np.random.Generator) -> list[Series]:
    series: list[Series] = []
    for size in (0, 1, MIN_CONNECTIONS - 1, MIN_CONNECTIONS, MIN_CONNECTIONS + 1):  # at the eligibility edge
        times = np.sort(rng.uniform(0, 3_600, size))
        series.append((times, rng.integers(60, 600, size).astype(np.float64)))
    burst = np.concatenate([np.full(5, 100.0), [100.0005, 400.0, 700.0]])  # gaps merged away: too few left
    series.append((burst, np.full(burst.size, 80.0)))
    ticks = np.round(rng.uniform(0, 20_000, 400))  # integer seconds with repeats: equal times, tied quantiles
    series.append((ticks, np.full(ticks.size, 120.0)))
    shuffled = np.cumsum(rng.uniform(280, 320, 300))
    sizes = rng.integers(300, 500, shuffled.size).astype(np.float64)
    order = rng.permutation(shuffled.size)  # out of time order: both paths sort
    series.append((shuffled[order], sizes[order]))
    long = np.cumsum(rng.uniform(0.9, 1.1, MAX_GAPS * 3))  # more than MAX_GAPS gaps: the latest are kept
    series.append((long, np.where(rng.random(long.size) < 0.1, 9_000.0, 66.0)))
    constant = np.arange(50) * 60.0  # a perfect clock, one size
    series.append((constant, np.full(50, 400.0)))
    return series


def _series() -> list[tuple[Series, PairContext | None]]:
    rng = np.random.default_rng(20261201)
    out: list[tuple[Series, PairContext | None]] = []
    for index, (period, jitter, missed) in enumerate(
        [(60.0, 0.0, 0.0), (300.0, 0.2, 0.2), (3600.0, 0.5, 0.3), (21_600.0, 0.1, 0.1), (0.2, 0.1, 0.0)]
    ):
        duration = 7 * DAY if period > 3600 else (600.0 if period < 1 else DAY)
        out.append((beacon(period, jitter, missed, index, duration), PairContext(client_role="PLC")))
    out += [(polling(period, seed), INTRA_OT) for seed, period in enumerate((0.1, 0.5, 1.0))]
    out += [(browsing(seed, shifts=bool(seed % 2)), None) for seed in range(3)]
    out += [(sessions(seed), PairContext(server_internal=True)) for seed in range(3)]
    out += [(series, PairContext(approved_destination=True)) for series in _awkward(rng)]
    return out


def _same(left: BeaconScore, right: BeaconScore) -> bool:
    return (left.score, left.eligible, left.values, left.components) == (
        right.score,
        right.eligible,
        right.values,
        right.components,
    )


def test_batch_equals_one_call_per_series() -> None:
    cases = _series()
    offsets = np.concatenate([[0], np.cumsum([times.size for (times, _), _ in cases])])
    batch = beacon_scores(
        np.concatenate([times for (times, _), _ in cases]),
        np.concatenate([sizes for (_, sizes), _ in cases]),
        offsets,
        [context for _, context in cases],
    )
    assert len(batch) == len(cases)
    for ((times, sizes), context), result in zip(cases, batch, strict=True):
        reference = beacon_score(times, sizes, context)
        assert _same(reference, result), (reference.values, result.values)
    assert sum(result.eligible for result in batch) >= len(cases) - 6  # most of them are scored


@pytest.mark.parametrize("seed", range(4))
def test_batch_equals_reference_on_random_series(seed: int) -> None:
    """Random renewal processes between a clock and Poisson, in one batch of many series."""
    rng = np.random.default_rng(seed)
    cases: list[Series] = []
    for _ in range(40):
        size = int(rng.integers(MIN_CONNECTIONS, 1_500))
        period = float(rng.choice([0.5, 30.0, 300.0, 3_600.0]))
        regular = rng.uniform(0, 1)
        gaps = period * (regular * rng.uniform(0.8, 1.2, size) + (1 - regular) * rng.exponential(1.0, size))
        gaps *= rng.integers(1, 3, size)  # missed beats
        sizes = np.round(rng.lognormal(6, float(rng.uniform(0.01, 1.5)), size))
        cases.append((1_700_000_000 + np.cumsum(gaps), sizes))
    offsets = np.concatenate([[0], np.cumsum([times.size for times, _ in cases])])
    batch = beacon_scores(
        np.concatenate([times for times, _ in cases]),
        np.concatenate([sizes for _, sizes in cases]),
        offsets,
        [None] * 40,
    )
    for (times, sizes), result in zip(cases, batch, strict=True):
        assert _same(beacon_score(times, sizes), result)


def test_empty_batch() -> None:
    assert beacon_scores(np.empty(0), np.empty(0), np.zeros(1, np.int64), []) == []


def test_the_hyperexponential_stops_at_a_fixed_point_with_the_value_of_every_step() -> None:
    """Most series reach an exact fixed point of the EM in two steps; stopping there gives the 40-step value, bit for
    bit, on clocks, polling, browsing and sessions alike."""
    rng = np.random.default_rng(7)
    series = [beacon(300.0, 0.2, 0.1, 1, DAY)[0], polling(0.5, 2)[0], browsing(3, True)[0], sessions(4)[0]]
    series += [np.cumsum(rng.exponential(scale, 500)) for scale in (1.0, 60.0, 3_600.0)]
    for times in series:
        gaps = np.diff(np.sort(times))
        gaps = gaps[gaps > 1e-3]
        first, second = 1 / max(float(np.quantile(gaps, 0.25)), 1e-6), 1 / max(float(np.quantile(gaps, 0.9)), 1e-6)
        for iterations in (1, 2, 8, EM_ITERATIONS):
            assert _hyperexponential_kernel(gaps, first, second, iterations, True) == _hyperexponential_kernel(
                gaps, first, second, iterations, False
            )

"""Beacon scores: a faithful RITA v5 (and legacy) implementation, and ours, which beats it.

Pure numpy, no I/O: timestamps (seconds, any origin) and per-connection sizes in, a score in [0, 1] and its
explained components out. ``beaconing.py`` feeds it from the store.

RITA (activecm/rita ``analysis/beacons.go``; formula in ../shared/docs/peers-network-monitoring.md section 5) judges
the *shape* of the inter-arrival distribution (Bowley skew, MAD/median) in one 24 h window of hourly bins. Uniform
jitter is symmetric, so it looks regular; a missed beat doubles a gap and breaks the skew; anything slower than a few
hours has too few hours to score; polling inside OT is indistinguishable from C2.

Ours asks a different question: is it more likely that the gaps come from a clock (a period P, each beat jittered,
some beats missed, so a gap is k sleeps of P) than from the best non-periodic process (Poisson or bursty sessions,
modelled as a two-rate hyperexponential)? The period is fitted by EM from several candidates (inter-arrival
quantiles and mode, autocorrelation of binned counts at 1 s to 1 h), so jitter and missed beats are part of the
model instead of noise. Nothing depends on a window or on bin size: the same fit works for 100 ms and for 6 h.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from numba import njit, types

from quaywatch.detect.alert import ScoreComponent
from quaywatch.yaml_files import load_yaml

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

# -- RITA v5 defaults (activecm/rita default_config.hjson) ----------------------------------------------------------

RITA_UNIQUE_CONNECTION_THRESHOLD = 4
RITA_STROBE_CONNECTIONS = 86_400
RITA_WINDOW_SECONDS = 86_400
RITA_HISTOGRAM_BINS = 24
RITA_MODE_SENSITIVITY = 0.05
RITA_BIMODAL_OUTLIER_REMOVAL = 1
RITA_BIMODAL_MIN_HOURS = 11
RITA_DURATION_MIN_HOURS = 6
RITA_CONSISTENCY_IDEAL_HOURS = 12
RITA_WEIGHTS = {"timestamp": 0.25, "data_size": 0.25, "duration": 0.25, "histogram": 0.25}


@dataclass(slots=True)
class BeaconScore:
    """A score in [0, 1] with the components that explain it and the fitted values."""

    score: float
    components: list[ScoreComponent] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    eligible: bool = True


def _round3(value: float) -> float:
    return math.floor(value * 1000 + 0.5) / 1000


def _bowley_score(sorted_values: FloatArray) -> float:
    """RITA's ``1 - |Bowley skew|``, with its forced-zero skew when the quartiles are degenerate."""
    q1, q2, q3 = np.quantile(sorted_values, [0.25, 0.5, 0.75])
    degenerate = q3 - q1 < 10 or q2 in (q1, q3)
    skew = 0.0 if degenerate else float((q1 + q3 - 2 * q2) / (q3 - q1))
    return 1.0 - abs(skew)


def _madm_score(values: FloatArray, default: float) -> float:
    """RITA's ``(median - MAD) / median``, clamped at 0, with a default below a median of 1."""
    median = float(np.median(values))
    if median < 1:
        return default
    mad = float(np.median(np.abs(values - median)))
    return max(0.0, (median - mad) / median)


def rita_score(
    timestamps: FloatArray, sizes: FloatArray, window_end: float | None = None, window_seconds: float = 86_400
) -> BeaconScore:
    """RITA v5's beacon score exactly as documented (4 subscores of weight 0.25), over its single 24 h window.

    Timestamps are truncated to whole seconds (RITA stores ``uint32``), only the last ``window_seconds`` before
    ``window_end`` (default: the last timestamp) are used, and sizes are the client's bytes per connection.
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    end = float(timestamps.max()) if window_end is None and timestamps.size else float(window_end or 0.0)
    start = end - window_seconds
    keep = (timestamps >= start) & (timestamps <= end)
    seconds = np.floor(timestamps[keep])
    sizes = sizes[keep]
    order = np.argsort(seconds, kind="stable")
    seconds, sizes = seconds[order], sizes[order]
    unique = np.unique(seconds)
    if unique.size < RITA_UNIQUE_CONNECTION_THRESHOLD or seconds.size >= RITA_STROBE_CONNECTIONS:
        return BeaconScore(0.0, eligible=False)
    gaps = np.diff(seconds)
    gaps = np.sort(gaps[gaps > 0])
    if gaps.size < 3:
        return BeaconScore(0.0, eligible=False)

    ts_skew = _bowley_score(gaps)
    ts_mad = _madm_score(gaps, default=1.0)
    timestamp_score = _round3((ts_skew + ts_mad) / 2)
    ds_skew = _bowley_score(np.sort(sizes))
    ds_mad = _madm_score(sizes, default=0.0)
    data_size_score = _round3((ds_skew + ds_mad) / 2)

    bin_width = window_seconds / RITA_HISTOGRAM_BINS
    bins = np.minimum(((seconds - np.floor(start)) // bin_width).astype(np.int64), RITA_HISTOGRAM_BINS - 1)
    histogram = np.bincount(bins, minlength=RITA_HISTOGRAM_BINS).astype(np.float64)
    mean = histogram.mean()
    cv = histogram.std() / mean if mean > 0 else 2.0
    cv_score = 0.0 if cv > 1 else 1.0 - cv
    nonempty = histogram[histogram > 0]
    bimodal = 0.0
    if nonempty.size >= RITA_BIMODAL_MIN_HOURS:
        width = max(1.0, math.ceil(nonempty.max() * RITA_MODE_SENSITIVITY))
        buckets = np.sort(np.bincount((nonempty // width).astype(np.int64)))[::-1]
        top_two = float(buckets[:2].sum())
        bimodal = min(1.0, top_two / max(nonempty.size - RITA_BIMODAL_OUTLIER_REMOVAL, 1))
    histogram_score = _round3(max(cv_score, bimodal))

    duration_score = 0.0
    if nonempty.size >= RITA_DURATION_MIN_HOURS:
        coverage = min(1.0, (seconds[-1] - seconds[0]) / window_seconds)
        filled = np.concatenate([histogram > 0, histogram > 0])  # doubled to find runs that wrap around
        longest = run = 0
        for present in filled:
            run = run + 1 if present else 0
            longest = max(longest, run)
        consistency = min(1.0, min(longest, RITA_HISTOGRAM_BINS) / RITA_CONSISTENCY_IDEAL_HOURS)
        duration_score = _round3(max(coverage, consistency))

    subscores = {
        "timestamp": timestamp_score,
        "data_size": data_size_score,
        "duration": duration_score,
        "histogram": histogram_score,
    }
    total = _round3(sum(RITA_WEIGHTS[name] * value for name, value in subscores.items()))
    components = [
        ScoreComponent("rita.timestamp", timestamp_score, 0.25, "Bowley skew and MAD/median of the gaps."),
        ScoreComponent("rita.data_size", data_size_score, 0.25, "Bowley skew and MAD/median of the client bytes."),
        ScoreComponent("rita.duration", duration_score, 0.25, "Span and longest run of active hours in 24 h."),
        ScoreComponent("rita.histogram", histogram_score, 0.25, "Flatness or bimodality of the hourly counts."),
    ]
    return BeaconScore(total, components, dict(subscores))


def rita_legacy_score(timestamps: FloatArray, sizes: FloatArray) -> BeaconScore:
    """RITA v3/v4 (rita-legacy ``pkg/beacon/analyzer.go``): fixed 30 s and 32 B MADM cut-offs, count and smallness."""
    seconds = np.sort(np.floor(np.asarray(timestamps, dtype=np.float64)))
    sizes = np.asarray(sizes, dtype=np.float64)
    if np.unique(seconds).size < RITA_UNIQUE_CONNECTION_THRESHOLD:
        return BeaconScore(0.0, eligible=False)
    gaps = np.diff(seconds)
    gaps = np.sort(gaps[gaps > 0])
    if gaps.size < 3:
        return BeaconScore(0.0, eligible=False)
    median = float(np.median(gaps))
    ts_madm = max(0.0, 1 - float(np.median(np.abs(gaps - median))) / 30)
    span = float(seconds[-1] - seconds[0])
    ts_count = min(1.0, seconds.size / (span / 10)) if span > 0 else 1.0
    size_median = float(np.median(sizes))
    ds_madm = max(0.0, 1 - float(np.median(np.abs(sizes - size_median))) / 32)
    values, counts = np.unique(sizes, return_counts=True)
    ds_small = max(0.0, 1 - float(values[np.argmax(counts)]) / 65535)
    total = _bowley_score(gaps) + ts_madm + ts_count + _bowley_score(np.sort(sizes)) + ds_madm + ds_small
    return BeaconScore(math.ceil(total / 6 * 1000) / 1000, values={"ts_count": ts_count})


# -- ours -----------------------------------------------------------------------------------------------------------

MIN_CONNECTIONS = 6  # five gaps: fewer cannot separate a clock from chance
MAX_GAPS = 1024  # the latest gaps are enough to fit a period; bounds the cost of a 100 ms poller
SAME_BEAT = 0.02  # gaps under 2 % of the median gap join two connections into one beat
MAX_MULTIPLE = 8  # a gap may span up to 8 periods (7 missed beats in a row) before it counts as an outage
TIME_SCALES = (1.0, 10.0, 60.0, 600.0, 3600.0)  # bin widths of the autocorrelation candidates: 1 s to 1 h
EVIDENCE_SCALE = 6.0  # nats of likelihood ratio for a periodicity of 1 - 1/e
EM_ITERATIONS = 40
SCREEN_ITERATIONS = 8  # EM steps every candidate gets before the two best are fitted to convergence
ACF_BINS = 1 << 14  # bins of the autocorrelation: 4.5 h at 1 s, 11 days at 1 min
WEIGHTS = {"periodicity": 0.6, "size_regularity": 0.2, "persistence": 0.2}


@dataclass(frozen=True, slots=True)
class PairContext:
    """What is known about the two ends of a pair, for the asset-role prior."""

    client_role: str | None = None
    client_ot: bool = False  # in an OT zone, or an OT role
    server_ot: bool = False
    server_internal: bool = False  # private, link-local or inside a policy zone
    same_zone: bool = False
    approved_destination: bool = False
    allowed_conduit: bool = False  # the site policy allows every flow of the pair (flow_policy verdicts)


@cache
def role_priors() -> dict[str, Any]:
    """The versioned multipliers and OT roles of src/quaywatch/data/beacon_priors.yaml."""
    text = resources.files("quaywatch.data").joinpath("beacon_priors.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = load_yaml(text)
    return data


def never_outward_roles() -> frozenset[str]:
    """Roles (lower case) whose devices have no business opening connections to the outside."""
    return frozenset(str(role).lower() for role in role_priors()["never_outward_roles"])


def role_prior(context: PairContext) -> tuple[float, str]:
    """The multiplier for this kind of pair and the sentence that justifies it."""
    multipliers = role_priors()["multipliers"]
    role = (context.client_role or "").lower()
    if context.allowed_conduit:
        return float(multipliers["allowed_conduit"]), "the site policy allows this conduit: periodic use is expected"
    if context.server_internal:
        if context.client_ot and context.server_ot:
            return float(multipliers["intra_ot"]), "both ends are inside OT, where periodic polling is normal"
        if context.same_zone:
            return float(multipliers["intra_ot"]), "both ends are internal, in one zone (or no policy zone)"
        return float(multipliers["internal_cross_zone"]), "the server is internal (another zone or unknown zone)"
    if context.approved_destination:
        return float(multipliers["approved_external"]), "the site policy approves this external destination"
    if role in never_outward_roles():
        factor = float(multipliers["never_outward_role_to_external"])
        return factor, f"a {context.client_role} should never talk outward, yet it reaches an external address"
    return float(multipliers["external"]), "the server is outside the site (external or unknown address)"


@njit(types.float64(types.float64[:], types.float64, types.float64, types.int64, types.boolean), cache=True, nogil=True)
def _hyperexponential_kernel(
    gaps: FloatArray, first_rate: float, second_rate: float, iterations: int, stop_at_fixed_point: bool = True
) -> float:
    """EM for two exponential rates; never worse than the plain Poisson fit it starts beside.

    Per gap one exponential of the two components is exp(0) = 1 (the larger one), so only three transcendental
    functions are evaluated per gap and iteration, without a branch; the per-iteration logarithms are taken once.
    The same values as the textbook log-sum-exp, bit for bit. It stops at an exact fixed point of the parameters,
    where the remaining steps could change nothing (``stop_at_fixed_point`` False runs every step: the tests
    compare both).
    """
    size = gaps.size
    mean = gaps.mean()
    poisson = 0.0
    log_mean = math.log(mean)
    for gap in gaps:
        poisson += -log_mean - gap / mean
    rate_one, rate_two = first_rate, second_rate
    weight_one, weight_two = 0.5, 0.5
    total = -np.inf
    for _ in range(iterations):
        mass_one = mass_two = weighted_one = weighted_two = 0.0
        total = 0.0
        log_one = math.log(weight_one) + math.log(rate_one)
        log_two = math.log(weight_two) + math.log(rate_two)
        for gap in gaps:
            first = log_one - rate_one * gap
            second = log_two - rate_two * gap
            peak, low = max(first, second), min(first, second)
            both = peak + math.log(1.0 + math.exp(low - peak))
            total += both
            share = math.exp(first - both)
            mass_one += share
            mass_two += 1 - share
            weighted_one += share * gap
            weighted_two += (1 - share) * gap
        new_weight_one = min(max((mass_one + 1e-12) / size, 1e-6), 1.0)
        new_rate_one = (mass_one + 1e-12) / (weighted_one + 1e-12)
        new_weight_two = min(max((mass_two + 1e-12) / size, 1e-6), 1.0)
        new_rate_two = (mass_two + 1e-12) / (weighted_two + 1e-12)
        if stop_at_fixed_point and (new_weight_one, new_rate_one, new_weight_two, new_rate_two) == (
            weight_one,
            rate_one,
            weight_two,
            rate_two,
        ):
            break  # a fixed point, bit for bit: every further step would give this total again (most series: step 2)
        weight_one, rate_one, weight_two, rate_two = new_weight_one, new_rate_one, new_weight_two, new_rate_two
    return max(poisson, total)


def _hyperexponential_loglik(gaps: FloatArray) -> float:
    """Best log-likelihood of a two-rate exponential mixture: Poisson traffic, or sessions of bursts and pauses."""
    first = 1 / max(float(np.quantile(gaps, 0.25)), 1e-6)
    second = 1 / max(float(np.quantile(gaps, 0.9)), 1e-6)
    return float(_hyperexponential_kernel(gaps, first, second, EM_ITERATIONS, True))


def _autocorrelation_periods(timestamps: FloatArray, median_gap: float) -> list[float]:
    """Period candidates from the autocorrelation of binned counts, at the coarsest scale finer than the beat."""
    span = float(timestamps[-1] - timestamps[0])
    for width in sorted(TIME_SCALES, reverse=True):
        if width * 8 > median_gap or span / width < 16:
            continue
        recent = timestamps[timestamps >= timestamps[-1] - width * ACF_BINS]  # the latest ACF_BINS bins suffice
        counts = np.bincount(((recent - recent[0]) // width).astype(np.int64)).astype(np.float64)
        counts -= counts.mean()
        size = 1 << math.ceil(math.log2(2 * counts.size))
        spectrum = np.fft.rfft(counts, size)
        correlation = np.fft.irfft(spectrum * np.conj(spectrum), size)[: counts.size // 2]
        low = 2
        if correlation.size <= low + 1:
            return []
        lag = low + int(np.argmax(correlation[low:]))
        return [lag * width]
    return []


def _candidates(gaps: FloatArray, timestamps: FloatArray) -> FloatArray:
    """Starting periods: gap quantiles and mode, half the median (many missed beats), the autocorrelation peak."""
    median = float(np.median(gaps))
    quantiles = np.quantile(gaps, [0.1, 0.25, 0.4, 0.5, 0.6]).tolist()
    logs = np.log(gaps)
    spread = max(float(logs.max() - logs.min()), 1e-6)
    counts, edges = np.histogram(logs, bins=min(60, max(10, gaps.size // 4)), range=(logs.min(), logs.min() + spread))
    peak = int(np.argmax(counts))
    mode = float(np.exp((edges[peak] + edges[peak + 1]) / 2))
    return _kept_candidates(median, quantiles, mode, float(np.quantile(gaps, 0.05)), timestamps)


def _kept_candidates(
    median: float, quantiles: list[float], mode: float, fifth: float, timestamps: FloatArray
) -> FloatArray:
    """The candidates within [half the 5 % gap quantile, 1.5 medians], dropping any within 5 % of a smaller one."""
    values = [*quantiles, mode, median / 2, *_autocorrelation_periods(timestamps, median)]
    low, high = fifth * 0.5, median * 1.5
    kept: list[float] = []
    for value in sorted(v for v in values if low <= v <= high and v > 0):
        if not kept or value > kept[-1] * 1.05:
            kept.append(value)
    return np.array(kept or [median])


@njit(
    types.UniTuple(types.float64, 5)(
        types.float64[:], types.float64, types.float64, types.float64, types.float64, types.int64, types.int64
    ),
    cache=True,
    nogil=True,
)
def _clock_kernel(
    gaps: FloatArray, period: float, sigma: float, hit: float, outage: float, iterations: int, largest: int
) -> tuple[float, float, float, float, float]:
    """EM from one starting point; returns log-likelihood, period, sigma, hit rate and outage share.

    Per gap only the three multiples nearest it are evaluated (the others carry no weight once sigma < P/3). The
    M-step is accumulated in the same pass: P = sum(r·g) / sum(r·k) and sigma² = sum(r·(g - kP)²/k) / sum(r),
    expanded so that the new P can be used without a second pass.
    """
    size = gaps.size
    high = gaps.max()
    log_gaps = np.log(gaps)
    log_multiples = np.log(np.arange(1, largest + 1).astype(np.float64))
    loglik = -np.inf
    half_log_two_pi = 0.5 * math.log(2 * math.pi)
    values = np.empty(4)
    for _ in range(iterations):
        log_hit = math.log(hit)
        log_miss = math.log1p(-hit)
        constant = math.log1p(-outage) + log_hit - math.log1p(-((1 - hit) ** largest)) - half_log_two_pi
        constant -= math.log(sigma)
        log_outage = math.log(outage)
        start = (largest + 0.5) * period
        log_width = math.log(math.log(max(high / start, 1.0 + 1e-9)) + 1.0)
        inverse_variance = 1.0 / (2 * sigma * sigma)
        comb_mass = beats = weighted = squares = outage_mass = 0.0
        loglik = 0.0
        for position in range(size):
            gap = gaps[position]
            nearest = min(max(round(gap / period), 1.0), float(largest))
            first = min(max(nearest - 1.0, 1.0), float(largest - 2))
            for index in range(3):
                multiple = first + index
                residual = gap - period * multiple
                values[index] = (
                    constant
                    + (multiple - 1) * log_miss
                    - 0.5 * log_multiples[int(multiple) - 1]
                    - residual * residual * inverse_variance / multiple
                )
            values[3] = log_outage - log_gaps[position] - log_width if gap > start else -np.inf
            peak = max(values[0], values[1], values[2], values[3])
            summed = 0.0
            for index in range(4):
                values[index] = math.exp(values[index] - peak)
                summed += values[index]
            loglik += peak + math.log(summed)
            for index in range(3):
                multiple = first + index
                share = values[index] / summed
                comb_mass += share
                beats += share * multiple
                weighted += share * gap
                squares += share * gap * gap / multiple
            outage_mass += values[3] / summed
        previous = period
        period = weighted / (beats + 1e-12)
        variance = (squares - 2 * period * weighted + period * period * beats) / (comb_mass + 1e-12)
        sigma = min(max(math.sqrt(max(variance, 0.0)), max(0.003 * period, 1e-4)), 0.3 * period)
        hit = min(max((comb_mass + 1e-12) / (beats + 1e-12), 0.05), 0.999)
        outage = min(max(outage_mass / size, 0.01), 0.2)
        if abs(period - previous) <= 1e-5 * period:
            break
    return loglik, period, sigma, hit, outage


def _fit_period(gaps: FloatArray, timestamps: FloatArray) -> dict[str, float]:
    """Fit gap = k sleeps of P ± sigma·sqrt(k), k geometric (missed beats), plus outages, from every candidate.

    Every candidate gets a few EM steps; the two most likely go on to convergence (the others rarely overtake).
    """
    starts = [
        _clock_kernel(gaps, float(period), 0.1 * float(period), 0.8, 0.05, SCREEN_ITERATIONS, MAX_MULTIPLE)
        for period in _candidates(gaps, timestamps)
    ]
    starts.sort(key=lambda fit: fit[0], reverse=True)
    best: tuple[float, float, float, float, float] | None = None
    fallback: tuple[float, float, float, float, float] | None = None
    for _, period, sigma, hit, outage in starts[:2]:
        fit = _clock_kernel(gaps, period, sigma, hit, outage, EM_ITERATIONS, MAX_MULTIPLE)
        if fallback is None or fit[0] > fallback[0]:
            fallback = fit
        # More than half the beats missed: a sub-multiple of the period, not the period.
        if fit[3] >= 0.5 and (best is None or fit[0] > best[0]):
            best = fit
    loglik, period, sigma, hit, _ = best or fallback or (-math.inf, float(np.median(gaps)), 0.0, 1.0, 0.0)
    return {
        "loglik": float(loglik),
        "period": float(period),
        "jitter": float(math.sqrt(3) * sigma / period),  # half-width of the equivalent uniform jitter
        "missed_beats": float(1 - hit),
    }


def _size_regularity(sizes: FloatArray) -> float:
    """Share of connections within ±15 % (at least ±32 B) of the two most common sizes: check-ins and tasks."""
    if sizes.size == 0:
        return 0.0
    median = float(np.median(sizes))
    near = np.abs(sizes - median) <= max(0.15 * median, 32.0)
    rest = sizes[~near]
    if rest.size:
        second = float(np.median(rest))
        near |= np.abs(sizes - second) <= max(0.15 * second, 32.0)
        return float(near.mean()) * (0.9 if rest.size > 0.1 * sizes.size else 1.0)
    return float(near.mean())


def _describe_period(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds:.0f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"


def _describe_duration(seconds: float) -> str:
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 4 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def beacon_score(timestamps: FloatArray, sizes: FloatArray, context: PairContext | None = None) -> BeaconScore:
    """Our beacon score for one pair: periodicity (likelihood ratio), size regularity, persistence, role prior."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    order = np.argsort(timestamps, kind="stable")
    timestamps, sizes = timestamps[order], sizes[order]
    if timestamps.size < MIN_CONNECTIONS:
        return BeaconScore(0.0, eligible=False, values={"connections": float(timestamps.size)})
    gaps = np.diff(timestamps)
    # Connections a few percent of the typical gap apart are one beat (a beacon opening two sockets, a retry).
    gaps = gaps[gaps > max(1e-3, SAME_BEAT * float(np.median(gaps)))][-MAX_GAPS:]
    if gaps.size < MIN_CONNECTIONS - 1:
        return BeaconScore(0.0, eligible=False, values={"connections": float(timestamps.size)})
    recent = timestamps[-(gaps.size + 1) :]
    fit = _fit_period(gaps, recent)
    size_regularity = _size_regularity(sizes[-(gaps.size + 1) :])
    median_bytes = float(np.median(sizes))
    return _result(gaps, fit, _hyperexponential_loglik(gaps), size_regularity, median_bytes, timestamps.size, context)


def _result(
    gaps: FloatArray,
    fit: dict[str, float],
    hyperexponential: float,
    size_regularity: float,
    median_bytes: float,
    connections: int,
    context: PairContext | None,
) -> BeaconScore:
    """The score and its explained components from the fitted clock and the rival's log-likelihood."""
    # The clock has one parameter more than the hyperexponential (period, spread, hit rate, outage share against two
    # rates and a weight): charge it the BIC price, so few gaps of random traffic cannot pass for a clock.
    evidence = fit["loglik"] - hyperexponential - 0.5 * math.log(gaps.size)
    periodicity = 1 - math.exp(-max(evidence, 0.0) / EVIDENCE_SCALE)
    period, jitter, missed = fit["period"], fit["jitter"], fit["missed_beats"]
    # Persistence: a clock ticks through the whole observation; sessions leave most of it silent. Time spent in
    # pauses longer than MAX_MULTIPLE periods is the silent share.
    pauses = gaps[gaps > (MAX_MULTIPLE + 0.5) * period]
    span = float(gaps.sum())
    persistence = max(0.0, 1 - float(pauses.sum()) / span) if span > 0 else 0.0
    context = context or PairContext()
    prior, prior_reason = role_prior(context)
    base = (
        WEIGHTS["periodicity"] * periodicity
        + WEIGHTS["size_regularity"] * size_regularity
        + WEIGHTS["persistence"] * persistence
    )
    # Size and persistence support a period; they cannot make one: without periodicity the score stays low.
    base *= periodicity
    score = min(1.0, base * prior)
    every = f"every {_describe_period(period)} ± {jitter * 100:.0f}%"
    components = [
        ScoreComponent(
            "periodicity",
            round(periodicity, 3),
            WEIGHTS["periodicity"],
            f"Connections come {every} with {missed * 100:.0f}% of beats missed; a clock explains the gaps "
            f"{evidence:.1f} nats better than Poisson or bursty sessions.",
        ),
        ScoreComponent(
            "size_regularity",
            round(size_regularity, 3),
            WEIGHTS["size_regularity"],
            f"{size_regularity * 100:.0f}% of connections carry one or two recurring sizes "
            f"(median {median_bytes:.0f} B to the server).",
        ),
        ScoreComponent(
            "persistence",
            round(persistence, 3),
            WEIGHTS["persistence"],
            f"The beats cover {persistence * 100:.0f}% of the {_describe_duration(span)} observed "
            f"({pauses.size} pauses longer than {MAX_MULTIPLE} periods).",
        ),
        ScoreComponent("role_prior", prior, 1.0, f"Score multiplied by {prior:g}: {prior_reason}."),
    ]
    values = {
        "period_seconds": period,
        "jitter": jitter,
        "missed_beats": missed,
        "evidence_nats": evidence,
        "connections": float(connections),
        "periodicity": periodicity,
        "size_regularity": size_regularity,
        "persistence": persistence,
        "role_prior": prior,
        "median_bytes": median_bytes,
    }
    return BeaconScore(round(score, 4), components, values)


# -- ours, many series at once -----------------------------------------------------------------------------------------
#
# beacon_scores() gives exactly what beacon_score() gives for each series (tests/detect/test_beacon_score.py checks
# it value for value), with the per-series numpy calls replaced by compiled passes over all series: the gap filter,
# the gap medians and quantiles (numpy's "linear" method, order statistics of the sorted gaps), the log-gap histogram
# (numpy's binning, edges as numpy.linspace makes them), the EM fits of every candidate and the hyperexponential, and
# the size regularity. Logarithms and exponentials that beacon_score takes with numpy (log-gaps, the mode) are taken
# with numpy here too, over all series at once: numpy's and the C library's results may differ in the last bit.

_GAP_QUANTILES = np.array([0.1, 0.25, 0.4, 0.5, 0.6, 0.05, 0.9])  # the candidates', then the bounds' and the rates'
_INELIGIBLE_FEW_CONNECTIONS, _INELIGIBLE_FEW_GAPS = 1, 2


@njit(cache=True, nogil=True)
def _sorted_median(values: FloatArray) -> float:
    """numpy.median of ascending ``values``."""
    half = values.size // 2
    if values.size % 2:
        return float(values[half])
    return float((values[half - 1] + values[half]) / 2.0)


@njit(cache=True, nogil=True)
def _sorted_quantile(values: FloatArray, quantile: float) -> float:
    """numpy.quantile (method "linear") of ascending ``values``."""
    virtual = (values.size - 1) * quantile
    if virtual >= values.size - 1:
        return float(values[values.size - 1])
    previous = math.floor(virtual)
    gamma = virtual - previous
    low, high = values[int(previous)], values[int(previous) + 1]
    difference = high - low
    if gamma >= 0.5:
        return float(high - difference * (1 - gamma))
    return float(low + difference * gamma)


@njit(
    types.Tuple((types.float64[:], types.int64[:, :], types.float64[:, :], types.int64[:]))(
        types.float64[:], types.int64[:], types.float64[:]
    ),
    cache=True,
    nogil=True,
)
def _gap_stats(
    timestamps: FloatArray, offsets: np.ndarray[Any, Any], quantiles: FloatArray
) -> tuple[FloatArray, np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Per series: its kept gaps (into one array, ``bounds``), their median and ``quantiles``, and why it is not
    scored (0: it is)."""
    count = offsets.size - 1
    buffer = np.empty(max(timestamps.size - 1, 0))
    bounds = np.zeros((count, 2), np.int64)
    stats = np.zeros((count, quantiles.size + 1))
    status = np.zeros(count, np.int64)
    used = 0
    for series in range(count):
        start, end = offsets[series], offsets[series + 1]
        bounds[series, 0] = bounds[series, 1] = used
        if end - start < MIN_CONNECTIONS:
            status[series] = _INELIGIBLE_FEW_CONNECTIONS
            continue
        raw = timestamps[start + 1 : end] - timestamps[start : end - 1]
        threshold = max(1e-3, SAME_BEAT * _sorted_median(np.sort(raw)))
        kept = 0
        for gap in raw:
            if gap > threshold:
                kept += 1
        if min(kept, MAX_GAPS) < MIN_CONNECTIONS - 1:
            status[series] = _INELIGIBLE_FEW_GAPS
            continue
        skip, seen, position = max(kept - MAX_GAPS, 0), 0, used
        for gap in raw:
            if gap > threshold:
                if seen >= skip:
                    buffer[position] = gap
                    position += 1
                seen += 1
        bounds[series, 1] = position
        ordered = np.sort(buffer[used:position])
        stats[series, 0] = _sorted_median(ordered)
        for index in range(quantiles.size):
            stats[series, index + 1] = _sorted_quantile(ordered, quantiles[index])
        used = position
    return buffer[:used], bounds, stats, status


@njit(types.float64[:](types.float64[:], types.int64[:, :], types.int64[:]), cache=True, nogil=True)
def _log_gap_modes(logs: FloatArray, bounds: np.ndarray[Any, Any], status: np.ndarray[Any, Any]) -> FloatArray:
    """Per series: the centre of the fullest bin of numpy.histogram(log gaps), as _candidates bins them."""
    middles = np.zeros(bounds.shape[0])
    for series in range(bounds.shape[0]):
        if status[series]:
            continue
        values = logs[bounds[series, 0] : bounds[series, 1]]
        first = values.min()
        last = first + max(values.max() - first, 1e-6)
        bins = min(60, max(10, values.size // 4))
        delta = last - first
        step = delta / bins
        edges = np.empty(bins + 1)
        for index in range(bins):
            edges[index] = index / bins * delta + first if step == 0 else index * step + first
        edges[bins] = last
        counts = np.zeros(bins, np.int64)
        for value in values:
            if not (value >= first and value <= last):
                continue
            index = int((value - first) / delta * bins)
            if index == bins:
                index -= 1
            if value < edges[index]:
                index -= 1
            if value >= edges[index + 1] and index != bins - 1:
                index += 1
            counts[index] += 1
        peak = np.argmax(counts)
        middles[series] = (edges[peak] + edges[peak + 1]) / 2
    return middles


@njit(
    types.float64[:, :](
        types.float64[:], types.int64[:, :], types.int64[:], types.float64[:], types.int64[:], types.float64[:, :]
    ),
    cache=True,
    nogil=True,
)
def _fits(
    gaps: FloatArray,
    bounds: np.ndarray[Any, Any],
    status: np.ndarray[Any, Any],
    candidates: FloatArray,
    candidate_offsets: np.ndarray[Any, Any],
    rates: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """_fit_period and the hyperexponential of every series: (loglik, period, sigma, hit rate, rival loglik)."""
    results = np.full((bounds.shape[0], 5), np.nan)
    for series in range(bounds.shape[0]):
        if status[series]:
            continue
        values = gaps[bounds[series, 0] : bounds[series, 1]]
        first, last = candidate_offsets[series], candidate_offsets[series + 1]
        starts = np.empty((last - first, 5))
        for index in range(last - first):
            period = candidates[first + index]
            starts[index, :] = _clock_kernel(values, period, 0.1 * period, 0.8, 0.05, SCREEN_ITERATIONS, MAX_MULTIPLE)
        # The two most likely starts, ties in candidate order (a stable sort, most likely first).
        top = np.full(2, -1, np.int64)
        for rank in range(min(2, last - first)):
            for index in range(last - first):
                if index == top[0]:
                    continue
                if top[rank] < 0 or starts[index, 0] > starts[top[rank], 0]:
                    top[rank] = index
        best = np.full(5, np.nan)
        fallback = np.full(5, np.nan)
        have_best = have_fallback = False
        for rank in range(min(2, last - first)):
            start = starts[top[rank]]
            fit = _clock_kernel(values, start[1], start[2], start[3], start[4], EM_ITERATIONS, MAX_MULTIPLE)
            if not have_fallback or fit[0] > fallback[0]:
                fallback[:] = fit
                have_fallback = True
            # More than half the beats missed: a sub-multiple of the period, not the period.
            if fit[3] >= 0.5 and (not have_best or fit[0] > best[0]):
                best[:] = fit
                have_best = True
        results[series, :4] = (best if have_best else fallback)[:4]
        results[series, 4] = _hyperexponential_kernel(values, rates[series, 0], rates[series, 1], EM_ITERATIONS, True)
    return results


@njit(cache=True, nogil=True)
def _size_regularity_kernel(sizes: FloatArray) -> float:
    """_size_regularity."""
    if sizes.size == 0:
        return 0.0
    median = _sorted_median(np.sort(sizes))
    near = np.abs(sizes - median) <= max(0.15 * median, 32.0)
    rest = sizes[~near]
    if rest.size:
        second = _sorted_median(np.sort(rest))
        near |= np.abs(sizes - second) <= max(0.15 * second, 32.0)
        return near.sum() / near.size * (0.9 if rest.size > 0.1 * sizes.size else 1.0)
    return near.sum() / near.size


@njit(types.float64[:, :](types.float64[:], types.int64[:], types.int64[:, :], types.int64[:]), cache=True, nogil=True)
def _size_stats(
    sizes: FloatArray, offsets: np.ndarray[Any, Any], bounds: np.ndarray[Any, Any], status: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """Per series: (size regularity of the sizes of its kept gaps' connections, median of all its sizes)."""
    results = np.zeros((bounds.shape[0], 2))
    for series in range(bounds.shape[0]):
        if status[series]:
            continue
        end = offsets[series + 1]
        kept = bounds[series, 1] - bounds[series, 0]
        results[series, 0] = _size_regularity_kernel(sizes[end - (kept + 1) : end])
        results[series, 1] = _sorted_median(np.sort(sizes[offsets[series] : end]))
    return results


def beacon_scores(
    timestamps: FloatArray,
    sizes: FloatArray,
    offsets: np.ndarray[Any, Any],
    contexts: Sequence[PairContext | None],
) -> list[BeaconScore]:
    """:func:`beacon_score` of every series ``timestamps[offsets[i]:offsets[i + 1]]`` (with its sizes and
    ``contexts[i]``), computed for all series at once; equal, value for value, to one call per series."""
    timestamps = np.ascontiguousarray(timestamps, dtype=np.float64)
    sizes = np.ascontiguousarray(sizes, dtype=np.float64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    count = offsets.size - 1
    series_of = np.repeat(np.arange(count), np.diff(offsets))
    backwards = (np.diff(timestamps) < 0) & (series_of[1:] == series_of[:-1])
    if backwards.any() or np.isnan(timestamps).any():  # each series in time order, as beacon_score sorts it
        order = np.lexsort((timestamps, series_of))
        timestamps, sizes = timestamps[order], sizes[order]
    gaps, bounds, stats, status = _gap_stats(timestamps, offsets, _GAP_QUANTILES)
    modes = np.exp(_log_gap_modes(np.log(gaps), bounds, status))
    candidates: list[FloatArray] = []
    for series in range(count):
        if status[series]:
            candidates.append(np.empty(0))
            continue
        end, kept = int(offsets[series + 1]), int(bounds[series, 1] - bounds[series, 0])
        median, quantiles = float(stats[series, 0]), stats[series, 1:6].tolist()
        recent = timestamps[end - (kept + 1) : end]
        candidates.append(_kept_candidates(median, quantiles, float(modes[series]), float(stats[series, 6]), recent))
    candidate_offsets = np.concatenate([[0], np.cumsum([part.size for part in candidates])]).astype(np.int64)
    rates = 1 / np.maximum(stats[:, [2, 7]], 1e-6)  # the hyperexponential starts at the 25 % and 90 % gap quantiles
    fits = _fits(gaps, bounds, status, np.concatenate([np.empty(0), *candidates]), candidate_offsets, rates)
    size_stats = _size_stats(sizes, offsets, bounds, status)
    results: list[BeaconScore] = []
    for series, context in enumerate(contexts):
        connections = int(offsets[series + 1] - offsets[series])
        if status[series]:
            results.append(BeaconScore(0.0, eligible=False, values={"connections": float(connections)}))
            continue
        loglik, period, sigma, hit, rival = (float(value) for value in fits[series])
        fit = {
            "loglik": loglik,
            "period": period,
            "jitter": float(math.sqrt(3) * sigma / period),
            "missed_beats": float(1 - hit),
        }
        part = gaps[bounds[series, 0] : bounds[series, 1]]
        regularity, median_bytes = float(size_stats[series, 0]), float(size_stats[series, 1])
        results.append(_result(part, fit, rival, regularity, median_bytes, connections, context))
    return results

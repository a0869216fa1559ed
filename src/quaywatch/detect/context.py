"""What every detection is given besides the store: the site policy, the clock and options.

One object, so adding an input later (a baseline, a threat-intelligence set) does not change every detection's
signature. ``now`` is passed in rather than read so that a test, or a re-run over old captures, is deterministic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quaywatch.policy.model import Policy


@dataclass(frozen=True, slots=True)
class DetectionContext:
    """The loaded policy (None without one), the time of the run and free-form per-detection options."""

    policy: Policy | None = None
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    options: dict[str, Any] = field(default_factory=dict)
    #: Address enrichment, each ``ip -> {"country": ..., "asn": ...}`` (intel/geoip.py reads the site's MaxMind DB
    #: files); the first to answer a field wins. Empty: destinations stay "unknown", as offline without a file.
    enrichers: tuple[Callable[[str], dict[str, str]], ...] = ()

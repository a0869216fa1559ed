"""The alert record every detection produces, rule file or statistical module alike.

Modelled on Zeek's notices and Suricata's EVE alerts: an alert is identified by
its detection and the key fields that make two firings "the same thing"
(``alert_id``), so re-running detection over the same store updates an alert
instead of duplicating it, and a suppression window folds repeats into one
alert with a count. Every alert explains itself: the evidence (flows, events,
packet numbers, values) and each score component with its weight and a
sentence, so an analyst can see why it fired and how strongly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "low", "medium", "high", "critical")

ALERTS_TABLE = "alerts"


@dataclass(frozen=True, slots=True)
class ScoreComponent:
    """One part of an alert's score: a measured value, its weight and what it means."""

    name: str
    value: float
    weight: float
    explanation: str


@dataclass(frozen=True, slots=True)
class EventReference:
    """A row of an event table behind an alert, located by capture and packet number."""

    table: str
    capture_id: str
    packet_number: int | None
    flow_id: str | None = None


@dataclass(slots=True)
class Evidence:
    """What an analyst needs to verify the alert without trusting quaywatch."""

    flow_ids: list[str] = field(default_factory=list)
    community_ids: list[str] = field(default_factory=list)
    events: list[EventReference] = field(default_factory=list)
    packet_numbers: list[int] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Alert:
    """One alert: a notice with identity, severity, ATT&CK techniques, evidence and explanation."""

    detection: str  # catalogue id plus rule, e.g. "D11.cleartext-credentials"
    title: str
    key: dict[str, str]  # the fields that identify "the same alert" (hosts, protocol ...)
    severity: str
    confidence: float
    techniques: list[str]
    first_seen: dt.datetime
    last_seen: dt.datetime
    count: int
    explanation: str
    score: float = 0.0
    score_components: list[ScoreComponent] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)  # asset ids or addresses
    zones: list[str] = field(default_factory=list)
    evidence: Evidence = field(default_factory=Evidence)
    suppression_seconds: int = 3600

    @property
    def alert_id(self) -> str:
        return alert_identifier(self.detection, self.key)


def alert_identifier(detection: str, key: dict[str, str]) -> str:
    """Stable across runs: the same detection over the same hosts is the same alert."""
    text = json.dumps([detection, sorted(key.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""Checks for scenarios that deliberately change normal traffic (a stopped crane stops its OCR reads; a lying
weather station's answers carry the scenario's label): the scenario's own frames are still clean and exactly
labelled, and the normal traffic changes only where the scenario says."""

from __future__ import annotations

import collections
from pathlib import Path

from quaywatch.sim.simulate import CAPTURE
from tests.sim.scenarios.checks import fields, labels


def check_scenario_frames(directory: Path) -> None:
    """tshark decodes the labelled frames without a warning, and each label covers exactly its commented frames."""
    capture = directory / CAPTURE
    serious = fields(capture, "frame.number", "_ws.expert.message",
                     display_filter="frame.comment && (_ws.malformed || _ws.expert.severity >= warning)")  # fmt: skip
    assert serious == [], f"tshark warns on scenario frames: {serious[:5]}"
    commented: collections.Counter[int] = collections.Counter()
    for (comment,) in fields(capture, "frame.comment", display_filter="frame.comment"):
        commented[int(comment.split()[1])] += 1
    assert dict(commented) == {record["label"]: record["packets"] for record in labels(directory).values()}


def protocol_counts(directory: Path, also_labels: frozenset[int] = frozenset()) -> collections.Counter[str]:
    """Frames per protocol stack: the unlabelled ones, plus those of ``also_labels`` (changed normal frames)."""
    counts: collections.Counter[str] = collections.Counter()
    for comment, protocols in fields(directory / CAPTURE, "frame.comment", "frame.protocols"):
        if not comment or int(comment.split()[1]) in also_labels:
            counts[protocols] += 1
    return counts

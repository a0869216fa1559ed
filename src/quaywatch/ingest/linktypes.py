"""Link-layer types: names from the tcpdump registry, and which ones we decode."""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources


@cache
def _table() -> dict[int, tuple[str, bool]]:
    text = resources.files("quaywatch.data").joinpath("link_types.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {int(row["link_type"]): (row["name"], row["supported"] == "1") for row in rows}


def link_type_name(link_type: int) -> str:
    """Registry name, or 'unknown' for numbers the registry data does not list."""
    entry = _table().get(link_type)
    return entry[0] if entry else "unknown"


SUPPORTED_LINK_TYPES: frozenset[int] = frozenset(k for k, (_, ok) in _table().items() if ok)

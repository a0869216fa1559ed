"""MAC address to IEEE registry assignment (MA-L, MA-M, MA-S), offline.

The registry comes from two maintained PyPI data packages, read as plain files
and never through their update functions (which download), so run-time lookups
cannot touch the network:

* ``manuf``: Wireshark's ``manuf`` file. It is the only offline package that has
  the MA-M (/28) and MA-S (/36, plus the older IAB) blocks as well as MA-L.
* ``netaddr``: the IEEE ``oui.txt`` (MA-L) with each organisation's address, so
  the country is known; its copy is newer than manuf's, so it wins for MA-L.

Longest prefix wins: an MA-S block inside an MA-M or MA-L block is reported as
the MA-S assignment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

MA_L = "MA-L"
MA_M = "MA-M"
MA_S = "MA-S"

_BLOCK_BY_BITS = {24: MA_L, 28: MA_M, 36: MA_S}
_HEX = re.compile(r"[0-9A-Fa-f]")
_NOT_HEX = re.compile(r"[^0-9A-Fa-f]")
_NETADDR_ENTRY = re.compile(r"^([0-9A-F]{6})\s+\(base 16\)\s*(.*)$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True, slots=True)
class OuiAssignment:
    """One registry block: why a MAC belongs to an organisation."""

    block: str  # MA-L, MA-M or MA-S
    prefix: str  # e.g. "44:19:B6" or "8C:1F:64:FE:00:00/36"
    organisation: str  # as registered
    country: str | None  # ISO 3166 alpha-2 from the registry address, when known

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return {"block": self.block, "prefix": self.prefix, "organisation": self.organisation, "country": self.country}


@dataclass(frozen=True, slots=True)
class _Registry:
    """Assignments per prefix length, keyed by the prefix as an integer."""

    tables: dict[int, dict[int, OuiAssignment]]  # bits -> prefix value -> assignment
    sorted_keys: dict[int, np.ndarray]  # bits -> sorted prefix values, for the vectorised path
    sources: dict[str, str]  # data package -> version


def _package_file(package: str, name: str) -> Path:
    return Path(str(resources.files(package).joinpath(name)))


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _format_prefix(value: int, bits: int) -> str:
    if bits == 24:
        return ":".join(f"{(value >> shift) & 0xFF:02X}" for shift in (16, 8, 0))
    full = value << (48 - bits)
    return ":".join(f"{(full >> shift) & 0xFF:02X}" for shift in range(40, -8, -8)) + f"/{bits}"


def _parse_manuf(path: Path) -> dict[int, dict[int, OuiAssignment]]:
    """Wireshark manuf lines: ``PREFIX[/BITS] <tab> SHORT [<tab> LONG]``."""
    tables: dict[int, dict[int, OuiAssignment]] = {24: {}, 28: {}, 36: {}}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                continue
            prefix, _, bits_text = fields[0].partition("/")
            digits = "".join(_HEX.findall(prefix))
            bits = int(bits_text) if bits_text else len(digits) * 4
            if bits not in _BLOCK_BY_BITS or len(digits) * 4 < bits:
                continue  # well-known multicast ranges and odd sizes are not registry blocks
            value = int(digits, 16) >> (len(digits) * 4 - bits)
            organisation = (fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]).strip()
            organisation = organisation.split("#", 1)[0].strip() or fields[1].strip()
            tables[bits][value] = OuiAssignment(_BLOCK_BY_BITS[bits], _format_prefix(value, bits), organisation, None)
    return tables


def _parse_netaddr_oui(path: Path) -> dict[int, OuiAssignment]:
    """IEEE oui.txt: a ``(base 16)`` line with the name, then address lines, the last a country code."""
    table: dict[int, OuiAssignment] = {}
    current: tuple[int, str] | None = None
    country: str | None = None

    def flush() -> None:
        if current is not None:
            table[current[0]] = OuiAssignment(MA_L, _format_prefix(current[0], 24), current[1], country)

    with path.open(encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = raw.strip()
            match = _NETADDR_ENTRY.match(line)
            if match:
                flush()
                current, country = (int(match.group(1), 16), match.group(2).strip()), None
            elif current is not None and _COUNTRY.match(line):
                country = line
    flush()
    return table


@lru_cache(maxsize=1)
def _registry() -> _Registry:
    """Parse both data files once per process (about a second); later lookups are dictionary hits."""
    tables = _parse_manuf(_package_file("manuf", "manuf"))
    for value, assignment in _parse_netaddr_oui(_package_file("netaddr.eui", "oui.txt")).items():
        if assignment.organisation.lower() == "private" and value in tables[24]:
            continue
        tables[24][value] = assignment
    sorted_keys = {bits: np.array(sorted(table), dtype=np.uint64) for bits, table in tables.items()}
    sources = {"manuf": _package_version("manuf"), "netaddr": _package_version("netaddr")}
    return _Registry(tables, sorted_keys, sources)


def data_sources() -> dict[str, str]:
    """The data packages and versions behind the lookups, for reports and ``--version`` style output."""
    return dict(_registry().sources)


def parse_mac(mac: str) -> int | None:
    """A MAC in any usual notation (colons, dashes, dots, bare hex) as a 48-bit integer, or None."""
    digits = _NOT_HEX.sub("", mac)
    if len(digits) != 12 or len(mac) > 17:
        return None
    return int(digits, 16)


def _lookup_int(value: int) -> OuiAssignment | None:
    tables = _registry().tables
    for bits in (36, 28, 24):
        found = tables[bits].get(value >> (48 - bits))
        if found is not None:
            return found
    return None


@lru_cache(maxsize=65536)
def vendor(mac: str) -> OuiAssignment | None:
    """The registry assignment that contains ``mac``, or None (unassigned, locally administered, unparsable)."""
    value = parse_mac(mac)
    return None if value is None else _lookup_int(value)


def vendors(macs: Iterable[str | None] | Any) -> list[OuiAssignment | None]:
    """Look up a whole column (list, numpy array or pyarrow string array) of MACs.

    Each distinct prefix is resolved once with ``numpy.searchsorted``, so a
    capture's million frames cost about as much as its few thousand devices.
    """
    values = _as_mac_ints(macs)
    registry = _registry()
    result: list[OuiAssignment | None] = [None] * len(values)
    valid = values >= 0
    if not valid.any():
        return result
    unique, inverse = np.unique(values[valid].astype(np.uint64), return_inverse=True)
    found: list[OuiAssignment | None] = [None] * len(unique)
    pending = np.ones(len(unique), dtype=bool)
    for bits in (36, 28, 24):
        keys = registry.sorted_keys[bits]
        if not len(keys) or not pending.any():
            continue
        prefixes = unique >> np.uint64(48 - bits)
        positions = np.minimum(np.searchsorted(keys, prefixes), len(keys) - 1)
        hits = pending & (keys[positions] == prefixes)
        table = registry.tables[bits]
        for index in np.flatnonzero(hits):
            found[index] = table[int(prefixes[index])]
        pending &= ~hits
    valid_positions = np.flatnonzero(valid)
    for position, unique_index in zip(valid_positions, inverse.ravel(), strict=True):
        result[int(position)] = found[int(unique_index)]
    return result


def _as_mac_ints(macs: Iterable[str | None] | Any) -> np.ndarray:
    """MAC strings as int64 values, -1 where missing or unparsable."""
    if hasattr(macs, "to_pylist"):  # pyarrow Array or ChunkedArray
        macs = macs.to_pylist()
    items: Sequence[str | None] = list(macs)
    out = np.full(len(items), -1, dtype=np.int64)
    for index, mac in enumerate(items):
        if isinstance(mac, str):
            value = parse_mac(mac)
            if value is not None:
                out[index] = value
    return out

"""Threat-intelligence indicators (D10): imported from STIX 2.1 bundles or CSV files into the ``indicators`` table.

Ports are air-gapped, so feeds arrive as files carried in; nothing is fetched. A STIX indicator's pattern is turned
into its disjunctive normal form: a list of conjunctions, each a list of (type, value) terms that must all be seen
between the same two hosts. The simple patterns feeds actually publish (``=`` and ``IN`` comparisons joined by
``OR``/``AND``, within or across observations) are supported; anything else (``MATCHES``, ``LIKE``, negation,
``FOLLOWEDBY``, qualifiers, unknown object paths) is reported per indicator with its id and never fails the file.
One row per term; a re-import of the same file (same sha256 or same file name) replaces its rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import ipaddress
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from quaywatch.policy.model import Problem
from quaywatch.yaml_files import load_yaml

INDICATORS_TABLE = "indicators"
CSV_COLUMNS = ("type", "value", "description", "source", "confidence", "valid_until")
#: A pattern whose normal form would have more conjunctions than this is reported, not expanded.
MAX_CONJUNCTIONS = 64

INDICATORS_SCHEMA = pa.schema(
    [
        pa.field(
            "indicator_id",
            pa.string(),
            False,
            {"doc": "STIX id, or csv-- + sha256 of type and value"},
        ),
        pa.field("conjunction", pa.int32(), False, {"doc": "which AND group of the pattern's OR (0 for a CSV row)"}),
        pa.field("terms", pa.int32(), False, {"doc": "terms in that group: all must match between the same hosts"}),
        pa.field("type", pa.string(), False, {"doc": "indicator type (data/threat_intel.yaml: ip, domain, ja4 ...)"}),
        pa.field("value", pa.string(), False, {"doc": "normalised value (lower case, canonical address, no scheme)"}),
        pa.field("name", pa.string(), True, {"doc": "STIX name"}),
        pa.field("description", pa.string(), True, {"doc": "feed text: untrusted, escaped in every output"}),
        pa.field("source", pa.string(), True, {"doc": "who published it: CSV source column, STIX creator or file"}),
        pa.field("pattern", pa.string(), True, {"doc": "the STIX pattern as published"}),
        pa.field("confidence", pa.int32(), False, {"doc": "0-100 (STIX 2.1 confidence; CSV words low/medium/high)"}),
        pa.field("indicator_types", pa.list_(pa.string()), True, {"doc": "STIX indicator_types"}),
        pa.field("labels", pa.list_(pa.string()), True, {"doc": "STIX labels"}),
        pa.field("kill_chain_phases", pa.list_(pa.string()), True, {"doc": "kill_chain_name:phase_name"}),
        pa.field("valid_from", pa.timestamp("us", tz="UTC"), True),
        pa.field("valid_until", pa.timestamp("us", tz="UTC"), True, {"doc": "traffic after it does not match"}),
        pa.field("source_file", pa.string(), False, {"doc": "name of the imported file"}),
        pa.field("source_sha256", pa.string(), False, {"doc": "sha256 of that file: the import's identity"}),
        pa.field("line", pa.int64(), True, {"doc": "CSV line of the row"}),
        pa.field("imported_at", pa.timestamp("us", tz="UTC"), False),
    ]
)


@cache
def reference() -> dict[str, Any]:
    """data/threat_intel.yaml: types, STIX paths, confidence scale, severity steps and techniques."""
    text = resources.files("quaywatch.data").joinpath("threat_intel.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = load_yaml(text)
    return data


class IndicatorError(ValueError):
    """A value that is not valid for its indicator type."""


_HEX = re.compile(r"^[0-9a-f]+$")
_HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}


def normalise_url(value: str) -> str:
    """``host[:port]/path`` with the scheme, default ports and the host's case removed, so both sides compare equal."""
    text = value.strip()
    text = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text)
    host, slash, path = text.partition("/")
    host = host.lower().removesuffix(":80").removesuffix(":443").rstrip(".")
    return f"{host}/{path}" if slash or path else f"{host}/"


def normalise_distinguished_name(value: str) -> str:
    return re.sub(r"\s*([,=])\s*", r"\1", value.strip().lower())


def normalise(kind: str, value: str) -> tuple[str, str]:
    """The (type, value) to store: canonical forms so a match is a plain equality; raises IndicatorError."""
    text = value.strip()
    if not text:
        raise IndicatorError("empty value")
    if kind in ("ip", "cidr", "address"):
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError as error:
            raise IndicatorError(f"not an IP address or CIDR block: {text!r}") from error
        if network.num_addresses == 1 and (kind != "cidr" or "/" not in text):
            return "ip", str(network.network_address)
        return "cidr", str(network)
    if kind == "domain":
        name = text.lower().rstrip(".")
        if " " in name or "/" in name:
            raise IndicatorError(f"not a domain name: {text!r}")
        return kind, name
    if kind == "url":
        return kind, normalise_url(text)
    if kind in _HASH_LENGTHS:
        digest = text.lower()
        if len(digest) != _HASH_LENGTHS[kind] or not _HEX.match(digest):
            raise IndicatorError(f"not an {kind} hash ({_HASH_LENGTHS[kind]} hex digits): {text!r}")
        return kind, digest
    if kind in ("ja3", "ja3s", "hassh", "hassh_server", "ja4", "ja4s"):
        return kind, text.lower()
    if kind == "certificate_serial":
        serial = text.lower().replace(":", "").replace(" ", "").lstrip("0") or "0"
        if not _HEX.match(serial):
            raise IndicatorError(f"not a hex serial number: {text!r}")
        return kind, serial
    if kind in ("certificate_subject", "certificate_issuer"):
        return kind, normalise_distinguished_name(text)
    raise IndicatorError(f"unknown indicator type {kind!r}; known: {', '.join(sorted(reference()['types']))}")


@dataclass(slots=True)
class ImportResult:
    """What one file gave: indicators and rows stored, problems (file, line, column/id) and unsupported patterns."""

    file: str
    sha256: str
    indicators: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    unsupported: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "indicators": self.indicators,
            "rows": self.rows,
            "problems": [str(problem) for problem in self.problems],
            "unsupported": [str(problem) for problem in self.unsupported],
        }


def _timestamp(text: str) -> dt.datetime:
    """ISO date (the end of that day, UTC) or date-time (UTC when it has no zone)."""
    value = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC) + dt.timedelta(days=1, microseconds=-1)
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _confidence(text: str) -> int:
    words: dict[str, int] = reference()["confidence_words"]
    value = text.strip().lower()
    if not value:
        return int(reference()["default_confidence"])
    if value in words:
        return int(words[value])
    number = float(value)
    if not 0 <= number <= 100:
        raise ValueError(f"confidence {text!r} is not between 0 and 100")
    return round(number * 100) if 0 < number < 1 else round(number)


def _row(base: dict[str, Any], conjunction: int, terms: int, kind: str, value: str) -> dict[str, Any]:
    return base | {"conjunction": conjunction, "terms": terms, "type": kind, "value": value}


def parse_csv(text: str, file: str, sha256: str, now: dt.datetime) -> tuple[list[dict[str, Any]], ImportResult]:
    """CSV rows (header: type,value[,description,source,confidence,valid_until]); bad rows are reported and skipped."""
    result = ImportResult(file, sha256)
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip().lower() for name in reader.fieldnames or []]
    missing = [name for name in ("type", "value") if name not in header]
    if missing:
        result.problems.append(Problem(file, 1, "header", f"missing column(s) {', '.join(missing)}; expected "
                                       f"{','.join(CSV_COLUMNS)}"))  # fmt: skip
        return [], result
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown:
        result.problems.append(Problem(file, 1, "header", f"unknown column(s) {', '.join(unknown)}", "warning"))
    reader.fieldnames = header
    rows: dict[str, dict[str, Any]] = {}
    for raw in reader:
        line = reader.line_num
        record = {key: (value or "").strip() for key, value in raw.items() if key is not None}
        column = "type"
        try:
            kind, value = normalise(record.get("type", "").lower(), record.get("value", ""))
            column = "confidence"
            confidence = _confidence(record.get("confidence", ""))
            column = "valid_until"
            until = _timestamp(record["valid_until"]) if record.get("valid_until") else None
        except (IndicatorError, ValueError) as error:
            if isinstance(error, IndicatorError) and not str(error).startswith("unknown indicator type"):
                column = "value"
            result.problems.append(Problem(file, line, column, str(error)))
            continue
        identifier = "csv--" + hashlib.sha256(f"{kind}\x00{value}".encode()).hexdigest()[:32]
        base: dict[str, Any] = {
            "indicator_id": identifier, "name": None, "description": record.get("description") or None,
            "source": record.get("source") or file, "pattern": None, "confidence": confidence,
            "indicator_types": [], "labels": [], "kill_chain_phases": [], "valid_from": None, "valid_until": until,
            "source_file": file, "source_sha256": sha256, "line": line, "imported_at": now,
        }  # fmt: skip
        rows[identifier] = _row(base, 0, 1, kind, value)  # a repeated value: the last row wins
    result.indicators = len(rows)
    return list(rows.values()), result


class Unsupported(ValueError):
    """A pattern element quaywatch cannot match; the message says which."""


def _path(lhs: Any) -> str:
    from stix2.patterns import BasicObjectPathComponent

    parts = []
    for component in lhs.property_path:
        if not isinstance(component, BasicObjectPathComponent):
            raise Unsupported(f"object path component {component} (list index or reference)")
        parts.append(str(component.property_name).strip("'"))
    return f"{lhs.object_type_name}:{'.'.join(parts)}"


def _terms(lhs: Any, values: list[str]) -> list[list[tuple[str, str]]]:
    path = _path(lhs)
    kind = reference()["stix_paths"].get(path)
    if kind is None:
        raise Unsupported(f"object path {path} is not one quaywatch observes")
    try:
        return [[normalise(kind, value)] for value in values]
    except IndicatorError as error:
        raise Unsupported(f"{path}: {error}") from error


def _and(left: list[list[tuple[str, str]]], right: list[list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    product = [a + b for a in left for b in right]
    if len(product) > MAX_CONJUNCTIONS:
        raise Unsupported(f"the pattern expands to more than {MAX_CONJUNCTIONS} combinations")
    return product


def pattern_terms(pattern: str, notes: list[str]) -> list[list[tuple[str, str]]]:
    """Disjunctive normal form of a STIX pattern: a list of AND groups of (type, value); raises Unsupported.

    A branch of an OR that cannot be matched is dropped (its reason goes to ``notes``): the other branches still
    identify the threat. A branch of an AND that cannot be matched makes the whole AND unmatchable.
    """
    from stix2 import patterns as p
    from stix2.pattern_visitor import create_pattern_object

    try:
        tree = create_pattern_object(pattern, version="2.1")
    except Exception as error:  # stix2's ANTLR front end raises several types for one bad pattern
        raise Unsupported(f"not a valid STIX 2.1 pattern: {error}") from error

    def visit(node: Any) -> list[list[tuple[str, str]]]:
        if isinstance(node, p.ObservationExpression | p.ParentheticalExpression):
            return visit(node.operand if hasattr(node, "operand") else node.expression)
        if isinstance(node, p.OrObservationExpression | p.OrBooleanExpression):
            branches: list[list[tuple[str, str]]] = []
            for operand in node.operands:
                try:
                    branches += visit(operand)
                except Unsupported as error:
                    notes.append(f"branch left out: {error}")
            if not branches:
                raise Unsupported("no branch of the OR can be matched")
            return branches
        if isinstance(node, p.AndObservationExpression | p.AndBooleanExpression):
            groups = visit(node.operands[0])
            for operand in node.operands[1:]:
                groups = _and(groups, visit(operand))
            return groups
        if isinstance(node, p.EqualityComparisonExpression) and not node.negated:
            return _terms(node.lhs, [str(node.rhs.value)])
        if isinstance(node, p.InComparisonExpression) and not node.negated:
            return _terms(node.lhs, [str(item.value) for item in node.rhs.value])
        if getattr(node, "negated", False):
            raise Unsupported(f"negated comparison {node}")
        if isinstance(node, p.QualifiedObservationExpression | p.FollowedByObservationExpression):
            raise Unsupported(f"{type(node).__name__.removesuffix('Expression')} (qualifiers and FOLLOWEDBY)")
        raise Unsupported(f"{getattr(node, 'operator', type(node).__name__)} comparison {node}")

    return visit(tree)


def _stix_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return _timestamp(str(value))


def parse_stix(text: str, file: str, sha256: str, now: dt.datetime) -> tuple[list[dict[str, Any]], ImportResult]:
    """Every ``indicator`` of a STIX 2.1 bundle (or a single object, or a list); problems are reported per id."""
    import stix2
    import stix2.exceptions

    result = ImportResult(file, sha256)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        result.problems.append(Problem(file, error.lineno, f"column {error.colno}", f"not valid JSON: {error.msg}"))
        return [], result
    objects = document.get("objects", [document]) if isinstance(document, dict) else document
    if not isinstance(objects, list):
        result.problems.append(Problem(file, 0, "objects", "not a STIX bundle: 'objects' is not a list"))
        return [], result
    identities = {
        str(item.get("id")): str(item.get("name"))
        for item in objects
        if isinstance(item, dict) and item.get("type") == "identity" and item.get("name")
    }
    rows: list[dict[str, Any]] = []
    for position, item in enumerate(objects):
        if not isinstance(item, dict) or item.get("type") != "indicator":
            continue
        identifier = str(item.get("id") or f"objects[{position}]")
        try:
            indicator = stix2.parse(item, allow_custom=True, version="2.1")
        except (stix2.exceptions.STIXError, ValueError, TypeError) as error:
            result.problems.append(Problem(file, 0, identifier, f"invalid STIX indicator: {error}"))
            continue
        if indicator.get("revoked"):
            result.unsupported.append(Problem(file, 0, identifier, "revoked: not imported", "warning"))
            continue
        if indicator.get("pattern_type", "stix") != "stix":
            result.unsupported.append(
                Problem(file, 0, identifier, f"pattern type {indicator['pattern_type']!r}: only 'stix' is matched")
            )
            continue
        notes: list[str] = []
        try:
            groups = pattern_terms(str(indicator["pattern"]), notes)
        except Unsupported as error:
            result.unsupported.append(Problem(file, 0, identifier, f"unsupported pattern: {error}"))
            continue
        for note in notes:
            result.unsupported.append(Problem(file, 0, identifier, note, "warning"))
        confidence = indicator.get("confidence")
        creator = identities.get(str(indicator.get("created_by_ref")), indicator.get("created_by_ref"))
        base = {
            "indicator_id": identifier,
            "name": indicator.get("name"),
            "description": indicator.get("description"),
            "source": str(creator) if creator else file,
            "pattern": str(indicator["pattern"]),
            "confidence": int(confidence) if confidence is not None else int(reference()["default_confidence"]),
            "indicator_types": [str(kind) for kind in indicator.get("indicator_types", [])],
            "labels": [str(label) for label in indicator.get("labels", [])],
            "kill_chain_phases": [
                f"{phase['kill_chain_name']}:{phase['phase_name']}" for phase in indicator.get("kill_chain_phases", [])
            ],
            "valid_from": _stix_time(indicator.get("valid_from")),
            "valid_until": _stix_time(indicator.get("valid_until")),
            "source_file": file, "source_sha256": sha256, "line": None, "imported_at": now,
        }  # fmt: skip
        for number, group in enumerate(groups):
            unique = sorted(set(group))
            rows += [_row(base, number, len(unique), kind, value) for kind, value in unique]
        result.indicators += 1
    return rows, result


def ensure_indicators_table(con: duckdb.DuckDBPyConnection) -> None:
    empty = INDICATORS_SCHEMA.empty_table()  # noqa: F841  (DuckDB replacement scan)
    con.execute(f'CREATE TABLE IF NOT EXISTS "{INDICATORS_TABLE}" AS SELECT * FROM empty LIMIT 0')


def import_file(con: duckdb.DuckDBPyConnection, path: Path, now: dt.datetime | None = None) -> ImportResult:
    """Parse one STIX (.json) or CSV file and replace the rows of any earlier import of it (same sha256 or name)."""
    now = now or dt.datetime.now(dt.UTC)
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    text = data.decode("utf-8-sig", errors="replace")
    stix = path.suffix.lower() == ".json" or (path.suffix.lower() != ".csv" and text.lstrip().startswith(("{", "[")))
    rows, result = (parse_stix if stix else parse_csv)(text, path.name, sha256, now)
    ensure_indicators_table(con)
    batch = pa.Table.from_pylist(rows, schema=INDICATORS_SCHEMA)  # noqa: F841  (DuckDB replacement scan)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f'DELETE FROM "{INDICATORS_TABLE}" WHERE source_sha256 = ? OR source_file = ?', [sha256, path.name])
        con.execute(f'INSERT INTO "{INDICATORS_TABLE}" BY NAME SELECT * FROM batch')
        con.execute("COMMIT")
    except duckdb.Error:
        con.execute("ROLLBACK")
        raise
    result.rows = len(rows)
    return result


def has_indicators(con: duckdb.DuckDBPyConnection) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [INDICATORS_TABLE]
    ).fetchall()
    return bool(rows and rows[0][0])


def list_indicators(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """One entry per indicator (its terms folded into ``values``), ordered by source file and id."""
    if not has_indicators(con):
        return []
    cursor = con.execute(
        f"""
        SELECT indicator_id, source_file, any_value(source_sha256) AS source_sha256, any_value(source) AS source,
               any_value(name) AS name, any_value(description) AS description, any_value(pattern) AS pattern,
               any_value(confidence) AS confidence, any_value(indicator_types) AS indicator_types,
               any_value(labels) AS labels, any_value(kill_chain_phases) AS kill_chain_phases,
               any_value(valid_until) AS valid_until, any_value(line) AS line,
               list(DISTINCT type || ':' || value ORDER BY type || ':' || value) AS "values"
        FROM "{INDICATORS_TABLE}" GROUP BY indicator_id, source_file ORDER BY source_file, indicator_id
        """
    )
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def remove_source(con: duckdb.DuckDBPyConnection, source: str) -> int:
    """Delete the indicators of a source file (its name, or its sha256 or a prefix of 8+ digits); returns rows."""
    if not has_indicators(con):
        return 0
    prefix = source.lower() if len(source) >= 8 and _HEX.match(source.lower()) else None
    rows = con.execute(
        f'SELECT count(*) FROM "{INDICATORS_TABLE}" WHERE source_file = ? OR (? IS NOT NULL AND '
        "starts_with(source_sha256, ?))",
        [source, prefix, prefix or ""],
    ).fetchall()
    count = int(rows[0][0]) if rows else 0
    con.execute(
        f'DELETE FROM "{INDICATORS_TABLE}" WHERE source_file = ? OR (? IS NOT NULL AND starts_with(source_sha256, ?))',
        [source, prefix, prefix or ""],
    )
    return count

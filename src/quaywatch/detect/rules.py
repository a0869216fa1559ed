"""Rules as data: one YAML file per detection condition, compiled to one parameterised DuckDB query.

The shape follows pySigma (rules are data, a small compiler turns them into the store's query language) and Zeek's
notices (a key for identity, a suppression window). A rule names the table or view it reads (``from``), joins context
views such as ``host_context`` (``join``), filters rows (``where``), groups them by the fields that make two firings the
same alert (``group_by``), and says what the alert carries (``collect``, ``evidence``, ``assets``, ``zones``, templates,
severity, confidence, ATT&CK techniques, ``suppression``). docs/detections.md documents every key.

Safety: field names are checked against the store's catalogue and quoted; every value is a bound parameter, never
spliced into SQL. Loading reports every problem with file, line and key path (the approach of policy/load.py); unknown
keys and unknown ATT&CK ids are errors, so a typo cannot silently disable or mislabel a rule.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import yaml

from quaywatch.detect import attack, catalog
from quaywatch.detect.alert import SEVERITIES, Alert, EventReference, Evidence, ScoreComponent
from quaywatch.policy.load import _Checker
from quaywatch.policy.model import Problem
from quaywatch.yaml_files import SAFE_LOADER, load_yaml

RULE_KEYS = (
    "id",
    "title",
    "description",
    "explanation",
    "from",
    "requires",
    "join",
    "time",
    "time_end",
    "where",
    "group_by",
    "collect",
    "evidence",
    "assets",
    "zones",
    "severity",
    "confidence",
    "techniques",
    "suppression",
    "references",
)
REQUIRED_KEYS = ("id", "title", "explanation", "from", "group_by", "severity", "confidence", "techniques")
OPERATORS = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "ge",
    "lt",
    "le",
    "contains",
    "startswith",
    "regex",
    "is_null",
    "not_null",
    "empty",
    "not_empty",
)
UNARY = ("is_null", "not_null", "empty", "not_empty")
EVIDENCE_KEYS = ("flow_ids", "community_ids", "packet_numbers")
COLLECT_LIMIT = 20
EVIDENCE_LIMIT = 100
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_FIELD = re.compile(r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$")
_RULE_ID = re.compile(r"^D\d{1,2}\.[a-z0-9][a-z0-9-]*$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SOURCE_ALIAS = "t"


class RuleError(ValueError):
    """A rule file (or set of them) is invalid; ``problems`` locates each problem."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Condition:
    """``field <operator> value``, or a group: ``any_of`` / ``all_of`` of conditions, or ``not`` of one."""

    field: str = ""
    operator: str = ""
    value: Any = None
    group: str = ""  # any_of, all_of, not
    children: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class Join:
    """LEFT JOIN of a context table or view under an alias, on equal columns."""

    table: str
    alias: str
    on: tuple[tuple[str, str], ...]  # (source column, joined column)


@dataclass(frozen=True, slots=True)
class SeverityMap:
    """Severity from a field of the grouped row (the highest when it holds a list), else ``default``."""

    field: str
    values: dict[str, str]
    default: str


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule file."""

    id: str
    title: str
    explanation: str
    source: str
    group_by: tuple[str, ...]
    severity: str | SeverityMap
    confidence: float
    techniques: tuple[str, ...]
    description: str = ""
    requires: tuple[str, ...] = ()
    joins: tuple[Join, ...] = ()
    time: str | None = "ts"
    time_end: str | None = None
    where: tuple[Condition, ...] = ()
    collect: tuple[str, ...] = ()
    evidence: dict[str, str] = field(default_factory=dict)
    assets: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    suppression_seconds: int = 3600
    references: tuple[str, ...] = ()
    file: str = ""
    lines: dict[str, int] = field(default_factory=dict)  # field name -> line where the rule first names it

    @property
    def tables(self) -> tuple[str, ...]:
        """Every table or view the rule reads: a missing one skips the rule."""
        return tuple(dict.fromkeys([*self.requires, self.source, *(j.table for j in self.joins)]))

    def severity_fields(self) -> tuple[str, ...]:
        """The field a severity map reads, if any."""
        return (self.severity.field,) if isinstance(self.severity, SeverityMap) else ()


# -- loading --------------------------------------------------------------------------------------------------------


def parse_duration(text: str) -> int | None:
    """``30s``, ``15m``, ``1h``, ``2d``, ``1w`` to seconds; None when it is not such a duration."""
    match = _DURATION.match(text.strip())
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


def _data_values(check: _Checker, node: yaml.Node, path: str) -> list[Any] | None:
    """``{data: FILE, key: KEY}``: a list kept in a reference data file under quaywatch/data."""
    keys = check.mapping(node, path, ("data", "key"), ("data", "key"))
    if not keys:
        return None
    name = check.text(keys.get("data"), f"{path}.data")
    key = check.text(keys.get("key"), f"{path}.key")
    if not re.match(r"^[a-z0-9_]+\.yaml$", name):
        check.error(keys.get("data"), f"{path}.data", f"expected a data file name like x.yaml, got {name!r}")
        return None
    try:
        document = load_yaml(resources.files("quaywatch.data").joinpath(name).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        check.error(keys.get("data"), f"{path}.data", f"cannot read data file {name}: {error}")
        return None
    values = document.get(key) if isinstance(document, dict) else None
    if not isinstance(values, list):
        check.error(keys.get("key"), f"{path}.key", f"{name} has no list {key!r}")
        return None
    return values


class _RuleChecker(_Checker):
    """The policy loader's checker, also remembering where each field is named (for errors found when compiling)."""

    def __init__(self, file: str) -> None:
        super().__init__(file)
        self.lines: dict[str, int] = {}


def _field(check: _Checker, node: yaml.Node | None, path: str) -> str:
    name = check.text(node, path)
    if isinstance(check, _RuleChecker) and node is not None:
        check.lines.setdefault(name, node.start_mark.line + 1)
    if not _FIELD.match(name):
        check.error(node, path, f"expected a field name (column or alias.column), got {name!r}")
        return ""
    return name


def _fields(check: _Checker, node: yaml.Node | None, path: str) -> tuple[str, ...]:
    if node is None:
        return ()
    return tuple(f for i, item in enumerate(check.sequence(node, path)) if (f := _field(check, item, f"{path}[{i}]")))


def _condition(check: _Checker, node: yaml.Node, path: str) -> Condition | None:
    if not isinstance(node, yaml.MappingNode):
        check.error(node, path, "expected a condition: {field: NAME, OPERATOR: VALUE}, any_of, all_of or not")
        return None
    keys = {str(k.value) for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    for group in ("any_of", "all_of", "not"):
        if group in keys:
            found = check.mapping(node, path, (group,), (group,))
            if not found:
                return None
            if group == "not":
                child = _condition(check, found["not"], f"{path}.not")
                return Condition(group="not", children=(child,)) if child else None
            items = check.sequence(found[group], f"{path}.{group}")
            if not items:
                check.error(found[group], f"{path}.{group}", "an empty group never matches")
            children = [_condition(check, item, f"{path}.{group}[{i}]") for i, item in enumerate(items)]
            return Condition(group=group, children=tuple(c for c in children if c))
    found = check.mapping(node, path, ("field", *OPERATORS), ("field",))
    if found is None:
        return None
    operators = [key for key in found if key != "field"]
    if len(operators) != 1:
        check.error(node, path, f"expected exactly one operator of {', '.join(OPERATORS)}, got {len(operators)}")
        return None
    name = _field(check, found.get("field"), f"{path}.field")
    operator = operators[0]
    value_node = found[operator]
    where = f"{path}.{operator}"
    value: Any
    if operator in UNARY:
        if check.scalar(value_node, where) is not True:
            check.error(value_node, where, f"{operator} takes the value true")
        value = True
    elif operator in ("in", "not_in"):
        if isinstance(value_node, yaml.MappingNode):
            value = _data_values(check, value_node, where)
        else:
            value = [check.scalar(item, f"{where}[{i}]") for i, item in enumerate(check.sequence(value_node, where))]
        if not value:
            check.error(value_node, where, f"{operator} needs a non-empty list")
    else:
        value = check.scalar(value_node, where)
        if value is None:
            check.error(value_node, where, f"{operator} needs a value (use is_null for NULL)")
        if operator == "regex" and isinstance(value, str):
            try:
                re.compile(value)
            except re.error as error:
                check.error(value_node, where, f"not a valid regular expression: {error}")
        if operator in ("contains", "startswith", "regex") and not isinstance(value, str):
            check.error(value_node, where, f"{operator} compares text: quote the value")
    return Condition(field=name, operator=operator, value=value) if name else None


def _placeholders(check: _Checker, node: yaml.Node | None, path: str, allowed: set[str]) -> str:
    text = check.text(node, path)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as error:
        check.error(node, path, f"bad template: {error}")
        return text
    for name in names:
        if name not in allowed:
            check.error(node, path, f"template field {{{name}}} is not one of: {', '.join(sorted(allowed))}")
    return text


def load_rule_text(text: str, file: str = "rule.yaml") -> tuple[Rule | None, list[Problem]]:
    """Validate one rule given as YAML text; the rule is None when anything is wrong."""
    check = _RuleChecker(file)
    try:
        root = yaml.compose(text, Loader=SAFE_LOADER)  # marks: problems name their line
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        return None, [Problem(file, mark.line + 1 if mark else 0, "(yaml)", f"not valid YAML: {error}")]
    if root is None:
        return None, [Problem(file, 1, "(top level)", "empty rule file")]
    top = check.mapping(root, "", RULE_KEYS, REQUIRED_KEYS)
    if top is None:
        return None, check.problems
    rule_id = check.text(top.get("id"), "id")
    if rule_id and not _RULE_ID.match(rule_id):
        check.error(top.get("id"), "id", f"expected a catalogue id and a name (D11.cleartext-login), got {rule_id!r}")
    source = check.text(top.get("from"), "from")
    if source and not _IDENTIFIER.match(source):
        check.error(top.get("from"), "from", f"expected a table or view name, got {source!r}")
    requires = (
        tuple(check.text(n, f"requires[{i}]") for i, n in enumerate(check.sequence(top["requires"], "requires")))
        if "requires" in top
        else ()
    )
    joins: list[Join] = []
    for i, node in enumerate(check.sequence(top["join"], "join") if "join" in top else []):
        keys = check.mapping(node, f"join[{i}]", ("table", "as", "on"), ("table", "as", "on"))
        if not keys:
            continue
        table, alias = check.text(keys["table"], f"join[{i}].table"), check.text(keys["as"], f"join[{i}].as")
        on_node = keys["on"]
        pairs: list[tuple[str, str]] = []
        if isinstance(on_node, yaml.MappingNode):
            for key_node, value_node in on_node.value:
                pairs.append((str(key_node.value), check.text(value_node, f"join[{i}].on.{key_node.value}")))
        else:
            check.error(on_node, f"join[{i}].on", "expected a mapping: source column -> joined column")
        for name, slot in ((table, "table"), (alias, "as"), *((p, "on") for pair in pairs for p in pair)):
            if not _IDENTIFIER.match(name) or name == SOURCE_ALIAS:
                check.error(keys[slot], f"join[{i}].{slot}", f"not a usable name: {name!r}")
        joins.append(Join(table, alias, tuple(pairs)))
    time_column: str | None = "ts"
    if "time" in top:
        time_value = check.scalar(top["time"], "time")
        time_column = _field(check, top["time"], "time") if time_value is not None else None
    time_end = _field(check, top["time_end"], "time_end") if "time_end" in top else None
    where = tuple(
        c
        for i, n in enumerate(check.sequence(top["where"], "where") if "where" in top else [])
        if (c := _condition(check, n, f"where[{i}]"))
    )
    group_by = _fields(check, top.get("group_by"), "group_by")
    if not group_by:
        check.error(top.get("group_by"), "group_by", "at least one key field is needed (the alert's identity)")
    collect = _fields(check, top.get("collect"), "collect")
    evidence: dict[str, str] = {}
    if "evidence" in top:
        keys = check.mapping(top["evidence"], "evidence", EVIDENCE_KEYS) or {}
        evidence = {name: _field(check, node, f"evidence.{name}") for name, node in keys.items()}
    severity: str | SeverityMap = "medium"
    severity_node = top.get("severity")
    if isinstance(severity_node, yaml.MappingNode):
        keys = check.mapping(severity_node, "severity", ("field", "values", "default"), ("field", "values", "default"))
        if keys:
            values: dict[str, str] = {}
            values_node = keys["values"]
            if isinstance(values_node, yaml.MappingNode):
                for key_node, value_node in values_node.value:
                    values[str(key_node.value)] = (
                        check.choice(value_node, f"severity.values.{key_node.value}", SEVERITIES, "a severity")
                        or "medium"
                    )
            else:
                check.error(values_node, "severity.values", "expected a mapping: value -> severity")
            default = check.choice(keys["default"], "severity.default", SEVERITIES, "a severity") or "medium"
            severity = SeverityMap(_field(check, keys["field"], "severity.field"), values, default)
    elif severity_node is not None:
        severity = check.choice(severity_node, "severity", SEVERITIES, "a severity") or "medium"
    confidence = 0.0
    if "confidence" in top:
        value = check.scalar(top["confidence"], "confidence")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            check.error(top["confidence"], "confidence", f"expected a number in (0, 1], got {value!r}")
        else:
            confidence = float(value)
    techniques: list[str] = []
    for i, node in enumerate(check.sequence(top["techniques"], "techniques") if "techniques" in top else []):
        technique_id = check.text(node, f"techniques[{i}]")
        try:
            attack.technique(technique_id)
            techniques.append(technique_id)
        except attack.UnknownTechniqueError:
            check.error(node, f"techniques[{i}]", f"unknown ATT&CK technique {technique_id!r} (not in attack_ics.yaml)")
    suppression = 3600
    if "suppression" in top:
        seconds = parse_duration(check.text(top["suppression"], "suppression"))
        if seconds is None:
            check.error(top["suppression"], "suppression", "expected a duration such as 30s, 15m, 1h, 2d")
        else:
            suppression = seconds
    template_fields = {f.split(".")[-1] for f in (*group_by, *collect)} | {"count", "first_seen", "last_seen"}
    title = _placeholders(check, top.get("title"), "title", template_fields)
    explanation = _placeholders(check, top.get("explanation"), "explanation", template_fields)
    references = (
        tuple(check.text(n, f"references[{i}]") for i, n in enumerate(check.sequence(top["references"], "references")))
        if "references" in top
        else ()
    )
    if any(p.severity == "error" for p in check.problems):
        return None, check.problems
    rule = Rule(
        id=rule_id,
        title=title,
        explanation=explanation,
        source=source,
        group_by=group_by,
        severity=severity,
        confidence=confidence,
        techniques=tuple(techniques),
        description=check.text(top.get("description"), ""),
        requires=requires,
        joins=tuple(joins),
        time=time_column,
        time_end=time_end,
        where=where,
        collect=collect,
        evidence=evidence,
        assets=_fields(check, top.get("assets"), "assets"),
        zones=_fields(check, top.get("zones"), "zones"),
        suppression_seconds=suppression,
        references=references,
        file=file,
        lines=check.lines,
    )
    return rule, check.problems


def load_rule(path: Path) -> Rule:
    """One rule file; raises :class:`RuleError` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RuleError([Problem(str(path), 0, "(file)", f"cannot read: {error}")]) from error
    rule, problems = load_rule_text(text, str(path))
    if rule is None:
        raise RuleError([p for p in problems if p.severity == "error"])
    return rule


def rule_files(folder: Path | None = None) -> list[Path]:
    """The shipped rule files (``detect/rules/*.yaml``), or those of ``folder``, in name order."""
    if folder is not None:
        return sorted(folder.glob("*.yaml"))
    package = resources.files("quaywatch.detect") / "rules"
    return sorted(Path(str(package)).glob("*.yaml"))


def load_rules(folder: Path | None = None) -> list[Rule]:
    """Every rule of the folder; raises :class:`RuleError` with the problems of all files, and on duplicate ids."""
    rules: list[Rule] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for path in rule_files(folder):
        try:
            rule = load_rule(path)
        except RuleError as error:
            problems += error.problems
            continue
        if rule.id in seen:
            problems.append(Problem(str(path), 1, "id", f"duplicate rule id {rule.id!r} (also in {seen[rule.id]})"))
        seen[rule.id] = str(path)
        rules.append(rule)
    if problems:
        raise RuleError(problems)
    return rules


# -- compiling ------------------------------------------------------------------------------------------------------


def relations(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables and views of the main schema (from the run's catalogue reading, detect/catalog.py)."""
    return catalog.relations(con)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return catalog.columns(con, table)


@dataclass(slots=True)
class Compiled:
    """The query of a rule and its parameters, in order."""

    sql: str
    parameters: list[Any]
    outputs: list[str]  # names of the result columns, in order


class _Compiler:
    """Turns a rule into SQL, resolving field names against the catalogue (quoted) and binding every value."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rule: Rule) -> None:
        self.rule = rule
        self.aliases: dict[str, dict[str, str]] = {SOURCE_ALIAS: _columns(con, rule.source)}
        for join in rule.joins:
            self.aliases[join.alias] = _columns(con, join.table)
        self.parameters: list[Any] = []

    def column(self, name: str) -> tuple[str, str]:
        """Quoted reference and DuckDB type of ``column`` or ``alias.column``; raises on an unknown field."""
        alias, _, column = name.rpartition(".")
        alias = alias or SOURCE_ALIAS
        columns = self.aliases.get(alias)
        if columns is None:
            raise RuleError([Problem(self.rule.file, self.rule.lines.get(name, 0), name, f"unknown alias {alias!r}")])
        if column not in columns:
            tables = {join.alias: join.table for join in self.rule.joins}
            table = self.rule.source if alias == SOURCE_ALIAS else f"{tables[alias]} ({alias})"
            line = self.rule.lines.get(name, 0)
            raise RuleError([Problem(self.rule.file, line, name, f"{table} has no column {column!r}")])
        return f'"{alias}"."{column}"', columns[column]

    def bind(self, value: Any) -> str:
        self.parameters.append(value)
        return "?"

    def condition(self, condition: Condition) -> str:
        if condition.group == "not":
            return f"NOT coalesce(({self.condition(condition.children[0])}), false)"
        if condition.group:
            joiner = " OR " if condition.group == "any_of" else " AND "
            parts = [f"coalesce(({self.condition(child)}), false)" for child in condition.children]
            return "(" + (joiner.join(parts) or "false") + ")"
        ref, kind = self.column(condition.field)
        is_list = kind.endswith("[]")
        operator, value = condition.operator, condition.value
        if operator == "is_null":
            return f"{ref} IS NULL"
        if operator == "not_null":
            return f"{ref} IS NOT NULL"
        if operator == "empty":
            return f"({ref} IS NULL OR len({ref}) = 0)"
        if operator == "not_empty":
            return f"len({ref}) > 0"
        if is_list:
            if operator in ("contains", "eq"):
                return f"list_contains({ref}, {self.bind(value)})"
            if operator == "in":
                return f"list_has_any({ref}, {self.bind(list(value))})"
            if operator == "not_in":
                return f"NOT coalesce(list_has_any({ref}, {self.bind(list(value))}), false)"
            line = self.rule.lines.get(condition.field, 0)
            raise RuleError([Problem(self.rule.file, line, condition.field, f"{operator} does not apply to a list")])
        comparisons = {"eq": "=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        if operator in comparisons:
            return f"{ref} {comparisons[operator]} {self.bind(value)}"
        if operator == "ne":
            return f"{ref} IS DISTINCT FROM {self.bind(value)}"
        if operator == "in":
            return f"{ref} IN (SELECT unnest({self.bind(list(value))}))"
        if operator == "not_in":
            return f"({ref} IS NULL OR {ref} NOT IN (SELECT unnest({self.bind(list(value))})))"
        if operator == "contains":
            return f"contains(CAST({ref} AS VARCHAR), {self.bind(value)})"
        if operator == "startswith":
            return f"starts_with(CAST({ref} AS VARCHAR), {self.bind(value)})"
        return f"regexp_matches(CAST({ref} AS VARCHAR), {self.bind(value)})"  # regex

    def compile(self) -> Compiled:
        rule = self.rule
        select: list[str] = []
        outputs: list[str] = []
        for i, name in enumerate(rule.group_by):
            select.append(f"{self.column(name)[0]} AS g{i}")
        time_ref = self.column(rule.time)[0] if rule.time else "NULL::TIMESTAMPTZ"
        end_ref = self.column(rule.time_end)[0] if rule.time_end else time_ref
        select += [f"{time_ref} AS t_start", f"{end_ref} AS t_end"]
        for i, name in enumerate(rule.collect):
            select.append(f"{self.column(name)[0]} AS c{i}")
        source_columns = self.aliases[SOURCE_ALIAS]
        evidence = dict(rule.evidence)
        for name, default in (
            ("flow_ids", "flow_id"),
            ("community_ids", "community_id"),
            ("packet_numbers", "packet_number"),
        ):
            if name not in evidence and default in source_columns:
                evidence[name] = default
        for name in EVIDENCE_KEYS:
            select.append(f"{self.column(evidence[name])[0]} AS e_{name}" if name in evidence else f"NULL AS e_{name}")
        has_event = "capture_id" in source_columns
        select.append(f'{SOURCE_ALIAS}."capture_id" AS e_capture' if has_event else "NULL AS e_capture")
        for i, name in enumerate(rule.severity_fields()):
            select.append(f"{self.column(name)[0]} AS s{i}")
        for i, name in enumerate((*rule.assets, *rule.zones)):
            select.append(f"{self.column(name)[0]} AS a{i}")
        joins = []
        for join in rule.joins:
            on = " AND ".join(f'{SOURCE_ALIAS}."{left}" = "{join.alias}"."{right}"' for left, right in join.on)
            for left, right in join.on:
                self.column(left)
                self.column(f"{join.alias}.{right}")
            joins.append(f'LEFT JOIN "{join.table}" AS "{join.alias}" ON {on}')
        where = " AND ".join(f"coalesce(({self.condition(c)}), false)" for c in rule.where) or "true"
        keys = ", ".join(f"g{i}" for i in range(len(rule.group_by)))
        window = self.bind(rule.suppression_seconds)

        def listed(expression: str, limit: int) -> str:
            # The distinct non-null values, sorted (null when there are none). list_distinct of a plain list rather
            # than list(DISTINCT ...): a DISTINCT aggregate sets up a hash table of its own (MBs, about 1 ms each)
            # even over a few rows, which made a rule over a small table cost 10-20 ms.
            return f"list_sort(list_distinct(list({expression}) FILTER (WHERE {expression} IS NOT NULL)))[1:{limit}]"

        aggregates = [
            *(f"g{i}" for i in range(len(rule.group_by))),
            "min(t_start) AS first_seen",
            "max(t_end) AS last_seen",
            "count(*) AS n",
        ]
        outputs = [*(f"g{i}" for i in range(len(rule.group_by))), "first_seen", "last_seen", "count"]
        for i, name in enumerate(rule.collect):
            if self.column(name)[1].endswith("[]"):  # a list column: its items, not the lists
                expression = f"list_sort(list_distinct(flatten(list(c{i}) FILTER (WHERE c{i} IS NOT NULL))))"
                aggregates.append(f"{expression}[1:{COLLECT_LIMIT}] AS c{i}")
            else:
                aggregates.append(f"{listed(f'c{i}', COLLECT_LIMIT)} AS c{i}")
            outputs.append(f"c{i}")
        for name in EVIDENCE_KEYS:
            aggregates.append(f"{listed(f'e_{name}', EVIDENCE_LIMIT)} AS e_{name}")
            outputs.append(f"e_{name}")
        aggregates.append(
            f"(list({{'capture_id': e_capture, 'packet_number': e_packet_numbers, 'flow_id': e_flow_ids}} "
            f"ORDER BY t_start, e_packet_numbers) FILTER (WHERE e_capture IS NOT NULL))[1:{EVIDENCE_LIMIT}] AS events"
        )
        outputs.append("events")
        for i in range(len(rule.severity_fields())):
            aggregates.append(f"list(s{i}) AS s{i}")
            outputs.append(f"s{i}")
        for i, name in enumerate((*rule.assets, *rule.zones)):
            if self.column(name)[1].endswith("[]"):  # a list column (an asset's addresses): its items
                aggregates.append(f"list_distinct(flatten(list(a{i}) FILTER (WHERE a{i} IS NOT NULL))) AS a{i}")
            else:
                aggregates.append(f"list(DISTINCT a{i}) FILTER (WHERE a{i} IS NOT NULL) AS a{i}")
            outputs.append(f"a{i}")
        partition = f"PARTITION BY {keys}"
        sql = f"""
WITH matched AS (
    SELECT {", ".join(select)}
    FROM "{rule.source}" AS {SOURCE_ALIAS} {" ".join(joins)}
    WHERE {where}
), marked AS (
    SELECT *, CASE WHEN lag(t_start) OVER ({partition} ORDER BY t_start) IS NULL
                     OR t_start - lag(t_start) OVER ({partition} ORDER BY t_start) > to_seconds({window})
                   THEN 1 ELSE 0 END AS new_occurrence
    FROM matched
), numbered AS (
    SELECT *, sum(new_occurrence) OVER ({partition} ORDER BY t_start ROWS UNBOUNDED PRECEDING) AS occurrence
    FROM marked
)
SELECT {", ".join(aggregates)}
FROM numbered
GROUP BY {keys}, occurrence
ORDER BY {keys}, first_seen
"""
        return Compiled(sql, self.parameters, outputs)


def compile_rule(con: duckdb.DuckDBPyConnection, rule: Rule) -> Compiled:
    """The rule's query over this store (field names checked against its catalogue)."""
    return _Compiler(con, rule).compile()


# -- evaluating -----------------------------------------------------------------------------------------------------


def _severity(rule: Rule, values: list[Any]) -> str:
    if not isinstance(rule.severity, SeverityMap):
        return rule.severity
    found = [rule.severity.default]
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and str(item) in rule.severity.values:
                found.append(rule.severity.values[str(item)])
    return max(found, key=SEVERITIES.index)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return "" if value is None else str(value)


def evaluate(con: duckdb.DuckDBPyConnection, rule: Rule, now: dt.datetime) -> list[Alert]:
    """The alerts of one rule over the store: one per key and occurrence."""
    compiled = compile_rule(con, rule)
    cursor = con.execute(compiled.sql, compiled.parameters)
    names = [column[0] for column in cursor.description]
    alerts: list[Alert] = []
    for raw in cursor.fetchall():
        row = dict(zip(names, raw, strict=True))
        key = {name.split(".")[-1]: _text(row[f"g{i}"]) for i, name in enumerate(rule.group_by)}
        collected = {name.split(".")[-1]: row[f"c{i}"] or [] for i, name in enumerate(rule.collect)}
        first = row["first_seen"] or now
        last = row["last_seen"] or first
        fill = {
            **key,
            **{k: _text(v) for k, v in collected.items()},
            "count": str(row["n"]),
            "first_seen": _text(first),
            "last_seen": _text(last),
        }
        severity = _severity(rule, row.get("s0", []))
        involved = [row[f"a{i}"] or [] for i in range(len(rule.assets) + len(rule.zones))]
        assets = list(dict.fromkeys(_text(v) for values in involved[: len(rule.assets)] for v in values))
        zones = list(dict.fromkeys(_text(v) for values in involved[len(rule.assets) :] for v in values))
        events = [
            EventReference(rule.source, e["capture_id"], e["packet_number"], e["flow_id"]) for e in row["events"] or []
        ]
        alerts.append(
            Alert(
                detection=rule.id,
                title=rule.title.format_map(fill),
                key=key,
                severity=severity,
                confidence=rule.confidence,
                techniques=list(rule.techniques),
                first_seen=first,
                last_seen=last,
                count=int(row["n"]),
                explanation=rule.explanation.format_map(fill),
                score=rule.confidence,
                score_components=[
                    ScoreComponent(
                        "rule_match",
                        1.0,
                        rule.confidence,
                        f"every condition of rule {rule.id} held for {row['n']} row(s) of {rule.source}; the weight is "
                        "the rule's confidence that such rows mean what the title says",
                    )
                ],
                assets=assets,
                zones=zones,
                evidence=Evidence(
                    flow_ids=[str(v) for v in row["e_flow_ids"] or []],
                    community_ids=[str(v) for v in row["e_community_ids"] or []],
                    events=events,
                    packet_numbers=[int(v) for v in row["e_packet_numbers"] or []],
                    values=collected,
                ),
                suppression_seconds=rule.suppression_seconds,
            )
        )
    return alerts

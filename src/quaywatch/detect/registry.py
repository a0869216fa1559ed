"""The detection engine: builds the context views, runs every rule file, then every statistical module.

Rules (``detect/rules/*.yaml``, evaluated by detect/rules.py) and modules (one Python file each) both return
:class:`~quaywatch.detect.alert.Alert` lists; the engine folds and writes them to the ``alerts`` table
(detect/alert_store.py). A rule or module whose tables are absent is skipped and reported, not an error: a store
without SNMP traffic simply has no SNMP alerts.

Adding a statistical module: write ``detect/<name>.py`` with ``DETECTION = "D4.beaconing"`` (the detection id its
alerts carry), ``REQUIRES = ("flows",)`` (tables it reads) and
``def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]``, then add one import line and
one entry to ``MODULES`` below. A module whose alerts carry other detection ids than ``DETECTION`` lists them all in
``DETECTIONS``, so that a run that finds none of one of them still clears its earlier rows.

Scheduling on workers (``workers`` above 1): the longest tasks start first, by each module's ``COST`` (its one-core
seconds over the benchmark store, ``make bench``; modules without one come after those with one, rules last). A
module whose work falls into independent parts can say so, so that they run on different workers:
``PARTS = {"flows": 0.2, "names": 0.3}`` (part name: cost), ``detect_part(con, context, part)`` returning anything,
and ``combine(context, results)`` turning the results, in ``PARTS`` order, into the alerts; its ``detect`` must equal
``combine`` over the parts run one after another, which is what one worker runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb

from quaywatch.assets.declared import CELLULAR_MAKER_ROLES, CELLULAR_ROLE
from quaywatch.detect import (
    baseline,
    beaconing,
    catalog,
    cellular,
    container_leakage,
    dns_tunnelling,
    ics_commands,
    remote_access,
    threat_intel,
    unapproved_flows,
)
from quaywatch.detect.alert import ALERTS_TABLE, Alert
from quaywatch.detect.alert_store import ALERTS_SCHEMA, write_alerts
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.rules import Rule, RuleError, evaluate, load_rules, relations
from quaywatch.store.database import Store
from quaywatch.yaml_files import load_yaml

# Statistical modules, run after the rules. To add one: `from quaywatch.detect import beaconing` above, and
# `beaconing,` here.
MODULES: list[ModuleType] = [
    beaconing,
    dns_tunnelling,
    baseline,
    container_leakage,
    ics_commands,
    threat_intel,
    unapproved_flows,
    remote_access,
    cellular,
]

HOST_CONTEXT = "host_context"
ASSET_FINDINGS = "asset_findings"


@dataclass(slots=True)
class DetectionSummary:
    """What a run did: alerts per detection, what was skipped and why, what failed."""

    alerts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    detected_at: dt.datetime | None = None
    #: Wall seconds per rule and module (and ``context``, ``write``): where a slow run spends its time.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.alerts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "alerts": dict(sorted(self.alerts.items())),
            "total": self.total,
            "skipped": dict(sorted(self.skipped.items())),
            "failed": dict(sorted(self.failed.items())),
            "detected_at": self.detected_at.isoformat() if self.detected_at else None,
            "seconds": {name: round(value, 6) for name, value in sorted(self.seconds.items())},
        }


@functools.cache
def _ot_roles() -> tuple[str, ...]:
    text = resources.files("quaywatch.data").joinpath("ot_roles.yaml").read_text(encoding="utf-8")
    return tuple(str(role) for role in load_yaml(text)["roles"])


def context_relations(present: set[str] | frozenset[str]) -> set[str]:
    """The context relations :func:`build_context_views` makes over a store whose relations are ``present``: so
    that the engine knows which rules can run before the workers have built theirs."""
    return {HOST_CONTEXT} | ({ASSET_FINDINGS} if {"assets", "inventory_findings"} <= present else set())


def build_context_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """(Re)create the engine's context relations as temporary tables; returns their names.

    ``host_context``: one row per address with its asset (``assets``, addresses unnested) and its policy zone
    (``host_zones``, written by the policy evaluation), whichever exist; ``ot`` comes from the zone when the policy
    says, else from the asset's role (data/ot_roles.yaml). ``asset_findings``: ``inventory_findings`` with the asset's
    times, role and a ``cellular`` flag, so a rule can single out the undeclared modem. Temporary tables rather than
    views so that reference values are bound parameters; they vanish with the connection and never enter the file.
    """
    present = relations(con)
    assets = "assets" in present
    zones = "host_zones" in present
    findings = ASSET_FINDINGS in context_relations(present)
    asset_side = (
        "SELECT DISTINCT unnest(ips) AS ip, asset_id, role, maker, maker_country, listed, maker_roles FROM assets"
        if assets
        else "SELECT NULL::VARCHAR AS ip, NULL::VARCHAR AS asset_id, NULL::VARCHAR AS role, NULL::VARCHAR AS maker, "
        "NULL::VARCHAR AS maker_country, NULL::VARCHAR[] AS listed, NULL::VARCHAR[] AS maker_roles WHERE false"
    )
    zone_side = (
        "SELECT ip, zone, purdue, ot, source FROM host_zones"
        if zones
        else "SELECT NULL::VARCHAR AS ip, NULL::VARCHAR AS zone, NULL::DOUBLE AS purdue, NULL::BOOLEAN AS ot, "
        "NULL::VARCHAR AS source WHERE false"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {HOST_CONTEXT} AS
        WITH a AS ({asset_side}), z AS ({zone_side})
        SELECT coalesce(a.ip, z.ip) AS ip, a.asset_id, a.role, a.maker, a.maker_country,
               coalesce(a.listed, []::VARCHAR[]) AS listed, coalesce(a.maker_roles, []::VARCHAR[]) AS maker_roles,
               z.zone, z.purdue, coalesce(z.ot, a.role IN (SELECT unnest(?::VARCHAR[])), false) AS ot,
               z.source AS zone_source
        FROM a FULL OUTER JOIN z ON a.ip = z.ip
        """,
        [list(_ot_roles())],
    )
    made = [HOST_CONTEXT]
    if findings:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE {ASSET_FINDINGS} AS
            SELECT f.*, a.first_seen, a.last_seen, a.role, a.maker, a.maker_country, a.listed, a.maker_roles,
                   coalesce(a.role = ? OR list_has_any(coalesce(a.maker_roles, []), ?::VARCHAR[]), false) AS cellular
            FROM inventory_findings AS f LEFT JOIN assets AS a USING (asset_id)
            """,
            [CELLULAR_ROLE, sorted(CELLULAR_MAKER_ROLES)],
        )
        made.append(ASSET_FINDINGS)
    else:
        con.execute(f"DROP TABLE IF EXISTS temp.{ASSET_FINDINGS}")
    return made


def _connection(target: Store | duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    if isinstance(target, Store):
        target.flush()
        target.ensure_table(ALERTS_TABLE, ALERTS_SCHEMA)
        return target.connection
    return target


@dataclass(slots=True)
class _Outcome:
    """One rule's or module's run (or one part of a module's): its alerts, the detection ids it ran, its time, or
    why it failed; a part's result waits in ``part`` for the module's ``combine``."""

    found: list[Alert] = field(default_factory=list)
    emitted: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    part: Any = None


def _run_rule(con: duckdb.DuckDBPyConnection, rule: Rule, context: DetectionContext) -> _Outcome:
    started = time.perf_counter()
    try:
        found = evaluate(con, rule, context.now)
    except (duckdb.Error, RuleError) as error:
        return _Outcome(seconds=time.perf_counter() - started, error=str(error))
    return _Outcome(found, [rule.id], time.perf_counter() - started)


def _emitted(module: ModuleType, found: list[Alert]) -> list[str]:
    name = str(getattr(module, "DETECTION", module.__name__))
    return sorted({name, *getattr(module, "DETECTIONS", ()), *(alert.detection for alert in found)})


def _run_module(con: duckdb.DuckDBPyConnection, module: ModuleType, context: DetectionContext) -> _Outcome:
    started = time.perf_counter()
    try:
        found = list(module.detect(con, context))
    except duckdb.Error as error:
        return _Outcome(seconds=time.perf_counter() - started, error=str(error))
    return _Outcome(found, _emitted(module, found), time.perf_counter() - started)


def _run_part(con: duckdb.DuckDBPyConnection, module: ModuleType, part: str, context: DetectionContext) -> _Outcome:
    started = time.perf_counter()
    try:
        result = module.detect_part(con, context, part)
    except duckdb.Error as error:
        return _Outcome(seconds=time.perf_counter() - started, error=str(error))
    return _Outcome(seconds=time.perf_counter() - started, part=result)


def _combine(module: ModuleType, context: DetectionContext, parts: list[_Outcome]) -> _Outcome:
    """A parted module's outcome from its parts' (in ``PARTS`` order): its ``combine``; its time is theirs and the
    combining's; the first part's error, when one failed."""
    seconds = sum(part.seconds for part in parts)
    failed = next((part.error for part in parts if part.error is not None), None)
    if failed is not None:
        return _Outcome(seconds=seconds, error=failed)
    started = time.perf_counter()
    found = list(module.combine(context, [part.part for part in parts]))
    return _Outcome(found, _emitted(module, found), seconds + time.perf_counter() - started)


def _in_workers(
    con: duckdb.DuckDBPyConnection, tasks: list[Callable[[duckdb.DuckDBPyConnection], _Outcome]], workers: int
) -> tuple[list[_Outcome], float]:
    """Run the tasks on ``workers`` threads, each with a cursor of its own (DuckDB runs queries without the GIL,
    so one detection's SQL overlaps another's Python); outcomes in task order, whatever order they finish in, and
    the longest of the workers' context builds."""
    outcomes: list[_Outcome | None] = [None] * len(tasks)
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(tasks)):
        pending.put(index)
    context_seconds: list[float] = []

    def work() -> None:
        cursor = con.cursor()  # a connection of its own: the context tables are temporary, so build them there
        try:
            started = time.perf_counter()
            build_context_views(cursor)
            context_seconds.append(time.perf_counter() - started)
            with catalog.registered(cursor):  # what its tasks ask the catalogue, read once
                while True:
                    try:
                        index = pending.get_nowait()
                    except queue.Empty:
                        return
                    outcomes[index] = tasks[index](cursor)
        finally:
            cursor.close()

    threads = [threading.Thread(target=work, name=f"detect-{number}") for number in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing = [index for index, outcome in enumerate(outcomes) if outcome is None]
    if missing:  # a worker died before it could build its context: run what it left on this connection
        build_context_views(con)
        for index in missing:
            outcomes[index] = tasks[index](con)
    return [outcome for outcome in outcomes if outcome is not None], max(context_seconds, default=0.0)


def _scheduled(
    con: duckdb.DuckDBPyConnection,
    tasks: list[Callable[[duckdb.DuckDBPyConnection], _Outcome]],
    rule_tasks: int,
    modules: list[ModuleType],
    context: DetectionContext,
    workers: int,
) -> tuple[list[_Outcome], float]:
    """The outcomes of ``tasks`` (the rules', then one per module of ``modules``) run on ``workers`` threads, in
    task order, and the longest of the workers' context builds.

    A module with ``PARTS`` runs as one task per part, combined afterwards. The longest start first (``COST``, see
    the module docstring), so that no long detection starts last: modules and parts by cost, then the rules (one
    query each) in their order.
    """
    runs: list[tuple[int, Callable[[duckdb.DuckDBPyConnection], _Outcome]]] = []  # (task, what runs)
    costs: list[float] = []
    for index, module in enumerate(modules, start=rule_tasks):
        parts: dict[str, float] = getattr(module, "PARTS", {})
        for part, cost in parts.items() if parts else [("", getattr(module, "COST", 0.0))]:
            run = functools.partial(_run_part, module=module, part=part, context=context) if parts else tasks[index]
            runs.append((index, run))
            costs.append(float(cost))
    order = sorted(range(len(runs)), key=lambda position: -costs[position])  # stable: equal costs keep their order
    runs += [(index, tasks[index]) for index in range(rule_tasks)]
    order += range(len(order), len(runs))
    finished, context_seconds = _in_workers(con, [runs[position][1] for position in order], workers)
    outcome_of = {position: finished[place] for place, position in enumerate(order)}
    per_task: dict[int, list[_Outcome]] = {}
    for position, (index, _) in enumerate(runs):  # a module's parts in PARTS order
        per_task.setdefault(index, []).append(outcome_of[position])
    outcomes = [per_task[index][0] for index in range(rule_tasks)]
    for index, module in enumerate(modules, start=rule_tasks):
        parted = bool(getattr(module, "PARTS", {}))
        outcomes.append(_combine(module, context, per_task[index]) if parted else per_task[index][0])
    return outcomes, context_seconds


def run_detections(
    target: Store | duckdb.DuckDBPyConnection,
    context: DetectionContext | None = None,
    rules: list[Rule] | None = None,
    rules_folder: Path | None = None,
    modules: list[ModuleType] | None = None,
    workers: int = 1,
) -> DetectionSummary:
    """Run the rules, then the modules, over the store and replace their alerts; raises RuleError on a bad rule file.

    ``workers`` above 1 runs them on as many threads, each on a cursor of its own; the alerts are the same and come in
    the same order. The cursors see what is committed in the database, not the caller's temporary tables or open
    transaction: pass 1 when the data lives there.
    """
    with cycle_collection_paused():
        return _run_detections(target, context, rules, rules_folder, modules, workers)


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Python's cycle collector off for the block, back as it was after.

    Why: a run builds hundreds of thousands of short-lived objects (rows, evidence, alerts) and keeps few; each of
    the collector's passes walks every live object, so over the benchmark's million flows they cost about a tenth
    of the run. Reference counting still frees every object as soon as it is dropped; only objects in reference
    cycles wait for the collector, which runs again once the block ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run_detections(
    target: Store | duckdb.DuckDBPyConnection,
    context: DetectionContext | None,
    rules: list[Rule] | None,
    rules_folder: Path | None,
    modules: list[ModuleType] | None,
    workers: int,
) -> DetectionSummary:
    context = context or DetectionContext()
    con = _connection(target)
    summary = DetectionSummary(detected_at=context.now)
    parallel = workers > 1
    started = time.perf_counter()
    if not parallel:  # with workers, each builds its own on its cursor (temporary tables): none is needed here
        build_context_views(con)
    summary.seconds["context"] = time.perf_counter() - started
    # What the rules and modules ask the catalogue, read once; with workers each reads its cursor's (and this
    # connection only asks which tables there are).
    with catalog.registered(con) if not parallel else contextlib.nullcontext():
        present = relations(con)
        if parallel:
            present |= context_relations(present)
        chosen = rules if rules is not None else load_rules(rules_folder)
        names: list[str] = []
        tasks: list[Callable[[duckdb.DuckDBPyConnection], _Outcome]] = []
        for rule in chosen:
            missing = [table for table in rule.tables if table not in present]
            missing = [table for table in missing if table not in (HOST_CONTEXT, ASSET_FINDINGS)] or missing
            if missing:
                summary.skipped[rule.id] = f"no table {', '.join(missing)} in the store"
                continue
            names.append(rule.id)
            tasks.append(functools.partial(_run_rule, rule=rule, context=context))
        rule_tasks = len(tasks)
        chosen_modules: list[ModuleType] = []
        for module in MODULES if modules is None else modules:
            name = str(getattr(module, "DETECTION", module.__name__))
            missing = [table for table in getattr(module, "REQUIRES", ()) if table not in present]
            if missing:
                summary.skipped[name] = f"no table {', '.join(missing)} in the store"
                continue
            names.append(name)
            chosen_modules.append(module)
            tasks.append(functools.partial(_run_module, module=module, context=context))
        runs = rule_tasks + sum(len(getattr(module, "PARTS", {})) or 1 for module in chosen_modules)
        if parallel and runs > 1:
            outcomes, summary.seconds["context"] = _scheduled(con, tasks, rule_tasks, chosen_modules, context, workers)
        else:
            if parallel:  # one task: it runs here, on a connection without the context yet
                started = time.perf_counter()
                build_context_views(con)
                summary.seconds["context"] = time.perf_counter() - started
            outcomes = [task(con) for task in tasks]
    ran: list[str] = []
    alerts: list[Alert] = []
    for name, outcome in zip(names, outcomes, strict=True):
        summary.seconds[name] = outcome.seconds
        if outcome.error is not None:
            summary.failed[name] = outcome.error
            continue
        ran += outcome.emitted
        alerts += outcome.found
    started = time.perf_counter()
    write_alerts(con, ran, alerts, context.now)
    summary.seconds["write"] = time.perf_counter() - started
    # Report rows after folding: what the table now holds for each detection that ran.
    rows = con.execute(
        f'SELECT detection, count(*) FROM "{ALERTS_TABLE}" WHERE detected_at = ? GROUP BY 1', [context.now]
    ).fetchall()
    summary.alerts = dict.fromkeys(ran, 0) | {str(detection): int(count) for detection, count in rows}
    return summary

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
from quaywatch.detect.alert_store import ALERTS_SCHEMA, alert_rows, write_rows
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
    #: The alerts' ``alerts`` rows, folded (alert_store.alert_rows), when the thread that ran it made them.
    rows: list[dict[str, Any]] | None = None


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


#: A task of a run: what it does on a connection (a cursor of its own with workers).
Task = Callable[[duckdb.DuckDBPyConnection], _Outcome]


def _in_workers(
    con: duckdb.DuckDBPyConnection, workers: int, prepare: Callable[[], list[Task]]
) -> tuple[list[_Outcome], float]:
    """Run the tasks ``prepare`` returns on ``workers`` threads, each with a cursor of its own (DuckDB runs queries
    without the GIL, so one detection's SQL overlaps another's Python); outcomes in task order, whatever order they
    finish in, and the longest of the workers' context builds.

    The workers start first and build their context while this thread prepares the tasks (the rules, the
    catalogue's answers): that work overlaps instead of coming before theirs.
    """
    pending: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    tasks: list[Task] = []
    outcomes: list[_Outcome | None] = []
    context_seconds: list[float] = []

    def work() -> None:
        cursor = con.cursor()  # a connection of its own: the context tables are temporary, so build them there
        try:
            started = time.perf_counter()
            build_context_views(cursor)
            context_seconds.append(time.perf_counter() - started)
            with catalog.registered(cursor):  # what its tasks ask the catalogue, read once
                while (index := pending.get()) is not None:
                    outcomes[index] = tasks[index](cursor)
        finally:
            cursor.close()

    threads = [threading.Thread(target=work, name=f"detect-{number}") for number in range(workers)]
    for thread in threads:
        thread.start()
    try:
        tasks += prepare()
        outcomes += [None] * len(tasks)  # before any index is queued: the workers only read it after one is
        for index in range(len(tasks)):
            pending.put(index)
    finally:  # also when preparing failed (a bad rule file): the workers stop once the queue is read
        for _ in threads:
            pending.put(None)
        for thread in threads:
            thread.join()
    missing = [index for index, outcome in enumerate(outcomes) if outcome is None]
    if missing:  # a worker died before it could build its context: run what it left on this connection
        build_context_views(con)
        for index in missing:
            outcomes[index] = tasks[index](con)
    return [outcome for outcome in outcomes if outcome is not None], max(context_seconds, default=0.0)


@dataclass(slots=True)
class _Parted:
    """The parts of one module as they finish on the workers; the last to finish combines them."""

    module: ModuleType
    context: DetectionContext
    parts: list[_Outcome | None]
    lock: threading.Lock = field(default_factory=threading.Lock)
    combined: _Outcome | None = None

    def run(self, con: duckdb.DuckDBPyConnection, part: str, place: int) -> _Outcome:
        outcome = _run_part(con, self.module, part, self.context)
        with self.lock:
            self.parts[place] = outcome
            last = all(done is not None for done in self.parts)
        if last:  # one thread gets here, after every part: combine on it, beside the others' work
            self.combined = _finished(_combine(self.module, self.context, [done for done in self.parts if done]),
                                      self.context)  # fmt: skip
        return outcome


def _finished(outcome: _Outcome, context: DetectionContext) -> _Outcome:
    """The outcome with its alerts' rows made, on the thread that ran it (rather than all at the end, on one)."""
    outcome.rows = alert_rows(outcome.found, context.now)
    return outcome


def _finishing(con: duckdb.DuckDBPyConnection, task: Task, context: DetectionContext) -> _Outcome:
    return _finished(task(con), context)


def _schedule(
    tasks: list[Task], rule_tasks: int, modules: list[ModuleType], context: DetectionContext
) -> tuple[list[Task], Callable[[list[_Outcome]], list[_Outcome]]]:
    """The runs for the workers (the longest first) and how to turn their outcomes into the tasks' (in task order).

    A module with ``PARTS`` runs as one task per part, the last part to finish combining them. The longest start
    first (``COST``, see the module docstring), so that no long detection starts last: modules and parts by cost,
    then the rules (one query each) in their order. Every run makes its alerts' rows as it ends.
    """
    runs: list[tuple[int, Task]] = []  # (task, what runs)
    costs: list[float] = []
    parted: dict[int, _Parted] = {}
    for index, module in enumerate(modules, start=rule_tasks):
        parts: dict[str, float] = getattr(module, "PARTS", {})
        if not parts:
            runs.append((index, functools.partial(_finishing, task=tasks[index], context=context)))
            costs.append(float(getattr(module, "COST", 0.0)))
            continue
        parted[index] = _Parted(module, context, [None] * len(parts))
        for place, (part, cost) in enumerate(parts.items()):
            runs.append((index, functools.partial(parted[index].run, part=part, place=place)))
            costs.append(float(cost))
    order = sorted(range(len(runs)), key=lambda position: -costs[position])  # stable: equal costs keep their order
    runs += [(index, functools.partial(_finishing, task=tasks[index], context=context)) for index in range(rule_tasks)]
    order += range(len(order), len(runs))

    def outcomes(finished: list[_Outcome]) -> list[_Outcome]:
        outcome_of = {position: finished[place] for place, position in enumerate(order)}
        per_task: dict[int, _Outcome] = {}
        for position, (index, _) in enumerate(runs):
            per_task.setdefault(index, outcome_of[position])
        for index, run in parted.items():  # the last of its parts to finish combined them, wherever it ran
            if run.combined is None:
                raise RuntimeError(f"not every part of {run.module.__name__} ran")
            per_task[index] = run.combined
        return [per_task[index] for index in range(len(tasks))]

    return [runs[position][1] for position in order], outcomes


def _plan(
    present: set[str],
    rules: list[Rule],
    modules: list[ModuleType],
    context: DetectionContext,
    summary: DetectionSummary,
) -> tuple[list[str], list[Task], int, list[ModuleType]]:
    """The detections that can run on a store whose relations are ``present`` (the others in ``summary.skipped``):
    their names, their tasks (the rules', then the modules'), how many are rules, and the modules."""
    names: list[str] = []
    tasks: list[Task] = []
    for rule in rules:
        missing = [table for table in rule.tables if table not in present]
        missing = [table for table in missing if table not in (HOST_CONTEXT, ASSET_FINDINGS)] or missing
        if missing:
            summary.skipped[rule.id] = f"no table {', '.join(missing)} in the store"
            continue
        names.append(rule.id)
        tasks.append(functools.partial(_run_rule, rule=rule, context=context))
    rule_tasks = len(tasks)
    chosen: list[ModuleType] = []
    for module in modules:
        name = str(getattr(module, "DETECTION", module.__name__))
        missing = [table for table in getattr(module, "REQUIRES", ()) if table not in present]
        if missing:
            summary.skipped[name] = f"no table {', '.join(missing)} in the store"
            continue
        names.append(name)
        chosen.append(module)
        tasks.append(functools.partial(_run_module, module=module, context=context))
    return names, tasks, rule_tasks, chosen


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
    names: list[str] = []
    if workers > 1:  # each worker builds the context on its cursor (temporary tables): none is needed here
        collected: list[Callable[[list[_Outcome]], list[_Outcome]]] = []

        def prepare() -> list[Task]:
            present = relations(con)  # this connection only asks which tables there are
            chosen = rules if rules is not None else load_rules(rules_folder)
            planned = _plan(present | context_relations(present), chosen, MODULES if modules is None else modules,
                            context, summary)  # fmt: skip
            names.extend(planned[0])
            runs, outcomes_of = _schedule(*planned[1:], context)
            collected.append(outcomes_of)
            return runs

        finished, summary.seconds["context"] = _in_workers(con, workers, prepare)
        outcomes = collected[0](finished)
    else:
        started = time.perf_counter()
        build_context_views(con)
        summary.seconds["context"] = time.perf_counter() - started
        with catalog.registered(con):  # what the rules and modules ask the catalogue, read once
            chosen = rules if rules is not None else load_rules(rules_folder)
            planned = _plan(relations(con), chosen, MODULES if modules is None else modules, context, summary)
            names, tasks = planned[0], planned[1]
            outcomes = [task(con) for task in tasks]
    ran: list[str] = []
    rows: list[dict[str, Any]] = []
    for name, outcome in zip(names, outcomes, strict=True):
        summary.seconds[name] = outcome.seconds
        if outcome.error is not None:
            summary.failed[name] = outcome.error
            continue
        ran += outcome.emitted
        rows += outcome.rows if outcome.rows is not None else alert_rows(outcome.found, context.now)
    started = time.perf_counter()
    write_rows(con, ran, rows)
    summary.seconds["write"] = time.perf_counter() - started
    # Report rows after folding: what the table now holds for each detection that ran.
    counts = con.execute(
        f'SELECT detection, count(*) FROM "{ALERTS_TABLE}" WHERE detected_at = ? GROUP BY 1', [context.now]
    ).fetchall()
    summary.alerts = dict.fromkeys(ran, 0) | {str(detection): int(count) for detection, count in counts}
    return summary

"""A risk rating for each asset, with its reasons: the D12 findings of the detection catalogue.

The score is the sum of the points of every factor that holds, capped at 100; the weights and level thresholds live
in ``data/risk_weights.yaml``, each with the reason for its value, so a port can argue with them in one place. The
facts come from the store in a few set-based queries (assets, flows, flow_policy, inventory_findings); Python then
runs once per asset. ``asset_risk`` is replaced on every rating, so a rerun never duplicates.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa

from quaywatch.assets.declared import CELLULAR_MAKER_ROLES, CELLULAR_ROLE, FINDINGS_TABLE
from quaywatch.assets.inventory import ASSETS_TABLE
from quaywatch.assets.provenance import KnowledgeBase, load_knowledge_base
from quaywatch.store.database import Store
from quaywatch.yaml_files import load_yaml

RISK_TABLE = "asset_risk"
LEVELS = ("low", "medium", "high", "critical")
#: Verdicts of flow_policy that count as policy violations.
VIOLATION_VERDICTS = ("violation", "external_unapproved")
SAMPLE = 3

REASON_TYPE = pa.struct(
    [
        pa.field("factor", pa.string(), False, {"doc": "listed, country, role, exposure, cellular, violations ..."}),
        pa.field("points", pa.float64(), False, {"doc": "points this factor adds"}),
        pa.field("explanation", pa.string(), False, {"doc": "the fact, in plain language"}),
    ]
)


def _doc(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable, {"doc": doc})


RISK_SCHEMA = pa.schema(
    [
        _doc("asset_id", pa.string(), "assets.asset_id", False),
        _doc("score", pa.float64(), "0-100: sum of the reasons' points, capped at 100", False),
        _doc("level", pa.string(), "low, medium, high or critical (thresholds in data/risk_weights.yaml)", False),
        _doc("reasons", pa.list_(REASON_TYPE), "every factor that holds: factor, points, explanation", False),
        _doc("mac", pa.string(), "assets.mac, for reading the table alone"),
        _doc("role", pa.string(), "assets.role"),
    ]
)


@dataclass
class RiskSummary:
    """Counts per level, for the CLI and tests."""

    assets: int = 0
    levels: dict[str, int] = field(default_factory=dict)


@lru_cache(maxsize=1)
def risk_weights() -> dict[str, Any]:
    """The shipped weights, checked: a typo in the file must fail loudly, not weigh zero."""
    text = resources.files("quaywatch.data").joinpath("risk_weights.yaml").read_text(encoding="utf-8")
    weights: dict[str, Any] = load_yaml(text)
    expected = {"version", "levels", "listed", "country", "role", "exposure", "cellular", "violations", "undeclared"}
    if set(weights) != expected:
        raise ValueError(f"risk_weights.yaml: sections {sorted(set(weights) ^ expected)} missing or unknown")
    for section, values in weights.items():
        if section != "version" and not all(isinstance(v, (int, float)) for v in values.values()):
            raise ValueError(f"risk_weights.yaml: section {section!r} has a value that is not a number")
    return weights


def level_of(score: float, weights: dict[str, Any] | None = None) -> str:
    """The level of a score: the highest whose threshold it reaches."""
    thresholds = (weights or risk_weights())["levels"]
    level = "low"
    for name in LEVELS[1:]:
        if score >= thresholds[name]:
            level = name
    return level


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _external_addresses(store: Store, tables: set[str]) -> None:
    """``_external(ip)``: the policy's external zone when evaluated, else every global address seen in flows."""
    con = store.connection
    con.execute("DROP TABLE IF EXISTS _external")
    if "host_zones" in tables:
        con.execute("CREATE TEMP TABLE _external AS SELECT ip FROM host_zones WHERE zone = 'external'")
        return
    addresses = [
        row[0] for row in con.execute("SELECT client_ip FROM flows UNION SELECT server_ip FROM flows").fetchall()
    ]
    external = []
    for text in addresses:
        try:
            if ipaddress.ip_address(text).is_global:
                external.append(text)
        except (ValueError, TypeError):
            continue
    listing = pa.table({"ip": pa.array(external, pa.string())})  # noqa: F841  (DuckDB replacement scan)
    con.execute("CREATE TEMP TABLE _external AS SELECT * FROM listing")


def _facts(store: Store, tables: set[str]) -> dict[str, dict[str, Any]]:
    """Per asset: exposure, GTP, violations and inventory findings, each from one grouped query."""
    con = store.connection
    facts: dict[str, dict[str, Any]] = {}
    con.execute(f"CREATE OR REPLACE TEMP TABLE _asset_ips AS SELECT asset_id, unnest(ips) AS ip FROM {ASSETS_TABLE}")
    if "flows" in tables:
        _external_addresses(store, tables)
        for row in _rows(
            store,
            """
            SELECT a.asset_id,
                count(*) FILTER (WHERE f.client_ip = a.ip AND xs.ip IS NOT NULL) AS out_flows,
                list(DISTINCT f.server_ip ORDER BY f.server_ip) FILTER (WHERE f.client_ip = a.ip AND xs.ip IS NOT NULL)
                    AS out_peers,
                count(*) FILTER (WHERE f.server_ip = a.ip AND xc.ip IS NOT NULL AND f.packets_to_client > 0)
                    AS in_flows,
                list(DISTINCT f.client_ip ORDER BY f.client_ip)
                    FILTER (WHERE f.server_ip = a.ip AND xc.ip IS NOT NULL AND f.packets_to_client > 0) AS in_peers,
                count(*) FILTER (WHERE f.application = 'gtp') AS gtp_flows
            FROM _asset_ips a JOIN flows f ON f.client_ip = a.ip OR f.server_ip = a.ip
                LEFT JOIN _external xs ON xs.ip = f.server_ip LEFT JOIN _external xc ON xc.ip = f.client_ip
            GROUP BY a.asset_id
        """,
        ):
            facts.setdefault(row["asset_id"], {}).update(row)
        con.execute("DROP TABLE IF EXISTS _external")
    if "flow_policy" in tables:
        verdicts = ", ".join(f"'{v}'" for v in VIOLATION_VERDICTS)
        for row in _rows(
            store,
            f"""
            SELECT a.asset_id, count(DISTINCT (p.capture_id, p.flow_id)) AS violations,
                list(DISTINCT p.reason ORDER BY p.reason)[1:{SAMPLE}] AS violation_reasons
            FROM _asset_ips a JOIN flow_policy p ON p.client_ip = a.ip OR p.server_ip = a.ip
            WHERE p.verdict IN ({verdicts}) GROUP BY a.asset_id
        """,
        ):
            facts.setdefault(row["asset_id"], {}).update(row)
    if FINDINGS_TABLE in tables:
        for row in _rows(
            store,
            f"""
            SELECT asset_id, list(kind ORDER BY kind) AS finding_kinds FROM {FINDINGS_TABLE}
            WHERE asset_id IS NOT NULL GROUP BY asset_id
        """,
        ):
            facts.setdefault(row["asset_id"], {}).update(row)
    con.execute("DROP TABLE IF EXISTS _asset_ips")
    return facts


def _peers(addresses: list[str] | None) -> str:
    addresses = addresses or []
    more = f" and {len(addresses) - SAMPLE} more" if len(addresses) > SAMPLE else ""
    return ", ".join(addresses[:SAMPLE]) + more


def rate_asset(asset: dict[str, Any], facts: dict[str, Any], kb: KnowledgeBase, weights: dict[str, Any]) -> list[
    dict[str, Any]
]:  # fmt: skip
    """The reasons of one asset: every factor that holds, with its points."""
    reasons: list[dict[str, Any]] = []

    def add(factor: str, points: float, explanation: str) -> None:
        if points > 0:
            reasons.append({"factor": factor, "points": float(points), "explanation": explanation})

    ids = {restricted.name: restricted.id for restricted in kb.lists.values()}
    maker = asset.get("maker") or asset.get("device_vendor") or asset.get("vendor") or "its maker"
    for name in asset.get("listed") or []:
        list_id = ids.get(name, name)
        points = weights["listed"].get(list_id, weights["listed"]["default"])
        add("listed", points, f"{maker} is on the {name} ({list_id}).")
    country = asset.get("maker_country")
    if country:
        add("country", weights["country"].get(country, 0), f"{maker} is based in {country}.")
    role = asset.get("role") or "unknown"
    add("role", weights["role"].get(role, weights["role"]["default"]), f"Its role is {role}.")
    if facts.get("out_flows"):
        add("exposure", weights["exposure"]["talks_to_external"],
            f"It opened {facts['out_flows']} flow(s) to the internet: {_peers(facts.get('out_peers'))}.")  # fmt: skip
    if facts.get("in_flows"):
        add("exposure", weights["exposure"]["reached_from_external"],
            f"It answered {facts['in_flows']} flow(s) from the internet: {_peers(facts.get('in_peers'))}.")  # fmt: skip
    maker_roles = sorted(set(asset.get("maker_roles") or []) & CELLULAR_MAKER_ROLES)
    cellular = []
    if maker_roles:
        cellular.append((weights["cellular"]["maker_role"], f"its maker is a {' and '.join(maker_roles)} maker"))
    if role == CELLULAR_ROLE:
        cellular.append((weights["cellular"]["role"], "its traffic makes it a cellular router or modem"))
    if facts.get("gtp_flows"):
        cellular.append((weights["cellular"]["gtp"], f"it carries GTP (cellular core) in {facts['gtp_flows']} flow(s)"))
    if cellular:  # one radio counts once: the strongest sign gives the points, all signs are named
        add("cellular", max(points for points, _ in cellular),
            "Radio or cellular capability: " + "; ".join(text for _, text in cellular) + ".")  # fmt: skip
    if facts.get("violations"):
        points = min(weights["violations"]["maximum"], weights["violations"]["per_flow"] * facts["violations"])
        add("violations", points, f"{facts['violations']} flow(s) break the site policy, e.g. "
            + " ".join(facts.get("violation_reasons") or []))  # fmt: skip
    for kind in sorted(set(facts.get("finding_kinds") or [])):
        points = weights["undeclared"].get(kind, 0)
        what = {"undeclared_device": "It is not in the declared inventory.",
                "maker_mismatch": "The declared inventory names another maker.",
                "model_mismatch": "The declared inventory names another model."}.get(kind, kind)  # fmt: skip
        add("undeclared" if kind == "undeclared_device" else "inventory", points, what)
    return reasons


def rate_assets(store: Store, kb: KnowledgeBase | None = None) -> RiskSummary:
    """Replace ``asset_risk`` from the inventory and what the policy evaluation and findings say about each asset."""
    store.flush()
    tables = set(store.tables())
    summary = RiskSummary()
    if ASSETS_TABLE not in tables:
        return summary
    kb = kb or load_knowledge_base()
    weights = risk_weights()
    facts = _facts(store, tables)
    rows = []
    for asset in _rows(store, f"SELECT * FROM {ASSETS_TABLE} ORDER BY asset_id"):
        reasons = rate_asset(asset, facts.get(asset["asset_id"], {}), kb, weights)
        score = min(100.0, sum(reason["points"] for reason in reasons))
        reasons.sort(key=lambda reason: -reason["points"])
        level = level_of(score, weights)
        rows.append({"asset_id": asset["asset_id"], "score": score, "level": level, "reasons": reasons,
                     "mac": asset["mac"], "role": asset["role"]})  # fmt: skip
        summary.levels[level] = summary.levels.get(level, 0) + 1
    con = store.connection
    risk_rows = pa.Table.from_pylist(rows, schema=RISK_SCHEMA)  # noqa: F841  (DuckDB replacement scan)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f'DROP TABLE IF EXISTS "{RISK_TABLE}"')
        store.ensure_table(RISK_TABLE, RISK_SCHEMA)
        con.execute(f'INSERT INTO "{RISK_TABLE}" BY NAME SELECT * FROM risk_rows')
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    summary.assets = len(rows)
    return summary

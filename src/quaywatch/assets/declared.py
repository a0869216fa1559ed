"""The declared inventory (what procurement or a CMDB says is installed) and how it differs from what was observed.

``read_declared`` parses the exported CSV and collects one error per bad cell, naming the file, line and column, while
keeping every valid row. ``import_declared`` replaces the ``declared_assets`` table, so a rerun never duplicates.
``build_findings`` compares it with the passive inventory (``assets``, ``asset_attributes``) and replaces
``inventory_findings``: undeclared devices (the modem nobody ordered), declared devices never observed, and maker or
model mismatches, each with the observed attribute rows as evidence. Every string from the file is untrusted: the
CLI escapes it before printing and neutralises it in CSV.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from quaywatch.assets.inventory import ASSETS_TABLE, ATTRIBUTES_TABLE
from quaywatch.assets.provenance import KnowledgeBase, load_knowledge_base, normalise
from quaywatch.store.database import Store

DECLARED_TABLE = "declared_assets"
FINDINGS_TABLE = "inventory_findings"

#: Accepted header spellings (compared case-insensitively, spaces, dashes and dots read as underscores).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "asset_tag": ("asset_tag", "tag", "assettag", "asset"),
    "maker": ("maker", "manufacturer", "vendor", "make"),
    "model": ("model", "model_number", "product"),
    "mac": ("mac", "mac_address", "macaddress", "hw_address"),
    "ip": ("ip", "ip_address", "ipaddress", "ips", "ip_addresses", "address"),
    "location": ("location",),
    "crane": ("crane",),
    "zone": ("zone",),
}
_HEADER_INDEX = {alias: name for name, aliases in COLUMN_ALIASES.items() for alias in aliases}

#: Roles and maker roles that make an undeclared device a possible hidden uplink.
CELLULAR_ROLE = "cellular router or modem"
CELLULAR_MAKER_ROLES = frozenset({"cellular_module", "cellular_router"})
#: Observed attributes that name the maker, and those kept as evidence of an undeclared device.
MAKER_ATTRIBUTES = ("maker", "oui_vendor", "vendor")
UNDECLARED_EVIDENCE = ("oui_vendor", "vendor", "maker", "maker_role", "listed", "role", "model", "hostname")
FLOW_EVIDENCE_LIMIT = 5

_MAC_SEPARATORS = re.compile(r"[\s:.\-]")
_HEX12 = re.compile(r"^[0-9a-f]{12}$")
_IP_SPLIT = re.compile(r"[;,\s]+")
_MODEL_KEY = re.compile(r"[\W_]+")


def _doc(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable, {"doc": doc})


DECLARED_SCHEMA = pa.schema(
    [
        _doc("declared_id", pa.string(), "stable id: first 16 hex digits of sha256 of MAC, IPs and tag", False),
        _doc("line", pa.int64(), "line of the row in the source file", False),
        _doc("asset_tag", pa.string(), "asset tag as declared (untrusted text: escape before printing)"),
        _doc("maker", pa.string(), "declared maker"),
        _doc("model", pa.string(), "declared model"),
        _doc("mac", pa.string(), "declared MAC, normalised to aa:bb:cc:dd:ee:ff"),
        _doc("ips", pa.list_(pa.string()), "declared addresses, normalised"),
        _doc("location", pa.string(), "declared location"),
        _doc("crane", pa.string(), "declared crane"),
        _doc("zone", pa.string(), "declared zone"),
        _doc("source_file", pa.string(), "name of the imported CSV file", False),
        _doc("source_sha256", pa.string(), "sha256 of the imported file", False),
        _doc("imported_at", pa.timestamp("us", tz="UTC"), "when it was imported", False),
    ]
)

EVIDENCE_TYPE = pa.struct(
    [
        pa.field("attribute", pa.string()),
        pa.field("value", pa.string()),
        pa.field("source_table", pa.string()),
        pa.field("rule", pa.string()),
        pa.field("confidence", pa.float64()),
        pa.field("refs", pa.list_(pa.string())),
    ]
)

FINDINGS_SCHEMA = pa.schema(
    [
        _doc("finding_id", pa.string(), "stable id: sha256 of kind, asset and declared row (16 hex digits)", False),
        _doc("kind", pa.string(), "undeclared_device, not_observed, maker_mismatch or model_mismatch", False),
        _doc("severity", pa.string(), "high, medium or low", False),
        _doc("asset_id", pa.string(), "assets.asset_id of the observed device; NULL for not_observed"),
        _doc("declared_id", pa.string(), "declared_assets.declared_id; NULL for undeclared_device"),
        _doc("declared_tag", pa.string(), "the declared asset tag (untrusted text)"),
        _doc("declared_line", pa.int64(), "line of the declared row in its file"),
        _doc("mac", pa.string(), "MAC of the device (observed, else declared)"),
        _doc("ips", pa.list_(pa.string()), "its addresses (observed, else declared)"),
        _doc("declared", pa.string(), "what was declared (maker, model, MAC, IPs)"),
        _doc("observed", pa.string(), "what was observed instead"),
        _doc("evidence", pa.list_(EVIDENCE_TYPE), "observed attribute rows: attribute, value, table, rule, refs"),
        _doc("explanation", pa.string(), "the finding in plain language", False),
    ]
)


@dataclass(frozen=True, slots=True)
class DeclaredAsset:
    """One valid row of the declared inventory."""

    line: int
    asset_tag: str | None
    maker: str | None
    model: str | None
    mac: str | None
    ips: tuple[str, ...]
    location: str | None = None
    crane: str | None = None
    zone: str | None = None

    @property
    def declared_id(self) -> str:
        """Stable across reimports and line moves: it names the device, not the row."""
        key = "|".join([self.mac or "", ",".join(self.ips), self.asset_tag or ""])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class RowError:
    """A bad cell or row; ``str()`` names the file, line and column."""

    file: str
    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" + (f": column {self.column}" if self.column else "")
        return f"{where}: {self.message}"


class DeclaredInventoryError(ValueError):
    """The file cannot be used at all (unreadable, no header, no identifier column); nothing was imported."""


@dataclass
class DeclaredFile:
    """What ``read_declared`` found: the valid rows and one error per bad row or cell."""

    path: Path
    sha256: str
    rows: list[DeclaredAsset] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)


def normalise_mac(text: str) -> str | None:
    """aa:bb:cc:dd:ee:ff from colon, dash, Cisco dotted or bare-hex notation; None when it is not a MAC."""
    digits = _MAC_SEPARATORS.sub("", text.strip().lower())
    if not _HEX12.match(digits):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _header_key(text: str) -> str:
    return re.sub(r"[\s.\-/]+", "_", text.strip().lower()).strip("_")


def read_declared(path: Path) -> DeclaredFile:
    """Parse the CSV; bad rows become errors (all of them), valid rows are kept."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DeclaredInventoryError(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # spreadsheet exports on Windows
    result = DeclaredFile(path, hashlib.sha256(raw).hexdigest())
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count)  # the header has no IP lists, so it tells the delimiter
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise DeclaredInventoryError(f"{path}: empty file, expected a header line")
    columns: dict[str, int] = {}
    for index, cell in enumerate(header):
        name = _HEADER_INDEX.get(_header_key(cell))
        if name is None:
            if cell.strip():
                result.ignored_columns.append(cell.strip())
        elif name in columns:
            raise DeclaredInventoryError(f"{path}:1: column {index + 1} ({cell.strip()}): duplicates column {name}")
        else:
            columns[name] = index
    if "mac" not in columns and "ip" not in columns:
        raise DeclaredInventoryError(
            f"{path}:1: no MAC or IP column (accepted headers: "
            f"{', '.join(COLUMN_ALIASES['mac'] + COLUMN_ALIASES['ip'])})"
        )
    labels = {name: f"{index + 1} ({header[index].strip()})" for name, index in columns.items()}
    seen_macs: dict[str, int] = {}
    line = 1
    for record in reader:
        start, line = line + 1, reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        row = _parse_row(path.name, start, record, columns, labels, result.errors)
        if row is None:
            continue
        if row.mac is not None and row.mac in seen_macs:
            result.errors.append(
                RowError(
                    path.name, start, labels["mac"], f"MAC {row.mac} already declared on line {seen_macs[row.mac]}"
                )
            )
            continue
        if row.mac is not None:
            seen_macs[row.mac] = start
        result.rows.append(row)
    return result


def _parse_row(
    file: str, line: int, record: list[str], columns: dict[str, int], labels: dict[str, str], errors: list[RowError]
) -> DeclaredAsset | None:
    def cell(name: str) -> str | None:
        index = columns.get(name)
        if index is None or index >= len(record):
            return None
        return record[index].strip() or None

    bad = False
    mac_text, mac = cell("mac"), None
    if mac_text is not None:
        mac = normalise_mac(mac_text)
        if mac is None:
            errors.append(RowError(file, line, labels["mac"], f"bad MAC address {mac_text!r}"))
            bad = True
    ips: list[str] = []
    for part in _IP_SPLIT.split(cell("ip") or ""):
        if not part:
            continue
        try:
            address = str(ipaddress.ip_address(part))
        except ValueError:
            errors.append(RowError(file, line, labels["ip"], f"bad IP address {part!r}"))
            bad = True
            continue
        if address not in ips:
            ips.append(address)
    if bad:
        return None
    if mac is None and not ips:
        errors.append(RowError(file, line, None, "no identifier: a row needs a MAC or an IP address"))
        return None
    return DeclaredAsset(
        line, cell("asset_tag"), cell("maker"), cell("model"), mac, tuple(ips),
        cell("location"), cell("crane"), cell("zone"),
    )  # fmt: skip


def import_declared(store: Store, path: Path) -> DeclaredFile:
    """Replace ``declared_assets`` with the file's valid rows; a file that fails outright changes nothing."""
    parsed = read_declared(path)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "declared_id": row.declared_id,
            "line": row.line,
            "asset_tag": row.asset_tag,
            "maker": row.maker,
            "model": row.model,
            "mac": row.mac,
            "ips": list(row.ips),
            "location": row.location,
            "crane": row.crane,
            "zone": row.zone,
            "source_file": path.name,
            "source_sha256": parsed.sha256,
            "imported_at": now,
        }
        for row in parsed.rows
    ]
    _replace(store, DECLARED_TABLE, DECLARED_SCHEMA, pa.Table.from_pylist(rows, schema=DECLARED_SCHEMA))
    return parsed


def _replace(store: Store, name: str, schema: pa.Schema, table: pa.Table) -> None:
    """Drop, recreate and fill in one transaction: readers see the old rows or the new ones."""
    con = store.connection
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f'DROP TABLE IF EXISTS "{name}"')
        store.ensure_table(name, schema)
        con.register("_replacement", table)
        con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM _replacement')
        con.unregister("_replacement")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def has_declared(store: Store) -> bool:
    """Whether a declared inventory was imported into this store."""
    return DECLARED_TABLE in store.tables()


def _model_key(text: str) -> str:
    return _MODEL_KEY.sub("", text.casefold())


#: The shortest model key that may match inside a longer one: an order number in "S7-1500 CPU (6ES7 516-3AN02-0AB0)".
_MIN_CONTAINED_KEY = 6


def models_agree(declared: str, observed: str) -> bool:
    """Case, space and punctuation ignored; one may be a prefix of the other (order number without its suffix), or
    an order number of at least six characters may stand inside the other (a CMDB's "name (order number)")."""
    a, b = _model_key(declared), _model_key(observed)
    if not a or not b:
        return False
    if a.startswith(b) or b.startswith(a):
        return True
    shorter, longer = sorted((a, b), key=len)
    return len(shorter) >= _MIN_CONTAINED_KEY and shorter in longer


def makers_agree(declared: str, observed: str, kb: KnowledgeBase) -> bool:
    """Same maker through the knowledge base (names, brands, parents), else by normalised name (word prefix)."""
    left, right = kb.lookup(declared), kb.lookup(observed)
    if left is not None and right is not None and left.chain and right.chain:
        left_ids, right_ids = {org.id for org in left.chain}, {org.id for org in right.chain}
        if left.chain[0].id in right_ids or right.chain[0].id in left_ids:
            return True
    a, b = normalise(declared), normalise(observed)
    if not a or not b:
        return False
    short, long = sorted((a.split(), b.split()), key=len)
    return long[: len(short)] == short


@dataclass
class FindingsSummary:
    """Counts per kind, for the CLI and tests."""

    declared: int = 0
    matched: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def _finding_id(kind: str, asset_id: str | None, declared_id: str | None) -> str:
    return hashlib.sha256(f"{kind}|{asset_id or ''}|{declared_id or ''}".encode()).hexdigest()[:16]


def _query(store: Store, sql: str, parameters: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql, list(parameters))
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _evidence(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "attribute": row["attribute"],
            "value": row["value"],
            "source_table": row["source_table"],
            "rule": row["rule"],
            "confidence": row["confidence"],
            "refs": list(row["evidence"] or []),
        }
        for row in rows
    ]


def _describe(maker: str | None, model: str | None, mac: str | None, ips: Sequence[str]) -> str:
    parts = [f"maker {maker}" if maker else "", f"model {model}" if model else "", f"MAC {mac}" if mac else ""]
    if ips:
        parts.append(f"IP {', '.join(ips)}")
    return "; ".join(part for part in parts if part) or "unknown"


def build_findings(store: Store, kb: KnowledgeBase | None = None) -> FindingsSummary:
    """Compare ``declared_assets`` with the inventory and replace ``inventory_findings``; build the inventory first."""
    kb = kb or load_knowledge_base()
    tables = set(store.tables())
    declared = _query(store, f"SELECT * FROM {DECLARED_TABLE} ORDER BY line") if DECLARED_TABLE in tables else []
    assets = _query(store, f"SELECT * FROM {ASSETS_TABLE} ORDER BY asset_id") if ASSETS_TABLE in tables else []
    attributes: dict[str, list[dict[str, Any]]] = {}
    if ATTRIBUTES_TABLE in tables:
        for row in _query(
            store, f"SELECT * FROM {ATTRIBUTES_TABLE} ORDER BY asset_id, attribute, confidence DESC, value, rule"
        ):
            attributes.setdefault(row["asset_id"], []).append(row)
    flows = _flow_refs(store, tables)
    by_mac = {asset["mac"]: asset for asset in assets if asset["mac"]}
    by_ip: dict[str, list[dict[str, Any]]] = {}
    routed_by: dict[str, list[dict[str, Any]]] = {}
    for asset in assets:
        for ip in asset["ips"] or []:
            by_ip.setdefault(ip, []).append(asset)
        for ip in asset["routes_for"] or []:
            routed_by.setdefault(ip, []).append(asset)
    findings: list[dict[str, Any]] = []
    matched: set[str] = set()
    summary = FindingsSummary(declared=len(declared))

    def add(kind: str, severity: str, asset: dict[str, Any] | None, row: dict[str, Any] | None, **values: Any) -> None:
        asset_id = asset["asset_id"] if asset else None
        declared_id = row["declared_id"] if row else None
        findings.append(
            {
                "finding_id": _finding_id(kind, asset_id, declared_id),
                "kind": kind,
                "severity": severity,
                "asset_id": asset_id,
                "declared_id": declared_id,
                "declared_tag": row["asset_tag"] if row else None,
                "declared_line": row["line"] if row else None,
                "mac": (asset["mac"] if asset else None) or (row["mac"] if row else None),
                "ips": list((asset["ips"] if asset else None) or (row["ips"] if row else None) or []),
                **values,
            }
        )

    for row in declared:
        tag = row["asset_tag"] or f"line {row['line']}"
        what = _describe(row["maker"], row["model"], row["mac"], row["ips"] or [])
        if row["mac"]:
            found = [by_mac[row["mac"]]] if row["mac"] in by_mac else []
        else:
            found = list({a["asset_id"]: a for ip in row["ips"] or [] for a in by_ip.get(ip, [])}.values())
        if not found:
            add("not_observed", "low", None, row, declared=what, observed=_not_seen_note(row, by_ip, routed_by),
                evidence=[], explanation=(
                    f"Declared asset {tag} ({what}) was never observed on the monitored network: it may be off, "
                    "on a segment this sensor does not see, removed, or replaced by another device."
                ))  # fmt: skip
            continue
        for asset in found:
            matched.add(asset["asset_id"])
            rows = attributes.get(asset["asset_id"], [])
            _compare(add, kb, row, tag, asset, rows)
    for asset in assets:
        if asset["asset_id"] in matched:
            continue
        rows = attributes.get(asset["asset_id"], [])
        maker_roles = set(asset["maker_roles"] or [])
        cellular = asset["role"] == CELLULAR_ROLE or bool(maker_roles & CELLULAR_MAKER_ROLES)
        name = asset["maker"] or asset["device_vendor"] or asset["vendor"] or "unknown maker"
        seen = _describe(name, asset["model"], asset["mac"], asset["ips"] or [])
        text = f"{seen}; role {asset['role']}"
        explanation = f"Observed device {asset['mac'] or asset['asset_id']} ({text}) is not in the declared inventory."
        if cellular:
            explanation += (
                " Its maker makes cellular modules or its role is a cellular router or modem: an undeclared modem is "
                "a path around the firewall (the modem nobody ordered). Severity raised to high; find it and ask who "
                "installed it."
            )
        if asset["listed"]:
            explanation += f" Its maker is on: {', '.join(asset['listed'])}."
        evidence = _evidence(r for r in rows if r["attribute"] in UNDECLARED_EVIDENCE)
        if asset["asset_id"] in flows:
            evidence.append(
                {"attribute": "seen", "value": ", ".join(asset["ips"] or []) or (asset["mac"] or ""),
                 "source_table": "flows", "rule": "flow_endpoint", "confidence": 1.0, "refs": flows[asset["asset_id"]]}
            )  # fmt: skip
        add("undeclared_device", "high" if cellular else "medium", asset, None, declared="not declared", observed=text,
            evidence=evidence, explanation=explanation)  # fmt: skip
    findings.sort(key=lambda f: (_SEVERITY_ORDER[f["severity"]], f["kind"], f["declared_line"] or 0, f["finding_id"]))
    _replace(store, FINDINGS_TABLE, FINDINGS_SCHEMA, pa.Table.from_pylist(findings, schema=FINDINGS_SCHEMA))
    summary.matched = len(matched)
    for finding in findings:
        summary.kinds[finding["kind"]] = summary.kinds.get(finding["kind"], 0) + 1
    return summary


_SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


def _compare(
    add: Any, kb: KnowledgeBase, row: dict[str, Any], tag: str, asset: dict[str, Any], rows: list[Any]
) -> None:
    """Maker and model mismatches of one matched pair; unknown on either side is no mismatch."""
    makers = [r for r in rows if r["attribute"] in MAKER_ATTRIBUTES]
    if row["maker"] and makers and not any(makers_agree(row["maker"], r["value"], kb) for r in makers):
        observed = asset["maker"] or asset["device_vendor"] or asset["vendor"] or makers[0]["value"]
        listed = list(asset["listed"] or [])
        explanation = (
            f"Declared asset {tag} is declared as made by {row['maker']}, but the device at "
            f"{asset['mac'] or asset['asset_id']} "
            f"identifies as {observed} ({len(makers)} observation(s), none naming the declared maker)."
        )
        if listed:
            explanation += f" The observed maker is on: {', '.join(listed)}; severity raised to high."
        add("maker_mismatch", "high" if listed else "medium", asset, row, declared=f"maker {row['maker']}",
            observed=f"maker {observed}", evidence=_evidence(makers), explanation=explanation)  # fmt: skip
    models = [r for r in rows if r["attribute"] == "model"]
    if row["model"] and models and not any(models_agree(row["model"], r["value"]) for r in models):
        observed = asset["model"] or models[0]["value"]
        add("model_mismatch", "low", asset, row, declared=f"model {row['model']}", observed=f"model {observed}",
            evidence=_evidence(models), explanation=(
                f"Declared asset {tag} is declared as model {row['model']}, but the device reports {observed}: a "
                "substituted or re-flashed unit, or an inventory error."
            ))  # fmt: skip


def _not_seen_note(
    row: dict[str, Any], by_ip: dict[str, list[dict[str, Any]]], routed_by: dict[str, list[dict[str, Any]]]
) -> str:
    """Say what the declared addresses are used for instead, if anything: another MAC, or a router's remote side."""
    notes = []
    for ip in row["ips"] or []:
        owners = [a["mac"] or a["asset_id"] for a in by_ip.get(ip, []) if a["mac"] != row["mac"]]
        if owners:
            notes.append(f"{ip} is used by {', '.join(owners)}")
        routers = [a["mac"] or a["asset_id"] for a in routed_by.get(ip, [])]
        if routers:
            notes.append(f"{ip} seen only beyond router {', '.join(routers)}")
    return "; ".join(notes) or "never seen"


def _flow_refs(store: Store, tables: set[str]) -> dict[str, list[str]]:
    """A few flow ids per asset, as evidence that an undeclared device really talked."""
    if "flows" not in tables or ASSETS_TABLE not in tables:
        return {}
    refs: dict[str, list[str]] = {}
    for asset_id, ids in store.connection.execute(f"""
        WITH ends AS (
            SELECT a.asset_id, f.flow_id, f.ts FROM {ASSETS_TABLE} a JOIN flows f ON lower(f.client_mac) = a.mac
            UNION SELECT a.asset_id, f.flow_id, f.ts FROM {ASSETS_TABLE} a JOIN flows f ON lower(f.server_mac) = a.mac
        )
        SELECT asset_id, list(flow_id ORDER BY ts, flow_id)[1:{FLOW_EVIDENCE_LIMIT}] FROM ends GROUP BY asset_id
    """).fetchall():
        refs[asset_id] = list(ids)
    return refs

"""Offline import of newer restricted-list entries (trade.gov Consolidated Screening List JSON, or a simple CSV).

Ports are often air-gapped, so lists are updated from a file someone carried in. The import writes an override
file in the user's data directory; the shipped knowledge base stays untouched and is still read beneath it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quaywatch.assets.provenance import OVERRIDE_FILE, KnowledgeBase, ProvenanceError, normalise
from quaywatch.yaml_files import load_yaml

CSL_URL = "https://data.trade.gov/downloadable_consolidated_screening_list/v1/consolidated.json"
CSV_COLUMNS = ("name", "list", "country", "source", "date")
DEFAULT_DATA_DIR = Path("~/.local/share/quaywatch")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_KNOWN_CSL_SOURCES = {"entity list": "entity_list"}


@dataclass(frozen=True, slots=True)
class ImportedEntry:
    """One restricted-list entry read from an import file."""

    list_id: str
    list_name: str
    name: str
    date: str
    source_url: str
    aliases: tuple[str, ...] = ()
    country: str | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What an import changed, per list."""

    override_path: Path
    added: dict[str, int]
    unchanged: int

    @property
    def changed(self) -> bool:
        """True when the override file was (re)written."""
        return any(self.added.values())


def user_data_dir(explicit: Path | None = None) -> Path:
    """``--data-dir``, else ``QUAYWATCH_DATA_DIR``, else ``~/.local/share/quaywatch``."""
    if explicit is not None:
        return explicit.expanduser()
    env = os.environ.get("QUAYWATCH_DATA_DIR")
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR.expanduser()


def override_dir(data_dir: Path) -> Path:
    """Where the provenance override lives inside the user data directory."""
    return data_dir / "provenance"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.casefold()).strip("_") or "imported"


def _list_for(kb: KnowledgeBase, label: str) -> tuple[str, str]:
    """Map a list label (an id, a list name, or a CSL ``source``) to a list id and display name."""
    if label in kb.lists:
        return label, kb.lists[label].name
    key = normalise(label)
    for restricted in kb.lists.values():
        if normalise(restricted.name) == key:
            return restricted.id, restricted.name
    short = re.sub(r"\s*\(.*", "", label).split(" - ")[0].strip()
    list_id = _KNOWN_CSL_SOURCES.get(normalise(short), _slug(short))
    if list_id in kb.lists:
        return list_id, kb.lists[list_id].name
    return list_id, short or label


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _read_csl(path: Path, data: Any, kb: KnowledgeBase, today: str) -> list[ImportedEntry]:
    results = data.get("results") if isinstance(data, dict) else data
    if not isinstance(results, list):
        raise ProvenanceError(path, None, "results", "expected a CSL JSON object with a results[] list")
    entries: list[ImportedEntry] = []
    for index, item in enumerate(results):
        where = f"results[{index}]"
        if not isinstance(item, dict):
            raise ProvenanceError(path, None, where, "expected an object")
        name, source = _text(item.get("name")), _text(item.get("source"))
        if name is None:
            raise ProvenanceError(path, None, f"{where}.name", "missing or empty")
        if source is None:
            raise ProvenanceError(path, None, f"{where}.source", "missing or empty (the list the entry is on)")
        aliases = item.get("alt_names") or []
        if isinstance(aliases, str):
            aliases = [part.strip() for part in aliases.split(";")]
        if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
            raise ProvenanceError(path, None, f"{where}.alt_names", "expected a list of names")
        date = _text(item.get("start_date")) or today
        if not _DATE.match(date):
            raise ProvenanceError(path, None, f"{where}.start_date", f"{date!r} is not a date (YYYY-MM-DD)")
        addresses = item.get("addresses") or []
        if not isinstance(addresses, list):
            raise ProvenanceError(path, None, f"{where}.addresses", "expected a list of addresses")
        countries = [str(a["country"]).strip() for a in addresses if isinstance(a, dict) and _text(a.get("country"))]
        country = countries[0].upper() if countries and re.fullmatch(r"[A-Za-z]{2}", countries[0]) else None
        url = _text(item.get("source_list_url")) or _text(item.get("source_information_url")) or CSL_URL
        if not url.startswith(("https://", "http://")):
            raise ProvenanceError(path, None, f"{where}.source_list_url", f"{url!r} is not an http(s) URL")
        notice = item.get("federal_register_notice")
        list_id, list_name = _list_for(kb, source)
        entries.append(
            ImportedEntry(
                list_id=list_id,
                list_name=list_name,
                name=name,
                date=date,
                source_url=url,
                aliases=tuple(a.strip() for a in aliases if a.strip()),
                country=country,
                note=f"Federal Register {notice}" if isinstance(notice, str) and notice.strip() else "",
            )
        )
    return entries


def _read_csv(path: Path, text: str, kb: KnowledgeBase) -> list[ImportedEntry]:
    reader = csv.DictReader(text.splitlines())
    missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ProvenanceError(
            path, 1, "header", f"missing column(s) {', '.join(missing)}; need {','.join(CSV_COLUMNS)}"
        )
    entries: list[ImportedEntry] = []
    for index, row in enumerate(reader):
        line = reader.line_num
        where = f"row {index + 1}"
        values = {column: (row.get(column) or "").strip() for column in CSV_COLUMNS}
        for column in ("name", "list", "source", "date"):
            if not values[column]:
                raise ProvenanceError(path, line, f"{where}.{column}", "missing or empty")
        if not values["source"].startswith(("https://", "http://")):
            raise ProvenanceError(path, line, f"{where}.source", f"{values['source']!r} is not an http(s) URL")
        if not _DATE.match(values["date"]):
            raise ProvenanceError(path, line, f"{where}.date", f"{values['date']!r} is not a date (YYYY-MM-DD)")
        country = values["country"].upper() or None
        if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
            raise ProvenanceError(path, line, f"{where}.country", f"{country!r} is not an ISO 3166 alpha-2 code")
        list_id, list_name = _list_for(kb, values["list"])
        entries.append(ImportedEntry(list_id, list_name, values["name"], values["date"], values["source"], (), country))
    return entries


def read_import(path: Path, kb: KnowledgeBase, today: str | None = None) -> list[ImportedEntry]:
    """Entries of a CSL JSON file or a ``name,list,country,source,date`` CSV."""
    today = today or dt.date.today().isoformat()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ProvenanceError(path, None, "file", str(error)) from error
    if path.suffix.lower() == ".csv" or not text.lstrip().startswith(("{", "[")):
        return _read_csv(path, text, kb)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProvenanceError(path, error.lineno, "json", error.msg) from error
    return _read_csl(path, data, kb, today)


def _load_override(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    data = load_yaml(path.read_text(encoding="utf-8")) or {}
    return {str(item["id"]): item for item in data.get("lists", [])}


def apply_update(path: Path, kb: KnowledgeBase, data_dir: Path, today: str | None = None) -> UpdateResult:
    """Add the file's entries that the knowledge base does not list yet; rerunning with the same file is a no-op."""
    entries = read_import(path, kb, today)
    target = override_dir(data_dir) / OVERRIDE_FILE
    lists = _load_override(target)
    known = {(list_id, normalise(m.name)) for list_id, restricted in kb.lists.items() for m in restricted.members}
    for list_id, item in lists.items():
        known.update((list_id, normalise(str(member["name"]))) for member in item.get("members", []))
    added: dict[str, int] = {}
    unchanged = 0
    for entry in entries:
        key = (entry.list_id, normalise(entry.name))
        if key in known:
            unchanged += 1
            continue
        known.add(key)
        item = lists.setdefault(
            entry.list_id,
            {
                "id": entry.list_id,
                "name": entry.list_name,
                "url": kb.lists[entry.list_id].url if entry.list_id in kb.lists else CSL_URL,
                "version": f"imported from {path.name}",
                "date": entry.date,
                "sources": [{"url": CSL_URL, "date": entry.date, "title": f"offline import of {path.name}"}],
                "members": [],
            },
        )
        item["date"] = max(str(item["date"]), entry.date)
        member: dict[str, Any] = {"name": entry.name, "date": entry.date}
        if entry.aliases:
            member["aliases"] = list(entry.aliases)
        if entry.country:
            member["country"] = entry.country
        if entry.note:
            member["note"] = entry.note
        member["sources"] = [{"url": entry.source_url, "date": entry.date}]
        item["members"].append(member)
        added[entry.list_id] = added.get(entry.list_id, 0) + 1
    if added:
        _write_override(target, lists)
    return UpdateResult(target, added, unchanged)


def _write_override(target: Path, lists: dict[str, dict[str, Any]]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    ordered: Sequence[dict[str, Any]] = [lists[key] for key in sorted(lists)]
    for item in ordered:
        item["members"].sort(key=lambda member: normalise(str(member["name"])))
    header = "# Written by 'quaywatch provenance update'; entries imported offline, read on top of the shipped lists.\n"
    body = yaml.safe_dump({"version": 1, "lists": list(ordered)}, sort_keys=False, allow_unicode=True, width=120)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(header + body, encoding="utf-8")
    temporary.replace(target)

"""ATT&CK technique names from a versioned data file, and its rebuild from MITRE's STIX 2.1 bundle.

Technique names are reference data: they come from ``data/attack_ics.yaml`` (written from MITRE's published ATT&CK for
ICS content, with its version), or from the copy ``quaywatch attack update`` wrote into the user data directory from an
``ics-attack.json`` bundle, offline. An unknown technique id raises, so a rule with a typo fails its test instead of
shipping an alert with a blank name.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from quaywatch.assets.provenance_update import user_data_dir
from quaywatch.yaml_files import load_yaml

DATA_FILE = "attack_ics.yaml"
SOURCE_URL = "https://github.com/mitre-attack/attack-stix-data/blob/master/ics-attack/ics-attack.json"


class UnknownTechniqueError(KeyError):
    """A technique id that is not in the ATT&CK data file."""


@dataclass(frozen=True, slots=True)
class Technique:
    """One ATT&CK technique: id, official name and tactics (kill-chain phase names)."""

    id: str
    name: str
    tactics: tuple[str, ...]
    domain: str  # ics or enterprise


@dataclass(frozen=True, slots=True)
class AttackData:
    """The loaded data file: its ATT&CK release and every technique by id."""

    version: str
    source: str
    retrieved: str
    techniques: dict[str, Technique]


def installed_path(data_dir: Path | None = None) -> Path | None:
    """The user's rebuilt copy when there is one (``attack update`` wrote it), else None."""
    candidate = user_data_dir(data_dir) / DATA_FILE
    return candidate if candidate.is_file() else None


def parse(text: str) -> AttackData:
    """Read the YAML form (packaged or rebuilt)."""
    document = load_yaml(text) or {}
    techniques: dict[str, Technique] = {}
    for domain, section in (("ics", "techniques"), ("enterprise", "enterprise")):
        for technique_id, entry in (document.get(section) or {}).items():
            techniques[str(technique_id)] = Technique(
                str(technique_id), str(entry["name"]), tuple(entry.get("tactics") or ()), domain
            )
    return AttackData(
        str(document.get("version", "")),
        str(document.get("source", "")),
        str(document.get("retrieved", "")),
        techniques,
    )


@functools.cache
def load(path: Path | None = None) -> AttackData:
    """The data file: ``path``, else the user's rebuilt copy, else the packaged one."""
    chosen = path or installed_path()
    if chosen is not None:
        return parse(chosen.read_text(encoding="utf-8"))
    return parse(resources.files("quaywatch.data").joinpath(DATA_FILE).read_text(encoding="utf-8"))


def technique(technique_id: str) -> Technique:
    """The technique with this id; raises :class:`UnknownTechniqueError` for an id not in the data file."""
    found = load().techniques.get(technique_id)
    if found is None:
        raise UnknownTechniqueError(f"unknown ATT&CK technique {technique_id!r} (not in {DATA_FILE})")
    return found


def technique_name(technique_id: str) -> str:
    """Official name of an ATT&CK technique id such as T0812."""
    return technique(technique_id).name


# -- rebuild from STIX ---------------------------------------------------------------------------------------------


class BundleError(ValueError):
    """The file is not a STIX 2.1 bundle with ATT&CK attack-pattern objects."""


def techniques_from_bundle(bundle: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The ICS techniques of an ``ics-attack.json`` bundle and the ATT&CK version it declares.

    Deprecated and revoked attack patterns are skipped (MITRE keeps them in the bundle with ``x_mitre_deprecated`` or
    ``revoked``). The id is the ``external_id`` of the ``mitre-attack`` external reference; the tactics are the
    kill-chain phase names of the ``mitre-ics-attack`` (or any mitre) kill chain.
    """
    if not isinstance(bundle, dict) or bundle.get("type") != "bundle" or not isinstance(bundle.get("objects"), list):
        raise BundleError("not a STIX bundle (type 'bundle' with a list of objects)")
    version = ""
    techniques: dict[str, dict[str, Any]] = {}
    for item in bundle["objects"]:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "x-mitre-collection" and item.get("x_mitre_version"):
            version = str(item["x_mitre_version"])
        if item.get("type") != "attack-pattern" or item.get("revoked") or item.get("x_mitre_deprecated"):
            continue
        references = [r for r in item.get("external_references") or [] if r.get("source_name") == "mitre-attack"]
        if not references or not references[0].get("external_id"):
            continue
        technique_id = str(references[0]["external_id"])
        tactics = sorted(
            {
                str(phase["phase_name"])
                for phase in item.get("kill_chain_phases") or []
                if str(phase.get("kill_chain_name", "")).startswith("mitre")
            }
        )
        techniques[technique_id] = {"name": str(item.get("name", "")), "tactics": tactics}
    if not techniques:
        raise BundleError("the bundle holds no current attack-pattern with a mitre-attack external id")
    return version, dict(sorted(techniques.items()))


def rebuild(bundle_path: Path, out: Path, today: dt.date | None = None) -> AttackData:
    """Write a new data file at ``out`` from a bundle, keeping the Enterprise techniques of the current file."""
    try:
        bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{bundle_path}: cannot read the bundle: {error}") from error
    version, techniques = techniques_from_bundle(bundle)
    current = load()
    enterprise = {
        t.id: {"name": t.name, "tactics": list(t.tactics)}
        for t in current.techniques.values()
        if t.domain == "enterprise"
    }
    document = {
        "version": f"ics-v{version}" if version else "ics-unknown",
        "source": f"{SOURCE_URL} (rebuilt from {bundle_path.name})",
        "retrieved": (today or dt.date.today()).isoformat(),
        "techniques": techniques,
        "enterprise": enterprise,
    }
    text = (
        "# MITRE ATT&CK for ICS techniques rebuilt by `quaywatch attack update` from a STIX 2.1 bundle.\n"
        + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    load.cache_clear()
    return parse(text)

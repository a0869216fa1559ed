"""Vendor provenance: maker -> parent chain -> country, and restricted-list membership, each fact cited.

The knowledge base is data (``quaywatch/data/provenance/*.yaml``) so that analysts can review and correct it
without reading code. An override directory written by ``quaywatch provenance update`` adds newer list entries
on top of the shipped data; the shipped files are never modified.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

OVERRIDE_FILE = "lists-override.yaml"
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_LEGAL_SUFFIXES = frozenset(
    [
        "co",
        "ltd",
        "limited",
        "inc",
        "incorporated",
        "corp",
        "corporation",
        "company",
        "llc",
        "ulc",
        "ag",
        "ab",
        "uab",
        "sa",
        "spa",
        "gmbh",
        "plc",
        "pty",
        "bv",
        "nv",
        "oy",
    ]
)


class ProvenanceError(ValueError):
    """A knowledge-base or import file is malformed; the message names the file, line and key."""

    def __init__(self, file: str | Path, line: int | None, key: str, message: str) -> None:
        self.file, self.line, self.key = str(file), line, key
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {key}: {message}")


def normalise(name: str) -> str:
    """Compare organisation names the way people write them: case, punctuation and legal suffixes ignored."""
    text = unicodedata.normalize("NFKC", name).casefold().replace("&", " and ")
    tokens = re.sub(r"[^\w]+", " ", text).split()
    while len(tokens) > 1 and tokens[-1] in _LEGAL_SUFFIXES:
        tokens.pop()
    if len(tokens) > 1 and tokens[0] == "uab":
        tokens.pop(0)
    return " ".join(tokens)


@dataclass(frozen=True, slots=True)
class Source:
    """A citation: where a fact was published and when."""

    url: str
    date: str
    title: str = ""
    id: str = ""

    def to_dict(self) -> dict[str, str]:
        """Plain form for JSON output."""
        return {"url": self.url, "date": self.date, "title": self.title}


@dataclass(frozen=True, slots=True)
class Organisation:
    """A maker or parent company."""

    id: str
    name: str
    sources: tuple[Source, ...]
    aliases: tuple[str, ...] = ()
    parent: str | None = None
    country: str | None = None
    roles: tuple[str, ...] = ()
    oui_names: tuple[str, ...] = ()
    note: str = ""

    def names(self) -> Iterator[str]:
        """Every spelling that identifies the organisation."""
        yield self.name
        yield from self.aliases
        yield from self.oui_names


@dataclass(frozen=True, slots=True)
class Brand:
    """A brand under which a maker's equipment is sold."""

    brand: str
    maker: str
    relation: str
    sources: tuple[Source, ...]
    valid_from: str | None = None
    valid_until: str | None = None
    note: str = ""
    confidence: str = "V"


@dataclass(frozen=True, slots=True)
class ListMember:
    """One entry of a restricted list, as listed."""

    name: str
    date: str
    sources: tuple[Source, ...]
    organisation: str | None = None
    aliases: tuple[str, ...] = ()
    country: str | None = None
    scope: str = ""
    note: str = ""
    confidence: str = "V"


@dataclass(frozen=True, slots=True)
class RestrictedList:
    """A published list of restricted or covered entities."""

    id: str
    name: str
    url: str
    version: str
    date: str
    sources: tuple[Source, ...]
    members: tuple[ListMember, ...]
    authority: str = ""
    effect: str = ""
    covers_affiliates: bool = False


@dataclass(frozen=True, slots=True)
class Membership:
    """Why an organisation is (or is tied to) a listed entity."""

    list_id: str
    list_name: str
    list_version: str
    listed_name: str
    date: str
    sources: tuple[Source, ...]
    via: str | None = None  # organisation id of the listed parent, None when the organisation itself is listed
    applies_to_affiliates: bool = False
    confidence: str = "V"

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return {
            "list": self.list_id,
            "list_name": self.list_name,
            "list_version": self.list_version,
            "listed_name": self.listed_name,
            "date": self.date,
            "via": self.via,
            "applies_to_affiliates": self.applies_to_affiliates,
            "confidence": self.confidence,
            "sources": [source.to_dict() for source in self.sources],
        }


@dataclass(frozen=True, slots=True)
class Provenance:
    """The answer to "who made this and does it matter": maker, parent chain, country, lists."""

    query: str
    matched_by: str  # organisation, alias, oui_name, brand or list_member
    chain: tuple[Organisation, ...]  # maker first, then its parents
    memberships: tuple[Membership, ...]
    brand: Brand | None = None
    country: str | None = None

    @property
    def maker(self) -> Organisation | None:
        """The organisation that makes the equipment."""
        return self.chain[0] if self.chain else None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return {
            "query": self.query,
            "matched_by": self.matched_by,
            "maker": self.chain[0].name if self.chain else None,
            "country": self.country,
            "roles": list(self.chain[0].roles) if self.chain else [],
            "parent_chain": [
                {
                    "id": org.id,
                    "name": org.name,
                    "country": org.country,
                    "sources": [source.to_dict() for source in org.sources],
                }
                for org in self.chain
            ],
            "brand": None
            if self.brand is None
            else {
                "brand": self.brand.brand,
                "relation": self.brand.relation,
                "valid_from": self.brand.valid_from,
                "valid_until": self.brand.valid_until,
                "sources": [source.to_dict() for source in self.brand.sources],
            },
            "lists": [membership.to_dict() for membership in self.memberships],
        }


# --- YAML with line numbers ------------------------------------------------------------------------------------


class _Map(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys are in the file."""

    line: int = 0
    key_lines: dict[str, int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings carry line numbers, so errors can point at the offending key."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[_Map]:
    mapping = _Map()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {
        str(key.value): key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)
    }
    yield mapping
    mapping.update({str(key): value for key, value in loader.construct_mapping(node).items()})


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _load_yaml(path: Path) -> _Map:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else None
        raise ProvenanceError(path, line, "yaml", str(error.problem or error)) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ProvenanceError(path, None, "file", str(error)) from error
    if not isinstance(data, _Map):
        raise ProvenanceError(path, 1, "document", "expected a mapping at the top level")
    return data


class _Reader:
    """Typed access to one YAML mapping, with errors that say file, line and key."""

    def __init__(self, path: Path, mapping: Any, where: str, fallback_line: int = 0) -> None:
        self.path, self.where = path, where
        if not isinstance(mapping, dict):
            raise ProvenanceError(path, fallback_line or None, where, "expected a mapping")
        self.mapping = mapping
        self.line = getattr(mapping, "line", fallback_line)

    def line_of(self, key: str) -> int:
        return int(getattr(self.mapping, "key_lines", {}).get(key, self.line))

    def fail(self, key: str, message: str) -> ProvenanceError:
        return ProvenanceError(self.path, self.line_of(key) or None, f"{self.where}.{key}", message)

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for key in self.mapping:
            if key not in allowed:
                raise self.fail(str(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def text(self, key: str, required: bool = True) -> str | None:
        value = self.mapping.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise self.fail(key, "missing or empty")
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.fail(key, f"expected text, got {type(value).__name__}")
        return str(value).strip()

    def date(self, key: str, required: bool = True) -> str | None:
        value = self.mapping.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing date (YYYY, YYYY-MM or YYYY-MM-DD)")
            return None
        text = value.isoformat() if isinstance(value, dt.date) else str(value).strip()
        if isinstance(value, bool) or not _DATE.match(text):
            raise self.fail(key, f"{text!r} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)")
        return text

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.mapping.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise self.fail(key, "expected a list of non-empty strings")
        return tuple(item.strip() for item in value)

    def items(self, key: str) -> list[_Reader]:
        value = self.mapping.get(key)
        if not isinstance(value, list):
            raise self.fail(key, "expected a list")
        return [_Reader(self.path, item, f"{key}[{index}]", self.line_of(key)) for index, item in enumerate(value)]

    def country(self, key: str = "country") -> str | None:
        value = self.text(key, required=False)
        if value is not None and not _COUNTRY.match(value):
            raise self.fail(key, f"{value!r} is not an ISO 3166 alpha-2 country code")
        return value

    def confidence(self) -> str:
        value = self.text("confidence", required=False) or "V"
        if value not in ("V", "R"):
            raise self.fail("confidence", "expected V (confirmed) or R (to verify)")
        return value

    def sources(self, catalogue: dict[str, Source]) -> tuple[Source, ...]:
        """``sources:`` as a list of catalogue ids or inline ``{url, date, title}`` mappings; at least one."""
        value = self.mapping.get("sources")
        if not isinstance(value, list) or not value:
            raise self.fail("sources", "every entry needs at least one source (an id from sources.yaml or url + date)")
        found: list[Source] = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                if item not in catalogue:
                    raise self.fail("sources", f"unknown source id {item!r} (define it in sources.yaml)")
                found.append(catalogue[item])
            else:
                inline = _Reader(self.path, item, f"{self.where}.sources[{index}]", self.line_of("sources"))
                found.append(_source(inline))
        return tuple(found)


def _source(reader: _Reader) -> Source:
    reader.check_keys(("id", "url", "date", "title"))
    url = reader.text("url") or ""
    if not url.startswith(("https://", "http://")):
        raise reader.fail("url", f"{url!r} is not an http(s) URL")
    return Source(
        url=url,
        date=reader.date("date") or "",
        title=reader.text("title", False) or "",
        id=reader.text("id", False) or "",
    )


# --- the knowledge base ----------------------------------------------------------------------------------------


@dataclass
class KnowledgeBase:
    """Organisations, brands and restricted lists, indexed by normalised name."""

    organisations: dict[str, Organisation]
    brands: tuple[Brand, ...]
    lists: dict[str, RestrictedList]
    sources: dict[str, Source]
    files: tuple[Path, ...] = ()
    _names: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)  # normalised -> (kind, key)

    def __post_init__(self) -> None:
        for org in self.organisations.values():
            for kind, names in (("organisation", (org.name,)), ("alias", org.aliases), ("oui_name", org.oui_names)):
                for name in names:
                    self._names.setdefault(normalise(name), (kind, org.id))
        for brand in self.brands:
            self._names.setdefault(normalise(brand.brand), ("brand", brand.brand))

    def organisation(self, org_id: str) -> Organisation:
        """The organisation with this id."""
        return self.organisations[org_id]

    def chain(self, org_id: str) -> tuple[Organisation, ...]:
        """The organisation and its parents, nearest first."""
        chain: list[Organisation] = []
        current: str | None = org_id
        while current is not None and current not in {org.id for org in chain}:
            org = self.organisations[current]
            chain.append(org)
            current = org.parent
        return tuple(chain)

    def lookup(self, name: str) -> Provenance | None:
        """Resolve a maker name, alias, IEEE OUI organisation string or brand; None when unknown."""
        key = normalise(name)
        hit = self._names.get(key)
        if hit is not None:
            kind, target = hit
            brand = None
            if kind == "brand":
                brand = next(b for b in self.brands if b.brand == target)
                target = brand.maker
            chain = self.chain(target)
            memberships = self._memberships(chain)
            country = next((org.country for org in chain if org.country), None)
            return Provenance(name, kind, chain, memberships, brand, country)
        direct = tuple(self._member_matches({key}, via=None, listed_parent=False))
        if direct:
            country = next((m.country for _, m in self._members_named({key}) if m.country), None)
            return Provenance(name, "list_member", (), direct, None, country)
        return None

    def lookup_oui(self, organisation: str) -> Provenance | None:
        """Resolve an organisation name as the IEEE registry spells it (``OuiAssignment.organisation``)."""
        return self.lookup(organisation)

    def _members_named(self, keys: set[str]) -> Iterator[tuple[RestrictedList, ListMember]]:
        for restricted in self.lists.values():
            for member in restricted.members:
                if normalise(member.name) in keys or any(normalise(alias) in keys for alias in member.aliases):
                    yield restricted, member

    def _member_matches(self, keys: set[str], via: str | None, listed_parent: bool) -> Iterator[Membership]:
        for restricted, member in self._members_named(keys):
            yield _membership(restricted, member, via if listed_parent else None)

    def _memberships(self, chain: tuple[Organisation, ...]) -> tuple[Membership, ...]:
        found: dict[tuple[str, str], Membership] = {}
        for depth, org in enumerate(chain):
            via = org.id if depth else None
            keys = {normalise(name) for name in org.names()}
            for restricted in self.lists.values():
                for member in restricted.members:
                    by_name = normalise(member.name) in keys or any(normalise(a) in keys for a in member.aliases)
                    if member.organisation == org.id or (member.organisation is None and by_name):
                        found.setdefault((restricted.id, normalise(member.name)), _membership(restricted, member, via))
        return tuple(sorted(found.values(), key=lambda m: (m.via is not None, m.list_id, m.listed_name)))


def _membership(restricted: RestrictedList, member: ListMember, via: str | None) -> Membership:
    return Membership(
        list_id=restricted.id,
        list_name=restricted.name,
        list_version=restricted.version,
        listed_name=member.name,
        date=member.date,
        sources=member.sources,
        via=via,
        applies_to_affiliates=restricted.covers_affiliates,
        confidence=member.confidence,
    )


def shipped_data_dir() -> Path:
    """The knowledge base installed with the package."""
    return Path(str(resources.files("quaywatch.data.provenance")))


def _read_sources(path: Path) -> dict[str, Source]:
    data = _Reader(path, _load_yaml(path), "sources.yaml")
    catalogue: dict[str, Source] = {}
    for item in data.items("sources"):
        source = _source(item)
        if not source.id:
            raise item.fail("id", "catalogue sources need an id")
        if source.id in catalogue:
            raise item.fail("id", f"duplicate source id {source.id!r}")
        catalogue[source.id] = source
    return catalogue


def _read_organisations(path: Path, catalogue: dict[str, Source]) -> dict[str, Organisation]:
    data = _Reader(path, _load_yaml(path), path.name)
    organisations: dict[str, Organisation] = {}
    lines: dict[str, _Reader] = {}
    allowed = ("id", "name", "aliases", "parent", "country", "roles", "oui_names", "note", "sources")
    for item in data.items("organisations"):
        item.check_keys(allowed)
        org = Organisation(
            id=item.text("id") or "",
            name=item.text("name") or "",
            sources=item.sources(catalogue),
            aliases=item.texts("aliases"),
            parent=item.text("parent", required=False),
            country=item.country(),
            roles=item.texts("roles"),
            oui_names=item.texts("oui_names"),
            note=item.text("note", required=False) or "",
        )
        if org.id in organisations:
            raise item.fail("id", f"duplicate organisation id {org.id!r}")
        organisations[org.id], lines[org.id] = org, item
    seen: dict[str, str] = {}
    for org in organisations.values():
        if org.parent is not None and org.parent not in organisations:
            raise lines[org.id].fail("parent", f"unknown organisation id {org.parent!r}")
        for name in org.names():
            other = seen.setdefault(normalise(name), org.id)
            if other != org.id:
                raise lines[org.id].fail("name", f"{name!r} also identifies organisation {other!r}")
    for org in organisations.values():  # parent cycles would loop the chain
        visited: list[str] = []
        current: str | None = org.id
        while current is not None:
            if current in visited:
                raise lines[org.id].fail("parent", f"parent cycle {' -> '.join([*visited, current])}")
            visited.append(current)
            current = organisations[current].parent
    return organisations


def _read_brands(path: Path, catalogue: dict[str, Source], organisations: dict[str, Organisation]) -> tuple[Brand, ...]:
    data = _Reader(path, _load_yaml(path), path.name)
    brands: list[Brand] = []
    allowed = ("brand", "maker", "relation", "valid_from", "valid_until", "note", "confidence", "sources")
    for item in data.items("brands"):
        item.check_keys(allowed)
        maker = item.text("maker") or ""
        if maker not in organisations:
            raise item.fail("maker", f"unknown organisation id {maker!r}")
        relation = item.text("relation") or ""
        if relation not in ("own_brand", "subsidiary", "oem_relabel"):
            raise item.fail("relation", "expected own_brand, subsidiary or oem_relabel")
        brands.append(
            Brand(
                brand=item.text("brand") or "",
                maker=maker,
                relation=relation,
                sources=item.sources(catalogue),
                valid_from=item.date("valid_from", required=False),
                valid_until=item.date("valid_until", required=False),
                note=item.text("note", required=False) or "",
                confidence=item.confidence(),
            )
        )
    return tuple(brands)


_MEMBER_KEYS = ("name", "organisation", "aliases", "country", "scope", "date", "note", "confidence", "sources")
_LIST_KEYS = ("id", "name", "authority", "url", "version", "date", "effect", "covers_affiliates", "sources", "members")


def _read_lists(
    path: Path, catalogue: dict[str, Source], organisations: dict[str, Organisation]
) -> dict[str, RestrictedList]:
    data = _Reader(path, _load_yaml(path), path.name)
    lists: dict[str, RestrictedList] = {}
    for item in data.items("lists"):
        item.check_keys(_LIST_KEYS)
        members: list[ListMember] = []
        for member in item.items("members"):
            member.where = f"{item.where}.{member.where}"
            member.check_keys(_MEMBER_KEYS)
            org = member.text("organisation", required=False)
            if org is not None and org not in organisations:
                raise member.fail("organisation", f"unknown organisation id {org!r}")
            members.append(
                ListMember(
                    name=member.text("name") or "",
                    date=member.date("date") or "",
                    sources=member.sources(catalogue),
                    organisation=org,
                    aliases=member.texts("aliases"),
                    country=member.country(),
                    scope=member.text("scope", required=False) or "",
                    note=member.text("note", required=False) or "",
                    confidence=member.confidence(),
                )
            )
        affiliates = item.mapping.get("covers_affiliates", False)
        if not isinstance(affiliates, bool):
            raise item.fail("covers_affiliates", "expected true or false")
        restricted = RestrictedList(
            id=item.text("id") or "",
            name=item.text("name") or "",
            url=item.text("url") or "",
            version=item.text("version") or "",
            date=item.date("date") or "",
            sources=item.sources(catalogue),
            members=tuple(members),
            authority=item.text("authority", required=False) or "",
            effect=item.text("effect", required=False) or "",
            covers_affiliates=affiliates,
        )
        if restricted.id in lists:
            raise item.fail("id", f"duplicate list id {restricted.id!r}")
        lists[restricted.id] = restricted
    return lists


def _merge_lists(base: dict[str, RestrictedList], extra: dict[str, RestrictedList]) -> dict[str, RestrictedList]:
    """Override lists add members to the shipped lists; a member already listed under the same name is kept as is."""
    merged = dict(base)
    for list_id, newer in extra.items():
        older = merged.get(list_id)
        if older is None:
            merged[list_id] = newer
            continue
        known = {normalise(member.name) for member in older.members}
        added = tuple(member for member in newer.members if normalise(member.name) not in known)
        version = f"{older.version}; plus {len(added)} imported entries" if added else older.version
        merged[list_id] = RestrictedList(
            id=older.id,
            name=older.name,
            url=older.url,
            version=version,
            date=max(older.date, newer.date),
            sources=older.sources + tuple(s for s in newer.sources if s not in older.sources),
            members=older.members + added,
            authority=older.authority,
            effect=older.effect,
            covers_affiliates=older.covers_affiliates,
        )
    return merged


def load_knowledge_base(data_dir: Path | None = None, override_dir: Path | None = None) -> KnowledgeBase:
    """Load and validate the knowledge base; ``override_dir`` holds ``lists-override.yaml`` from an import."""
    directory = data_dir or shipped_data_dir()
    catalogue = _read_sources(directory / "sources.yaml")
    organisations = _read_organisations(directory / "organisations.yaml", catalogue)
    brands = _read_brands(directory / "brands.yaml", catalogue, organisations)
    lists = _read_lists(directory / "lists.yaml", catalogue, organisations)
    files = [directory / name for name in ("sources.yaml", "organisations.yaml", "brands.yaml", "lists.yaml")]
    if override_dir is not None and (override_dir / OVERRIDE_FILE).is_file():
        override = override_dir / OVERRIDE_FILE
        lists = _merge_lists(lists, _read_lists(override, catalogue, organisations))
        files.append(override)
    return KnowledgeBase(organisations, brands, lists, catalogue, tuple(files))

"""suricata-verify cases as an oracle: their test.yaml checks, test.rules signatures and suricata.yaml limits.

Each protocol's test builds a ``suricata_view`` of our rows: one flattened dict per Suricata transaction, keyed
with Suricata's eve.json names (``mqtt.publish.topic``, ``modbus.request.function_code`` ...), and scores every
eve ``filter`` check of its event type, the alerts of the signatures it can evaluate and the app-layer events it
has a counterpart for. :class:`Tally` keeps the per-field agreement and the fields not compared, with reasons.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Decoder
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

SURICATA = RESEARCH / "suricata-verify/tests"

Record = dict[str, object]
View = dict[str, object]


@dataclass
class Rule:
    sid: int
    msg: str
    #: (keyword, value) in rule order; value None for sticky buffers and flags such as ``startswith``.
    options: list[tuple[str, str | None]]


@dataclass
class Case:
    name: str
    directory: Path
    spec: dict[str, object]
    capture: Path | None
    rules: dict[int, Rule]
    config: dict[str, object]

    def filters(self) -> list[dict[str, object]]:
        """The ``filter`` checks, for the newest Suricata a check is written for.

        A check limited to older versions (``requires: lt-version``) has a successor for the current one (e.g.
        enip-keywords sid 1: 41 alerts before Suricata 8, 81 since cip_service also matches responses).
        """
        out = []
        for check in self.spec.get("checks", []) or []:  # type: ignore[attr-defined]
            found = check.get("filter") if isinstance(check, dict) else None
            if found is None or "lt-version" in (found.get("requires") or {}):
                continue
            out.append(found)
        return out

    def setting(self, *path: str) -> object:
        """A value of the case's suricata.yaml, e.g. ``setting("app-layer", "protocols", "mqtt", "max-msg-length")``."""
        value: object = self.config
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value


def case_names(prefixes: Iterable[str]) -> list[str]:
    if not SURICATA.exists():
        return []
    wanted = tuple(prefixes)
    return sorted(p.parent.name for p in SURICATA.glob("*/test.yaml") if p.parent.name.startswith(wanted))


def parse_rules(text: str) -> dict[int, Rule]:
    rules = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line.startswith("alert") or "(" not in line:
            continue
        body = line[line.index("(") + 1 : line.rindex(")")]
        options: list[tuple[str, str | None]] = []
        for part in re.findall(r'(?:[^;"\\]|\\.|"(?:[^"\\]|\\.)*")+', body):
            part = part.strip()
            if not part:
                continue
            keyword, _, value = part.partition(":")
            options.append((keyword.strip(), value.strip() if _ else None))
        named = dict(options)
        if named.get("sid"):
            sid = int(named["sid"])
            rules[sid] = Rule(sid, (named.get("msg") or "").strip('"'), options)
    return rules


def load(name: str) -> Case:
    directory = SURICATA / name
    if not (directory / "test.yaml").exists():
        pytest.skip(f"research data missing: {directory / 'test.yaml'}")
    spec = yaml.safe_load((directory / "test.yaml").read_text()) or {}
    if "pcap" in spec:
        capture: Path | None = (directory / spec["pcap"]).resolve()
    else:
        capture = next(iter(sorted(directory.glob("*.pcap"))), None)
    if capture is not None and not capture.exists():
        pytest.skip(f"research data missing: {capture} (pcap of {name})")
    rules_path = directory / "test.rules"
    rules = parse_rules(rules_path.read_text()) if rules_path.exists() else {}
    config_path = directory / "suricata.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
    return Case(name, directory, spec, capture, rules, config)


def flatten(prefix: str, value: object, out: dict[str, object]) -> dict[str, object]:
    """Nested eve fields as dotted keys; lists stay values (``mqtt.subscribe.topics`` compares whole)."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value
    return out


def normalised(key: str) -> str:
    return re.sub(r"\[\d+\]", "[]", key)


class Analyses:
    """One analysed store per capture and decoder set, shared by every check that uses the capture."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cache: dict[tuple[Path, tuple[str, ...]], dict[str, list[Record]]] = {}

    def tables(self, capture: Path, decoders: Callable[[], list[Decoder]], names: list[str]) -> dict[str, list[Record]]:
        made = decoders()
        key = (capture, tuple(d.name for d in made))
        if key not in self.cache:
            store = Store(self.directory / f"{len(self.cache)}-{capture.stem}.duckdb")
            Analyzer(store, decoders=made).analyze(capture)
            tables: dict[str, list[Record]] = {}
            for name in [*names, "anomaly", "flows"]:
                exists = store.connection.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
                ).fetchone()
                if not exists or not exists[0]:
                    tables[name] = []
                    continue
                order = "ts, flow_id" if name == "flows" else "packet_number"
                cursor = store.connection.execute(f"SELECT * FROM {name} ORDER BY {order}")
                columns = [column[0] for column in cursor.description]
                tables[name] = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
            store.close()
            self.cache[key] = tables
        return self.cache[key]


@dataclass
class Tally:
    """Agreement per field across cases, the fields not compared (with why) and the explained differences."""

    compared: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    agreed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    not_compared: dict[str, str] = field(default_factory=dict)
    differences: list[tuple[str, str, str]] = field(default_factory=list)  # (case, field, detail)
    explained: list[tuple[str, str, str, str]] = field(default_factory=list)  # (case, field, detail, why)
    lines: list[str] = field(default_factory=list)

    def score(self, case: str, name: str, ok: bool, detail: str, explanations: dict[tuple[str, str], str]) -> None:
        self.compared[name] += 1
        if ok:
            self.agreed[name] += 1
            return
        why = explanations.get((case, name)) or explanations.get(("*", name))
        if why is None:
            self.differences.append((case, name, detail))
        else:
            self.explained.append((case, name, detail, why))

    def skip(self, name: str, reason: str) -> None:
        self.not_compared.setdefault(normalised(name), reason)

    def ratio(self, name: str) -> float:
        return self.agreed[name] / self.compared[name] if self.compared[name] else 1.0

    def report(self, title: str) -> str:
        lines = [f"{title}: agreement per field (ours vs suricata-verify)"]
        for name in sorted(self.compared):
            compared = self.compared[name]
            lines.append(f"  {name:58s} {self.agreed[name]:5d}/{compared:<5d} {100 * self.ratio(name):7.2f}%")
        lines.append("  not compared:")
        for name in sorted(self.not_compared):
            lines.append(f"    {name}: {self.not_compared[name]}")
        for case, name, detail, why in self.explained:
            lines.append(f"  explained difference [{case}] {name}: {detail}\n      because {why}")
        for case, name, detail in self.differences[:30]:
            lines.append(f"  DIFFERS [{case}] {name}: {detail}")
        return "\n".join(lines + self.lines)

    def check(self, title: str, minimum: float = 0.99) -> None:
        report = self.report(title)
        print("\n" + report)
        assert not self.differences, report
        low = [name for name in self.compared if self.ratio(name) < minimum]
        assert not low, f"fields below {minimum:.0%}: {low}\n{report}"


def content_matches(buffer: bytes | None, options: list[tuple[str, str | None]]) -> bool:
    """A sticky buffer's ``content`` (with ``startswith``/``endswith``/``nocase``) on bytes we keep."""
    if buffer is None:
        return False
    pattern: bytes | None = None
    for keyword, value in options:
        if keyword == "content" and value is not None:
            text = value.strip().strip('"')
            pattern = re.sub(
                r"\|([0-9A-Fa-f ]+)\|", lambda m: bytes.fromhex(m.group(1)).decode("latin-1"), text
            ).encode("latin-1")
    if pattern is None:
        return True
    names = {keyword for keyword, _ in options}
    haystack, needle = (buffer.lower(), pattern.lower()) if "nocase" in names else (buffer, pattern)
    if "startswith" in names and not haystack.startswith(needle):
        return False
    if "endswith" in names and not haystack.endswith(needle):
        return False
    return needle in haystack


def expected_alerts(case: Case) -> list[tuple[dict[str, object], Rule | None]]:
    """Alert checks with their rule (by ``alert.signature_id`` or ``alert.signature``)."""
    out = []
    by_msg = {rule.msg: rule for rule in case.rules.values()}
    for check in case.filters():
        match = check.get("match") or {}
        if not isinstance(match, dict):
            continue
        if "alert.signature_id" in match:
            out.append((check, case.rules.get(int(match["alert.signature_id"]))))
        elif "alert.signature" in match:
            out.append((check, by_msg.get(str(match["alert.signature"]))))
    return out

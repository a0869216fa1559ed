"""Site policy: the shipped example is valid, broken policies are reported precisely, learn proposes a valid policy."""

from __future__ import annotations

import textwrap
from importlib import resources
from pathlib import Path

import duckdb
import pytest
import yaml
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.policy.learn import learn_policy, quote
from quaywatch.policy.load import load_policy, load_policy_text

MODBUS_PCAP = Path("/work/shared/research-data/icsnpp-modbus/testing/traces/modbus_example.pcap")

BASE = """\
version: 1
zones:
  - name: a
    cidrs: [10.0.0.0/24]
  - name: b
    cidrs: [10.0.1.0/24]
"""


def test_example_policy_loads_clean() -> None:
    path = resources.files("quaywatch.data") / "policy-example.yaml"
    policy, problems = load_policy(Path(str(path)))
    assert problems == []
    assert len(policy.zones) >= 10 and len(policy.conduits) >= 5
    assert policy.conduits[0].allow["s7comm"].functions == (0xF0, 0x04)


@pytest.mark.parametrize(
    ("extra", "line", "path", "fragment"),
    [
        ("conduits:\n  - name: c\n    from: a\n    to: b\n    protocol: modbus\n    fucntions: [3]\n",
         12, "conduits[0].fucntions", "unknown key 'fucntions'"),
        ("conduits:\n  - name: c\n    from: a\n    to: zz\n    protocol: modbus\n",
         10, "conduits[0].to", "unknown zone 'zz'"),
        ("conduits:\n  - name: c\n    from: a\n    to: b\n    protocol: modbus\n    allow:\n      modbus:\n"
         "        functions:\n          - 3\n          - 199\n",
         16, "conduits[0].allow.modbus.functions[1]", "199 is not a Modbus function code (1-127)"),
        ("external_destinations:\n  - name: e\n    reason: r\n    cidrs: [10.0.0.300/32]\n",
         10, "external_destinations[0].cidrs[0]", "is not an IPv4 or IPv6 address"),
        ("remote_access:\n  - name: r\n    method: rdp\n    source: [192.0.2.1]\n    zones: [a]\n"
         "    timezone: Mars/Olympus\n",
         12, "remote_access[0].timezone", "not a known IANA time zone"),
        ("remote_access:\n  - name: r\n    method: rdp\n    source: [192.0.2.1]\n    zones: [a]\n    windows:\n"
         "      - days: [mon]\n        start: \"22:00\"\n        end: \"06:00\"\n",
         15, "remote_access[0].windows[0].end", "add 'spans_midnight: true'"),
    ],
)  # fmt: skip
def test_broken_policy_names_line_and_key(tmp_path: Path, extra: str, line: int, path: str, fragment: str) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text(BASE + extra)
    _, problems = load_policy(file)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1, [str(p) for p in problems]
    assert (errors[0].line, errors[0].path) == (line, path)
    assert fragment in errors[0].message
    assert str(errors[0]).startswith(f"{file}:{line}: {path}: ")


def test_all_errors_reported_and_overlap_warned() -> None:
    text = BASE + textwrap.dedent("""\
          - name: c
            cidrs: [10.0.0.128/25, 10.0.2.1/24]
            vlans: [5000]
        conduits:
          - name: x
            from: nowhere
            to: b
            protocol: modbuss
            direction: sideways
        """).replace("\n  - name: c", "\n  - name: c", 1)
    text = text.replace("        conduits:", "conduits:")
    _, problems = load_policy_text(text, "p.yaml")
    messages = [str(p) for p in problems]
    assert any("warning: 10.0.0.128/25 overlaps 10.0.0.0/24" in m for m in messages), messages
    for needle in ("host bits set", "not a VLAN id", "unknown zone 'nowhere'", "'modbuss'", "not a direction"):
        assert any(needle in m for m in messages), (needle, messages)


def test_unquoted_time_and_midnight_window() -> None:
    text = BASE + (
        "remote_access:\n  - name: r\n    method: teamviewer\n    source: [192.0.2.1]\n    destinations: [10.0.0.5]\n"
        "    windows:\n      - {days: [sat], start: 22:00, end: 04:00, spans_midnight: true, timezone: Asia/Shanghai}\n"
    )
    policy, problems = load_policy_text(text)
    assert problems == []
    window = policy.remote_access[0].windows[0]
    assert (window.start.hour, window.end.hour, window.timezone) == (22, 4, "Asia/Shanghai")


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "zonez: []\n")
    runner = CliRunner()
    ok = runner.invoke(main, ["policy", "check", str(good)])
    assert ok.exit_code == 0 and "2 zones, 0 conduits" in ok.output
    failed = runner.invoke(main, ["policy", "check", str(bad)])
    assert failed.exit_code == 1 and "unknown key 'zonez'" in failed.output


@pytest.mark.parametrize(
    "hostile", ['a"\nzones: []\n#', "x: y\n  - name: evil", "\x1b[31m\u202e' ]}{#", "\U0001f600 ok\\"]
)
def test_quote_round_trips(hostile: str) -> None:
    assert yaml.safe_load(f"key: {quote(hostile)}\n") == {"key": hostile}
    assert "\n" not in quote(hostile)


@pytest.fixture(scope="module")
def modbus_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MODBUS_PCAP.exists():
        pytest.skip(f"research capture {MODBUS_PCAP} is absent")
    from quaywatch.analysis import Analyzer
    from quaywatch.decode.registry import all_decoders
    from quaywatch.store.database import Store

    database = tmp_path_factory.mktemp("policy") / "modbus.duckdb"
    store = Store(database)
    try:
        Analyzer(store, decoders=all_decoders()).analyze(MODBUS_PCAP)
    finally:
        store.close()
    return database


def test_learn_from_real_capture(modbus_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "learned.yaml"
    result = CliRunner().invoke(main, ["policy", "learn", "--db", str(modbus_store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("# proposed by quaywatch policy learn on ")
    assert "flows: review before use" in text.splitlines()[0]
    policy, problems = load_policy(out)
    assert [p for p in problems if p.severity == "error"] == []
    assert policy.zones
    modbus = [c for c in policy.conduits if c.protocol == "modbus" and "modbus" in c.allow]
    assert modbus
    functions = set().union(*(c.allow["modbus"].functions for c in modbus))
    assert {3, 5, 16} <= functions
    writers = {str(n.network_address) for e in policy.engineering_hosts for n in e.hosts.networks}
    assert "127.0.0.1" in writers
    assert any("3.15.227.20" in str(c) for e in policy.external_destinations for c in e.cidrs)
    check = CliRunner().invoke(main, ["policy", "check", str(out)])
    assert check.exit_code == 0, check.output


def test_learn_escapes_hostile_strings() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE flows (client_ip VARCHAR, server_ip VARCHAR, vlan INTEGER, transport VARCHAR,"
        " server_port INTEGER, application VARCHAR)"
    )
    con.execute("INSERT INTO flows VALUES ('10.1.1.5', '10.1.2.9', NULL, 'tcp', 502, 'modbus')")
    con.execute("CREATE TABLE assets (ips VARCHAR[], role VARCHAR)")
    con.execute("INSERT INTO assets VALUES (['10.1.1.5'], 'plc\nconduits: [] # \"evil')")
    con.execute("CREATE TABLE remote_access (method VARCHAR, client_ip VARCHAR, server_ip VARCHAR)")
    con.execute("INSERT INTO remote_access VALUES ('rdp', '192.0.2.7', '10.1.2.9'), ('x\ny: 1', '1.1.1.1', 'z')")
    text = learn_policy(con)
    policy, problems = load_policy_text(text, "learned.yaml")
    assert [p for p in problems if p.severity == "error"] == [], text
    assert len(policy.conduits) == 1 and len(policy.remote_access) == 1
    assert "conduits: []" not in text

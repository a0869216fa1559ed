"""D11 on a real store: ``quaywatch analyze`` over a dpkt-written capture, then ``quaywatch detect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner

from quaywatch.cli.main import main
from tests.conftest import RESEARCH_DATA, _research_file
from tests.detect.captures import credentials_capture


def analysed(tmp_path: Path, capture: Path) -> Path:
    database = tmp_path / "site.duckdb"
    result = CliRunner().invoke(main, ["analyze", str(capture), "--db", str(database), "--quiet"])
    assert result.exit_code == 0, result.output
    return database


def alerts(database: Path) -> dict[str, dict[str, Any]]:
    con = duckdb.connect(str(database), read_only=True)
    cursor = con.execute("SELECT * FROM alerts ORDER BY occurrence_id")
    names = [c[0] for c in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    con.close()
    return {row["detection"]: row for row in rows}


def detect(database: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["detect", "--db", str(database), "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_cleartext_logins_http_basic_and_default_community(tmp_path: Path) -> None:
    database = analysed(tmp_path, credentials_capture(tmp_path / "site.pcap"))
    summary = detect(database)
    assert summary["alerts"]["D11.cleartext-login"] == 1
    assert summary["skipped"]["D12.listed-vendor"] == "no table assets in the store"
    found = alerts(database)
    login = found["D11.cleartext-login"]
    # Two FTP logins ten seconds apart fold into one occurrence (window 1 h); packets are the 230 replies.
    assert json.loads(login["key_json"]) == {"protocol": "ftp", "client_ip": "10.0.0.20", "server_ip": "10.0.0.40"}
    assert login["count"] == 2 and login["packet_numbers"] == [8, 23]
    assert [e["packet_number"] for e in login["events"]] == [8, 23]
    assert {e["table"] for e in login["events"]} == {"cleartext_credentials"} and len(set(login["flow_ids"])) == 2
    assert json.loads(login["values_json"])["user_name"] == ["admin", "ftp"]
    assert login["techniques"] == [{"id": "T0859", "name": "Valid Accounts"}] and login["severity"] == "high"
    assert (login["last_seen"] - login["first_seen"]).total_seconds() == 10
    basic = found["D11.http-basic-auth"]
    assert json.loads(basic["key_json"]) == {"client_ip": "10.0.0.20", "server_ip": "10.0.0.41"}
    assert basic["count"] == 1 and basic["packet_numbers"] == [13]
    assert json.loads(basic["values_json"])["username"] == ["operator"]
    snmp = found["D11.snmp-default-community"]
    # Only the 'public' get (packet 14); the site's own community (packet 15) is not a default one.
    assert snmp["count"] == 1 and snmp["packet_numbers"] == [14]
    assert json.loads(snmp["values_json"])["community"] == ["public"]
    assert snmp["techniques"] == [{"id": "T0812", "name": "Default Credentials"}]


def test_rerun_replaces_and_never_duplicates(tmp_path: Path) -> None:
    database = analysed(tmp_path, credentials_capture(tmp_path / "site.pcap"))
    detect(database)
    before = alerts(database)
    detect(database)
    # Analysing the same capture again changes nothing either.
    CliRunner().invoke(main, ["analyze", str(tmp_path / "site.pcap"), "--db", str(database), "--quiet"])
    detect(database)
    after = alerts(database)
    con = duckdb.connect(str(database), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT occurrence_id) FROM alerts").fetchone() == (3, 3)
    con.close()
    assert {k: (v["occurrence_id"], v["count"]) for k, v in before.items()} == {
        k: (v["occurrence_id"], v["count"]) for k, v in after.items()
    }


def test_a_later_login_outside_the_window_is_a_new_occurrence(tmp_path: Path) -> None:
    database = analysed(tmp_path, credentials_capture(tmp_path / "day1.pcap"))
    CliRunner().invoke(
        main,
        [
            "analyze",
            str(credentials_capture(tmp_path / "day2.pcap", start=1_700_086_400.0)),
            "--db",
            str(database),
            "--quiet",
        ],
    )
    detect(database)
    con = duckdb.connect(str(database), read_only=True)
    rows = con.execute(
        "SELECT alert_id, occurrence_id, count FROM alerts WHERE detection = 'D11.cleartext-login' ORDER BY first_seen"
    ).fetchall()
    con.close()
    assert len(rows) == 2 and rows[0][0] == rows[1][0] and rows[0][1] != rows[1][1]
    assert [r[2] for r in rows] == [2, 2]


def test_snmp_public_on_zeek_capture(tmp_path: Path) -> None:
    """Zeek's snmpv1_get.pcap: 58 v1 messages (gets, sets, responses) between two hosts, community 'public'."""
    capture = _research_file(RESEARCH_DATA / "zeek-btest/testing/btest/Traces/snmp/snmpv1_get.pcap")
    database = analysed(tmp_path, capture)
    detect(database)
    snmp = alerts(database)["D11.snmp-default-community"]
    assert json.loads(snmp["values_json"])["community"] == ["public"]
    assert json.loads(snmp["values_json"])["version"] == ["1"]
    assert json.loads(snmp["key_json"]) == {"client_ip": "172.31.19.54", "server_ip": "172.31.19.73"}
    assert snmp["count"] == 58 and snmp["packet_numbers"] == list(range(1, 59))

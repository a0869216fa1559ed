"""D10 threat intelligence over simulator captures: the C2 domain, address and JA4S of the cellular-modem and
weather-station-malware scenarios are put in a CSV and a STIX feed; alerts must name them, with the labelled hosts
and times; a clean day with indicators that match nothing gives no alert; hostile descriptions are escaped."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import stix2
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect.threat_intel import severity
from quaywatch.sim.simulate import simulate

HOSTILE = "C2 \x1b[31m<script>alert(1)</script> [bold]x[/bold]"


def _analyse(directory: Path, database: Path) -> None:
    outcome = CliRunner().invoke(
        main,
        ["analyze", str(directory / "capture.pcapng"), "--db", str(database), "-q",
         "--policy", str(directory / "policy.yaml"), "--inventory", str(directory / "declared-inventory.csv")],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output


def _detect(database: Path, directory: Path, *feeds: Path) -> list[dict[str, Any]]:
    runner = CliRunner()
    for feed in feeds:
        outcome = runner.invoke(main, ["intel", "import", str(feed), "--db", str(database)])
        assert outcome.exit_code == 0, outcome.output
    outcome = runner.invoke(
        main, ["detect", "--db", str(database), "--policy", str(directory / "policy.yaml"), "--json"]
    )
    assert outcome.exit_code in (0, 1), outcome.output  # 1: another detection may fail; D10 must run
    summary = json.loads(next(line for line in outcome.output.splitlines() if line.startswith("{")))
    assert "D10.threat-intel" in summary["alerts"] and "D10.threat-intel" not in summary["failed"]
    listed = runner.invoke(main, ["alerts", "--db", str(database), "--detection", "D10", "--json"])
    return [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    directory = tmp_path_factory.mktemp("attacked")
    simulate(directory, seed=11, duration=150.0, scenarios=[("cellular-modem", {}), ("weather-station-malware", {})])
    database = directory / "store.duckdb"
    _analyse(directory, database)
    labels = [json.loads(line) for line in (directory / "labels.jsonl").read_text().splitlines()]
    return directory, database, labels


def _label(labels: list[dict[str, Any]], instance: str) -> dict[str, Any]:
    return next(label for label in labels if label["instance"] == instance)


def test_c2_domain_address_and_ja4s_from_the_labels_are_detected(
    attacked: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    directory, database, labels = attacked
    modem = _label(labels, "cellular-modem/beacon")
    weather = _label(labels, "weather-station-malware/beacon")
    con = duckdb.connect(str(database), read_only=True)
    (ja4s,) = con.execute(  # the C2 server's TLS stack, read from the capture
        "SELECT DISTINCT ja4s FROM tls WHERE server_ip = ? AND ja4s IS NOT NULL", [weather["expect"]["destination"]]
    ).fetchone() or ("",)
    con.close()
    csv_feed = tmp_path / "feed.csv"
    csv_feed.write_text(
        "type,value,description,source,confidence,valid_until\n"
        f'domain,{modem["parameters"]["cloud_domain"].split(".", 1)[1]},"{HOSTILE}",port-cert,high,\n'
        f"ja4s,{ja4s},C2 TLS server stack,port-cert,medium,\n"
        f"ip,{weather['expect']['destination']},expired entry,port-cert,high,2020-01-01\n",
        encoding="utf-8",
    )
    stix_feed = tmp_path / "feed.json"
    indicator = stix2.Indicator(
        name="weather-station C2", pattern_type="stix", confidence=85, indicator_types=["malicious-activity"],
        pattern=f"[ipv4-addr:value = '{weather['expect']['destination']}'] OR [domain-name:value = 'x.invalid']",
        kill_chain_phases=[{"kill_chain_name": "mitre-ics-attack", "phase_name": "command-and-control"}],
    )  # fmt: skip
    stix_feed.write_text(stix2.Bundle(indicator).serialize(), encoding="utf-8")
    alerts = _detect(database, directory, csv_feed, stix_feed)
    by_pair: dict[tuple[str, str, str], dict[str, Any]] = {}
    for alert in alerts:
        key = alert["alert"]["key"]
        values = alert["evidence"]["values"]
        by_pair[(values["indicator"][0].split()[0], key["client_ip"], key["server_ip"])] = alert
    for kind, label in (("domain", modem), ("ja4s", modem), ("ja4s", weather), ("ip", weather)):
        source, destination = label["expect"]["source"], label["expect"]["destination"]
        alert = by_pair[(kind, source, destination)]
        start, end = (dt.datetime.fromisoformat(label[name].replace("Z", "+00:00")) for name in ("start", "end"))
        first_seen = dt.datetime.fromisoformat(alert["alert"]["first_seen"])
        assert start - dt.timedelta(seconds=1) <= first_seen <= end
        assert destination in alert["alert"]["assets"] and len(alert["alert"]["assets"]) == 2
        assert alert["evidence"]["packet_numbers"] and alert["evidence"]["flow_ids"]
        assert {"T0869", "T0883"} <= {t["id"] for t in alert["alert"]["techniques"]}  # an OT client reaching C2
    stix_alert = by_pair[("ip", weather["expect"]["source"], weather["expect"]["destination"])]
    values = stix_alert["evidence"]["values"]
    assert values["indicator_id"] == [indicator.id] and values["kill_chain_phases"] == [
        "mitre-ics-attack:command-and-control"
    ]
    assert stix_alert["alert"]["severity"] == "critical"  # high confidence, one step up for the OT weather station
    # The expired CSV entry for the same address matched nothing: every ip alert is the STIX indicator's.
    assert all(
        a["evidence"]["values"]["indicator_id"] == [indicator.id]
        for a in alerts
        if a["evidence"]["values"]["indicator"][0].startswith("ip ")
    )
    # A re-import of the same files and a second run give the same alerts, no duplicates.
    again = _detect(database, directory, csv_feed, stix_feed)
    assert sorted(a["occurrence_id"] for a in again) == sorted(a["occurrence_id"] for a in alerts)
    con = duckdb.connect(str(database), read_only=True)
    assert con.execute("SELECT count(*) FROM indicators").fetchone() == (5,)
    con.close()
    # The hostile feed description reaches the explanation raw and the terminal escaped.
    shown = CliRunner().invoke(main, ["alerts", "show", by_pair[("domain", modem["expect"]["source"],
                                                                  modem["expect"]["destination"])]["alert_id"],
                                      "--db", str(database)])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "<script>" in shown.output and "\x1b" not in shown.output and "\\x1b" in shown.output


def test_clean_day_with_indicators_that_match_nothing_gives_no_alert(tmp_path: Path) -> None:
    simulate(tmp_path, seed=5, duration=120.0)
    database = tmp_path / "store.duckdb"
    _analyse(tmp_path, database)
    feed = tmp_path / "feed.csv"
    feed.write_text(
        "type,value,confidence\nip,47.103.24.117,high\ncidr,198.18.0.0/15,high\ndomain,example-cloud.cn,high\n"
        "ja4s,t120100_c02f_bc98f8e001b5,high\nsha1,0000000000000000000000000000000000000000,high\n",
        encoding="utf-8",
    )
    assert _detect(database, tmp_path, feed) == []


def test_severity_follows_confidence_types_and_ot() -> None:
    assert severity(90, [], False) == "high"
    assert severity(20, ["malicious-activity"], False) == "medium"
    assert severity(90, ["benign"], True) == "info"
    assert severity(60, [], True) == "high"

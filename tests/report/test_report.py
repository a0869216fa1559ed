"""The offline HTML incident report: built from real stores, hostile strings kept inert, opened in real Chromium."""

from __future__ import annotations

import base64
import csv
import io
import re
import shutil
import struct
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner
from markupsafe import escape

from quaywatch.assets.inventory import build_inventory
from quaywatch.assets.risk import rate_assets
from quaywatch.cli.main import main
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.report.collect import collect
from quaywatch.report.render import render_csv, render_html, render_values_csv, style_hash, stylesheet
from quaywatch.sim.scenarios import SCENARIOS
from quaywatch.sim.simulate import simulate
from quaywatch.store.database import Store
from tests.factories import CLIENT_MAC, SERVER_MAC, tcp_frame, udp_frame, write_pcap
from tests.report.chromium import visit

SECTIONS = ["summary", "incident", "findings", "assets", "network-map", "timeline", "appendix"]

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE_BREAK = '"><img src=x onerror=alert(1)>'
HYPERLINK = '=HYPERLINK("http://x","y")'
COMMAND = "+cmd|' /C calc'!A0"
SUM = "@SUM(1)"
HOSTILE = (SCRIPT, ATTRIBUTE_BREAK, HYPERLINK, COMMAND, SUM)
HIKVISION_MAC = b"\x44\x19\xb6\x00\x00\x66"  # a listed maker, so its hostile host name reaches an alert (D12)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# -- the simulated terminal with every scenario --------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two simulated minutes with every scenario, analysed with policy and inventory, detections run: (db, policy)."""
    folder = tmp_path_factory.mktemp("report-sim")
    simulate(folder / "sim", seed=11, duration=120.0, scenarios=[(scenario.name, {}) for scenario in SCENARIOS])
    database, policy = folder / "port.duckdb", folder / "sim" / "policy.yaml"
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["analyze", str(folder / "sim" / "capture.pcapng"), "--db", str(database), "--policy", str(policy),
         "--inventory", str(folder / "sim" / "declared-inventory.csv"), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["detect", "--db", str(database), "--policy", str(policy), "--json"])
    assert result.exit_code == 0, result.output
    return database, policy


@pytest.fixture(scope="module")
def simulated_report(simulated: tuple[Path, Path]) -> Path:
    database, policy = simulated
    out = database.parent / "report.html"
    result = CliRunner().invoke(
        main,
        ["report", "--db", str(database), "--out", str(out), "--policy", str(policy), "--organisation", "Quay B.V."],
    )
    assert result.exit_code == 0, result.output
    return out


def test_report_holds_every_section_and_the_alerts(simulated: tuple[Path, Path], simulated_report: Path) -> None:
    document = simulated_report.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in document
    store = Store(simulated[0], read_only=True)
    try:
        alerts = store.connection.execute("SELECT title, occurrence_id, severity FROM alerts").fetchall()
        assets = store.connection.execute("SELECT count(*) FROM assets").fetchone()
        undeclared = store.connection.execute(
            "SELECT mac FROM inventory_findings WHERE kind = 'undeclared_device'"
        ).fetchall()
        sha256 = store.connection.execute("SELECT sha256 FROM captures").fetchone()
    finally:
        store.close()
    assert len(alerts) >= 3, "the scenarios should raise several alerts"
    for title, occurrence, _ in alerts:
        assert str(escape(title)) in document and f'id="alert-{escape(occurrence)}"' in document
    assert "Undeclared cellular device" in document  # the modem nobody ordered
    assert sha256 is not None and sha256[0] in document  # appendix: the capture and its sha256
    assert assets is not None and f"Assets ({assets[0]})" in document
    assert undeclared and all(str(escape(mac)) in document for (mac,) in undeclared)
    assert "1-800-424-8802" in document and "without delay" in document  # NRC reminder
    assert "Quay B.V." in document and "to be completed" in document
    assert "<svg" in document and "Network map" in document  # the map, inline
    assert document.count('<svg class="timeline"') == 1 and document.count("<g><title>") == len(alerts)  # one mark each
    assert document.count("<details>") >= len(alerts)  # every alert's evidence expands without script
    counts = re.search(r"<th>critical</th>.*?<td>(\d+)</td>", document, re.S)
    assert counts is not None and int(counts.group(1)) == sum(s == "critical" for *_, s in alerts)


def test_suppressed_alerts_leave_the_findings_but_are_listed(simulated: tuple[Path, Path], tmp_path: Path) -> None:
    database = tmp_path / "copy.duckdb"
    shutil.copy(simulated[0], database)
    accepted = tmp_path / "accepted.yaml"
    accepted.write_text("suppressions:\n  - detection: D12.listed-*\n    reason: cameras replaced in Q1 (OT-7)\n")
    runner = CliRunner()
    assert runner.invoke(main, ["alerts", "suppress", str(accepted), "--db", str(database)]).exit_code == 0
    out = tmp_path / "report.html"
    assert runner.invoke(main, ["report", "--db", str(database), "--out", str(out)]).exit_code == 0
    document = out.read_text(encoding="utf-8")
    findings = document.split('<section id="findings">')[1].split("suppressed alert(s)</summary>")
    assert "D12.listed-vendor</dd>" not in findings[0]  # not among the findings
    assert "D12.listed-vendor" in findings[1] and "cameras replaced in Q1 (OT-7) (accepted.yaml:2)" in findings[1]


def test_incident_block_is_filled_from_the_store(simulated: tuple[Path, Path]) -> None:
    store = Store(simulated[0], read_only=True)
    try:
        data = collect(store.connection, organisation="Quay B.V.")
    finally:
        store.close()
    fields = {item.identifier: item for item in data.incident}
    assert len(fields) == 13
    assert fields["entity"].values == ["Quay B.V."]
    assert not fields["reporter"].complete and not fields["nrc_number"].complete  # left to the reporter
    assert any("T0" in value for value in fields["access"].values)  # ATT&CK ids with names
    assert any(value.startswith("activity observed from") for value in fields["when"].values)
    modem = [a for a in data.alerts if a["detection"] == "D12.undeclared-cellular"]
    assert modem and any(modem[0]["hosts"][-1] in value for value in fields["where"].values)
    assert any(value.startswith("IP 47.103.24.117") for value in fields["indicators"].values)  # the modem's cloud


EVIDENCE_SHOWN = "document.querySelector('article.alert details dl').checkVisibility({contentVisibilityAuto: true})"


def test_report_opens_in_chromium_without_errors_or_requests(simulated_report: Path, tmp_path: Path) -> None:
    page = visit(simulated_report, tmp_path, print_checks=(EVIDENCE_SHOWN,))
    assert page.section_ids == SECTIONS
    assert page.errors == [] and page.requests == []
    assert "<script" not in page.dom and "<img" not in page.dom
    assert page.printed[EVIDENCE_SHOWN] is True  # folded evidence is printed expanded (PDF)


def test_content_security_policy_is_enforced(simulated_report: Path, tmp_path: Path) -> None:
    """A style block that is not the hashed one is refused: the policy is live, so injected markup could not act."""
    tampered = tmp_path / "tampered.html"
    tampered.write_text(simulated_report.read_text(encoding="utf-8").replace("<style>", "<style>p{}"), "utf-8")
    page = visit(tampered, tmp_path)
    assert any("violates the following Content Security Policy directive" in e for e in page.errors), page.errors


def test_chromium_check_sees_requests_and_console_errors(tmp_path: Path) -> None:
    """The check itself can fail: a page that fetches and logs an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img src="http://cdn.example.invalid/a.png">'
        '<script>console.error("boom")</script></body></html>',
        encoding="utf-8",
    )
    page = visit(bad, tmp_path)
    assert page.requests == ["http://cdn.example.invalid/a.png"]
    assert "boom" in page.errors


def test_stylesheet_is_allowed_by_its_hash_and_nothing_else(simulated_report: Path) -> None:
    document = simulated_report.read_text(encoding="utf-8")
    assert str(escape(f"default-src 'none'; style-src {style_hash(stylesheet())};")) in document
    assert f"<style>{stylesheet()}</style>" in document
    assert "<script" not in document.lower() and "http://" not in document.replace("http://www.w3.org", "")


# -- hostile strings through DHCP, HTTP and Modbus ------------------------------------------------------------------


def _with_macs(frame: bytes, source: bytes, destination: bytes) -> bytes:
    return destination + source + frame[12:]


def _dhcp_request(mac: bytes, hostname: str) -> bytes:
    message = dpkt.dhcp.DHCP(
        chaddr=mac,
        xid=0x4242,
        opts=((dpkt.dhcp.DHCP_OPT_MSGTYPE, b"\x03"), (dpkt.dhcp.DHCP_OPT_HOSTNAME, hostname.encode())),
    )
    return _with_macs(udp_frame("0.0.0.0", "255.255.255.255", 68, 67, bytes(message)), mac, b"\xff" * 6)


def _exchange(client_port: int, server_port: int, request: bytes, response: bytes) -> list[bytes]:
    """A TCP connection 10.0.0.20 -> PLC 10.0.0.40 carrying one request and its response."""
    syn, synack = dpkt.tcp.TH_SYN, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    push = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    frames = [
        tcp_frame("10.0.0.20", "10.0.0.40", client_port, server_port, syn, sequence=10),
        tcp_frame("10.0.0.40", "10.0.0.20", server_port, client_port, synack, sequence=90, acknowledgement=11),
        tcp_frame("10.0.0.20", "10.0.0.40", client_port, server_port, push, request, 11, 91),
        tcp_frame("10.0.0.40", "10.0.0.20", server_port, client_port, push, response, 91, 11 + len(request)),
    ]
    return [
        frame if index % 2 == 0 else _with_macs(frame, SERVER_MAC, CLIENT_MAC) for index, frame in enumerate(frames)
    ]


def _modbus_identification() -> list[bytes]:
    """43/14 Read Device Identification: the PLC answers with hostile vendor, product and revision strings."""
    identity = [SCRIPT.encode(), ATTRIBUTE_BREAK.encode(), HYPERLINK.encode()]
    objects = b"".join(bytes([number, len(text)]) + text for number, text in enumerate(identity))
    request_pdu = b"\x2b\x0e\x01\x00"
    response_pdu = b"\x2b\x0e\x01\x01\x00\x00" + bytes([len(identity)]) + objects
    request = struct.pack(">HHHB", 7, 0, len(request_pdu) + 1, 1) + request_pdu
    response = struct.pack(">HHHB", 7, 0, len(response_pdu) + 1, 1) + response_pdu
    return _exchange(50001, 502, request, response)


def _http_request(port: int, target: str, host: str, agent: str, user: str) -> list[bytes]:
    credentials = base64.b64encode(f"{user}:secret".encode()).decode()
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nAuthorization: Basic {credentials}\r\n\r\n"
    ).encode()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: plc-web\r\n\r\nok"
    return _exchange(port, 80, request, response)


def hostile_capture(path: Path) -> Path:
    frames = [_dhcp_request(HIKVISION_MAC, SCRIPT), _dhcp_request(b"\x00\x1b\x1b\x00\x00\x77", HYPERLINK)]
    frames += _modbus_identification()
    frames += _http_request(50010, f"/{SCRIPT}", SUM, ATTRIBUTE_BREAK, COMMAND)
    frames += _http_request(50011, "/status", HYPERLINK, SCRIPT, "admin")  # a request target cannot hold spaces
    return write_pcap(path, [(1_764_000_000 + index * 0.05, frame) for index, frame in enumerate(frames)])


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report-hostile")
    store = Store(folder / "hostile.duckdb")
    try:
        from quaywatch.analysis import Analyzer

        Analyzer(store).analyze(hostile_capture(folder / "hostile.pcap"))
        store.flush()
        build_inventory(store)
        rate_assets(store)
        run_detections(store, DetectionContext())
        data = collect(store.connection)
    finally:
        store.close()
    out = folder / "hostile.html"
    out.write_text(render_html(data), encoding="utf-8")
    (folder / "hostile-alerts.csv").write_text(render_csv(data), encoding="utf-8", newline="")
    (folder / "hostile-evidence.csv").write_text(render_values_csv(data), encoding="utf-8", newline="")
    return out


def test_hostile_strings_reach_the_report_only_escaped(hostile_report: Path) -> None:
    document = hostile_report.read_text(encoding="utf-8")
    for payload in (SCRIPT, ATTRIBUTE_BREAK, HYPERLINK):
        assert payload not in document, payload
    for payload in (SCRIPT, ATTRIBUTE_BREAK):  # through the alerts (D11 evidence), the assets and the map
        assert str(escape(payload)) in document or payload.replace("<", "&lt;").replace(">", "&gt;") in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "<script" not in document.lower() and "<img" not in document.lower() and "onerror=alert" in document
    assert document.lower().count("<style") == 1  # nothing else may style or load
    assert "HTTP Basic credentials in clear text" in document  # the hostile requests did raise an alert


def test_hostile_csv_cells_are_prefixed(hostile_report: Path) -> None:
    cells = []
    for name in ("hostile-alerts.csv", "hostile-evidence.csv"):
        text = (hostile_report.parent / name).read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text)))
        assert len(rows) > 1, f"{name} has no data rows"
        cells += [cell for row in rows[1:] for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_START)]
    for payload in (COMMAND, SUM, HYPERLINK):
        assert "'" + payload in cells, payload  # shown as text by the spreadsheet, whole


def test_hostile_report_in_chromium_runs_nothing(hostile_report: Path, tmp_path: Path) -> None:
    page = visit(hostile_report, tmp_path)
    assert page.errors == [] and page.requests == []
    assert "<script" not in page.dom and "<img" not in page.dom and "&lt;script&gt;alert(1)" in page.dom


# -- edges ----------------------------------------------------------------------------------------------------------


def test_report_of_a_store_without_detections_says_what_to_run(tmp_path: Path) -> None:
    database = tmp_path / "empty.duckdb"
    Store(database).close()
    out = tmp_path / "empty.html"
    result = CliRunner().invoke(main, ["report", "--db", str(database), "--out", str(out), "--no-csv"])
    assert result.exit_code == 0, result.output
    document = out.read_text(encoding="utf-8")
    assert "run <code>quaywatch detect</code> first" in document and all(f'id="{s}"' in document for s in SECTIONS)
    assert not (tmp_path / "empty-alerts.csv").exists()


def test_missing_database_exits_3(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 3 and "no such database" in result.output


def test_missing_chromium_fails_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.report import chromium

    monkeypatch.setattr(chromium.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="make system-packages"):
        chromium.chromium_binary()

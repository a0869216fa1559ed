"""The network map on a small synthetic site: model, zoning by policy, escaping, no external resource, determinism."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from quaywatch.assets.inventory import build_inventory
from quaywatch.assets.netmap import NOT_IN_POLICY, build_map, render_html, render_svg, text
from quaywatch.cli.main import main
from quaywatch.policy.load import load_policy_text
from quaywatch.store.database import Store
from tests.assets.test_inventory import (
    CLIENT_MAC,
    HOSTILE_NAME,
    analysed,
    dhcp_request,
    synthetic_capture,
    with_macs,
)
from tests.factories import tcp_frame, write_pcap

SVG_HOSTILE = '"><svg onload=alert(1)>'
SVG_HOSTILE_MAC = b"\x00\x1b\x1b\x00\x00\x98"
ROUTER_MAC = b"\x00\x00\x5e\x00\x01\x01"
NAMESPACE = 'xmlns="http://www.w3.org/2000/svg"'

POLICY = """
site: test port
zones:
  - name: cameras
    cidrs: [10.0.0.10/32]
  - name: control
    description: PLCs
    cidrs: [10.0.0.40/32]
  - name: operations
    cidrs: [10.0.0.20/32, 10.0.0.30/32]
conduits:
  - name: ops-video
    from: operations
    to: cameras
    protocol: rtsp
    ports: [554]
"""


def site_capture(tmp_path: Path) -> Path:
    """The inventory's synthetic site plus a flow to the internet and a second hostile DHCP host name."""
    base = synthetic_capture(tmp_path / "base.pcap")
    frames = [(ts, bytes(frame)) for ts, frame in dpkt.pcap.Reader(base.open("rb"))]
    extra = [
        with_macs(tcp_frame("10.0.0.20", "203.0.113.7", 50100, 443, dpkt.tcp.TH_SYN), CLIENT_MAC, ROUTER_MAC),
        dhcp_request(SVG_HOSTILE_MAC, SVG_HOSTILE),
    ]
    last = frames[-1][0]
    frames += [(last + 0.01 * (index + 1), frame) for index, frame in enumerate(extra)]
    return write_pcap(tmp_path / "site.pcap", frames)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    built = analysed(tmp_path, site_capture(tmp_path))
    build_inventory(built)
    return built


def visible_urls(document: str) -> list[str]:
    """URLs left once the SVG namespace and the escaped hostile host name (inert text) are taken out."""
    stripped = document.replace(NAMESPACE, "").replace(text(HOSTILE_NAME), "")
    return re.findall(r"https?://", stripped)


def test_svg_is_well_formed_and_shows_zones_and_assets(store: Store) -> None:
    network = build_map(store.connection)
    document = render_svg(network)
    root = ET.fromstring(document)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    labels = "".join(root.itertext())
    assert "10.0.0.0/24 (proposed)" in labels and "unzoned" in labels and "external" in labels
    for address in ("10.0.0.10", "10.0.0.20", "10.0.0.30", "10.0.0.40", "203.0.113.0/24"):
        assert address in labels
    assert "camera" in labels and "PLC" in labels and "Schneider Electric" in labels
    camera = next(n for z in network.zones for n in z.nodes if n.address == "10.0.0.10")
    assert "FCC Covered List" in camera.listed
    listed = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if "listed" in (g.get("class") or "")]
    assert any("FCC Covered List" in (g.findtext("{http://www.w3.org/2000/svg}title") or "") for g in listed)
    assert 'stroke="#d50000"' in document  # the red outline of a listed maker
    assert visible_urls(document) == []


def test_html_lists_the_observed_conduits_and_loads_nothing(store: Store) -> None:
    document = render_html(build_map(store.connection))
    assert "default-src 'none'; style-src 'unsafe-inline'" in document
    assert "<script" not in document.lower() and "<link" not in document.lower() and "src=" not in document
    assert visible_urls(document) == []
    conduits = document.split("<h2>Conduits</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", conduits)
    cells = [found for row in rows if (found := re.findall(r"<td[^>]*>(.*?)</td>", row))]
    by_protocol = {row[2]: row for row in cells}
    assert by_protocol["modbus"][3:5] == ["tcp/502", "1"]
    assert by_protocol["rtsp"][3:5] == ["tcp/554", "1"]
    assert by_protocol["tcp/443"][:2] == ["10.0.0.0/24", "external"]


def test_hostile_host_names_come_out_inert(store: Store) -> None:
    for document in (render_html(build_map(store.connection)), render_svg(build_map(store.connection))):
        assert "<script>" not in document and "<svg onload" not in document and "\x1b" not in document
        assert "&lt;script&gt;" in document
        assert html.escape(SVG_HOSTILE, quote=True) in document
        assert '"><svg' not in document
    ET.fromstring(render_svg(build_map(store.connection)))  # still well-formed with the control character


def test_same_store_renders_byte_identical_output(store: Store, tmp_path: Path) -> None:
    assert render_html(build_map(store.connection)) == render_html(build_map(store.connection))
    assert render_svg(build_map(store.connection)) == render_svg(build_map(store.connection))
    (tmp_path / "again").mkdir()
    again = analysed(tmp_path / "again", site_capture(tmp_path / "again"))  # the same traffic analysed afresh
    build_inventory(again)
    assert render_html(build_map(again.connection)) == render_html(build_map(store.connection))
    again.close()


def test_policy_zones_place_the_assets_and_mark_conduits_not_in_policy(store: Store) -> None:
    policy, problems = load_policy_text(POLICY)
    assert [p for p in problems if p.severity == "error"] == []
    network = build_map(store.connection, policy)
    placed = {n.address: z.name for z in network.zones for n in z.nodes}
    assert placed["10.0.0.10"] == "cameras" and placed["10.0.0.40"] == "control"
    assert placed["10.0.0.20"] == "operations" and placed["00:1b:1b:00:00:99"] == "unzoned"
    status = {(c.from_zone, c.to_zone, c.protocol): (c.status, c.policy_conduit) for c in network.conduits}
    assert status[("operations", "cameras", "rtsp")] == ("allowed", "ops-video")
    assert status[("operations", "control", "modbus")] == (NOT_IN_POLICY, "")
    assert status[("operations", "external", "tcp/443")] == (NOT_IN_POLICY, "")
    document = render_html(network)
    assert '<tr class="not-in-policy"><td>operations</td><td>control</td><td>modbus</td>' in document
    ET.fromstring(render_svg(network))


def test_cli_writes_html_and_svg(store: Store, tmp_path: Path) -> None:
    database = tmp_path / "inventory.duckdb"  # where analysed() put the store
    store.close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(
        main, ["map", "--db", str(database), "--policy", str(policy), "--out", str(tmp_path / "m.html")]
    )
    assert result.exit_code == 0, result.output
    assert "not in policy" in (tmp_path / "m.html").read_text(encoding="utf-8")
    result = runner.invoke(main, ["map", "--db", str(database), "--format", "svg", "--out", str(tmp_path / "m.svg")])
    assert result.exit_code == 0, result.output
    ET.parse(tmp_path / "m.svg")

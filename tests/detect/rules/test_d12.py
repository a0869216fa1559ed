"""D12 on a real store: the inventory tests' site analysed with its declared inventory, then ``quaywatch detect``."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from click.testing import CliRunner

from quaywatch.cli.main import main
from tests.assets.test_declared import declared_site


def test_listed_vendor_and_undeclared_devices(tmp_path: Path) -> None:
    capture, declared = declared_site(tmp_path)
    database = tmp_path / "site.duckdb"
    runner = CliRunner()
    runner.invoke(main, ["analyze", str(capture), "--db", str(database), "--inventory", str(declared), "--quiet"])
    result = runner.invoke(main, ["detect", "--db", str(database), "--json"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(database), read_only=True)
    rows = con.execute(
        "SELECT a.detection, a.severity, a.count, a.techniques, a.values_json, a.key_json, s.mac FROM alerts AS a "
        "JOIN assets AS s ON s.asset_id = json_extract_string(a.key_json, '$.asset_id') ORDER BY a.detection, s.mac"
    ).fetchall()
    con.close()
    found = {(row[0], row[6]): row for row in rows}
    camera = found[("D12.listed-vendor", "44:19:b6:00:00:10")]
    assert camera[1] == "high" and camera[2] == 1  # Hikvision: FCC Covered List and NDAA 889
    assert "FCC Covered List" in json.loads(camera[4])["listed"]
    assert camera[3] == [{"id": "T0862", "name": "Supply Chain Compromise"}]
    modem = found[("D12.undeclared-cellular", "50:80:4a:00:00:30")]
    assert modem[1] == "critical"
    assert [t["id"] for t in modem[3]] == ["T0883", "T0884", "T1011"]
    assert json.loads(modem[4])["maker_roles"] == ["cellular_module"]
    by_host = runner.invoke(main, ["alerts", "--db", str(database), "--json", "--host", "10.0.0.30"])
    assert [json.loads(line)["alert"]["detection"] for line in by_host.output.splitlines()] == [
        "D12.undeclared-cellular",
        "D12.listed-vendor",  # Quectel: named on a list too
    ]
    other = [key for key in found if key[0] == "D12.undeclared-device"]
    assert other == [("D12.undeclared-device", "00:1b:1b:00:00:99")]  # the DHCP host, not the modem
    assert found[other[0]][1] == "medium"
    # The modem is undeclared but not twice: it is not also an "undeclared device".
    assert ("D12.undeclared-device", "50:80:4a:00:00:30") not in found

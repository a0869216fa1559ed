"""The asset risk rating on a real store: reasons for a listed camera on the internet and a cellular-module maker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import netaddr
import pytest

from quaywatch.assets.declared import build_findings, import_declared
from quaywatch.assets.risk import level_of, rate_assets, risk_weights
from quaywatch.policy.evaluate import evaluate_policy
from quaywatch.store.database import Store
from tests.assets.test_inventory import analysed
from tests.policy.test_evaluate import QUECTEL_MAC, UNAPPROVED, policy, site_capture


@pytest.fixture
def rated(tmp_path: Path) -> Store:
    store = analysed(tmp_path, site_capture(tmp_path / "site.pcap"))
    evaluate_policy(store, policy())
    declared = tmp_path / "declared.csv"
    declared.write_text("tag,maker,ip\nCRANE-PLC,Siemens,10.10.1.10\n", encoding="utf-8")
    import_declared(store, declared)
    build_findings(store)
    rate_assets(store)
    return store


def risk_of(store: Store, mac: str) -> dict[str, Any]:
    cursor = store.connection.execute("SELECT * FROM asset_risk WHERE mac = ?", [mac])
    names = [column[0] for column in cursor.description]
    (row,) = cursor.fetchall()
    found = dict(zip(names, row, strict=True))
    found["factors"] = {reason["factor"]: reason for reason in found["reasons"]}
    return found


def test_listed_camera_talking_to_the_internet_is_critical(rated: Store) -> None:
    camera = risk_of(rated, "44:19:b6:00:00:10")
    factors = camera["factors"]
    listed = [reason["explanation"] for reason in camera["reasons"] if reason["factor"] == "listed"]
    assert any("FCC Covered List" in text for text in listed) and any("section 889" in text for text in listed)
    assert factors["country"]["explanation"].endswith("based in CN.")
    assert "internet" in factors["exposure"]["explanation"] and UNAPPROVED in factors["exposure"]["explanation"]
    assert factors["violations"]["points"] == risk_weights()["violations"]["per_flow"]
    assert factors["undeclared"]["points"] == risk_weights()["undeclared"]["undeclared_device"]
    assert (camera["score"], camera["level"]) == (100.0, "critical")


def test_cellular_module_maker_is_flagged(rated: Store) -> None:
    mac = str(netaddr.EUI(int.from_bytes(QUECTEL_MAC, "big"), dialect=netaddr.mac_unix_expanded))
    assert "Quectel" in netaddr.EUI(mac).oui.registration().org  # the OUI really is Quectel's
    modem = risk_of(rated, mac)
    cellular = modem["factors"]["cellular"]
    assert "cellular_module maker" in cellular["explanation"]
    assert cellular["points"] == risk_weights()["cellular"]["maker_role"]
    assert modem["level"] in ("high", "critical")


def test_scores_add_up_and_are_bounded(rated: Store) -> None:
    rows = rated.connection.execute("SELECT score, level, reasons FROM asset_risk").fetchall()
    assert rows
    for score, level, reasons in rows:
        assert score == min(100.0, sum(reason["points"] for reason in reasons))
        assert level == level_of(score) and 0 <= score <= 100
    plc = risk_of(rated, "02:00:00:00:01:0a")  # declared, in its zone, no internet: only its role and the policy
    assert "undeclared" not in plc["factors"] and "exposure" not in plc["factors"]


def test_level_thresholds() -> None:
    assert [level_of(score) for score in (0, 24.9, 25, 50, 74.9, 75, 100)] == [
        "low", "low", "medium", "high", "high", "critical", "critical",
    ]  # fmt: skip

"""Vendor and role attribution measured against the simulated terminal's ground truth (issue 6, "Measured").

The simulator's traffic is truthful about each device; this checks the inference: three simulated minutes with the
cellular-modem and camera-p2p scenarios, analysed with the site policy and the declared inventory as an operator
would, then every ground-truth device compared with its asset. ``pytest -s`` prints the per-maker and per-role tables.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from quaywatch.assets.provenance import KnowledgeBase, load_knowledge_base
from quaywatch.cli.main import main
from quaywatch.sim.simulate import CAPTURE, INVENTORY, POLICY, TRUTH, simulate

SCENARIOS: list[tuple[str, dict[str, Any]]] = [("cellular-modem", {}), ("camera-p2p", {})]

#: Devices whose true role nothing in their traffic can tell, by name, with the reason. The test fails if one of
#: them is found after all (then remove it) or if any other device is wrong.
ROLE_EXCEPTIONS = {
    "cms-client": "an HMI by purpose (CMS operator console) but it only does ARP and DNS: a Dell PC like the others",
    "jump-host": "a server, but in these three minutes it only resolves names and asks for time (no session through "
    "it), and Dell makes PCs as well as servers",
}
ROLE_RECALL_MINIMUM = 0.95


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("attribution")
    simulate(directory, duration=180.0, scenarios=SCENARIOS)
    result = CliRunner().invoke(
        main,
        ["analyze", str(directory / CAPTURE), "--db", str(directory / "q.duckdb"), "--policy",
         str(directory / POLICY), "--inventory", str(directory / INVENTORY)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return directory


@pytest.fixture(scope="module")
def truth(terminal: Path) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = json.loads((terminal / TRUTH).read_text())["devices"]
    return devices


@pytest.fixture(scope="module")
def assets(terminal: Path) -> list[dict[str, Any]]:
    con = duckdb.connect(str(terminal / "q.duckdb"), read_only=True)
    cursor = con.execute("SELECT * FROM assets")
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    con.close()
    return rows


@pytest.fixture(scope="module")
def knowledge() -> KnowledgeBase:
    return load_knowledge_base()


def by_mac(assets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(asset["mac"]): asset for asset in assets if asset["mac"] is not None}


def organisation(knowledge: KnowledgeBase, name: str | None) -> str | None:
    """The knowledge-base organisation id a name resolves to: how maker names are compared (names and aliases)."""
    found = knowledge.lookup(name) if name else None
    return found.maker.id if found is not None and found.maker is not None else None


def precision_recall(pairs: list[tuple[str | None, str]]) -> tuple[float, float]:
    """(predicted, true) pairs: precision over the predictions made, recall over every true value."""
    predicted = [(guess, true) for guess, true in pairs if guess is not None]
    correct = sum(guess == true for guess, true in predicted)
    return correct / len(predicted) if predicted else 0.0, correct / len(pairs) if pairs else 0.0


def test_every_ground_truth_device_appears_exactly_once(
    truth: list[dict[str, Any]], assets: list[dict[str, Any]]
) -> None:
    macs = Counter(str(asset["mac"]) for asset in assets)
    for device in truth:
        assert macs[device["mac"].lower()] == 1, f"{device['name']} ({device['mac']}): {macs[device['mac'].lower()]}"
    extra = sorted(set(macs) - {device["mac"].lower() for device in truth})
    print(f"\n{len(truth)} ground-truth devices, {len(assets)} assets; not in the truth: {extra}")


def test_vendor_attribution_precision_and_recall(
    truth: list[dict[str, Any]], assets: list[dict[str, Any]], knowledge: KnowledgeBase
) -> None:
    found = by_mac(assets)
    maker_pairs: list[tuple[str | None, str]] = []
    oui_pairs: list[tuple[str | None, str]] = []
    per_maker: dict[str, list[int]] = {}
    for device in truth:
        expected = organisation(knowledge, device["maker"])
        assert expected is not None, f"truth maker {device['maker']!r} is missing from the provenance base"
        asset = found[device["mac"].lower()]
        maker_pairs.append((organisation(knowledge, asset["maker"]), expected))
        oui_pairs.append((organisation(knowledge, asset["vendor"]), expected))
        counts = per_maker.setdefault(device["maker"], [0, 0, 0])
        counts[0] += 1
        counts[1] += maker_pairs[-1][0] == expected
        counts[2] += oui_pairs[-1][0] == expected
    maker_precision, maker_recall = precision_recall(maker_pairs)
    oui_precision, oui_recall = precision_recall(oui_pairs)
    print(f"\n{'truth maker':12} {'devices':>7} {'maker ok':>8} {'OUI ok':>7}")
    for name, (devices, maker_ok, oui_ok) in sorted(per_maker.items()):
        print(f"{name:12} {devices:7d} {maker_ok:8d} {oui_ok:7d}")
    print(f"maker: precision {maker_precision:.3f} recall {maker_recall:.3f}; "
          f"OUI vendor: precision {oui_precision:.3f} recall {oui_recall:.3f}")  # fmt: skip
    assert (maker_precision, maker_recall) == (1.0, 1.0)
    assert (oui_precision, oui_recall) == (1.0, 1.0)


def test_role_attribution_precision_and_recall(truth: list[dict[str, Any]], assets: list[dict[str, Any]]) -> None:
    found = by_mac(assets)
    pairs = [(str(found[device["mac"].lower()]["role"]), str(device["role"])) for device in truth]
    wrong = {
        device["name"]: (device["role"], role)
        for device, (role, expected) in zip(truth, pairs, strict=True)
        if role != expected
    }
    print(f"\n{'role':24} {'true':>5} {'found':>5} {'ok':>4} {'precision':>9} {'recall':>6}")
    for role in sorted({expected for _, expected in pairs} | {role for role, _ in pairs}):
        true_count = sum(expected == role for _, expected in pairs)
        found_count = sum(guess == role for guess, _ in pairs)
        correct = sum(guess == expected == role for guess, expected in pairs)
        precision = correct / found_count if found_count else 0.0
        recall = correct / true_count if true_count else 0.0
        print(f"{role:24} {true_count:5d} {found_count:5d} {correct:4d} {precision:9.3f} {recall:6.3f}")
    recall = sum(guess == expected for guess, expected in pairs) / len(pairs)
    print(f"role recall {recall:.3f}; wrong: {wrong}")
    assert set(wrong) == set(ROLE_EXCEPTIONS), wrong
    assert recall >= ROLE_RECALL_MINIMUM


def test_the_modem_is_undeclared_cellular_and_shows_its_listed_status(
    terminal: Path, truth: list[dict[str, Any]], assets: list[dict[str, Any]], knowledge: KnowledgeBase
) -> None:
    (modem,) = [device for device in truth if device["role"] == "cellular router or modem"]
    assert not modem["declared"]
    asset = by_mac(assets)[modem["mac"].lower()]
    assert "cellular_module" in asset["maker_roles"]
    lookup = knowledge.lookup(modem["maker"])
    assert lookup is not None
    assert set(asset["listed"]) == {membership.list_name for membership in lookup.memberships}
    con = duckdb.connect(str(terminal / "q.duckdb"), read_only=True)
    kinds = con.execute("SELECT kind, severity FROM inventory_findings WHERE asset_id = ?", [asset["asset_id"]])
    findings = kinds.fetchall()
    con.close()
    assert ("undeclared_device", "high") in findings


def test_the_hikvision_camera_is_flagged_with_its_lists(
    truth: list[dict[str, Any]], assets: list[dict[str, Any]]
) -> None:
    (camera,) = [device for device in truth if device["maker"] == "Hikvision"]
    asset = by_mac(assets)[camera["mac"].lower()]
    assert asset["role"] == "camera"
    assert {"FCC Covered List", "NDAA FY2019 section 889"} <= set(asset["listed"])
    assert asset["maker_country"] == "CN"

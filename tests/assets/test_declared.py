"""The declared inventory: CSV validation, matching by MAC then IP, and the findings with their evidence."""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest

from quaywatch.assets.declared import (
    DeclaredInventoryError,
    build_findings,
    import_declared,
    makers_agree,
    models_agree,
    normalise_mac,
    read_declared,
)
from quaywatch.assets.inventory import build_inventory
from quaywatch.assets.provenance import load_knowledge_base
from quaywatch.store.database import Store
from tests.assets.test_inventory import analysed, synthetic_capture, with_macs
from tests.factories import udp_frame, write_pcap

ROCKWELL_MAC = b"\x00\x00\xbc\x00\x00\x50"
HOSTILE_TAG = '=cmd|"/c calc"!A1'
#: Line 2 camera declared by brand (EZVIZ is Hikvision's), line 3 the Siemens client in Cisco notation, line 4 the
#: Schneider PLC with a model prefix, line 5 a PLC never seen (IP only), line 6 "Siemens" that is Rockwell (by IP),
#: line 7 a bad MAC, line 8 a bad IP, line 9 no identifier, line 10 the hostile tag, never seen. The Quectel modem
#: (10.0.0.30) and the DHCP host (00:1b:1b:00:00:99) are not declared.
DECLARED_CSV = (
    "Asset Tag,Manufacturer,Model,MAC Address,IP Address,Location,Crane,Zone\n"
    "CAM-01,EZVIZ,,44-19-B6-00-00-10,10.0.0.10,Quay 3,STS-04,cctv\n"
    "WS-01,Siemens,,001b.1b00.0020,10.0.0.20,Control room,,ot\n"
    "PLC-40,Schneider Electric,BMX P34,00:80:F4:00:00:40,10.0.0.40;10.0.0.41,E-house,STS-04,crane\n"
    "PLC-99,Siemens,6ES7 315-2EH14,,10.0.0.99,E-house,STS-05,crane\n"
    "DRV-50,Siemens,,,10.0.0.50,E-house,STS-04,crane\n"
    "BAD-1,Siemens,,zz:zz:zz:zz:zz:zz,10.0.0.60,,,\n"
    "BAD-2,Siemens,,,10.0.0.300,,,\n"
    "BAD-3,Siemens,,,,,,\n"
    '"=cmd|""/c calc""!A1",Axis,,ac:cc:8e:00:00:77,,Gate,,cctv\n'
)


def site_capture(path: Path) -> Path:
    """The inventory tests' site plus a Rockwell drive at 10.0.0.50."""
    base = synthetic_capture(path.with_name("base.pcap"))
    with base.open("rb") as handle:
        frames = [(ts, bytes(frame)) for ts, frame in dpkt.pcap.Reader(handle)]
    drive = udp_frame("10.0.0.50", "10.0.0.20", 2222, 2222, b"io")
    frames.append((frames[-1][0] + 0.01, with_macs(drive, ROCKWELL_MAC, b"\x00\x1b\x1b\x00\x00\x20")))
    return write_pcap(path, frames)


def declared_site(tmp_path: Path) -> tuple[Path, Path]:
    """(capture, declared CSV) of the test site."""
    csv_path = tmp_path / "declared.csv"
    csv_path.write_text(DECLARED_CSV, encoding="utf-8")
    return site_capture(tmp_path / "site.pcap"), csv_path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    capture, csv_path = declared_site(tmp_path)
    store = analysed(tmp_path, capture)
    build_inventory(store)
    import_declared(store, csv_path)
    build_findings(store)
    return store


def findings(store: Store) -> list[dict[str, object]]:
    cursor = store.connection.execute("SELECT * FROM inventory_findings ORDER BY finding_id")
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_mac_notations() -> None:
    for text in ("AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "aabb.ccdd.eeff", "AABBCCDDEEFF", " aa bb cc dd ee ff "):
        assert normalise_mac(text) == "aa:bb:cc:dd:ee:ff"
    for text in ("zz:zz:zz:zz:zz:zz", "aa:bb:cc", "aabbccddeeff00", ""):
        assert normalise_mac(text) is None


def test_makers_and_models_compare_through_the_knowledge_base() -> None:
    kb = load_knowledge_base()
    oui_name = "Hangzhou Hikvision Digital Technology Co.,Ltd."
    assert makers_agree("Hikvision", oui_name, kb) and makers_agree("EZVIZ", oui_name, kb)
    assert makers_agree("Siemens", "Siemens AG,", kb) and makers_agree("schneider", "Schneider Electric", kb)
    assert not makers_agree("Siemens", "Rockwell Automation", kb)
    assert not makers_agree("Dahua", oui_name, kb)
    assert models_agree("6ES7 315-2EH14", "6ES7 315-2EH14-0AB0") and models_agree("bmx-p34", "BMX P34 2020")
    assert not models_agree("6ES7 315-2EH14", "6ES7 414-3XM07") and not models_agree("", "x")
    # A CMDB's "name (order number)" agrees with the order number an S7 SZL read reports; a short key does not float.
    assert models_agree("S7-1500 CPU 1516-3 PN/DP (6ES7 516-3AN02-0AB0)", "6ES7 516-3AN02-0AB0")
    assert not models_agree("S7-1500 CPU 1516-3 PN/DP (6ES7 516-3AN02-0AB0)", "6ES7 215-1AG40-0XB0")
    assert not models_agree("Latitude 5440", "5440")


def test_bad_rows_name_file_line_and_column_and_the_rest_is_kept(tmp_path: Path) -> None:
    _, csv_path = declared_site(tmp_path)
    parsed = read_declared(csv_path)
    assert [row.asset_tag for row in parsed.rows] == ["CAM-01", "WS-01", "PLC-40", "PLC-99", "DRV-50", HOSTILE_TAG]
    errors = [str(error) for error in parsed.errors]
    assert errors == [
        "declared.csv:7: column 4 (MAC Address): bad MAC address 'zz:zz:zz:zz:zz:zz'",
        "declared.csv:8: column 5 (IP Address): bad IP address '10.0.0.300'",
        "declared.csv:9: no identifier: a row needs a MAC or an IP address",
    ]
    camera, client, plc = parsed.rows[:3]
    assert (camera.mac, client.mac, plc.ips) == ("44:19:b6:00:00:10", "00:1b:1b:00:00:20", ("10.0.0.40", "10.0.0.41"))


def test_header_spellings_and_fatal_files(tmp_path: Path) -> None:
    semicolons = tmp_path / "cmdb.csv"
    semicolons.write_text("\ufefftag;VENDOR;model;mac;ip_address;zone\nX1;Siemens;;;10.0.0.5 10.0.0.6;ot\n")
    (row,) = read_declared(semicolons).rows
    assert (row.asset_tag, row.maker, row.ips, row.zone) == ("X1", "Siemens", ("10.0.0.5", "10.0.0.6"), "ot")
    duplicate = tmp_path / "dup.csv"
    duplicate.write_text("mac,tag\naa:bb:cc:00:00:01,a\nAABB.CC00.0001,b\n")
    parsed = read_declared(duplicate)
    assert len(parsed.rows) == 1 and "already declared on line 2" in str(parsed.errors[0])
    no_identifier = tmp_path / "none.csv"
    no_identifier.write_text("tag,maker\na,b\n")
    with pytest.raises(DeclaredInventoryError, match="no MAC or IP column"):
        read_declared(no_identifier)


def test_findings(store: Store) -> None:
    rows = findings(store)
    kinds = sorted((row["kind"], row["declared_tag"] or row["mac"]) for row in rows)
    assert kinds == [
        ("maker_mismatch", "DRV-50"),
        ("not_observed", HOSTILE_TAG),
        ("not_observed", "PLC-99"),
        ("undeclared_device", "00:1b:1b:00:00:99"),
        ("undeclared_device", "50:80:4a:00:00:30"),
    ]  # the EZVIZ camera, the Siemens client and the Schneider PLC (model prefix) match
    by_key = {(row["kind"], row["declared_tag"] or row["mac"]): row for row in rows}
    modem = by_key[("undeclared_device", "50:80:4a:00:00:30")]
    assert modem["severity"] == "high" and "modem nobody ordered" in str(modem["explanation"])
    evidence = modem["evidence"]
    assert isinstance(evidence, list)
    oui_rows = [item for item in evidence if item["attribute"] == "oui_vendor"]
    assert oui_rows[0]["source_table"] == "oui" and "Quectel" in oui_rows[0]["value"]
    assert any(item["source_table"] == "flows" and item["refs"] for item in evidence)  # the packets it sent
    assert by_key[("undeclared_device", "00:1b:1b:00:00:99")]["severity"] == "medium"
    mismatch = by_key[("maker_mismatch", "DRV-50")]
    assert mismatch["declared"] == "maker Siemens" and "Rockwell" in str(mismatch["observed"])
    assert mismatch["evidence"] and all(item["rule"] for item in mismatch["evidence"])  # type: ignore[attr-defined]
    never = by_key[("not_observed", "PLC-99")]
    assert never["asset_id"] is None and never["severity"] == "low" and never["ips"] == ["10.0.0.99"]


def test_reimport_gives_the_same_findings(store: Store, tmp_path: Path) -> None:
    first = findings(store)
    import_declared(store, tmp_path / "declared.csv")
    build_findings(store)
    assert findings(store) == first
    count = store.connection.execute("SELECT count(*), count(DISTINCT source_sha256) FROM declared_assets").fetchone()
    assert count == (6, 1)


def test_routed_address_is_not_a_declared_device(tmp_path: Path) -> None:
    # A router carries many remote addresses; declaring one of them by IP does not make the router that device.
    router = b"\x00\x1b\x1b\x00\x00\xee"
    frames = [
        with_macs(udp_frame(f"203.0.113.{n}", "10.0.0.20", 443, 40000 + n, b"x"), router, b"\x00\x1b\x1b\x00\x00\x20")
        for n in range(1, 4)
    ]
    capture = write_pcap(tmp_path / "routed.pcap", [(1_700_000_000 + n, f) for n, f in enumerate(frames)])
    declared = tmp_path / "routed.csv"
    declared.write_text("tag,maker,ip\nREMOTE-1,Siemens,203.0.113.1\n")
    store = analysed(tmp_path, capture)
    build_inventory(store)
    import_declared(store, declared)
    build_findings(store)
    (never,) = [row for row in findings(store) if row["kind"] == "not_observed"]
    assert "beyond router 00:1b:1b:00:00:ee" in str(never["observed"])
    assert not [row for row in findings(store) if row["kind"] == "maker_mismatch"]
